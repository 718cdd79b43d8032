"""Every source kind the weight reader accepts gives the same encoder tensors when it holds the same weights:
a 2-rank ZeRO-2 run seen as run dir, checkpoint dir and tag dir; its exports as our .pth / safetensors and an
HF directory; the same tensors under VideoMAE's pretraining and finetuning names."""
import argparse

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from motionmae_ds.checkpoint import encoder_weights, read_weights
from motionmae_ds.tools.convert import export


@pytest.fixture(scope="module")
def sources(zero2_pretrain, tmp_path_factory):
    tag = (zero2_pretrain / "latest").read_text().strip()
    out = tmp_path_factory.mktemp("sources")
    fp32 = get_fp32_state_dict_from_zero_checkpoint(str(zero2_pretrain), tag=tag)
    encoder = {k[len("encoder."):]: v.clone() for k, v in fp32.items() if k.startswith("encoder.")}
    # VideoMAE's pretraining checkpoint: encoder.* + its decoder beside our weights, args pickled alongside
    videomae_pre = {f"encoder.{k}": v for k, v in encoder.items()}
    videomae_pre.update({"encoder_to_decoder.weight": torch.zeros(24, 48), "mask_token": torch.zeros(1, 1, 24),
                         "decoder.norm.weight": torch.ones(24)})
    torch.save({"model": videomae_pre, "args": argparse.Namespace(lr=1.5e-4), "epoch": 799}, out / "videomae.pth")
    # a VideoMAE-style finetune file saved through DDP: module.* names under "module"
    torch.save({"module": {f"module.{k}": v for k, v in encoder.items()}}, out / "videomae_ft.pth")
    paths = {
        "run dir": (zero2_pretrain.parent, "deepspeed"),
        "checkpoint dir": (zero2_pretrain, "deepspeed"),
        "tag dir": (zero2_pretrain / tag, "deepspeed"),
        "our plain .pth": (export(zero2_pretrain, out / "plain.pth", "plain"), "file"),
        "our encoder .pth": (export(zero2_pretrain, out / "encoder.pth", "encoder"), "file"),
        "our encoder safetensors": (export(zero2_pretrain, out / "enc.safetensors", "encoder", use_safetensors=True),
                                    "file"),
        "VideoMAE pretraining .pth": (out / "videomae.pth", "file"),
        "VideoMAE finetune .pth": (out / "videomae_ft.pth", "file"),
        "HF directory": (export(zero2_pretrain, out / "hf", "hf"), "hf"),
    }
    return encoder, paths


@pytest.mark.parametrize("name", ["run dir", "checkpoint dir", "tag dir", "our plain .pth", "our encoder .pth",
                                  "our encoder safetensors", "VideoMAE pretraining .pth", "VideoMAE finetune .pth",
                                  "HF directory"])
def test_every_source_gives_the_same_encoder(sources, name):
    reference, paths = sources
    path, kind = paths[name]
    state, info = read_weights(path)
    assert info["kind"] == kind
    encoder, _ = encoder_weights(state)
    assert sorted(encoder) == sorted(reference)
    for k, v in reference.items():
        assert encoder[k].dtype == torch.float32 and torch.equal(encoder[k], v), k
    if kind == "deepspeed":
        assert info["weights"] == "fp32 master (ZeRO shards)" and info["model_kwargs"]["embed_dim"] == 48
    if name in ("our encoder safetensors", "HF directory"):  # they carry the model config along
        assert info["model_kwargs"]["pos_embed"] == "sincos_1d"
