"""Training-step speed and memory of the pretraining model against Hugging Face VideoMAE.

Variants, built once and timed interleaved in one process (median over repeats, after warm-up; the
ratios also round by round, each from two variants measured back to back):
  a  ours, MotionMAE with both heads           c  transformers.VideoMAEForPreTraining (its SDPA)
  b  ours, frame target only (VideoMAE's work)  d  ours (both heads) with activation checkpointing
  e  ours, both heads, decoder masking (--decoder_ratio, 0.5) with the heads sharing the kept tokens
  f  as (e) with complementary heads (each masked token decoded by one head)
Each step is forward + backward + torch AdamW step with the module cast to the dtype (what DeepSpeed's
bf16 engine does), the same tube masks and thread count for every variant.

    python bench/model_step.py --model vit_small --num_frames 16 --img_size 224 --batch 2 --dtype bf16
    python bench/model_step.py --model vit_base --batch 2 --variants a,b,c,e,f --dtype bf16
    python bench/model_step.py --finetune --model vit_large --batch 1 --dtype bf16

`--finetune`: the classifier on all tokens, activation checkpointing off vs on.

Step times come from this process with the allocator a trainer runs with. Memory (peak minus what is
held before the step) comes from one fresh subprocess per variant or setting, so each peak is clean; on
the CPU those subprocesses run with a fixed glibc mmap threshold, because the default adaptive one parks
freed activations in the heap, where the resident set would not show the next step's peak. (The fixed
threshold is not used for timing: it unmaps every freed buffer and faults it in again on the next step,
a cost that grows with the activations a variant allocates, not with its compute.)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

# glibc: every allocation above 128 KiB gets its own mapping, returned to the OS when freed
FIXED_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}

import torch  # noqa: E402
from common import MemoryProbe, accelerator, hf_videomae_pretraining, machine, sync  # noqa: E402

from motionmae_ds.models import (  # noqa: E402
    MODEL_SIZES,
    build_classifier,
    build_decoder_mask,
    build_mask_generator,
    build_pretrain_model,
    classifier_macs,
    pretrain_macs,
)
from motionmae_ds.models.flops import TRAIN_FLOPS_PER_MAC  # noqa: E402
from motionmae_ds.models.vit import ATTENTION_BACKENDS  # noqa: E402
from motionmae_ds.runtime.cpu_process import keep_freed_memory  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
VARIANTS = {"a": "ours, both heads", "b": "ours, frame only", "c": "HF VideoMAEForPreTraining (sdpa)",
            "d": "ours, both heads, act. ckpt", "e": "ours, both heads, decoder masking, shared",
            "f": "ours, both heads, decoder masking, complementary"}
# decoder masking of the variants that have it: masking.decoder_heads
DECODER_HEADS_OF = {"e": "shared", "f": "complementary"}


# -- models -----------------------------------------------------------------------------------
def hf_pretrain_model(args: argparse.Namespace) -> torch.nn.Module:
    """VideoMAEForPreTraining with our registry's dimensions and SDPA attention."""
    return hf_videomae_pretraining(MODEL_SIZES[args.model], args.num_frames, args.img_size)


def ours_kwargs(args: argparse.Namespace, target: str) -> dict:
    return dict(name=args.model, num_frames=args.num_frames, img_size=args.img_size, target=target)


def adamw(params) -> torch.optim.AdamW:
    """torch AdamW, fused: its per-tensor loop (the CPU default) took about half of a ViT-S step
    here, the same for every variant, which would hide the differences between the models."""
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)


class Variant:
    """A model, its AdamW and a `step(videos, mask)` doing forward + backward + optimizer step."""

    def __init__(self, key: str, model: torch.nn.Module, flops_per_step: float,
                 loss_fn: Callable[..., torch.Tensor], decoder_mask=None) -> None:
        self.key, self.model, self.flops_per_step, self.loss_fn = key, model, flops_per_step, loss_fn
        self.decoder_mask = decoder_mask
        self.optimizer = adamw(model.parameters())
        self.times: list[float] = []

    def draw_keep(self, batch: int, device: torch.device, round_index: int) -> Optional[dict]:
        """The decoder's kept tokens of round `round_index` (None without decoder masking)."""
        if self.decoder_mask is None:
            return None
        return self.decoder_mask(batch, device=device, generator=torch.Generator(device).manual_seed(round_index))

    def step(self, videos: torch.Tensor, mask: torch.Tensor, keep: Optional[dict] = None) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_fn(self.model, videos, mask, keep).backward()
        self.optimizer.step()


def build_variants(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[Variant]:
    macs = {t: pretrain_macs(args.mask_ratio, args.mask_kind, **ours_kwargs(args, t))
            for t in ("frame", "frame_motion")}
    macs.update({key: pretrain_macs(args.mask_ratio, args.mask_kind, decoder_ratio=args.decoder_ratio,
                                    decoder_heads=heads, **ours_kwargs(args, "frame_motion"))
                 for key, heads in DECODER_HEADS_OF.items()})
    flops = {t: TRAIN_FLOPS_PER_MAC * m * args.batch for t, m in macs.items()}

    def ours(model, videos, mask, keep):
        return model(videos, mask, decoder_keep=keep)["loss"]

    def hf(model, videos, mask, keep):
        # HF takes (B, T, C, H, W) in the module's dtype; the permuted copy is made outside the timer.
        return model(pixel_values=videos, bool_masked_pos=mask).loss

    variants = []
    for key in args.variants:
        if key == "c":
            model, fn, f = hf_pretrain_model(args), hf, flops["frame"]  # same work as (b): see tests/bench
        else:
            target = "frame" if key == "b" else "frame_motion"
            model = build_pretrain_model(**ours_kwargs(args, target), grad_checkpointing=key == "d")
            model.set_attention_backend(args.attention)
            fn, f = ours, flops[key if key in DECODER_HEADS_OF else target]
        decoder_mask = None
        if key in DECODER_HEADS_OF:
            decoder_mask = build_decoder_mask(grid=model.grid, ratio=args.decoder_ratio, heads=DECODER_HEADS_OF[key])
        variants.append(Variant(key, model.to(device=device, dtype=dtype).train(), f, fn, decoder_mask))
    return variants


# -- pretraining benchmark --------------------------------------------------------------------
def pretrain_inputs(args: argparse.Namespace, rounds: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    grid = (args.num_frames // 2, args.img_size // 16, args.img_size // 16)
    gen = build_mask_generator(args.mask_kind, grid, args.mask_ratio)
    rng = torch.Generator().manual_seed(0)
    clips = [torch.randn(args.batch, 3, args.num_frames, args.img_size, args.img_size, generator=rng)
             for _ in range(rounds)]
    return clips, [gen(args.batch, generator=rng) for _ in range(rounds)]


def run_step(v: Variant, videos: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype, round_index: int) -> float:
    """One step of ``v``; returns its wall time in seconds."""
    # HF takes (B, T, C, H, W) in the module's dtype: the permuted copy is made here, outside the timer.
    if v.key == "c":
        videos = videos.permute(0, 2, 1, 3, 4).to(dtype).contiguous()
    keep = v.draw_keep(videos.shape[0], videos.device, round_index)  # outside the timer, as the masks
    t0 = time.perf_counter()
    v.step(videos, mask, keep)
    sync(videos.device)
    return time.perf_counter() - t0


def pretrain_memory_child(args: argparse.Namespace) -> None:
    """One process, one variant: the peak memory of a step after a warm-up step, printed as JSON."""
    device = torch.device(accelerator().current_device_name())
    dtype = DTYPES[args.dtype]
    (v,) = build_variants(args, device, dtype)
    clips, masks = pretrain_inputs(args, 2)
    run_step(v, clips[0].to(device), masks[0].to(device), dtype, 0)  # AdamW's moments exist from here on
    probe = MemoryProbe(device)
    probe.start()
    run_step(v, clips[1].to(device), masks[1].to(device), dtype, 1)
    print(json.dumps({"variant": v.key, "mem_gib": probe.peak_delta() / 2 ** 30}))


def child_command(args: argparse.Namespace, *extra: str) -> list[str]:
    return [sys.executable, __file__, "--model", args.model, "--num_frames", str(args.num_frames),
            "--img_size", str(args.img_size), "--batch", str(args.batch), "--dtype", args.dtype,
            "--threads", str(args.threads), "--attention", args.attention, "--mask_ratio", str(args.mask_ratio),
            "--mask_kind", args.mask_kind, "--decoder_ratio", str(args.decoder_ratio), *extra]


def run_child(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **FIXED_MMAP_ENV}).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_pretrain(args: argparse.Namespace) -> list[dict]:
    device = torch.device(accelerator().current_device_name())
    dtype = DTYPES[args.dtype]
    variants = build_variants(args, device, dtype)
    rounds = args.warmup + args.repeats
    clips, masks = pretrain_inputs(args, rounds)
    for r in range(rounds):
        videos, mask = clips[r].to(device), masks[r].to(device)
        # Rotating the start spreads slow phases of a shared machine over all variants.
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            seconds = run_step(v, videos, mask, dtype, r)
            if r >= args.warmup:
                v.times.append(seconds)
            print(f"round {r} variant {v.key}: {seconds:.2f} s", file=sys.stderr, flush=True)
    rows = [{"variant": v.key, "what": VARIANTS[v.key], "step_s": statistics.median(v.times), "times": v.times,
             "gflop_per_step": v.flops_per_step / 1e9, "gflops": v.flops_per_step / statistics.median(v.times) / 1e9}
            for v in variants]
    del variants, v  # free the models before the memory subprocesses run beside this one
    for row in rows:
        row["mem_gib"] = run_child(child_command(args, "--_memory_child", "--variants", row["variant"]))["mem_gib"]
        print(f"memory, variant {row['variant']}: {row['mem_gib']:.3f} GiB", file=sys.stderr, flush=True)
    return rows


def paired_ratios(num: dict, den: dict, per_flop: bool) -> list[float]:
    """Round-by-round ratios of two variants timed in the same rounds (their `times` are aligned):
    num's step time / den's, or num's achieved FLOP/s / den's when `per_flop`. The machine's speed drifts
    between rounds on a shared VM; a ratio within one round sees the same state for both variants."""
    scale = num["gflop_per_step"] / den["gflop_per_step"] if per_flop else 1.0
    return [scale * d / n if per_flop else n / d for n, d in zip(num["times"], den["times"])]


def ratio_summary(ratios: list[float]) -> str:
    return (f"per round: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f} "
            f"over {len(ratios)} rounds")


def pretrain_table(rows: list[dict]) -> str:
    by = {r["variant"]: r for r in rows}
    lines = ["| variant | step (s) | GFLOP/step | achieved GFLOP/s | peak mem delta (GiB) |",
             "|---|---|---|---|---|"]
    lines += [f"| ({r['variant']}) {r['what']} | {r['step_s']:.3f} | {r['gflop_per_step']:.0f} | {r['gflops']:.1f} | "
              f"{r['mem_gib']:.2f} |" for r in rows]
    if "b" in by and "c" in by:
        lines.append(f"\n(b)/(c) achieved FLOP/s: {by['b']['gflops'] / by['c']['gflops']:.2f} (of the medians); "
                     + ratio_summary(paired_ratios(by["b"], by["c"], per_flop=True)))
    if "a" in by and "b" in by:
        lines.append(f"(a)/(b) step time: {by['a']['step_s'] / by['b']['step_s']:.2f} (of the medians; "
                     f"FLOP ratio {by['a']['gflop_per_step'] / by['b']['gflop_per_step']:.2f}); "
                     + ratio_summary(paired_ratios(by["a"], by["b"], per_flop=False)))
    for key in DECODER_HEADS_OF:
        if key not in by:
            continue
        for other in ("b", "a"):
            if other in by:
                lines.append(f"({key})/({other}) step time: {by[key]['step_s'] / by[other]['step_s']:.2f} (of the "
                             f"medians; FLOP ratio {by[key]['gflop_per_step'] / by[other]['gflop_per_step']:.2f}); "
                             + ratio_summary(paired_ratios(by[key], by[other], per_flop=False)))
    if "e" in by and "f" in by:
        lines.append(f"(f)/(e) step time: {by['f']['step_s'] / by['e']['step_s']:.2f}; "
                     + ratio_summary(paired_ratios(by["f"], by["e"], per_flop=False)))
    if "a" in by and "d" in by:
        lines.append(f"(d)/(a) step time: {by['d']['step_s'] / by['a']['step_s']:.2f}, memory "
                     f"{by['d']['mem_gib'] / max(by['a']['mem_gib'], 1e-9):.2f}")
    return "\n".join(lines)


# -- finetuning: activation checkpointing ----------------------------------------------------
def finetune_setup(args: argparse.Namespace, device: torch.device):
    kwargs = dict(name=args.model, num_classes=174, num_frames=args.num_frames, img_size=args.img_size,
                  drop_path_rate=0.0)
    model = build_classifier(**kwargs).to(device=device, dtype=DTYPES[args.dtype]).train()
    model.set_attention_backend(args.attention)
    optimizer = adamw(model.parameters())
    # AdamW allocates its moments at its first step; a zero-gradient step holds them (and the
    # grads, kept between steps as DeepSpeed's ZeRO gradient buffers are) before the measured
    # steps, as a running trainer does.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    rng = torch.Generator().manual_seed(0)
    videos = torch.randn(args.batch, 3, args.num_frames, args.img_size, args.img_size, generator=rng).to(device)
    labels = torch.randint(0, 174, (args.batch,), generator=rng).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(model(videos).float(), labels).backward()
        optimizer.step()

    flops = TRAIN_FLOPS_PER_MAC * classifier_macs(**kwargs) * args.batch
    return model, step, flops


def finetune_memory_child(args: argparse.Namespace) -> None:
    """One process, one setting: the activation memory of a single step, printed as JSON."""
    device = torch.device(accelerator().current_device_name())
    model, step, _ = finetune_setup(args, device)
    model.set_grad_checkpointing(args.ckpt == "on")
    probe = MemoryProbe(device)
    probe.start()
    step()
    print(json.dumps({"ckpt": args.ckpt, "held_gib": probe.before / 2 ** 30,
                      "act_gib": probe.peak_delta() / 2 ** 30}))


def run_finetune(args: argparse.Namespace) -> dict:
    memory = {}
    for setting in ("off", "on"):
        memory[setting] = run_child(child_command(args, "--_finetune_memory_child", "--ckpt", setting))
        print(f"memory, checkpointing {setting}: {memory[setting]}", file=sys.stderr, flush=True)

    device = torch.device(accelerator().current_device_name())
    model, step, flops = finetune_setup(args, device)
    times: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.warmup + args.repeats):
        for setting in (("off", "on") if r % 2 == 0 else ("on", "off")):
            model.set_grad_checkpointing(setting == "on")
            t0 = time.perf_counter()
            step()
            sync(device)
            if r >= args.warmup:
                times[setting].append(time.perf_counter() - t0)
            print(f"round {r} ckpt {setting}: {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
    return {s: {"step_s": statistics.median(times[s]), "times": times[s], "gflops": flops / statistics.median(
        times[s]) / 1e9, **memory[s]} for s in ("off", "on")}


def finetune_table(res: dict) -> str:
    lines = ["| activation checkpointing | step (s) | achieved GFLOP/s | held before step (GiB) | "
             "activation memory (GiB) |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {r['step_s']:.2f} | {r['gflops']:.1f} | {r['held_gib']:.2f} | {r['act_gib']:.2f} |"
              for s, r in res.items()]
    lines.append(f"\nactivation memory off/on: {res['off']['act_gib'] / res['on']['act_gib']:.2f}x lower; "
                 f"step time on/off: {res['on']['step_s'] / res['off']['step_s']:.2f}")
    return "\n".join(lines)


# -- CLI --------------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small", choices=tuple(MODEL_SIZES))
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--img_size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dtype", default="bf16", choices=tuple(DTYPES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variants", default="a,b,c,d", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--decoder_ratio", type=float, default=0.5, choices=(0.25, 0.5, 0.75),
                   help="decoder masking ratio of variants e and f")
    p.add_argument("--mask_ratio", type=float, default=0.9)
    p.add_argument("--mask_kind", default="tube", choices=("random", "tube", "frame"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS,
                   help="our models' attention path (auto picks per device and dtype)")
    p.add_argument("--finetune", action="store_true", help="classifier step, checkpointing off vs on")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--_finetune_memory_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_memory_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", choices=("on", "off"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        p.error(f"--variants {','.join(args.variants)}: unknown {bad}; choose from {', '.join(VARIANTS)}")
    for key in ("batch", "repeats", "threads", "num_frames", "img_size"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._finetune_memory_child:
        finetune_memory_child(args)
        return
    if args._memory_child:
        pretrain_memory_child(args)
        return
    # The timing process allocates like our trainer does (runtime/cpu_process.py): on the CPU, glibc keeps
    # freed blocks for reuse. Every variant, HF's included, runs in this one process under the same setting.
    kept = accelerator().device_name() == "cpu" and keep_freed_memory()
    header = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine(args.threads)}"
              f"{'; glibc keeps freed memory (as the trainer)' if kept else ''}\n"
              f"command: python bench/model_step.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    if args.finetune:
        res = run_finetune(args)
        print(header + finetune_table(res))
    else:
        res = run_pretrain(args)
        dual = any(k in DECODER_HEADS_OF for k in args.variants)
        print(header + f"dtype {args.dtype}, module cast to it; {args.mask_kind} masks, ratio {args.mask_ratio}"
              + (f"; decoder masking (e, f) running cell, ratio {args.decoder_ratio}" if dual else "") + "\n"
              + pretrain_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "results": res}, indent=1))


if __name__ == "__main__":
    main()
