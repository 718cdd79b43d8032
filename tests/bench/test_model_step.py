"""bench/model_step.py for real at a tiny size: the CLI end to end, the FLOP bookkeeping, and that
Hugging Face's VideoMAEForPreTraining forward does exactly the work our counter assigns to (b)."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from motionmae_ds.models import build_mask_generator, build_pretrain_model, pretrain_macs
from tests.bench.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "model_step.py"
TINY = ["--model", "vit_tiny", "--num_frames", "4", "--img_size", "32", "--batch", "2", "--threads", "1"]


def load_bench():
    return load_script("model_step")


def counted_macs(fn) -> int:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_hf_videomae_does_the_work_of_variant_b(ratio):
    bench = load_bench()
    args = argparse.Namespace(model="vit_tiny", num_frames=4, img_size=64)
    hf = bench.hf_pretrain_model(args)
    ours = build_pretrain_model(**bench.ours_kwargs(args, "frame"))
    mask = build_mask_generator("tube", ours.grid, ratio)(2, generator=torch.Generator().manual_seed(0))
    videos = torch.randn(2, 3, 4, 64, 64)
    expected = 2 * pretrain_macs(ratio, "tube", **bench.ours_kwargs(args, "frame"))
    assert counted_macs(lambda: ours(videos, mask)) == expected
    assert counted_macs(lambda: hf(pixel_values=videos.transpose(1, 2), bool_masked_pos=mask)) == expected
    # And the dimensions really are ours: same parameter count up to HF's separate q/k/v layout.
    n_hf, n_ours = (sum(p.numel() for p in m.parameters()) for m in (hf, ours))
    assert n_hf == n_ours


def run_cli(*extra, tmp_path):
    out = tmp_path / "res.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, *extra, "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_pretrain_cli_measures_all_variants(tmp_path):
    # (d) runs (a)'s bookkeeping with checkpointing on; (e) and (f) add decoder masking
    stdout, res = run_cli("--dtype", "bf16", "--repeats", "2", "--warmup", "1", "--variants", "a,b,c,e,f",
                          tmp_path=tmp_path)
    rows = {r["variant"]: r for r in res["results"]}
    assert set(rows) == {"a", "b", "c", "e", "f"}
    kwargs = dict(name="vit_tiny", num_frames=4, img_size=32)
    # (a) and (b): the forward's multiply-adds as torch counts them on the model itself (the bench's own count is
    # the analytic pretrain_macs), x 3 for forward and backward, x 2 FLOP per MAC, per clip
    per_clip = {}
    for t in ("frame", "frame_motion"):
        model = build_pretrain_model(**kwargs, target=t)
        mask = build_mask_generator("tube", model.grid, 0.9)(2, generator=torch.Generator().manual_seed(0))
        videos = torch.randn(2, 3, 4, 32, 32)
        per_clip[t] = 6 * counted_macs(lambda m=model, v=videos, k=mask: m(v, k)) / 2 / 1e9
    per_clip.update({key: 6 * pretrain_macs(0.9, "tube", decoder_ratio=0.5, decoder_heads=heads, **kwargs) / 1e9
                     for key, heads in (("e", "shared"), ("f", "complementary"))})
    assert per_clip["e"] < per_clip["frame_motion"]
    for line in ("(e)/(b) step time", "(e)/(a) step time", "(f)/(e) step time", "decoder masking (e, f)"):
        assert line in stdout
    for key, target in (("a", "frame_motion"), ("b", "frame"), ("c", "frame"), ("e", "e"), ("f", "f")):
        r = rows[key]
        assert r["gflop_per_step"] == pytest.approx(2 * per_clip[target])
        assert len(r["times"]) == 2 and min(r["times"]) <= r["step_s"] <= max(r["times"]) and r["mem_gib"] >= 0
        assert r["gflops"] == pytest.approx(r["gflop_per_step"] / r["step_s"])  # achieved FLOP/s, by definition
    assert "| (c) HF VideoMAEForPreTraining (sdpa) |" in stdout and "(b)/(c) achieved FLOP/s" in stdout
    # the round-by-round ratios pair the times of one round: (b)/(c) FLOP/s = t_c / t_b at equal work
    paired = sorted(c / b for b, c in zip(rows["b"]["times"], rows["c"]["times"]))
    line = next(s for s in stdout.splitlines() if s.startswith("(b)/(c)"))
    assert (f"per round: median {(paired[0] + paired[1]) / 2:.2f}, range {paired[0]:.2f}-{paired[1]:.2f} "
            f"over 2 rounds") in line
    line = next(s for s in stdout.splitlines() if s.startswith("(a)/(b)"))
    paired = sorted(a / b for a, b in zip(rows["a"]["times"], rows["b"]["times"]))
    assert f"median {(paired[0] + paired[1]) / 2:.2f}, range {paired[0]:.2f}-{paired[1]:.2f}" in line
    assert "command: python bench/model_step.py --model vit_tiny" in res["header"]


def test_finetune_cli_checkpointing_saves_activation_memory(tmp_path):
    # 16 frames of 64x64: 128 tokens through 12 blocks, enough activations to see the saving.
    stdout, res = run_cli("--finetune", "--num_frames", "16", "--img_size", "64", "--dtype", "fp32",
                          "--repeats", "1", "--warmup", "0", tmp_path=tmp_path)
    off, on = res["results"]["off"], res["results"]["on"]
    assert off["held_gib"] > 0 and on["held_gib"] > 0
    assert off["act_gib"] > 2 * on["act_gib"] > 0
    assert "activation memory off/on" in stdout


def test_bad_arguments_are_named(capsys):
    bench = load_bench()
    for argv, message in ((["--variants", "a,x"], "--variants a,x: unknown ['x']"),
                          (["--batch", "0"], "--batch must be >= 1, got 0")):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
