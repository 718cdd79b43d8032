"""What a resume may change: the one list of resume-safe keys, and the comparison of a run's recorded config with
the one a relaunch asks for.

A run directory belongs to one run. A relaunch into it resumes that run only when everything that shapes the
training is what the run recorded: the experiment config key by key, and the DeepSpeed JSON's engine settings
key by key (``deepspeed.zero_optimization.stage``, ``deepspeed.bf16.enabled``, ``deepspeed.gradient_clipping``
...; compared by content, not by file name). The keys below change how a run is watched, saved or fed, not what
it computes, and may differ on a resume (README: "Resuming"); the batch keys of the JSON are filled in from the
YAML (``runtime/ds_config.py``), so they are compared there, through ``schedule.*``.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple

# experiment config keys a resume may change (section.key)
RESUME_SAFE_KEYS = frozenset({
    "run.output_dir",         # the same directory, named another way
    "run.log_every",          # how often log rows are written
    "run.save_every_epochs",  # checkpoint cadence
    "run.save_every_steps",
    "run.keep_last",          # how many checkpoints are kept
    "run.visualize",          # reconstruction figures at checkpoints (pretraining)
    "data.vis_video",         # the video those figures show
    "data.num_workers",       # loader processes: data order and augmentation are functions of the position
    "data.loader_timeout_s",
    "data.max_bad_fraction",  # when a run stops on unreadable videos
    "data.cache_dir",         # where the synthetic videos are cached (the same videos either way)
    "model.grad_checkpointing",  # recomputes activations: memory, not maths
    "run.compile",            # the same blocks compiled or eager (equal within float rounding; a run that fails to
                              # compile resumes eager)
    "eval.batch_size",        # videos per forward in evaluation: per-video scores are the same
    "eval.save_scores",       # what predictions.jsonl holds
})

# DeepSpeed JSON keys (dotted paths; a listed path covers everything under it) a resume may change: logging,
# profiling and communication buckets, none of which changes a value the engine computes
RESUME_SAFE_DEEPSPEED = frozenset({
    "steps_per_print", "wall_clock_breakdown", "memory_breakdown", "dump_state", "timers", "tensorboard",
    "csv_monitor", "wandb", "comet", "flops_profiler", "comms_logger", "monitor_config",
    "zero_optimization.overlap_comm", "zero_optimization.contiguous_gradients",
    "zero_optimization.reduce_bucket_size", "zero_optimization.allgather_bucket_size",
    "zero_optimization.reduce_scatter", "zero_optimization.allgather_partitions",
    "zero_optimization.stage3_prefetch_bucket_size", "zero_optimization.stage3_param_persistence_threshold",
    "zero_optimization.stage3_max_live_parameters", "zero_optimization.stage3_max_reuse_distance",
    "zero_optimization.sub_group_size",
})

# filled in by the run, not by the user: the batch (from the YAML) and the universal-load switch (from ``latest``)
DERIVED_DEEPSPEED = frozenset({
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "checkpoint.load_universal",
})

DEEPSPEED_PREFIX = "deepspeed."


class Change(NamedTuple):
    key: str
    recorded: Any
    requested: Any

    def line(self) -> str:
        return f"{self.key}: {_show(self.recorded)} -> {_show(self.requested)}"


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(not set)"
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) and (not value or value.strip() != value) else str(value)


class _Absent:
    def __repr__(self) -> str:
        return "(not set)"


_ABSENT = _Absent()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; tuples and lists compare as lists."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _covered(key: str, paths: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in paths)


def config_changes(recorded: Mapping[str, Any], requested: Mapping[str, Any],
                   defaults: Mapping[str, Any]) -> list[Change]:
    """Every key whose value differs between the ``recorded`` config (config.yaml) and the ``requested`` one
    (``cfg.to_dict()``). A key the record lacks (written before the key existed) compares as its default in
    ``defaults``; a key only the record has (no longer a key) is not compared."""
    old, new, default = flatten(recorded), flatten(requested), flatten(defaults)
    changes = []
    for key, value in new.items():
        before = old.get(key, default.get(key, _ABSENT))
        if before != value:
            changes.append(Change(key, before, value))
    return changes


def deepspeed_changes(recorded: Mapping[str, Any], requested: Mapping[str, Any]) -> list[Change]:
    """Engine settings that differ between the JSON a run recorded (run_info.json's ``ds_config``) and the one
    given now, keys named ``deepspeed.<path>``; the derived keys are left out."""
    old, new = flatten(recorded), flatten(requested)
    changes = []
    for key in sorted(set(old) | set(new)):
        if _covered(key, DERIVED_DEEPSPEED):
            continue
        before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if before != after:
            changes.append(Change(DEEPSPEED_PREFIX + key, before, after))
    return changes


def is_resume_safe(key: str) -> bool:
    if key.startswith(DEEPSPEED_PREFIX):
        return _covered(key[len(DEEPSPEED_PREFIX):], RESUME_SAFE_DEEPSPEED)
    return key in RESUME_SAFE_KEYS


def split_changes(changes: Iterable[Change]) -> tuple[list[Change], list[Change]]:
    """(changes that would alter the training, resume-safe changes)."""
    training, safe = [], []
    for change in changes:
        (safe if is_resume_safe(change.key) else training).append(change)
    return training, safe
