"""The record a run keeps in its directory, and the decisions read from it before a relaunch builds anything.

    RUN/config.yaml      the resolved experiment config the run started with
    RUN/run_info.json    its kind (pretrain / finetune), world size, batch layout, DeepSpeed config, ...
    RUN/history.jsonl    one line per event: start, resume (and the resume-safe keys it changed), converted (a
                         universal copy made from another run), complete (the tag the run finished with)

``config.yaml`` and ``run_info.json`` are written once, when the run starts from step 0; a resume only appends to
``history.jsonl``. A relaunch into a directory whose ``latest`` names a checkpoint (``plan_resume``) resumes only
the same run: a different kind of run or a config that differs in a key that changes the training
(``config/resume.py`` holds the list of those that do not) is refused with one line per key; a run whose last
event is its completion, still at the checkpoint it completed with, is complete and is left as it is.

The kind of a run also tells a command that reads a checkpoint whether it was given the kind it needs
(``require_kind``): a pretraining checkpoint where a finetuned one is needed, or the reverse.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from motionmae_ds.checkpoint.layout import RUN_CHECKPOINTS, RUN_CONFIG, CheckpointError, find_run_dir, read_pointer
from motionmae_ds.config import ConfigError
from motionmae_ds.config.resume import Change, config_changes, deepspeed_changes, split_changes

RUN_INFO = "run_info.json"
RUN_HISTORY = "history.jsonl"
RUN_LOG = "log.jsonl"             # the log rows (train/logging.py), copied with the record
RECORD_FILES = (RUN_CONFIG, RUN_INFO, RUN_HISTORY)
KIND_WORDS = {"pretrain": "pretraining", "finetune": "finetuning"}
# the entry points of each kind of run, for messages
TRAINERS = {"pretrain": "launch/pretrain.py", "finetune": "launch/finetune.py"}


def kind_of_config(config: Any) -> Optional[str]:
    """"pretrain" or "finetune" from a config's sections (a run recorded before run_info.json named its kind)."""
    if not isinstance(config, Mapping):
        return None
    if "finetune" in config:
        return "finetune"
    if "masking" in config or "targets" in config:
        return "pretrain"
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunRecord:
    """The record files of the run in ``run_dir``; reading never writes."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def config(self) -> Optional[dict[str, Any]]:
        path = self.run_dir / RUN_CONFIG
        if not path.is_file():
            return None
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: the run's record is not valid YAML ({str(exc).splitlines()[0]})") from None
        return data if isinstance(data, dict) else None

    def info(self) -> dict[str, Any]:
        path = self.run_dir / RUN_INFO
        try:
            data = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            data = {}
        return data if isinstance(data, dict) else {}

    def events(self) -> list[dict[str, Any]]:
        path = self.run_dir / RUN_HISTORY
        if not path.is_file():
            return []
        events = []
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by kill -9
                continue
        return events

    def kind(self) -> Optional[str]:
        return self.info().get("kind") or kind_of_config(self.config())

    def completed_tag(self) -> Optional[str]:
        """The tag the run finished with, when finishing is the last thing that happened to it."""
        events = self.events()
        last = events[-1] if events else {}
        return last.get("tag") if last.get("event") == "complete" else None

    # -- writing (rank 0) -------------------------------------------------------------------------------
    def start(self, config: Mapping[str, Any], info: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        """A run starting from step 0: its config and info, and a history that begins with ``event``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.run_dir / RUN_CONFIG, yaml.safe_dump(dict(config), sort_keys=False))
        _write_atomic(self.run_dir / RUN_INFO, json.dumps(dict(info), indent=2) + "\n")
        _write_atomic(self.run_dir / RUN_HISTORY, json.dumps(stamped(event)) + "\n")

    def append(self, event: Mapping[str, Any]) -> None:
        with open(self.run_dir / RUN_HISTORY, "a") as f:
            f.write(json.dumps(stamped(event)) + "\n")


def stamped(event: Mapping[str, Any]) -> dict[str, Any]:
    return {**event, "time": event.get("time") or time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# -- the relaunch decision ----------------------------------------------------------------------------------

@dataclass
class ResumePlan:
    action: str                    # "fresh" (nothing to resume), "resume", or "complete" (nothing to do)
    tag: Optional[str] = None      # what ``latest`` names
    safe_changes: list[Change] = field(default_factory=list)
    message: str = ""


def plan_resume(run_dir: str | Path, kind: str, config: Mapping[str, Any], defaults: Mapping[str, Any],
                ds_config: Optional[Mapping[str, Any]] = None) -> ResumePlan:
    """What a relaunch with ``config`` (and the DeepSpeed JSON ``ds_config``) into ``run_dir`` does, decided from
    the files alone (nothing is built or written). Raises ConfigError when the relaunch would resume a run of
    another kind or with another training config: one line per differing key, and the two ways out."""
    run_dir = Path(run_dir)
    tag = read_pointer(run_dir / RUN_CHECKPOINTS)
    if tag is None:
        return ResumePlan("fresh")
    record = RunRecord(run_dir)
    recorded = record.config()
    if recorded is None:  # a run from before the record, or checkpoints copied in: nothing to compare with
        return ResumePlan("resume", tag)
    ways_out = (f"give the new run its own directory (--output_dir NEW_DIR), or start {run_dir} over "
                f"(--no_resume)")
    recorded_kind = record.kind()
    if recorded_kind is not None and recorded_kind != kind:
        raise ConfigError(f"{run_dir} holds a {KIND_WORDS.get(recorded_kind, recorded_kind)} run "
                          f"({TRAINERS.get(recorded_kind, recorded_kind)}); {TRAINERS.get(kind, kind)} cannot resume "
                          f"it: {ways_out}")
    changes = config_changes(recorded, config, defaults)
    recorded_ds = record.info().get("ds_config")
    if ds_config is not None and isinstance(recorded_ds, Mapping):
        changes += deepspeed_changes(recorded_ds, ds_config)
    training, safe = split_changes(changes)
    if training:
        lines = "\n".join(f"  {c.line()}" for c in training)
        raise ConfigError(f"{run_dir} holds a run started with another config; resuming it (checkpoint {tag}) "
                          f"would train on with settings it did not start with (recorded -> requested):\n{lines}\n"
                          f"{ways_out}")
    done = record.completed_tag()
    if done is not None and done == tag:
        step = next((e.get("step") for e in reversed(record.events()) if e.get("event") == "complete"), None)
        return ResumePlan("complete", tag, safe, f"{run_dir} is complete (step {step}, checkpoint "
                                                 f"{run_dir / RUN_CHECKPOINTS / tag}); nothing to do. A new "
                                                 f"--output_dir, or --no_resume, starts another run")
    return ResumePlan("resume", tag, safe)


# -- the kind a command was given ----------------------------------------------------------------------------

def source_kind(source: str | Path) -> Optional[str]:
    """The kind of run a checkpoint path (run, checkpoints or tag directory, or a file in one) comes from, read
    from its run's record; None when there is no record (weight files, HF directories, bare checkpoints)."""
    path = Path(source)
    run_dir = find_run_dir(path) if path.exists() else None
    return RunRecord(run_dir).kind() if run_dir is not None else None


class WrongKindError(CheckpointError):
    """A checkpoint of the other kind than a command needs; the message names both and what takes it."""


def require_kind(source: str | Path, kind: Optional[str], needed: str, command: str) -> None:
    """Raise WrongKindError when ``kind`` (``source``'s, None: unknown) is not ``needed`` by ``command``."""
    if kind is None or kind == needed or kind not in KIND_WORDS:
        return
    if kind == "pretrain":
        takes = f"launch/finetune.py --set finetune.init={source} takes it, as do launch/knn_eval.py and " \
                f"launch/visualize.py"
    else:
        takes = f"launch/evaluate.py --checkpoint {source} takes it"
    raise WrongKindError(f"{source} is a {KIND_WORDS[kind]} checkpoint; {command} needs a {KIND_WORDS[needed]} "
                         f"one ({takes})")


def require_kind_for(source: str | Path, kind: Optional[str], purpose: str) -> None:
    """The kind checks of ``weights.load_into``: a DeepSpeed run's client state names its config, and so its kind;
    a pretraining checkpoint cannot be evaluated, nor give a head to keep. Unknown kinds go on to the weights."""
    if purpose == "evaluate":
        require_kind(source, kind, "finetune", "evaluation (launch/evaluate.py, launch/finetune.py --eval)")
    elif purpose == "finetune_with_head" and kind == "pretrain":
        raise WrongKindError(f"{source} is a pretraining checkpoint, which has no classification head; "
                             f"finetune.init_keep_head=true needs a finetuning one (launch/finetune.py writes them); "
                             f"set finetune.init_keep_head=false to start from its encoder")
