"""One loader for every job config: dataclass defaults <- YAML file <- ``--set section.key=value``.

A job config is a dataclass whose fields are section dataclasses plus a ``source`` string (where it came
from). This module knows nothing about which sections exist: it checks types against the dataclass hints,
and bad input raises ``ConfigError`` with one line naming the file, the key and (when known) the line.
Value checks are the job modules' (``pretrain.py``, ``finetune.py``).
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad experiment config; the message is one line naming the key (and file/line when known)."""


class SectionedConfig:
    """What the job configs share beyond their sections: ``to_dict`` (for config.yaml / checkpoints)."""

    def to_dict(self) -> dict[str, Any]:
        return sections_to_dict(self)


def sections_to_dict(cfg: Any) -> dict[str, Any]:
    """A sectioned config dataclass as plain YAML-able data (tuples become lists; ``source`` is left out)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name == "source":
            continue
        section = dataclasses.asdict(getattr(cfg, f.name))
        out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
    return out


# PyYAML reads "1e-3" (no dot) as a string; a float field accepts that spelling.
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def convert(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return convert(value, args[0], where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of entries, got {value!r}")
        return [convert_entry(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp) and isinstance(value, tp):  # a rebuilt config's own entries
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        # bool is an int subclass; `depth: true` is a typo, not 1
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config field type {tp} at {where}")


def convert_entry(value: Any, entry_cls: type, where: str) -> Any:
    """One entry of a list-of-entries field (``data.sources``): a mapping, its keys checked against
    ``entry_cls``'s fields and their types, as a section's are."""
    if dataclasses.is_dataclass(value) and isinstance(value, entry_cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {value!r}")
    hints = typing.get_type_hints(entry_cls)
    known = [f.name for f in dataclasses.fields(entry_cls)]
    entry = entry_cls()
    for key, item in value.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(known)})")
        setattr(entry, key, convert(item, hints[key], f"{where}.{key}"))
    return entry


def key_lines(text: str) -> dict[str, int]:
    """Map 'section.key' -> 1-based line number in the YAML text, for error messages."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                name = f"{prefix}{key_node.value}"
                lines[name] = key_node.start_mark.line + 1
                walk(value_node, name + ".")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines  # safe_load reports the syntax error with its line
    if root is not None:
        walk(root, "")
    return lines


def apply_sections(cfg: Any, data: dict[str, Any], origin: str, lines: dict[str, int]) -> None:
    """Set ``data`` (``{section: {key: value}}``) on ``cfg`` in place, each value type-checked."""
    def where(key: str) -> str:
        line = lines.get(key)
        return f"{origin}:{line}: {key}" if line else f"{origin}: {key}"

    sections = {f.name: f for f in dataclasses.fields(cfg) if f.name != "source"}
    for sec_name, sec_value in data.items():
        if sec_name not in sections:
            raise ConfigError(f"{where(str(sec_name))}: unknown section (known: {', '.join(sections)})")
        if sec_value is None:
            continue
        if not isinstance(sec_value, dict):
            raise ConfigError(f"{where(sec_name)}: expected a mapping of keys")
        section = getattr(cfg, sec_name)
        # field order (not get_type_hints' MRO order) so "known:" lists keys as the section declares them
        hints = typing.get_type_hints(type(section))
        known = [f.name for f in dataclasses.fields(section)]
        for key, value in sec_value.items():
            full = f"{sec_name}.{key}"
            if key not in known:
                raise ConfigError(f"{where(full)}: unknown key (known: {', '.join(known)})")
            setattr(section, key, convert(value, hints[key], where(full)))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.base_lr=1e-3", "data.flip=false"]`` -> nested dict, values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
        nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


def load_sections(config_cls: type[T], path: Path, overrides: Optional[list[str]] = None) -> T:
    """``config_cls`` (a dataclass of section dataclasses with a ``source`` field) from the YAML file at
    ``path`` and ``--set`` overrides, types checked; value checks are the caller's."""
    if not path.is_file():
        if not (REPO_ROOT / "configs").is_dir():
            # a non-editable install: the recipes stay in the checkout
            raise ConfigError(f"--config {path}: file not found (the recipes live in the checkout's configs/; "
                              f"install it with `pip install -r requirements.txt`, which installs it editable, "
                              f"or pass --config)")
        raise ConfigError(f"--config {path}: file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    cfg = config_cls(source=str(path))  # type: ignore[call-arg]
    apply_sections(cfg, data, str(path), key_lines(text))
    if overrides:
        apply_sections(cfg, parse_overrides(overrides), "--set", {})
    return cfg
