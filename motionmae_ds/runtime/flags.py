"""The flags the launchers share, declared once, and the convention they follow.

Kept apart from ``runtime/cli.py`` and free of package imports, so that a launcher's ``--help`` and argument
errors answer before torch is imported (convert_checkpoint, estimate_memory and visualize import it lazily).
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

# One flag convention for every launcher: words joined by underscores, as DeepSpeed's own --deepspeed_config and
# --local_rank, and one name per concept, declared here once. The spellings launchers used before it still parse
# for one release (README: Flags) but stay out of --help, so new command lines use one name.
OLD_SPELLINGS: dict[str, str] = {
    "--out": "--output_dir or --output",
    "--input": "--checkpoint",
    "--shard-size-mb": "--shard_size_mb",
    "--short-side": "--short_side",
    "--frame-template": "--frame_template",
    "--frame-start": "--frame_start",
    "--min-frames": "--min_frames",
    "--drop-truncated": "--drop_truncated",
}


def add_option(p: argparse.ArgumentParser, name: str, *, old: Sequence[str] = (), **kwargs: Any) -> argparse.Action:
    """``p.add_argument(name, **kwargs)`` that also accepts the ``old`` spellings (same action, same dest) without
    listing them in --help or in error messages."""
    unknown = [o for o in old if o not in OLD_SPELLINGS]
    if unknown:
        raise ValueError(f"{unknown}: not in runtime.cli.OLD_SPELLINGS (README: Flags lists every old spelling)")
    action = p.add_argument(name, *old, **kwargs)
    # the parser maps every spelling to this action; help, usage and "required" errors read only option_strings
    action.option_strings = [name]
    return action


def add_config(p: argparse.ArgumentParser, default: str | None, what: str = "experiment") -> argparse.Action:
    """``--config``: the YAML of the job. ``default`` names what is used without it (the loaders pick it; here it
    is only help), None makes the flag required."""
    if default is None:
        return add_option(p, "--config", required=True, help=f"{what} YAML")
    return add_option(p, "--config", default=None, help=f"{what} YAML (default: {default})")


def add_set(p: argparse.ArgumentParser) -> argparse.Action:
    """``--set SECTION.KEY=VALUE ...``: overrides applied on top of the YAML."""
    return add_option(p, "--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")


def add_deepspeed_config(p: argparse.ArgumentParser, default: str | None) -> argparse.Action:
    """``--deepspeed_config``: the DeepSpeed JSON, the one source of engine settings; None makes it required."""
    if default is None:
        return add_option(p, "--deepspeed_config", required=True, help="DeepSpeed JSON (engine settings)")
    return add_option(p, "--deepspeed_config", default=default, help=f"DeepSpeed JSON (engine settings; default: "
                      f"{default})")


def add_output_dir(p: argparse.ArgumentParser, help: str, *, default: str | None = None, required: bool = False,
                   old: Sequence[str] = ()) -> argparse.Action:
    """``--output_dir``: the directory a command writes its results into."""
    return add_option(p, "--output_dir", old=old, default=default, required=required, help=help)


def add_output(p: argparse.ArgumentParser, help: str, *, old: Sequence[str] = ()) -> argparse.Action:
    """``--output``: the one artifact a command writes (a file, or a directory that is the artifact itself),
    where ``--output_dir`` would name a folder to fill."""
    return add_option(p, "--output", old=old, default=None, help=help)


def add_checkpoint(p: argparse.ArgumentParser, help: str, *, default: str | None = None, required: bool = False,
                   old: Sequence[str] = ()) -> argparse.Action:
    """``--checkpoint``: the weights a command reads (run dir, checkpoints dir, tag dir, file; the help says
    which sources this command takes)."""
    return add_option(p, "--checkpoint", old=old, default=default, required=required, help=help)


def add_tag(p: argparse.ArgumentParser) -> argparse.Action:
    """``--tag``: which checkpoint of a checkpoints directory."""
    return add_option(p, "--tag", default=None, help="checkpoint tag (default: the one 'latest' names)")


def add_local_rank(p: argparse.ArgumentParser) -> argparse.Action:
    """``--local_rank``: passed by the deepspeed launcher; the rank is read from the environment instead."""
    return add_option(p, "--local_rank", type=int, default=None, help=argparse.SUPPRESS)
