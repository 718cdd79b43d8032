"""launch/model_stats.py: one JSON line reproducing the paper's Table 1 (params within 1%, GFLOPs within 2%)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from motionmae_ds.models import pretrain_macs

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "model_stats.py"


@pytest.fixture(scope="module")
def model_stats():
    spec = importlib.util.spec_from_file_location("model_stats", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_prints_one_json_line_for_vit_base():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "vit_base", "--num_frames", "16", "--img_size",
                           "224", "--num_classes", "174"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    stats = json.loads(lines[0])
    assert stats["params_m"] == pytest.approx(87, rel=0.01)
    assert stats["gflops"] == pytest.approx(180, rel=0.02)


def test_vit_large(model_stats, capsys):
    stats = model_stats.main(["--model", "vit_large", "--num_frames", "16", "--img_size", "224"])
    assert json.loads(capsys.readouterr().out) == stats
    assert stats["params_m"] == pytest.approx(305, rel=0.01)
    assert stats["gflops"] == pytest.approx(598, rel=0.02)


def test_pretrain(model_stats, capsys):
    stats = model_stats.main(["--model", "vit_base", "--pretrain", "--mask_ratio", "0.9"])
    assert stats["kind"] == "pretrain" and stats["mask_ratio"] == 0.9
    # Encoder on 160 visible tokens + two 4-block decoders over 1568 tokens: far below the classifier.
    assert 40 < stats["gflops"] < 70 and 100 < stats["params_m"] < 105
    shared = model_stats.main(["--model", "vit_base", "--pretrain", "--decoder_mode", "shared"])
    assert shared["params_m"] < stats["params_m"] and shared["gflops"] < stats["gflops"]
    dual = model_stats.main(["--model", "vit_base", "--pretrain", "--decoder_ratio", "0.5"])
    assert dual["decoder_ratio"] == 0.5 and dual["params_m"] == stats["params_m"]
    assert dual["gflops"] == pytest.approx(pretrain_macs(0.9, decoder_ratio=0.5, name="vit_base") / 1e9, abs=1e-3)
    # the decoders' share falls from 2 x 1568 tokens to 2 x (160 + 704)
    assert 0.55 * stats["gflops"] < dual["gflops"] < 0.7 * stats["gflops"]


def test_bad_name_is_one_line():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "vit_bse"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "model_stats: unknown model name 'vit_bse'; known: vit_tiny, vit_small, vit_base, vit_large, vit_huge"]
