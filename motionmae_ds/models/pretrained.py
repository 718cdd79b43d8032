"""Initialise a classifier from pretrained weights, whatever wrote them.

Sources: a pretraining (or finetuning) run directory, a DeepSpeed checkpoint directory (``latest`` + tags,
written by any ZeRO world size) or one tag directory, or a plain ``.pth``/``.pt`` file in our format or
VideoMAE's. State dicts may sit under ``model``/``module``/``state_dict`` and carry ``module.``,
``_orig_mod.``, ``backbone.`` or ``encoder.`` prefixes. Decoder weights, a pretraining encoder's final norm
and (unless asked to keep it) the classification head are dropped on purpose; what is left over is reported
as missing/unexpected, never silently ignored.

Positional tables: ours are fixed sinusoids rebuilt from the token grid, so they are not weights and need
no conversion when frames or resolution change. A *learned* ``pos_embed`` in a checkpoint is resampled
trilinearly over (t, h, w) to the model's grid and copied into the model's table, which is then made part
of the state dict so a finetuned checkpoint keeps it.

Plain PyTorch except for the ZeRO path, which imports ``deepspeed.utils.zero_to_fp32`` only when used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

WRAPPER_KEYS = ("model", "module", "state_dict")
STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.")
# names that belong to pretraining decoders (ours: space/time heads; VideoMAE: decoder, encoder_to_decoder)
DECODER_PREFIXES = ("space_head.", "time_head.", "decoder.", "encoder_to_decoder.", "mask_token", "decoder_")
HEAD_PREFIXES = ("head.",)


class PretrainedLoadError(ValueError):
    """The source cannot be read as weights; the message names the path and what is wrong."""


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines: counts, then every missing/unexpected/mismatched name (these are what users check)."""
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

def _torch_load(path: Path) -> Any:
    try:
        # VideoMAE files pickle their argparse Namespace next to the weights, so weights_only cannot be used
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise PretrainedLoadError(f"{path}: cannot be read as a torch checkpoint ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _resolve_tag_dir(path: Path) -> tuple[Path, Optional[str]]:
    """(DeepSpeed checkpoint dir, tag) for a run dir, a checkpoint dir or a tag dir."""
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if (path / "latest").is_file():
        tag = (path / "latest").read_text().strip()
        if not (path / tag / "mp_rank_00_model_states.pt").is_file():
            raise PretrainedLoadError(f"{path / 'latest'} names tag {tag!r} but {path / tag} holds no "
                                      f"mp_rank_00_model_states.pt")
        return path, tag
    if (path / "mp_rank_00_model_states.pt").is_file():
        return path.parent, path.name
    raise PretrainedLoadError(f"{path}: not a run directory, DeepSpeed checkpoint directory (no 'latest') "
                              f"or checkpoint tag directory (no mp_rank_00_model_states.pt)")


def _run_config(path: Path) -> Optional[dict[str, Any]]:
    """The run's resolved config.yaml next to its checkpoints, if any (for the source token grid)."""
    import yaml

    for candidate in (path / "config.yaml", path.parent / "config.yaml", path.parent.parent / "config.yaml"):
        if candidate.is_file():
            try:
                data = yaml.safe_load(candidate.read_text())
            except yaml.YAMLError:
                return None
            return data if isinstance(data, dict) else None
    return None


def read_checkpoint(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(raw state dict, info) from any supported source; info has ``kind`` and maybe ``config``.

    DeepSpeed directories give the exact fp32 master weights when the ZeRO optimizer shards are there (any
    world size), else the (bf16) module weights of ``mp_rank_00_model_states.pt``, cast to fp32.
    """
    path = Path(source)
    if not path.exists():
        raise PretrainedLoadError(f"{path}: no such file or directory")
    if path.is_file():
        return unwrap_state_dict(_torch_load(path), str(path)), {"kind": "file", "config": None}
    if (path / "config.json").is_file():  # a Hugging Face VideoMAE directory
        from motionmae_ds.tools.hf_interop import HFInteropError, load_hf_videomae

        try:
            state, kwargs = load_hf_videomae(path)
        except HFInteropError as exc:
            raise PretrainedLoadError(str(exc)) from None
        return state, {"kind": "hf", "config": None, "model_kwargs": kwargs}
    ckpt_dir, tag = _resolve_tag_dir(path)
    info: dict[str, Any] = {"kind": "deepspeed", "config": _run_config(ckpt_dir), "tag": tag}
    has_zero_shards = any((ckpt_dir / tag).glob("*optim_states.pt"))
    if has_zero_shards:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
            info["weights"] = "fp32 master (ZeRO shards)"
            return {k: v for k, v in state.items()}, info
        except Exception as exc:  # e.g. stage-0 files; the module copy below still holds every weight
            info["zero_error"] = f"{type(exc).__name__}: {exc}"
    states = _torch_load(ckpt_dir / tag / "mp_rank_00_model_states.pt")
    info["weights"] = "module (mp_rank_00_model_states.pt)"
    if info["config"] is None and isinstance(states, dict) and isinstance(states.get("config"), dict):
        info["config"] = states["config"]
    state = unwrap_state_dict(states, str(ckpt_dir / tag))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, info


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
    raise PretrainedLoadError(f"{where}: no state dict found (expected a name -> tensor mapping, possibly "
                              f"under one of {', '.join(WRAPPER_KEYS)})")


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
    if any(k.startswith("encoder.") for k in out):
        # a pretraining model: the encoder is ours, everything beside it belongs to the decoders
        dropped = [k for k in out if not k.startswith("encoder.")]
        out = {k[len("encoder."):]: v for k, v in out.items() if k.startswith("encoder.")}
    return out, dropped


def _grid_from_config(config: Optional[Mapping[str, Any]]) -> Optional[tuple[int, int, int]]:
    model = (config or {}).get("model") if isinstance(config, Mapping) else None
    try:
        return (model["num_frames"] // model["tubelet_size"], model["img_size"] // model["patch_size"],
                model["img_size"] // model["patch_size"])
    except (TypeError, KeyError):
        return None


def _guess_grid(num_tokens: int, target: tuple[int, int, int]) -> tuple[int, int, int]:
    """Source grid of a bare learned table: same temporal length as the model if that gives a square, else the
    model's spatial size."""
    t, h, w = target
    if num_tokens % t == 0 and math.isqrt(num_tokens // t) ** 2 == num_tokens // t:
        side = math.isqrt(num_tokens // t)
        return t, side, side
    if num_tokens % (h * w) == 0:
        return num_tokens // (h * w), h, w
    raise PretrainedLoadError(f"learned pos_embed with {num_tokens} tokens fits no grid near the model's {target}")


def resample_pos_embed(table: torch.Tensor, src_grid: tuple[int, int, int], dst_grid: tuple[int, int, int]
                       ) -> torch.Tensor:
    """(1, t*h*w, D) table on ``src_grid`` -> (1, t'*h'*w', D) on ``dst_grid`` by trilinear resampling."""
    if tuple(src_grid) == tuple(dst_grid):
        return table
    d = table.shape[-1]
    vol = table.reshape(1, *src_grid, d).permute(0, 4, 1, 2, 3).float()
    vol = F.interpolate(vol, size=tuple(dst_grid), mode="trilinear", align_corners=False)
    return vol.permute(0, 2, 3, 4, 1).reshape(1, -1, d).to(table.dtype)


# -- loading ----------------------------------------------------------------------------------------------

def _check_pos_kind(model: nn.Module, config: Optional[dict], source: str | Path) -> None:
    """Fixed sin-cos tables are not stored with the weights: a run pretrained with one kind and finetuned
    with the other would pair every weight with the wrong positions, silently. Refuse it."""
    ours = getattr(model, "pos_embed_kind", None)
    model_cfg = config.get("model") if isinstance(config, dict) else None
    theirs = model_cfg.get("pos_embed") if isinstance(model_cfg, dict) else None
    if ours and isinstance(theirs, str) and theirs != ours:
        raise PretrainedLoadError(f"{source} was pretrained with model.pos_embed={theirs}, this model uses "
                                  f"{ours}; set model.pos_embed={theirs}")


def load_pretrained(model: nn.Module, source: str | Path, keep_head: bool = False,
                    log: Optional[Callable[[str], None]] = None) -> LoadReport:
    """Load encoder weights (and, with ``keep_head``, a fitting head) from ``source`` into ``model``.

    ``model`` is a ``VideoClassifier`` (names ``patch_embed``, ``blocks.{i}``, ``fc_norm``, ``head``).
    """
    raw, info = read_checkpoint(source)
    _check_pos_kind(model, info.get("config"), source)
    state, dropped = normalise_names(raw)
    report = LoadReport(source=str(source), dropped=dropped)
    if info.get("weights"):
        report.notes.append(f"weights: {info['weights']}")
    own = model.state_dict()
    usable: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name == "pos_embed":
            _load_learned_pos(model, value, info.get("config"), report)
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
    fresh = ("head.", "fc_norm.") if not keep_head else ()
    report.missing = [k for k in result.missing_keys if not k.startswith(fresh) and k != "pos_embed"]
    new_parts = sorted({k.split(".")[0] for k in result.missing_keys if k.startswith(fresh)})
    if new_parts:
        report.notes.append(f"freshly initialised: {', '.join(new_parts)}")
    if log is not None:
        log(report.summary())
    return report


def _load_learned_pos(model: nn.Module, table: torch.Tensor, config: Optional[Mapping[str, Any]],
                      report: LoadReport) -> None:
    dst = tuple(model.grid)
    if table.dim() == 2:
        table = table[None]
    src = _grid_from_config(config)
    if src is None or src[0] * src[1] * src[2] != table.shape[1]:
        src = _guess_grid(table.shape[1], dst)
    if table.shape[-1] != model.pos_embed.shape[-1]:
        report.mismatched.append(f"pos_embed {tuple(table.shape)} vs model {tuple(model.pos_embed.shape)}")
        return
    resampled = resample_pos_embed(table, src, dst)
    with torch.no_grad():
        model.pos_embed.copy_(resampled.to(model.pos_embed.dtype))
    # keep the learned table in this model's checkpoints (the sinusoid default is rebuilt, not stored)
    model._non_persistent_buffers_set.discard("pos_embed")
    report.loaded.append("pos_embed")
    how = "copied" if src == dst else f"resampled from grid {src} to {dst}"
    report.notes.append(f"learned pos_embed {how} into the model's table")
