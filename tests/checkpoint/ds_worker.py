"""Run by the tests under the real `deepspeed` launcher: train a tiny MotionMAE a few steps with the engine's
own pieces (model, param groups, AdamW, ds_config batch filling, atomic checkpoint save) and save a ZeRO-2
checkpoint; or load the latest checkpoint (universal or not, ZeRO-2 or ZeRO-3 by --deepspeed_config) and dump
every parameter's gathered fp32 master and Adam moments. Independent of the data pipeline, so the checkpoint
tests only need models + engine + DeepSpeed.

    deepspeed --num_gpus 2 tests/checkpoint/ds_worker.py save --config C --ckpt_dir D --steps 3 [--classifier]
    deepspeed --num_gpus 1 tests/checkpoint/ds_worker.py dump --config C --ckpt_dir D --out state.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from motionmae_ds import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]


CLASSIFIER_CLASSES = 5


def classifier_kwargs(cfg) -> dict:
    """The finetuning config's model section for the same encoder (what a finetune run records)."""
    m = cfg.model
    return {"name": m.name, "num_classes": CLASSIFIER_CLASSES, "num_frames": m.num_frames, "img_size": m.img_size,
            "patch_size": m.patch_size, "tubelet_size": m.tubelet_size, "embed_dim": m.embed_dim, "depth": m.depth,
            "num_heads": m.num_heads, "pos_embed": m.pos_embed, "drop_path_rate": 0.0, "head_dropout": 0.0,
            "init_scale": 1.0, "grad_checkpointing": False}


def build(args: argparse.Namespace, prepare_resume: bool):
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    from motionmae_ds.builders import build_adamw, build_masker, build_model
    from motionmae_ds.config import batch_layout, load_pretrain_config
    from motionmae_ds.runtime import distributed as dist_utils
    from motionmae_ds.runtime.ds_config import fill_batch, load_ds_config
    from motionmae_ds.train.optim import param_groups

    cfg = load_pretrain_config(args.config)
    dist_utils.init_distributed()
    world = dist_utils.world_size()
    micro, accum, _ = batch_layout(cfg, world)
    ds_config = fill_batch(load_ds_config(args.deepspeed_config), micro, accum, world)
    if prepare_resume:
        ds_config = ckpt.prepare_resume(args.ckpt_dir, ds_config)
    torch.manual_seed(cfg.run.seed)
    if getattr(args, "classifier", False):
        from motionmae_ds.models import build_classifier

        model = build_classifier(**classifier_kwargs(cfg))
    else:
        model = build_model(cfg)
    optimizer = build_adamw(param_groups(model, cfg.optim.weight_decay), cfg.optim.base_lr, cfg.optim.betas,
                            cfg.optim.eps)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    masker = build_masker(cfg, tuple(model.grid))
    return cfg, engine, masker, micro, get_accelerator().device_name()


def save(args: argparse.Namespace) -> None:
    from motionmae_ds.runtime import distributed as dist_utils

    cfg, engine, masker, micro, _ = build(args, prepare_resume=False)
    rank, world = dist_utils.rank(), dist_utils.world_size()
    m = cfg.model
    for step in range(args.steps):
        gen = torch.Generator().manual_seed(1000 * step + rank)
        videos = torch.randn(micro, 3, m.num_frames, m.img_size, m.img_size, generator=gen).to(engine.device)
        if args.classifier:
            labels = torch.randint(0, CLASSIFIER_CLASSES, (micro,), generator=gen).to(engine.device)
            loss = torch.nn.functional.cross_entropy(engine(videos).float(), labels)
        else:
            mask = masker(micro, device=engine.device,
                          generator=torch.Generator(device=engine.device).manual_seed(step))
            loss = engine(videos, mask)["loss"]
        engine.backward(loss)
        engine.step()
    state = {"epoch": 0, "step": args.steps, "micro_in_epoch": args.steps, "epoch_bad": 0, "epoch_seen": 0,
             "world_size": world, "config": cfg.to_dict(), "rng": ckpt.rng_state()}
    if args.classifier:
        state["config"] = {"model": classifier_kwargs(cfg)}
    ckpt.save(engine, args.ckpt_dir, ckpt.tag_for(args.steps), state)


def dump(args: argparse.Namespace) -> None:
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from motionmae_ds.runtime import distributed as dist_utils

    _, engine, _, _, _ = build(args, prepare_resume=True)
    state = ckpt.load_latest(engine, args.ckpt_dir)
    out = {"client": {k: v for k, v in state.items() if k != "rng"}, "fp32": {}, "exp_avg": {}, "exp_avg_sq": {},
           "load_universal": engine.load_universal_checkpoint(), "world_size": dist_utils.world_size()}
    # ZeRO-1/2 link the Adam moments to the parameters lazily, at the first step; reading them right after a
    # load needs that link (DeepSpeed's own step does exactly this call); ZeRO-3 reads its partitions directly
    if hasattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state"):
        engine.optimizer._lazy_init_hp_params_optimizer_state()
    for name, p in engine.module.named_parameters():
        out["fp32"][name] = safe_get_full_fp32_param(p).cpu()
        out["exp_avg"][name] = safe_get_full_optimizer_state(p, "exp_avg").cpu()
        out["exp_avg_sq"][name] = safe_get_full_optimizer_state(p, "exp_avg_sq").cpu()
    out["adam_step"] = sorted({int(s["step"]) for s in engine.optimizer.optimizer.state.values() if "step" in s})
    if dist_utils.is_main():
        torch.save(out, args.out)
    dist_utils.barrier()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("save", "dump"))
    p.add_argument("--config", required=True)
    p.add_argument("--deepspeed_config", default=str(REPO / "ds_configs" / "zero2.json"))
    p.add_argument("--ckpt_dir", required=True)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--classifier", action="store_true", help="save: a finetuning classifier instead")
    p.add_argument("--local_rank", type=int, default=None)
    args = p.parse_args()
    save(args) if args.mode == "save" else dump(args)


if __name__ == "__main__":
    main()
