"""launch/model_stats.py: one JSON line reproducing the paper's Table 1 (params within 1%, GFLOPs within 2%)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "model_stats.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_paper_table_1():
    stats = []
    for model in ("vit_base", "vit_large"):
        proc = run("--model", model, "--num_frames", "16", "--img_size", "224", "--num_classes", "174")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1
        stats.append(json.loads(lines[0]))
    for got, (params, gflops) in zip(stats, [(87, 180), (305, 598)]):
        assert got["params_m"] == pytest.approx(params, rel=0.01)
        assert got["gflops"] == pytest.approx(gflops, rel=0.02)


def test_pretrain_and_bad_name():
    proc = run("--model", "vit_base", "--pretrain", "--mask_ratio", "0.9")
    stats = json.loads(proc.stdout)
    assert stats["kind"] == "pretrain" and stats["mask_ratio"] == 0.9
    # Encoder on 160 visible tokens + two 4-block decoders over 1568: far below the classifier.
    assert 40 < stats["gflops"] < 70 and 100 < stats["params_m"] < 105
    bad = run("--model", "vit_bse")
    assert bad.returncode != 0 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == ["model_stats: unknown model name 'vit_bse'; known: vit_tiny, "
                                               "vit_small, vit_base, vit_large, vit_huge"]
