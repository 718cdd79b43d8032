"""One flag convention for every launcher, read from the launchers' real parsers (each launch/*.py's
``build_parser()``): underscores only, one name per concept, and the old spellings still parsing as hidden
aliases of the new names, as README's "Flags" section says."""
from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from motionmae_ds.runtime.flags import OLD_SPELLINGS
from tests.helpers import REPO

LAUNCHERS = sorted((REPO / "launch").glob("*.py"))
FLAG = re.compile(r"^--[a-z0-9]+(_[a-z0-9]+)*$")
# spellings a launcher might reach for, by concept, and the one name the convention gives each concept
CONCEPTS = {
    "output": ({"--out", "--output", "--output_dir", "--out_dir", "--outdir", "--output_path", "--output_file",
                "--save_dir", "--dest"}, {"--output_dir", "--output"}),
    "checkpoint": ({"--checkpoint", "--input", "--ckpt", "--ckpt_dir", "--weights", "--model_path", "--pretrained",
                    "--init"}, {"--checkpoint"}),
    "config": ({"--config", "--cfg", "--config_file", "--yaml"}, {"--config"}),
    "overrides": ({"--set", "--opts", "--override", "--overrides"}, {"--set"}),
    "deepspeed config": ({"--deepspeed_config", "--ds_config", "--deepspeed"}, {"--deepspeed_config"}),
    "checkpoint tag": ({"--tag", "--ckpt_tag", "--checkpoint_tag"}, {"--tag"}),
}


def _load_parser(path: Path) -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location(f"_launch_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "build_parser"), f"{path.name}: no build_parser() to read its flags from"
    parser = module.build_parser()
    assert isinstance(parser, argparse.ArgumentParser), path.name
    return parser


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    return {path.name: _load_parser(path) for path in LAUNCHERS}


def _shown(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The option strings --help lists, each with its action."""
    return {s: a for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}


def _hidden(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Option strings the parser accepts but --help does not list: the old spellings."""
    return {s: a for s, a in parser._option_string_actions.items() if s not in a.option_strings}


def _values(action: argparse.Action) -> list[str]:
    if action.nargs == 0:  # store_true
        return []
    if action.choices:
        return [str(list(action.choices)[-1])]
    return ["7"] * (action.nargs if isinstance(action.nargs, int) else 1)


def _required_argv(parser: argparse.ArgumentParser, besides: argparse.Action) -> list[str]:
    argv = []
    for a in parser._actions:
        if a is besides or not (a.required or not a.option_strings):
            continue
        argv += ([a.option_strings[0]] if a.option_strings else []) + _values(a)
    return argv


def test_every_launcher_has_a_parser(parsers):
    assert len(parsers) == len(LAUNCHERS) >= 12
    assert {"pretrain.py", "finetune.py", "convert_checkpoint.py", "prepare_data.py"} <= parsers.keys()


def test_flags_use_underscores(parsers):
    bad = {f"{name}: {flag}" for name, p in parsers.items() for flag in _shown(p) if not FLAG.match(flag)}
    assert not bad, f"flags must be lower-case words joined by underscores: {sorted(bad)}"


def test_same_concept_same_name(parsers):
    for concept, (spellings, names) in CONCEPTS.items():
        used = {flag for p in parsers.values() for flag in _shown(p) if flag in spellings}
        assert used <= names, f"{concept}: {sorted(used - names)} where the convention says {sorted(names)}"
    # declared once: each shared flag has one dest and one shape in every launcher that takes it
    shared = {"--config", "--set", "--output_dir", "--output", "--checkpoint", "--deepspeed_config", "--tag",
              "--local_rank"}
    for flag in shared:
        shapes = {(a.dest, a.nargs, a.type, a.metavar) for p in parsers.values()
                  for f, a in _shown(p).items() if f == flag}
        assert len(shapes) <= 1, f"{flag} declared differently across launchers: {shapes}"
    takes = {name for name, p in parsers.items() if "--config" in _shown(p)}
    assert {"pretrain.py", "finetune.py", "evaluate.py", "estimate_memory.py", "eval_vos.py"} <= takes
    assert all("--set" in _shown(parsers[name]) for name in takes), "every launcher with --config takes --set"


def test_old_spellings_parse_to_the_new_dest(parsers):
    seen = set()
    for name, p in parsers.items():
        for old, action in _hidden(p).items():
            new = action.option_strings[0]
            assert old in OLD_SPELLINGS and new in OLD_SPELLINGS[old].split(" or "), f"{name}: {old} -> {new}"
            required = _required_argv(p, action)
            by_new = p.parse_args(required + [new, *_values(action)])
            by_old = p.parse_args(required + [old, *_values(action)])
            assert vars(by_old) == vars(by_new), f"{name}: {old} parses differently from {new}"
            assert getattr(by_old, action.dest) != action.default, f"{name}: {old} did not set {action.dest}"
            assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", p.format_help()), f"{name} shows {old}"
            seen.add(old)
    assert seen == set(OLD_SPELLINGS), f"old spellings no launcher accepts: {sorted(set(OLD_SPELLINGS) - seen)}"


def test_readme_documents_the_convention_and_old_spellings():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Flags", 1)[1].split("\n## ", 1)[0] if "## Flags" in readme else ""
    assert section, "README.md has no '## Flags' section"
    for old, new in OLD_SPELLINGS.items():
        assert f"`{old}`" in section, f"README Flags: {old} missing"
        assert all(f"`{n}`" in section for n in new.split(" or ")), f"README Flags: {new} missing"
