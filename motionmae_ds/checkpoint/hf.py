"""Hugging Face transformers VideoMAE <-> our weights, both directions, without importing transformers:
the name mapping, ``config.json``, and reading/writing an HF model directory.

Our encoder names are VideoMAE's finetune names (``patch_embed.proj``, ``blocks.{i}``, optional ``norm``;
a classifier adds ``fc_norm`` and ``head``). HF splits our fused ``qkv`` into ``query``/``key``/``value``
weights without biases and keeps the biases as ``attention.attention.q_bias``/``v_bias``, exactly our
layout, so the mapping is lossless. Those bias names are what transformers 4.x holds and what 5.x writes
to disk (it renames them to ``query.bias``/``value.bias`` in memory); we write them and read both.

Pooling and final norms, the part that decides whether outputs match:
- our pretraining encoder ends in ``norm``; HF's ``VideoMAEModel`` applies its ``layernorm`` only when
  ``use_mean_pooling`` is False, so such an export sets it False and ``layernorm`` = our ``norm``;
- our classifier has no final norm but mean-pools and applies ``fc_norm``: HF's classifier does the same
  when ``use_mean_pooling`` is True (its ``fc_norm`` uses LayerNorm's default eps 1e-5 where ours uses
  1e-6, a relative difference of order 1e-6 in the logits).
HF only builds the 1-D sinusoid table, so ``sincos_3d`` models and learned ``pos_embed`` tables are refused.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from motionmae_ds.checkpoint.layout import DECODER_PREFIXES, CheckpointError
from motionmae_ds.models.registry import MODEL_SIZES, resolve_size
from motionmae_ds.models.vit import LAYER_NORM_EPS

HF_CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
HF_PREFIX = "videomae."
# (ours inside blocks.{i}., HF inside encoder.layer.{i}.), each with .weight and .bias
_BLOCK_PAIRS = (("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"),
                ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"))
_ATT = "attention.attention."


def _depth(state: Mapping[str, torch.Tensor], prefix: str, where: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    if not ids or ids != set(range(len(ids))):
        raise CheckpointError(f"{where}: expected {prefix}0..N-1, found block indices {sorted(ids)}")
    return len(ids)


def _take(state: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{where}: missing tensor {key!r}")
    return state.pop(key)


def blocks_to_hf(src: dict[str, torch.Tensor], ours_prefix: str, hf_prefix: str, out: dict[str, torch.Tensor],
                 where: str, module_names: bool = False) -> None:
    """Move the transformer blocks ``{ours_prefix}{i}.*`` of ``src`` into ``out`` as HF's ``{hf_prefix}{i}.*``
    (the fused ``qkv`` split into query/key/value; see ``ours_to_hf`` for ``module_names``)."""
    for i in range(_depth(src, ours_prefix, where)):
        ours, hf = f"{ours_prefix}{i}.", f"{hf_prefix}{i}."
        q, k, v = _take(src, ours + "attn.qkv.weight", where).chunk(3)
        q_name, v_name = ("query.bias", "value.bias") if module_names else ("q_bias", "v_bias")
        out.update({hf + _ATT + "query.weight": q, hf + _ATT + "key.weight": k, hf + _ATT + "value.weight": v,
                    hf + _ATT + q_name: _take(src, ours + "attn.q_bias", where),
                    hf + _ATT + v_name: _take(src, ours + "attn.v_bias", where)})
        for mine, theirs in _BLOCK_PAIRS:
            for part in ("weight", "bias"):
                out[f"{hf}{theirs}.{part}"] = _take(src, f"{ours}{mine}.{part}", where)


def blocks_from_hf(src: dict[str, torch.Tensor], hf_prefix: str, ours_prefix: str, out: dict[str, torch.Tensor],
                   where: str) -> None:
    """The inverse of ``blocks_to_hf``: HF's ``{hf_prefix}{i}.*`` popped from ``src`` into ``out`` as ours."""
    for i in range(_depth(src, hf_prefix, where)):
        hf, ours = f"{hf_prefix}{i}.{_ATT}", f"{ours_prefix}{i}."
        q, k, v = (_take(src, f"{hf}{n}.weight", where) for n in ("query", "key", "value"))
        out[ours + "attn.qkv.weight"] = torch.cat([q, k, v])
        for mine, on_disk, in_memory in (("q_bias", "q_bias", "query.bias"), ("v_bias", "v_bias", "value.bias")):
            bias = src.pop(hf + on_disk, None)
            bias = src.pop(hf + in_memory, None) if bias is None else bias
            # qv_bias=False checkpoints: zero biases compute the same function
            out[ours + "attn." + mine] = bias if bias is not None else q.new_zeros(q.shape[0])
        if (hf + "key.bias") in src:
            raise CheckpointError(f"{where}: {hf}key.bias exists; our attention has no key bias")
        for mine, theirs in _BLOCK_PAIRS:
            for part in ("weight", "bias"):
                out[f"{ours}{mine}.{part}"] = _take(src, f"{hf_prefix}{i}.{theirs}.{part}", where)


def ours_to_hf(state: Mapping[str, torch.Tensor], where: str = "state dict", module_names: bool = False
               ) -> dict[str, torch.Tensor]:
    """Encoder names (+ ``norm``) -> ``VideoMAEModel`` names; classifier names -> ``VideoMAEForVideoClassification``.

    File names (``q_bias``/``v_bias``) by default; ``module_names`` gives transformers 5's in-memory
    ``query.bias``/``value.bias`` for a direct ``load_state_dict`` into its modules. Every input tensor must be
    used: a leftover (a learned ``pos_embed``, decoder weights) is an error."""
    src = dict(state)
    classifier = "head.weight" in src
    pre = HF_PREFIX if classifier else ""
    out: dict[str, torch.Tensor] = {}
    for part in ("weight", "bias"):
        out[f"{pre}embeddings.patch_embeddings.projection.{part}"] = _take(src, f"patch_embed.proj.{part}", where)
    blocks_to_hf(src, "blocks.", f"{pre}encoder.layer.", out, where, module_names)
    if "norm.weight" in src:
        if classifier:
            raise CheckpointError(f"{where}: a classifier with a final 'norm' has no HF VideoMAE counterpart")
        for part in ("weight", "bias"):
            out[f"layernorm.{part}"] = _take(src, f"norm.{part}", where)
    if classifier:
        for mine, theirs in (("fc_norm", "fc_norm"), ("head", "classifier")):
            for part in ("weight", "bias"):
                out[f"{theirs}.{part}"] = _take(src, f"{mine}.{part}", where)
    if "pos_embed" in src:
        raise CheckpointError(f"{where}: a learned pos_embed cannot be exported; HF VideoMAE always uses the fixed "
                              f"1-D sinusoid table")
    if src:
        raise CheckpointError(f"{where}: tensors with no HF VideoMAE counterpart: {', '.join(sorted(src))}")
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def hf_to_ours(state: Mapping[str, torch.Tensor], where: str = "HF state dict"
               ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF VideoMAE names (with or without ``videomae.``) -> ours. Returns (state, dropped HF decoder names)."""
    src, dropped = {}, []
    for k, v in state.items():
        name = k[len(HF_PREFIX):] if k.startswith(HF_PREFIX) else k
        if name.startswith(DECODER_PREFIXES):  # HF's pretraining model carries VideoMAE's decoder
            dropped.append(k)
        else:
            src[name] = v
    out: dict[str, torch.Tensor] = {}
    for part in ("weight", "bias"):
        out[f"patch_embed.proj.{part}"] = _take(src, f"embeddings.patch_embeddings.projection.{part}", where)
    blocks_from_hf(src, "encoder.layer.", "blocks.", out, where)
    for theirs, mine in (("layernorm", "norm"), ("fc_norm", "fc_norm"), ("classifier", "head")):
        if f"{theirs}.weight" in src:
            for part in ("weight", "bias"):
                out[f"{mine}.{part}"] = _take(src, f"{theirs}.{part}", where)
    if src:
        raise CheckpointError(f"{where}: tensors with no counterpart in our models: {', '.join(sorted(src))}")
    return out, dropped


# -- config.json ------------------------------------------------------------------------------------------

def encoder_kwargs(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder-defining subset of ``build_pretrain_model``/``build_classifier`` kwargs, sizes resolved."""
    size = resolve_size(model_kwargs.get("name", "vit_base"), model_kwargs.get("embed_dim"),
                        model_kwargs.get("depth"), model_kwargs.get("num_heads"))
    return {"name": model_kwargs.get("name", "vit_base"), "num_frames": model_kwargs.get("num_frames", 16),
            "img_size": model_kwargs.get("img_size", 224), "patch_size": model_kwargs.get("patch_size", 16),
            "tubelet_size": model_kwargs.get("tubelet_size", 2), "in_chans": model_kwargs.get("in_chans", 3),
            "embed_dim": size.embed_dim, "depth": size.depth, "num_heads": size.num_heads,
            "pos_embed": model_kwargs.get("pos_embed", "sincos_1d")}


def hf_config(model_kwargs: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """config.json for the weights ``state`` (our names) of a model built with ``model_kwargs``."""
    kw = encoder_kwargs(model_kwargs)
    if kw["pos_embed"] != "sincos_1d":
        raise CheckpointError(f"pos_embed={kw['pos_embed']!r}: HF VideoMAE only has the 1-D sinusoid table "
                              f"(sincos_1d); this model cannot be exported")
    classifier = "head.weight" in state
    if tuple(state["patch_embed.proj.weight"].shape[:1]) != (kw["embed_dim"],) or \
            sum(1 for k in state if k.endswith("attn.qkv.weight")) != kw["depth"]:
        raise CheckpointError(f"model kwargs (embed_dim={kw['embed_dim']}, depth={kw['depth']}) do not match the "
                              f"weights (patch_embed.proj.weight {tuple(state['patch_embed.proj.weight'].shape)})")
    cfg: dict[str, Any] = {
        "architectures": ["VideoMAEForVideoClassification" if classifier else "VideoMAEModel"],
        "model_type": "videomae", "image_size": kw["img_size"], "patch_size": kw["patch_size"],
        "num_channels": kw["in_chans"], "num_frames": kw["num_frames"], "tubelet_size": kw["tubelet_size"],
        "hidden_size": kw["embed_dim"], "num_hidden_layers": kw["depth"], "num_attention_heads": kw["num_heads"],
        "intermediate_size": 4 * kw["embed_dim"], "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "layer_norm_eps": LAYER_NORM_EPS,
        # transformers >= 5 reads qv_bias, older releases qkv_bias
        "qv_bias": True, "qkv_bias": True,
        # only a model without a final norm pools by mean (see the module docstring)
        "use_mean_pooling": "norm.weight" not in state, "torch_dtype": "float32",
        # ignored by transformers; brings our registry name back on import
        "motionmae_model_name": kw["name"],
    }
    if classifier:
        n = state["head.weight"].shape[0]
        cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
        cfg["label2id"] = {f"LABEL_{i}": i for i in range(n)}
    return cfg


def kwargs_from_hf_config(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Our model kwargs (``build_classifier``/``build_pretrain_model`` subset) for an HF VideoMAE config."""
    if cfg.get("model_type") != "videomae":
        raise CheckpointError(f"{where}: model_type={cfg.get('model_type')!r}, expected 'videomae'")
    try:
        img, patch = cfg.get("image_size", 224), cfg.get("patch_size", 16)
        img = img if isinstance(img, int) else (img[0] if len(set(img)) == 1 else None)
        patch = patch if isinstance(patch, int) else (patch[0] if len(set(patch)) == 1 else None)
        if img is None or patch is None:
            raise CheckpointError(f"{where}: non-square image_size/patch_size are not supported")
        dim, depth, heads = cfg.get("hidden_size", 768), cfg.get("num_hidden_layers", 12), \
            cfg.get("num_attention_heads", 12)
    except TypeError:
        raise CheckpointError(f"{where}: image_size/patch_size must be integers or pairs") from None
    if cfg.get("intermediate_size", 3072) != 4 * dim:
        raise CheckpointError(f"{where}: intermediate_size={cfg.get('intermediate_size')} is not 4 x "
                              f"hidden_size={dim}; our blocks use an MLP ratio of 4")
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{where}: hidden_act={cfg.get('hidden_act')!r}; our blocks use exact GELU")
    name = cfg.get("motionmae_model_name")
    if name not in MODEL_SIZES:
        name = next((n for n, s in MODEL_SIZES.items() if (s.embed_dim, s.depth, s.num_heads) == (dim, depth, heads)),
                    "vit_base")
    return {"name": name, "num_frames": cfg.get("num_frames", 16), "img_size": img, "patch_size": patch,
            "tubelet_size": cfg.get("tubelet_size", 2), "in_chans": cfg.get("num_channels", 3), "embed_dim": dim,
            "depth": depth, "num_heads": heads, "pos_embed": "sincos_1d"}


# -- directories ------------------------------------------------------------------------------------------

def save_hf_videomae(out_dir: str | Path, state: Mapping[str, torch.Tensor], model_kwargs: Mapping[str, Any],
                     force: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` for ``transformers`` ``from_pretrained``; atomic (a temp
    directory renamed at the end)."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    config = hf_config(model_kwargs, state)
    tensors = ours_to_hf(state)
    with export_directory(out_dir, force) as tmp:
        (tmp / HF_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(tensors, str(tmp / SAFETENSORS), metadata={"format": "pt"})
    return Path(out_dir)


@contextlib.contextmanager
def export_directory(out_dir: str | Path, force: bool = False) -> Iterator[Path]:
    """The export's files go into a temporary directory beside ``out_dir``, which replaces ``out_dir`` only when
    the block ends without an error: a failed or killed export never leaves a half-written directory. An existing
    ``out_dir`` is refused unless ``force``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise CheckpointError(f"{out_dir}: exists (pass --force to replace it)")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_hf_dir(path: str | Path) -> bool:
    return (Path(path) / HF_CONFIG).is_file()


def read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    """One safetensors or torch weight file; a missing or unreadable one is a one-line CheckpointError."""
    if not file.is_file():
        raise CheckpointError(f"{file}: weight file not found")
    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        return torch.load(file, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{file}: cannot be read ({msg})") from None


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights of an HF model directory: one file, or the files of its weight index."""
    for index_name in (SAFETENSORS_INDEX, TORCH_BIN_INDEX):
        if (path / index_name).is_file():
            try:
                files = sorted(set(json.loads((path / index_name).read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise CheckpointError(f"{path / index_name}: not a weight index ({type(exc).__name__})") from None
            out: dict[str, torch.Tensor] = {}
            for f in files:
                out.update(read_weight_file(path / f))
            return out
    for name in (SAFETENSORS, TORCH_BIN):
        if (path / name).is_file():
            return read_weight_file(path / name)
    raise CheckpointError(f"{path}: no {SAFETENSORS}, {TORCH_BIN} or weight index")


def load_hf_videomae(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict in our names, model kwargs) from an HF VideoMAE directory (``VideoMAEModel``,
    ``VideoMAEForPreTraining`` — its decoder is dropped — or ``VideoMAEForVideoClassification``).

    Encoder-only weights use the encoder names (``norm`` when HF applies a final ``layernorm``) and load into
    our pretraining model's encoder or, through the finetuning loader, a classifier; a classifier's weights
    carry ``fc_norm``/``head`` and the kwargs ``num_classes``, ready for ``build_classifier(**kwargs)``."""
    path = Path(path)
    if not path.is_dir() or not is_hf_dir(path):
        raise CheckpointError(f"{path}: not a Hugging Face model directory (no {HF_CONFIG})")
    try:
        cfg = json.loads((path / HF_CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path / HF_CONFIG}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    kwargs = kwargs_from_hf_config(cfg, str(path / HF_CONFIG))
    raw = read_hf_weights(path)
    state, _ = hf_to_ours(raw, str(path))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if "head.weight" in state:
        if not cfg.get("use_mean_pooling", True):
            raise CheckpointError(f"{path / HF_CONFIG}: use_mean_pooling=false classifies the first token; our "
                                  f"classifier mean-pools")
        kwargs["num_classes"] = int(state["head.weight"].shape[0])
    elif cfg.get("use_mean_pooling", True) and "norm.weight" in state:
        # HF ignores a layernorm it does not apply; so do we, to keep outputs identical
        state.pop("norm.weight"), state.pop("norm.bias")
    if state["patch_embed.proj.weight"].shape[0] != kwargs["embed_dim"]:
        raise CheckpointError(f"{path}: hidden_size={kwargs['embed_dim']} in {HF_CONFIG} but the weights have "
                              f"{state['patch_embed.proj.weight'].shape[0]} channels")
    return state, kwargs
