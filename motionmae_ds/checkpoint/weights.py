"""Weights from every source we accept, into a model for one purpose: ``load_into(model, source, purpose)``.

Sources (``read_weights``): a run directory, a DeepSpeed checkpoint directory (``latest`` + tags, written at
any ZeRO world size, universal or not) or one tag directory; our ``.pth``/``.safetensors`` exports or a
VideoMAE ``.pth``; a Hugging Face VideoMAE directory. State dicts may sit under ``model``/``module``/
``state_dict`` and carry ``module.``, ``_orig_mod.``, ``backbone.`` or ``encoder.`` prefixes. Decoder
weights, a pretraining encoder's final norm and (unless asked to keep it) the classification head are
dropped on purpose; what is left over is reported as missing/unexpected, never silently ignored.

Positional tables: ours are fixed sinusoids rebuilt from the token grid, so they are not weights and need
no conversion when frames or resolution change; but a weight only fits the kind of table it was trained
with, so a run's recorded ``model.pos_embed`` must match. A *learned* ``pos_embed`` is resampled trilinearly
over (t, h, w) to the model's grid into its table, which joins the state dict (a finetuned checkpoint keeps it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from safetensors import safe_open
from torch import nn

from motionmae_ds.checkpoint.hf import is_hf_dir, load_hf_videomae
from motionmae_ds.checkpoint.layout import (
    CLASSIFIER_ONLY_PREFIXES,
    DECODER_PREFIXES,
    ENCODER_PREFIX,
    HEAD_PREFIXES,
    MODEL_STATES,
    STRIP_PREFIXES,
    WRAPPER_KEYS,
    CheckpointError,
    WeightsDoNotFitError,
    find_run_dir,
    first_line,
    has_zero_shards,
    is_universal,
    resolve,
)
from motionmae_ds.checkpoint.pos_tables import load_learned_pos
from motionmae_ds.checkpoint.run_record import RunRecord, kind_of_config, require_kind_for
from motionmae_ds.checkpoint.zero import (
    fp32_state_dict,
    load_model_states,
    model_states_file,
    module_weights,
    torch_load,
)
from motionmae_ds.models.attentive import AttentiveProbe
from motionmae_ds.models.classifier import LinearProbe

# the run config that our safetensors exports carry in their metadata
SAFETENSORS_CONFIG_KEY = "motionmae_config"
# a probe run's client state: where its frozen encoder was read from (``pinned_source``)
PROBE_ENCODER_KEY = "probe_encoder"


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    weights: str = ""     # which copy of the source was read (file, hf, fp32 master, module)
    whole: bool = False   # the source held the model's own names and was loaded as it is

    def summary(self) -> str:
        """One line for a whole load; else a few lines: counts, then every missing/unexpected/mismatched name
        (these are what users check)."""
        if self.whole:
            return f"loaded {len(self.loaded)} tensors from {self.source} ({self.weights})"
        lines = [f"loaded {len(self.loaded)} tensors from {self.source}; dropped {len(self.dropped)} "
                 f"(decoder/head/pretraining norm); missing {len(self.missing)}; unexpected "
                 f"{len(self.unexpected)}; shape mismatch {len(self.mismatched)}"]
        for title, names in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("shape mismatch", self.mismatched)):
            if names:
                lines.append(f"  {title}: {', '.join(names)}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# -- reading ----------------------------------------------------------------------------------------------

def read_weights(source: str | Path, tag: Optional[str] = None, exact: bool = False
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict as the source names it, info) from any source we accept; ``tag`` picks a DeepSpeed tag.

    DeepSpeed directories give the exact fp32 master weights when the ZeRO optimizer shards or universal
    files are there, else the (bf16) module weights of the model states, cast to fp32; ``exact`` makes
    that fallback an error. ``info``: ``kind`` (file, hf, deepspeed), ``where`` (for messages), ``config``
    (the run config, or None), ``model_kwargs`` (its model section, or None), for DeepSpeed also ``ckpt_dir``,
    ``tag`` and ``weights`` (which copy was read).
    """
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        state, config = _read_file(path)
        return state, _info("file", str(path), config)
    if is_hf_dir(path):
        state, kwargs = load_hf_videomae(path)
        return state, _info("hf", f"HF directory {path}", {"model": kwargs})
    ckpt_dir, tag = resolve(path, tag)
    return _with_probe_encoder(lambda: _read_deepspeed(ckpt_dir, tag, exact))


def _info(kind: str, where: str, config: Optional[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    model = config.get("model") if isinstance(config, Mapping) else None
    return {"kind": kind, "where": where, "config": config,
            "model_kwargs": dict(model) if isinstance(model, Mapping) else None, **extra}


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], Optional[dict[str, Any]]]:
    if path.suffix != ".safetensors":
        return unwrap_state_dict(torch_load(path), str(path)), None
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as safetensors ({first_line(exc)})") from None
    try:
        config = json.loads(meta[SAFETENSORS_CONFIG_KEY]) if SAFETENSORS_CONFIG_KEY in meta else None
    except json.JSONDecodeError:
        config = None  # the weights are still good; only the pos_embed kind check goes without it
    return state, config


def _read_deepspeed(ckpt_dir: Path, tag: str, exact: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tag_dir = ckpt_dir / tag
    states = load_model_states(ckpt_dir, tag)
    config = states.get("config")
    if not isinstance(config, Mapping):
        config = _run_config(ckpt_dir)
    info = _info("deepspeed", str(tag_dir), config, ckpt_dir=ckpt_dir, tag=tag,
                 probe_encoder=states.get(PROBE_ENCODER_KEY))
    universal = is_universal(tag_dir)
    if exact or universal or has_zero_shards(tag_dir):
        try:
            state = fp32_state_dict(ckpt_dir, tag)
            info["weights"] = "fp32 master (universal checkpoint)" if universal else "fp32 master (ZeRO shards)"
            return state, info
        except CheckpointError as exc:
            if exact or not (tag_dir / MODEL_STATES).is_file():
                raise
            # e.g. stage-0 files; the module copy still holds every weight, rounded to bf16
            info["zero_error"] = str(exc)
    info["weights"] = f"module ({MODEL_STATES})"
    return module_weights(states, str(model_states_file(tag_dir))), info


def _with_probe_encoder(read: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A probe run's checkpoint (``finetune.probe``) holds the trained probe alone: the engine leaves the frozen
    encoder out (checkpoint/engine_io.py). Its encoder is what the run loaded, ``finetune.init`` of its config,
    read again here and put under the probe's ``backbone.`` names (the pretraining encoder's final norm and a
    classifier's fc_norm and head left out: a probe uses neither norm, and its head is in the checkpoint)."""
    state, info = read()
    config = info.get("config") if isinstance(info.get("config"), Mapping) else {}
    finetune = config.get("finetune") if isinstance(config.get("finetune"), Mapping) else {}
    if finetune.get("probe") not in ("linear", "attentive") or any(
            k.startswith("backbone.blocks.") for k in state):
        return state, info
    init = info.get("probe_encoder") or str(finetune.get("init", "none"))
    if init.lower() == "none" or not Path(init).exists():
        raise CheckpointError(f"{info['where']}: a probe checkpoint holds the probe alone; its encoder, the run's "
                              f"finetune.init ({init}), is not there to read")
    encoder, _ = encoder_weights(read_weights(init)[0])
    info["probe_encoder"] = init
    info["weights"] = f"{info.get('weights', info['kind'])} + encoder from finetune.init={init}"
    return {**{f"backbone.{k}": v for k, v in encoder.items() if not k.startswith("norm.")}, **state}, info


def pinned_source(source: str | Path) -> str:
    """``source`` as a path that reads the same weights later: absolute, and for a DeepSpeed run or checkpoint
    directory the tag its ``latest`` names now (a pretraining run that goes on moves ``latest``)."""
    path = Path(source).resolve()
    if path.is_dir() and not is_hf_dir(path):
        ckpt_dir, tag = resolve(path)
        return str(ckpt_dir / tag)
    return str(path)


def _run_config(ckpt_dir: Path) -> Optional[dict[str, Any]]:
    """The run's resolved config.yaml next to its checkpoints, for model states that do not carry one."""
    run_dir = find_run_dir(ckpt_dir)
    return RunRecord(run_dir).config() if run_dir is not None else None


def unwrap_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """Descend through ``model``/``module``/``state_dict`` wrappers to the name -> tensor mapping."""
    for _ in range(4):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise CheckpointError(f"{where}: no state dict found (expected a name -> tensor mapping, possibly under one "
                          f"of {', '.join(WRAPPER_KEYS)})")


# -- names ------------------------------------------------------------------------------------------------

def normalise_names(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip wrapper prefixes; keep an ``encoder.`` model's encoder only. Returns (state, dropped names)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in STRIP_PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix):], True
        out[name] = value
    dropped: list[str] = []
    if any(k.startswith(ENCODER_PREFIX) for k in out):
        # a pretraining model: the encoder is ours, everything beside it belongs to the decoders
        dropped = [k for k in out if not k.startswith(ENCODER_PREFIX)]
        out = {k[len(ENCODER_PREFIX):]: v for k, v in out.items() if k.startswith(ENCODER_PREFIX)}
    return out, dropped


def encoder_weights(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The encoder under VideoMAE finetune names (``patch_embed``, ``blocks.{i}``, maybe the pretraining
    ``norm``), whatever model ``state`` came from. Returns (encoder state, dropped names)."""
    state, dropped = normalise_names(state)
    other = [k for k in state if k.startswith(DECODER_PREFIXES + CLASSIFIER_ONLY_PREFIXES)]
    return {k: v for k, v in state.items() if k not in other}, dropped + other


def _check_pos_kind(model: nn.Module, config: Optional[Mapping[str, Any]], source: str | Path) -> None:
    """Fixed sin-cos tables are not stored with the weights: a run pretrained with one kind and finetuned
    with the other would pair every weight with the wrong positions, silently. Refuse it."""
    ours = getattr(model, "pos_embed_kind", None)
    model_cfg = config.get("model") if isinstance(config, Mapping) else None
    theirs = model_cfg.get("pos_embed") if isinstance(model_cfg, Mapping) else None
    if ours and isinstance(theirs, str) and theirs != ours:
        raise CheckpointError(f"{source} was pretrained with model.pos_embed={theirs}, this model uses "
                              f"{ours}; set model.pos_embed={theirs}")


# -- into a model ---------------------------------------------------------------------------------------

# what a load is for -> what it loads into and how strict it is (see ``load_into``)
PURPOSES = ("finetune", "finetune_with_head", "evaluate", "frozen_encoder", "continue_pretraining")


def load_into(model: nn.Module, source: str | Path, purpose: str,
              log: Optional[Callable[[str], None]] = None) -> LoadReport:
    """Load the weights of ``source`` (any source ``read_weights`` accepts) into ``model`` for ``purpose``:

    - ``finetune``: ``model`` is a ``VideoClassifier``; the encoder is taken, decoders, the pretraining norm
      and the head are dropped, what does not fit is reported (missing/unexpected/mismatched), not raised;
      a source of which nothing fits is an error.
    - ``finetune_with_head``: as ``finetune``, and a head of the model's shape is kept.
    - ``evaluate``: ``model`` (a classifier or a ``LinearProbe``) must come out whole: a run's own names load as
      they are, any other source through the ``finetune_with_head`` rules, and must fill every tensor.
    - ``frozen_encoder``: ``model`` is a ``VisionTransformerEncoder`` with its final norm; every tensor of the
      source must fit it exactly; a source without the norm (a finetuned classifier) leaves a fresh one.
    - ``continue_pretraining``: as ``frozen_encoder``, into ``model.encoder`` of a pretraining model.

    Raises ``CheckpointError`` for a source that cannot be read, ``WeightsDoNotFitError`` for one whose weights
    do not fill the model as the purpose asks.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose={purpose!r} is not one of {', '.join(PURPOSES)}")
    raw, info = read_weights(source)
    require_kind_for(source, kind_of_config(info.get("config")), purpose)
    if purpose in ("frozen_encoder", "continue_pretraining"):
        report = _load_encoder(model.encoder if purpose == "continue_pretraining" else model, raw, info, source)
    elif purpose == "evaluate":
        report = _load_whole_classifier(model, raw, info, source)
    else:
        report = _load_classifier(model, raw, info, source, keep_head=purpose == "finetune_with_head")
        if not report.loaded:
            raise WeightsDoNotFitError(f"{source}: no weight matched the model\n{report.summary()}")
    if log is not None:
        log(report.summary())
    return report


def _load_classifier(model: nn.Module, raw: Mapping[str, torch.Tensor], info: dict[str, Any], source: str | Path,
                     keep_head: bool) -> LoadReport:
    """Encoder weights (and, with ``keep_head``, a fitting head) into a ``VideoClassifier`` (names
    ``patch_embed``, ``blocks.{i}``, ``fc_norm``, ``head``)."""
    _check_pos_kind(model, info["config"], source)
    state, dropped = normalise_names(raw)
    report = LoadReport(source=str(source), dropped=dropped, weights=info.get("weights", info["kind"]),
                        notes=[f"weights: {info['weights']}"] if info.get("weights") else [])
    own = model.state_dict()
    usable: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name == "pos_embed":
            load_learned_pos(model, value, info["config"], report)
            continue
        if name.startswith(DECODER_PREFIXES) or (not keep_head and name.startswith(HEAD_PREFIXES)):
            report.dropped.append(name)
            continue
        if name.startswith("norm.") and name not in own:
            report.dropped.append(name)  # the pretraining encoder's final norm; fc_norm replaces it
            continue
        if name not in own:
            report.unexpected.append(name)
            continue
        if tuple(value.shape) != tuple(own[name].shape):
            if keep_head and name.startswith(HEAD_PREFIXES):
                report.dropped.append(name)
                report.notes.append(f"{name}: {tuple(value.shape)} does not fit {tuple(own[name].shape)}; "
                                    f"head left at its fresh init")
            else:
                report.mismatched.append(f"{name} {tuple(value.shape)} vs model {tuple(own[name].shape)}")
            continue
        usable[name] = value
    result = model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable) + report.loaded  # + a learned pos_embed, if any
    fresh = CLASSIFIER_ONLY_PREFIXES if not keep_head else ()
    report.missing = [k for k in result.missing_keys if not k.startswith(fresh) and k != "pos_embed"]
    new_parts = sorted({k.split(".")[0] for k in result.missing_keys if k.startswith(fresh)})
    if new_parts:
        report.notes.append(f"freshly initialised: {', '.join(new_parts)}")
    return report


def _load_whole_classifier(model: nn.Module, raw: Mapping[str, torch.Tensor], info: dict[str, Any],
                           source: str | Path) -> LoadReport:
    """A finetune run's weights under the model's own names (``LinearProbe`` included) as they are; any other
    classifier checkpoint through the finetuning rules, head kept. Anything left unfilled is an error."""
    own = model.state_dict()
    # a probe does not use its classifier's fc_norm (an untrained frozen layer): a probe checkpoint leaves it out
    unused = tuple(f"backbone.{k}" for k in CLASSIFIER_ONLY_PREFIXES if k != "head.") if isinstance(
        model, (LinearProbe, AttentiveProbe)) else ()
    if {k for k in own if not k.startswith(unused)} <= set(raw):
        result = model.load_state_dict({k: raw[k] for k in own if k in raw}, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(unused)]
        if missing:
            raise WeightsDoNotFitError(f"{source}: missing {', '.join(missing)}")
        # a table a finetune run loaded into a fixed-table buffer (a learned pos_embed) is saved with its
        # weights; the model's own buffer is not part of its state dict, so it is filled here by name
        tables = {name: buf for name, buf in model.named_buffers() if name not in own and name in raw}
        for name, buf in tables.items():
            if tuple(raw[name].shape) != tuple(buf.shape):
                raise WeightsDoNotFitError(f"{source}: {name} has shape {tuple(raw[name].shape)}, the model "
                                           f"{tuple(buf.shape)}")
            with torch.no_grad():
                buf.copy_(raw[name].to(buf.dtype))
        return LoadReport(source=str(source), loaded=sorted(k for k in own if k in raw) + sorted(tables), whole=True,
                          weights=info.get("weights", info["kind"]))
    if isinstance(model, (LinearProbe, AttentiveProbe)):  # a probe's own layers are not in a classifier's names
        raise WeightsDoNotFitError(f"{source}: not a {type(model).__name__} checkpoint (no probe/backbone names)")
    report = _load_classifier(model, raw, info, source, keep_head=True)
    if report.missing or report.mismatched or any(n.startswith(HEAD_PREFIXES) for n in report.dropped):
        raise WeightsDoNotFitError(f"{source}: does not hold a complete classifier\n{report.summary()}")
    return report


# -- an encoder ---------------------------------------------------------------------------------------

def _load_encoder(encoder: nn.Module, raw: Mapping[str, torch.Tensor], info: dict[str, Any],
                  source: str | Path) -> LoadReport:
    """Shapes must match exactly; anything in the source with no place in the encoder is an error, and so is
    a missing tensor other than the final ``norm`` (a finetuned classifier has none: the fresh one stays)."""
    _check_pos_kind(encoder, info["config"], source)
    state, dropped = encoder_weights(raw)
    where = info["where"]
    own = encoder.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    if unexpected:
        raise WeightsDoNotFitError(f"{where}: tensors with no place in the encoder: {', '.join(unexpected)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise WeightsDoNotFitError(f"{where}: {k} has shape {tuple(v.shape)}, the encoder {tuple(own[k].shape)}")
    result = encoder.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    missing = list(result.missing_keys)
    if [k for k in missing if not k.startswith("norm.")]:
        raise WeightsDoNotFitError(f"{where}: encoder weights missing: {', '.join(missing)}")
    report = LoadReport(source=str(source), loaded=sorted(state), missing=missing, dropped=dropped,
                        weights=info.get("weights", info["kind"]))
    report.notes += [f"freshly initialised: {', '.join(sorted({k.split('.')[0] for k in missing}))}"] if missing else []
    return report
