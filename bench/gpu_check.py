"""The first-GPU check: one command that measures what the CPU machines cannot, and writes one JSON + a table.

    python bench/gpu_check.py --out /tmp/gpu_check.json        # on CUDA: the full check, < 8 min on one H200
    python bench/gpu_check.py --out /tmp/gpu_check.json --dry  # tiny dry mode (the default without CUDA): seconds

What it records:
- the environment: device, CUDA, NCCL and bf16 present, torch / DeepSpeed / PyAV / decord versions;
- the tests marked ``gpu`` (bench/gpu_tests: SDPA's flash or efficient kernel in bf16, the pinned-memory loader, fused
  AdamW, masks drawn on the device, a one-rank NCCL group, a step without host syncs), run by pytest in a
  subprocess; without CUDA they are only collected (they cannot run there). DeepSpeed's FusedAdam (marker
  ``fused_adam``) is not part of the check, since the trainer never uses it (it passes torch's AdamW); ``--fused_adam``
  also runs it (its JIT build alone took ~400 s), as a line of information that does not change the exit status;
- pretraining steps through the real DeepSpeed engine (ZeRO-2, bf16, ``ds_configs/zero2.json``, the trainer's
  AdamW) of ViT-B and ViT-L at 16x224, activation checkpointing off and on, torch.compile of the blocks
  (``run.compile``) off and on, and both together (ViT-B; each compile costs a minute or more), and HF
  ``VideoMAEForPreTraining``
  at the same batch through the same engine: step time, clips/s, achieved TFLOP/s (the model's analytic FLOPs),
  MFU, peak device memory above what was held before the case (the previous case's engine is destroyed first);
- the training loader's clips/s with N workers (pinned on CUDA) on the synthetic MP4 set, beside the step rates;
  NVDEC (torchcodec on CUDA) against the CPU decode of the same clips, the device finishing a batch (gpu_data.py).
Each case is caught on its own: a failure (an OOM, a missing wheel) is written into its row, the rest still runs.
The dry mode runs the same functions on a tiny model, a tiny set and the CPU, so that CI keeps this script working.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from common import hf_videomae_pretraining, sync  # bench/common.py
from gpu_data import bench_video, finishing_case, nvdec_case  # bench/gpu_data.py
from gpu_env import FUSED_ADAM_TIMEOUT_S, GPU_TESTS_TIMEOUT_S, REPO, environment, gpu_tests  # bench/gpu_env.py

FULL = {"frames": 16, "img_size": 224, "mask_ratio": 0.9, "models": ("vit_base", "vit_large"),
        "batch": {"vit_base": 32, "vit_large": 16}, "compile_models": ("vit_base",), "warmup": 3, "steps": 10,
        "loader_workers": (4, 8),
        "loader_batches": 8, "synthetic": {"synthetic_videos": 32, "synthetic_frames": 64, "synthetic_size": 256},
        "sampling_rate": 4}
DRY = {"frames": 4, "img_size": 32, "mask_ratio": 0.5, "models": ("vit_tiny",), "batch": {"vit_tiny": 2},
       "compile_models": (),
       "warmup": 1, "steps": 2, "loader_workers": (0, 2), "loader_batches": 2,
       "synthetic": {"synthetic_videos": 8, "synthetic_frames": 12, "synthetic_size": 32}, "sampling_rate": 2}
# dry mode: a narrow, shallow ViT; the full check uses the registry sizes
DRY_MODEL = {"embed_dim": 48, "depth": 1, "num_heads": 3, "decoder_embed_dim": 24, "decoder_depth": 1,
             "decoder_num_heads": 3}


# -- pretraining steps --------------------------------------------------------------------------------
def pretrain_config(model: str, p: dict[str, Any], dry: bool, grad_ckpt: bool, compile_blocks: bool) -> Any:
    from motionmae_ds.config import config_from_dict

    m = {"name": model, "num_frames": p["frames"], "img_size": p["img_size"], "grad_checkpointing": grad_ckpt}
    if dry:
        m.update(DRY_MODEL)
    return config_from_dict({
        "model": m, "masking": {"kind": "tube", "ratio": p["mask_ratio"]},
        "data": {"synthetic": True, "sampling_rate": p["sampling_rate"], **p["synthetic"]},
        "schedule": {"epochs": 1, "warmup_epochs": 0, "batch_size": p["batch"][model]},
        "run": {"compile": compile_blocks, "visualize": False}})


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's high-water mark


def _held_bytes(device: torch.device) -> int:
    """Device memory allocated now (0 on the CPU, whose high-water mark cannot be reset)."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def _reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def hf_pretrain_model(cfg: Any) -> torch.nn.Module:
    """transformers.VideoMAEForPreTraining with our model's sizes (registry or overrides) and SDPA attention."""
    from motionmae_ds.models import resolve_size

    m = cfg.model
    s = resolve_size(m.name, m.embed_dim, m.depth, m.num_heads, m.decoder_embed_dim, m.decoder_depth,
                     m.decoder_num_heads)
    return hf_videomae_pretraining(s, m.num_frames, m.img_size, m.patch_size, m.tubelet_size)


def _sig(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def engine_case(cfg: Any, p: dict[str, Any], hf: bool = False) -> dict[str, Any]:
    """Timed steps of ours (or HF VideoMAEForPreTraining with ``hf``) through a ZeRO-2 bf16 DeepSpeed engine."""

    from motionmae_ds.builders import build_engine, build_masker, build_model, compile_blocks, mask_kwargs, model_kwargs
    from motionmae_ds.models import pretrain_macs
    from motionmae_ds.models.flops import TRAIN_FLOPS_PER_MAC
    from motionmae_ds.models.masking import mask_counts
    from motionmae_ds.runtime import distributed as dist_utils
    from motionmae_ds.runtime.distributed import enable_tf32
    from motionmae_ds.runtime.ds_config import fill_batch, load_ds_config
    from motionmae_ds.train.mfu import accelerator_device_name, mfu
    from motionmae_ds.train.optim import param_groups

    dist_utils.init_distributed()
    device = dist_utils.device()
    enable_tf32(device)
    batch = cfg.schedule.batch_size
    ds = fill_batch(load_ds_config(REPO / "ds_configs" / "zero2.json"), batch, 1, 1)
    torch.manual_seed(0)
    if hf:
        kw = model_kwargs(cfg)
        model = hf_pretrain_model(cfg)
        macs = pretrain_macs(**dict(mask_kwargs(cfg), **dict(kw, target="frame")))  # its work: one frame decoder
        groups = [{"params": [q for q in model.parameters() if q.requires_grad], "weight_decay": 0.05}]
    else:
        model = build_model(cfg)
        if cfg.run.compile:
            compile_blocks(model)
        macs = pretrain_macs(**mask_kwargs(cfg), **model_kwargs(cfg))
        groups = param_groups(model, cfg.optim.weight_decay)
    engine = build_engine(model, groups, cfg, ds, 1e-4, device)
    grid = (cfg.model.num_frames // cfg.model.tubelet_size, cfg.model.img_size // cfg.model.patch_size,
            cfg.model.img_size // cfg.model.patch_size)
    masker = build_masker(cfg, grid)
    counts = mask_counts(masker)
    gen = torch.Generator(device=device).manual_seed(0)
    videos = torch.randn(batch, 3, cfg.model.num_frames, cfg.model.img_size, cfg.model.img_size, device=device,
                         generator=gen)
    if hf:
        videos = videos.permute(0, 2, 1, 3, 4).contiguous()

    def step() -> None:
        mask = masker(batch, device=device, generator=gen)
        if hf:
            loss = engine(pixel_values=videos.to(torch.bfloat16), bool_masked_pos=mask).loss
        else:
            loss = engine(videos, mask, counts=counts)["loss"]
        engine.backward(loss)
        engine.step()

    _reset_peak(device)
    held = _held_bytes(device)  # the batch, masks, and anything a previous case failed to free
    t0 = time.perf_counter()
    for _ in range(p["warmup"]):
        step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(p["steps"]):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    flops = TRAIN_FLOPS_PER_MAC * float(macs) * batch
    util = mfu(flops / step_s, accelerator_device_name())
    # significant figures, not decimals: a tiny dry-mode case on a loaded CPU runs at a few GFLOP/s, which four
    # decimals of TFLOP/s would round to 0
    row = {"batch": batch, "step_s": _sig(step_s), "clips_per_s": _sig(batch / step_s),
           "tflops": _sig(flops / step_s / 1e12), "mfu": None if util is None else _sig(util),
           "peak_gib": round((_peak_bytes(device) - held) / 2 ** 30, 2), "held_gib": round(held / 2 ** 30, 2),
           "warmup_s": round(warmup_s, 2), "gflop_per_step": round(flops / 1e9, 3)}
    release(engine)
    return row


def release(engine: Any) -> None:
    """Free an engine's device memory before the next case: DeepSpeed's ``destroy`` drops the hooks and the
    optimizer's references that would otherwise keep its partitions alive past this function."""
    destroy = getattr(engine, "destroy", None)
    if callable(destroy):
        destroy()
    engine.optimizer = None
    engine.module = None
    _reset_peak(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))


# -- the data loader ----------------------------------------------------------------------------------
def loader_case(cfg: Any, workers: int, batches: int) -> dict[str, Any]:
    """Clips/s of the training loader (the trainer's DataLoader settings) over ``batches`` after the first."""
    from torch.utils.data import RandomSampler

    from motionmae_ds.builders import build_dataset, resolve_list_file
    from motionmae_ds.data.loader import make_loader
    from motionmae_ds.runtime import distributed as dist_utils

    dataset = build_dataset(cfg, resolve_list_file(cfg))
    dataset.set_epoch(0)
    device = dist_utils.device()
    batch = cfg.schedule.batch_size
    sampler = RandomSampler(dataset, replacement=True, num_samples=batch * (batches + 1),
                            generator=torch.Generator().manual_seed(0))
    loader = make_loader(dataset, sampler, batch, workers, cfg.data.loader_timeout_s, device)
    it = iter(loader)
    first = next(it)
    pinned = bool(first["video"].is_pinned()) if device.type != "cpu" else None
    t0 = time.perf_counter()
    clips = 0
    for b in it:
        b["video"].to(device, non_blocking=True)
        clips += len(b["video"])
    sync(device)
    seconds = time.perf_counter() - t0
    return {"workers": workers, "batch": batch, "clips": clips, "clips_per_s": round(clips / seconds, 2),
            "pinned": pinned, "videos": len(dataset)}


# -- driver -------------------------------------------------------------------------------------------
def guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        row = fn()
    except Exception as exc:  # one case's failure (OOM, missing wheel) is a finding; the rest still runs
        row = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
               "trace": traceback.format_exc()[-1500:]}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def step_cases(model: str, p: dict[str, Any], compile_in_dry: bool = False) -> list[tuple[str, bool, bool]]:
    """(impl, activation checkpointing, compile) of each step case of ``model``: ours eager with and without
    activation checkpointing, HF's, and, for the compiled models, ours compiled without and with checkpointing."""
    cases = [("ours", False, False), ("ours", True, False), ("hf", False, False)]
    if model in p["compile_models"] or compile_in_dry:
        cases += [("ours", False, True), ("ours", True, True)]
    return cases


PARTS = ("all", "main", "compile")


def run(dry: bool, skip_tests: bool = False, compile_in_dry: bool = False, fused_adam: bool = False,
        part: str = "all", save: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """The check. ``part``: everything (``all``), all but the compiled step cases (``main``), or only those
    (``compile``: each costs a minute or more of compilation; a short lease runs them last). ``save`` is called
    with the result so far after every case, so that a run stopped at its time limit still leaves its rows."""
    p = DRY if dry else FULL
    result: dict[str, Any] = {"mode": "dry" if dry else "full", "part": part, "env": environment(), "settings": {
        k: v for k, v in p.items() if k != "synthetic"}, "steps": [], "loader": [], "data": []}
    checkpoint = save or (lambda _: None)
    main_part, compiled = part in ("all", "main"), part in ("all", "compile")
    if main_part:
        result["gpu_tests"] = ({"skipped": "--skip_tests"} if skip_tests
                               else guarded(lambda: gpu_tests(GPU_TESTS_TIMEOUT_S)))
        checkpoint(result)
    else:
        result["gpu_tests"] = {"skipped": f"--part {part}"}
    if fused_adam:  # information only: the trainer never runs DeepSpeed's FusedAdam
        result["fused_adam"] = guarded(lambda: gpu_tests(FUSED_ADAM_TIMEOUT_S, marker="fused_adam"))
    steps = result["steps"]
    for model in p["models"]:
        for kind, ckpt, comp in step_cases(model, p, compile_in_dry):
            if not (compiled if comp else main_part):
                continue
            cfg = pretrain_config(model, p, dry, ckpt, comp)
            row = {"model": model, "impl": kind, "act_ckpt": ckpt, "compile": comp}
            row.update(guarded(lambda cfg=cfg, kind=kind: engine_case(cfg, p, hf=kind == "hf")))
            steps.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            checkpoint(result)
    for row in steps:
        if row["impl"] == "hf" and "step_s" in row:
            ours = next((r for r in steps if r["model"] == row["model"] and r["impl"] == "ours"
                         and not r["act_ckpt"] and not r["compile"] and "step_s" in r), None)
            if ours is not None:
                row["ours_over_hf_step_time"] = round(ours["step_s"] / row["step_s"], 3)
    if main_part:
        cfg = pretrain_config(p["models"][0], p, dry, False, False)
        for w in p["loader_workers"]:
            result["loader"].append(guarded(lambda w=w: loader_case(cfg, w, p["loader_batches"])))
            checkpoint(result)
        video_dir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        for case in (lambda: nvdec_case(bench_video(dry, video_dir), dry), lambda: finishing_case(dry)):
            result["data"].append(guarded(case))
            checkpoint(result)
    return result


def table(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = [f"GPU check ({result['mode']}), {env['date_utc']} UTC: {env['device']}, torch {env['torch']}, CUDA "
             f"{env['cuda_runtime']}, NCCL {env['nccl']}, bf16 {env['bf16']}, DeepSpeed {env['deepspeed']}", ""]
    t = result["gpu_tests"]
    if "tests" in t and not t.get("ran", True):
        lines += [f"gpu tests: {t['tests']} collected, not run (no CUDA)", ""]
    elif "tests" in t:
        lines += [f"gpu tests: {t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped "
                  f"(skips are no coverage)" + (f"; failed: {', '.join(t['failed'])}" if t["failed"] else ""), ""]
    fused = result.get("fused_adam")
    if fused is not None:
        state = fused.get("error") or ("ok" if fused.get("passed") else f"failed: {', '.join(fused.get('failed', []))}")
        lines += [f"DeepSpeed FusedAdam (information only, the trainer uses torch's AdamW): {state}", ""]
    lines += ["| model | impl | act. ckpt | compile | batch | step s | clips/s | TFLOP/s | MFU | peak GiB |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["steps"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['impl']} | {r['act_ckpt']} | {r['compile']} | | {r['error'][:60]} "
                         f"| | | | |")
            continue
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['model']} | {r['impl']} | {r['act_ckpt']} | {r['compile']} | {r['batch']} | "
                     f"{r['step_s']:.4f} | {r['clips_per_s']:.1f} | {r['tflops']:.3g} | {mfu} | {r['peak_gib']:.2f} |")
    lines += ["", "| loader workers | batch | clips/s | pinned |", "|---|---|---|---|"]
    for r in result["loader"]:
        lines.append(f"| {r.get('workers', '?')} | {r.get('batch', '')} | {r.get('clips_per_s', r.get('error', ''))} "
                     f"| {r.get('pinned', '')} |")
    return "\n".join(lines + [""] + [json.dumps(r) for r in result.get("data", [])]) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the JSON to write; the table goes next to it as .md")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--dry", action="store_true", help="tiny dry mode (the default without CUDA)")
    mode.add_argument("--full", action="store_true", help="the full check (the default with CUDA)")
    ap.add_argument("--skip_tests", action="store_true", help="do not run the gpu-marked tests")
    ap.add_argument("--fused_adam", action="store_true",
                    help="also build and test DeepSpeed's FusedAdam (~400 s; information only, the trainer uses "
                         "torch's AdamW)")
    ap.add_argument("--part", choices=PARTS, default="all",
                    help="all; main: all but the compiled step cases; compile: only those (a minute or more each)")
    args = ap.parse_args(argv)
    dry = args.dry or (not args.full and not torch.cuda.is_available())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(result: dict[str, Any]) -> None:  # after every case: a run stopped at a time limit keeps its rows
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out)

    result = run(dry, skip_tests=args.skip_tests, fused_adam=args.fused_adam, part=args.part, save=save)
    save(result)
    text = table(result)
    out.with_suffix(".md").write_text(text)
    print(text, flush=True)
    failed = [r for r in result["steps"] + result["loader"] + result["data"] if "error" in r]
    tests = result["gpu_tests"]
    bad_tests = tests.get("failures", 0) + tests.get("errors", 0) or ("error" in tests)
    return 1 if failed or bad_tests else 0


if __name__ == "__main__":
    sys.exit(main())
