"""Per-GPU memory and step FLOPs of a pretraining recipe on a given cluster shape; prints one JSON object.

    python launch/estimate_memory.py --config configs/pretrain_ssv2_vit_large_32f.yaml \
        --deepspeed_config ds_configs/zero2_vitl_32gpu.json --nodes 4 --gpus_per_node 8 --gpu_gib 80

Activations are measured on this machine's CPU at --frames (two small counts) and extrapolated to the
recipe's frame count; see motionmae_ds/tools/memory_estimate.py for how. Takes minutes for ViT-L.
"""
from __future__ import annotations

import argparse
import json
import sys

from motionmae_ds.runtime.flags import add_config, add_deepspeed_config, add_option, add_set


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config(p, None)
    add_deepspeed_config(p, None)  # its bucket sizes and overlap_comm count
    add_set(p)
    add_option(p, "--nodes", type=int, default=4)
    add_option(p, "--gpus_per_node", type=int, default=8)
    add_option(p, "--gpu_gib", type=float, default=80.0, help="device memory (A100 80GB: 80)")
    add_option(p, "--reserve_gib", type=float, default=6.0,
               help="kept free for the CUDA context, NCCL buffers and allocator fragmentation")
    add_option(p, "--frames", type=int, nargs=2, default=(2, 4), help="two small frame counts to measure at")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)

    from motionmae_ds.config import load_pretrain_config
    from motionmae_ds.runtime.ds_config import load_ds_config
    from motionmae_ds.tools import memory_estimate as me

    cfg = load_pretrain_config(args.config, args.set)
    ds = load_ds_config(args.deepspeed_config)
    world = args.nodes * args.gpus_per_node
    params = me.count_params(cfg)
    model_states = me.model_states(params, args.gpus_per_node, args.nodes, ds, me.largest_layer_params(cfg))
    states = model_states["gpu"]
    buckets = me.bucket_bytes(ds)
    fit = me.fit_activation_bytes(cfg, tuple(args.frames))
    # the batch-independent part of the measured peak (transient gradients and casts) at the target size
    transient = me.peak_step_bytes(cfg, args.frames[0], 1) - fit.per_sample_bytes[0]
    fixed = states + buckets + transient
    budget = (args.gpu_gib - args.reserve_gib) * me.GiB
    candidates = me.micro_candidates(cfg, world)  # schedule.batch_size values: videos per device
    per_video = fit.bytes_per_sample * cfg.clips_per_video  # data.num_repeats clips per loaded video
    micro = me.largest_fitting_micro(per_video, fixed, budget, candidates)
    flops = me.step_flops(cfg, world)
    report = {
        "config": args.config, "world_size": world, "params_m": round(params / 1e6, 2),
        "grad_checkpointing": cfg.model.grad_checkpointing,
        "zero_stage": model_states["stage"], "model_states_gib": me.gib(states),
        "cpu_model_states_gib_per_node": me.gib(model_states["cpu_per_node"]), "zero_buckets_gib": me.gib(buckets),
        "transient_gib": me.gib(transient),
        "activation_mib_per_sample_measured": {t: round(b / 2 ** 20, 2) for t, b in zip(fit.frames,
                                                                                         fit.per_sample_bytes)},
        "activation_mib_per_sample": round(fit.bytes_per_sample / 2 ** 20, 1),
        "target_frames": fit.target_frames, "clips_per_video": cfg.clips_per_video,
        "micro_candidates": candidates, "largest_fitting_micro": micro,
        "gib_at_micro": {m: me.gib(fixed + m * per_video) for m in candidates},
        "budget_gib": me.gib(budget), "max_micro_by_memory": int((budget - fixed) // per_video),
        "forward_gmacs_per_sample": round(flops["forward_macs_per_sample"] / 1e9, 1),
        "train_tflop_per_step": round(flops["train_flops_per_step"] / 1e12, 1),
        "executed_tflop_per_step_with_recompute": round(flops["executed_flops_per_step"] / 1e12, 1),
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # ConfigError is a ValueError: one line, not a traceback
        sys.exit(f"estimate_memory: {err}")
