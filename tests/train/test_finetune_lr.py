"""Layer-wise lr decay under ZeRO-2 + bf16: after engine.step() every parameter moved by exactly its layer's
lr, base x 0.75 ** (depth + 1 - layer id) (block i: 0.75 ** (depth - i)), checked on the fp32 master weights."""
import os
import subprocess
import textwrap
from pathlib import Path

import torch

from motionmae_ds.builders import build_finetune_model
from motionmae_ds.config import FinetuneConfig
from motionmae_ds.models.classifier import LinearProbe
from motionmae_ds.train.optim import finetune_param_groups as build_param_groups

REPO = Path(__file__).resolve().parents[2]
DEPTH = 3


def _cfg(**model):
    cfg = FinetuneConfig()
    cfg.model.name, cfg.model.num_classes, cfg.model.num_frames, cfg.model.img_size = "vit_tiny", 4, 4, 32
    cfg.model.depth, cfg.model.embed_dim, cfg.model.num_heads = DEPTH, 48, 3
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def test_groups_scales_and_no_weight_decay():
    cfg = _cfg()
    model = build_finetune_model(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for g in build_param_groups(model, cfg):
        for p in g["params"]:
            name = names[id(p)]
            seen.add(name)
            layer = model.layer_id(name)
            assert g["lr_scale"] == 0.75 ** (DEPTH + 1 - layer), name
            no_decay = p.ndim <= 1 or name.endswith((".bias", "q_bias", "v_bias"))
            assert g["weight_decay"] == (0.0 if no_decay else cfg.optim.weight_decay), name
            assert g["wd_scale"] == (0.0 if no_decay else 1.0), name
    assert seen == {n for n, _ in model.named_parameters()}
    assert model.layer_id("blocks.2.mlp.fc1.weight") == 3 and model.layer_id("patch_embed.proj.weight") == 0


def test_linear_probe_trains_only_the_head():
    cfg = _cfg()
    cfg.finetune.probe = "linear"
    cfg.finetune.init = "x"
    probe = build_finetune_model(cfg)
    assert isinstance(probe, LinearProbe)
    trainable = sorted(n for n, p in probe.named_parameters() if p.requires_grad)
    assert trainable == ["backbone.head.bias", "backbone.head.weight"]
    assert [len(g["params"]) for g in build_param_groups(probe, cfg)] == [1, 1]
    probe.train()
    assert probe.training and not probe.backbone.training and probe.probe_norm.training
    assert not probe.probe_norm.affine
    x = torch.randn(4, 3, 4, 32, 32)
    probe(x).sum().backward()
    assert probe.backbone.head.weight.grad is not None
    assert probe.backbone.blocks[0].mlp.fc1.weight.grad is None


_SCRIPT = textwrap.dedent("""
    import json, os, sys, torch, deepspeed
    from deepspeed.utils import safe_get_full_fp32_param
    from motionmae_ds.runtime import distributed as dist_utils
    from motionmae_ds.runtime.ds_config import fill_batch, load_ds_config
    from motionmae_ds.builders import build_finetune_model
    from motionmae_ds.train.optim import finetune_param_groups as build_param_groups
    from motionmae_ds.builders import build_adamw
    from motionmae_ds.train.optim import set_lr_wd
    sys.path.insert(0, {here!r})
    from test_finetune_lr import _cfg
    dist_utils.init_distributed()
    cfg = _cfg(drop_path_rate=0.0)
    torch.manual_seed(0)
    model = build_finetune_model(cfg)
    opt = build_adamw(build_param_groups(model, cfg), 1.0, (0.9, 0.999), 1e-8)
    ds = fill_batch(load_ds_config({ds!r}), 2, 1, dist_utils.world_size())
    ds["gradient_clipping"] = 0.0  # clipping would rescale the gradients, not the step size
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    set_lr_wd(engine.optimizer, {lr}, {wd})
    before = {{n: safe_get_full_fp32_param(p).clone() for n, p in engine.module.named_parameters()}}
    torch.manual_seed(10 + dist_utils.rank())
    logits = engine(torch.randn(2, 3, 4, 32, 32))
    engine.backward((logits.float() * torch.randn_like(logits.float())).sum() * 100)
    engine.step()
    after = {{n: safe_get_full_fp32_param(p).clone() for n, p in engine.module.named_parameters()}}
    groups = [dict(lr=g["lr"], lr_scale=g["lr_scale"], weight_decay=g["weight_decay"])
              for g in engine.optimizer.param_groups]
    if dist_utils.rank() == 0:
        torch.save(dict(before=before, after=after, groups=groups,
                        layers={{n: model.layer_id(n) for n in before}}), {out!r})
    dist_utils.barrier()
    os._exit(0)  # as the entry points leave (runtime/cli.py): no teardown of the live process group
""")


def test_effective_lr_per_layer_after_zero2_step(tmp_path):
    # imported here: the launched script imports this module for _cfg, without the repo root on its path
    from tests.helpers import free_port

    lr, wd = 1e-3, 0.05
    out = tmp_path / "result.pt"
    script = tmp_path / "lr_step.py"
    script.write_text(_SCRIPT.format(here=str(Path(__file__).parent), lr=lr, wd=wd,
                                     ds=str(REPO / "ds_configs" / "zero2.json"), out=str(out)))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), str(script)], env=env,
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = torch.load(out)

    # the optimizer's groups carry lr = base x scale, one scale per layer id
    scales = {0.75 ** (DEPTH + 1 - layer) for layer in range(DEPTH + 2)}
    assert {round(g["lr_scale"], 12) for g in res["groups"]} == {round(s, 12) for s in scales}
    for g in res["groups"]:
        assert abs(g["lr"] - lr * g["lr_scale"]) < 1e-15

    # first AdamW step: p1 = p0 (1 - lr_eff wd_eff) - lr_eff g / (|g| + eps), so |Adam part| <= lr_eff and the
    # largest is lr_eff to ~1e-5 for gradients far above eps
    for name, p0 in res["before"].items():
        layer = res["layers"][name]
        lr_eff = lr * 0.75 ** (DEPTH + 1 - layer)
        no_decay = p0.ndim <= 1 or name.endswith(".bias")
        adam = res["after"][name] - p0 * (1 - lr_eff * (0.0 if no_decay else wd))
        biggest = adam.abs().max().item()
        rounding = 2 * torch.finfo(torch.float32).eps * p0.abs().max().item()  # fp32 spacing near the weights
        assert biggest <= lr_eff * (1 + 1e-5) + rounding, (name, biggest, lr_eff)
        assert biggest >= lr_eff * (1 - 1e-3) - rounding, (name, biggest, lr_eff)
        # and not the neighbouring layer's lr (a factor 0.75 away)
        assert abs(biggest - lr_eff) < 0.05 * lr_eff, (name, biggest, lr_eff)
