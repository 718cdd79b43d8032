"""The DeepSpeed JSON: engine settings only; the batch comes from the experiment config.

Batch decision (one source of truth): the YAML owns the batch (``schedule.batch_size`` per device, and
``schedule.accum_steps`` or ``schedule.total_batch_size``). The JSON may omit ``train_batch_size``,
``train_micro_batch_size_per_gpu`` and ``gradient_accumulation_steps``; we fill them in. If the JSON does
give one and it disagrees with the YAML, that is a ``ConfigError`` naming both values. The JSON must not
carry an ``optimizer`` or ``scheduler`` section: the engine passes its own AdamW with per-group lr scales
and sets lr/wd every step itself.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from motionmae_ds.config import ConfigError


def load_ds_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--deepspeed_config {path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    for section in ("optimizer", "scheduler"):
        if section in data:
            raise ConfigError(f"{path}: remove the '{section}' section; optimiser and lr schedule come "
                              f"from the experiment config")
    return data


def fill_batch(ds: dict[str, Any], micro: int, accum: int, world_size: int, origin: str = "deepspeed config",
               yaml_origin: str = "config") -> dict[str, Any]:
    """Return a copy of ``ds`` with the three batch keys set, refusing values that disagree."""
    wanted = {
        "train_micro_batch_size_per_gpu": (micro, "schedule.batch_size"),
        "gradient_accumulation_steps": (accum, "schedule.accum_steps/total_batch_size"),
        "train_batch_size": (micro * accum * world_size, f"batch_size x accum x world size {world_size}"),
    }
    out = dict(ds)
    for key, (value, yaml_key) in wanted.items():
        given = ds.get(key)
        if given is not None and given != "auto" and given != value:
            raise ConfigError(f"{origin}: {key}={given} disagrees with {yaml_origin}: {yaml_key} gives {value}; "
                              f"drop the key from the JSON (the YAML owns the batch)")
        out[key] = value
    return out


def zero_stage(ds: dict[str, Any]) -> int:
    zero = ds.get("zero_optimization") or {}
    return int(zero.get("stage", 0)) if isinstance(zero, dict) else 0


def offload_device(ds: dict[str, Any], what: str = "optimizer") -> str:
    """Where ZeRO keeps the ``optimizer`` states (or the ``param`` weights): "cpu"/"nvme" when offloaded,
    else "none"."""
    zero = ds.get("zero_optimization") or {}
    section = zero.get(f"offload_{what}") if isinstance(zero, dict) else None
    return str(section.get("device", "none")) if isinstance(section, dict) else "none"
