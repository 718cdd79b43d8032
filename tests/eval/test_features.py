"""Feature extraction (eval/features.py, launch/extract_features.py): real MP4s and an unreadable file, a
2-rank run under the real deepspeed launcher equal to the 1-rank run, and resume after a SIGKILL."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from motionmae_ds.data.synthetic import ensure_synthetic_dataset
from motionmae_ds.eval.features import POOLED, read_pooled
from tests.helpers import REPO, call_main, launch, run_env

NUM_GOOD = 7


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A list of 7 tiny synthetic MP4s with an unreadable file in the middle, and a tiny finetuning config."""
    root = tmp_path_factory.mktemp("extract")
    made = Path(ensure_synthetic_dataset(root / "videos", kind="pretrain", num_videos=NUM_GOOD, num_frames=8,
                                         size=32))
    lines = [f"{line.split()[0]} {i % 3}" for i, line in enumerate(made.read_text().splitlines())]
    broken = root / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(600))
    lines.insert(3, f"{broken} 1")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    config = {"model": {"name": "vit_tiny", "num_classes": 3, "num_frames": 4, "img_size": 32, "patch_size": 16,
                        "tubelet_size": 2, "embed_dim": 48, "depth": 1, "num_heads": 3},
              "data": {"synthetic": False, "train_list": str(root / "list.txt"), "sampling_rate": 1,
                       "num_workers": 0, "short_side_size": 32},
              "eval": {"batch_size": 3}, "run": {"seed": 0}}
    (root / "tiny.yaml").write_text(json.dumps(config))
    return {"list": root / "list.txt", "config": root / "tiny.yaml", "broken": broken, "root": root}


def extract_args(inputs: dict, out: Path, *extra) -> list:
    return ["--checkpoint", "none", "--config", inputs["config"], "--list", inputs["list"], "--output_dir", out,
            "--tokens", *extra]


def tensors_of(out: Path) -> dict[int, dict[str, torch.Tensor]]:
    result = {}
    for path in sorted((out / "videos").glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            result[int(path.stem)] = {k: f.get_tensor(k) for k in f.keys()}
    return result


@pytest.fixture(scope="module")
def one_rank(inputs) -> Path:
    out = inputs["root"] / "one_rank"
    proc = launch("extract_features.py", extract_args(inputs, out), timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"features of {NUM_GOOD + 1} videos: {NUM_GOOD} computed, 0 already written, 1 unreadable" in proc.stdout
    assert f"skipped bad video {inputs['broken']}: " in proc.stdout
    assert f"{inputs['broken']}: {inputs['broken']}" not in proc.stdout  # the path once, then the reason
    return out


def test_one_rank_extraction_writes_videos_index_and_pooled(one_rank, inputs):
    index = json.loads((one_rank / "index.json").read_text())
    assert [v["index"] for v in index["videos"]] == [0, 1, 2, 4, 5, 6, 7]
    assert [u["path"] for u in index["unreadable"]] == [str(inputs["broken"])]
    assert index["dim"] == 48 and index["num_videos"] == NUM_GOOD + 1
    feats = tensors_of(one_rank)
    assert feats[0]["pooled"].shape == (48,) and feats[0]["tokens"].shape == (2, 2, 2, 48)
    assert torch.allclose(feats[0]["tokens"].mean(dim=(0, 1, 2)), feats[0]["pooled"], atol=1e-6)
    pooled, labels = read_pooled(one_rank)
    assert pooled.shape == (NUM_GOOD, 48) and labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert torch.equal(pooled[3], feats[4]["pooled"])


def test_two_rank_extraction_equals_one_rank(one_rank, inputs):
    out = inputs["root"] / "two_ranks"
    proc = launch("extract_features.py", extract_args(inputs, out), ranks=2, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"features of {NUM_GOOD + 1} videos: {NUM_GOOD} computed, 0 already written, 1 unreadable" in proc.stdout
    ours, reference = tensors_of(out), tensors_of(one_rank)
    assert sorted(ours) == sorted(reference)
    for i in reference:
        for key in ("pooled", "tokens"):
            assert torch.allclose(ours[i][key], reference[i][key], atol=1e-5), (i, key)
    a = json.loads((out / "index.json").read_text())
    b = json.loads((one_rank / "index.json").read_text())
    assert a["videos"] == b["videos"] and a["unreadable"] == b["unreadable"]


def test_killed_extraction_resumes_without_recomputing_finished_videos(one_rank, inputs):
    import subprocess
    import sys

    out = inputs["root"] / "killed"
    script = REPO / "tests" / "eval" / "killed_extraction.py"
    args = [str(a) for a in extract_args(inputs, out, "--batch_size", "1")]
    proc = subprocess.run([sys.executable, str(script), *args], cwd=REPO, capture_output=True, text=True,
                          env=run_env(MOTIONMAE_TEST_KILL_AFTER="3"), timeout=240)
    assert proc.returncode == -9, proc.stderr[-2000:]
    done = sorted((out / "videos").glob("*.safetensors"))
    assert [p.stem for p in done] == ["0000000", "0000001", "0000002"]
    assert not (out / POOLED).exists()
    stamps = {p: p.stat().st_mtime_ns for p in done}
    proc = launch("extract_features.py", args, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f"features of {NUM_GOOD + 1} videos: {NUM_GOOD - 3} computed, 3 already written, 1 unreadable"
            in proc.stdout)
    assert {p: p.stat().st_mtime_ns for p in done} == stamps   # finished videos were not rewritten
    ours, reference = tensors_of(out), tensors_of(one_rank)
    assert sorted(ours) == sorted(reference)
    for i in reference:
        assert torch.allclose(ours[i]["pooled"], reference[i]["pooled"], atol=1e-5)
    assert read_pooled(out)[0].shape == (NUM_GOOD, 48)


def test_bad_input_is_one_line_and_exit_2(inputs, tmp_path):
    proc = call_main("extract_features.py", ["--checkpoint", "none", "--list", tmp_path / "missing.txt",
                                             "--output_dir", tmp_path / "o", "--config", inputs["config"]])
    assert proc.returncode == 2
    assert re.fullmatch(r"config error: --list \S+missing\.txt: file not found", proc.stderr.strip())


def test_evaluation_precision_is_bf16_on_accelerators_and_fp32_on_the_cpu():
    # evaluation, feature extraction and VOS run their model under inference_precision: bf16 autocast (TF32 for
    # what stays fp32) on an accelerator, as the model trained; on the CPU nothing changes (fp32, the numbers the
    # CPU tests and benchmarks were measured with)
    from motionmae_ds.runtime.distributed import inference_dtype, inference_precision

    assert inference_dtype(torch.device("cuda", 1)) == torch.bfloat16
    assert inference_dtype(torch.device("cpu")) is None
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with inference_precision(torch.device("cpu")):
        y = layer(x)
    assert y.dtype == torch.float32 and torch.equal(y, layer(x))
    assert not torch.is_autocast_enabled("cpu")


def test_root_prefixes_relative_paths_and_a_list_with_nothing_readable_exits_4(inputs, tmp_path):
    # the same videos listed relative to --root: the features equal the absolute list's
    lines = inputs["list"].read_text().splitlines()
    good = [line for line in lines if str(inputs["broken"]) not in line][:2]
    root = Path(good[0].split()[0]).parent
    relative = tmp_path / "relative.txt"
    relative.write_text("".join(f"{Path(line.split()[0]).name} {line.split()[1]}\n" for line in good))
    out = tmp_path / "rel"
    proc = launch("extract_features.py", ["--checkpoint", "none", "--config", inputs["config"], "--list", relative,
                                          "--root", root, "--output_dir", out], timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "features of 2 videos: 2 computed, 0 already written, 0 unreadable" in proc.stdout
    index = json.loads((out / "index.json").read_text())
    assert [v["path"] for v in index["videos"]] == [line.split()[0] for line in good]

    # without --root the same list names nothing that exists: exit 4 and one line, not "0 computed" and exit 0
    proc = launch("extract_features.py", ["--checkpoint", "none", "--config", inputs["config"], "--list", relative,
                                          "--output_dir", tmp_path / "none"], timeout=240)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: unreadable data: features of 2 videos: 0 computed, 0 already written, 2 unreadable "
                        r"-> \S+: no video could be read \(the first: \S+\.mp4: .+\); check the list's paths and "
                        r"--root", last), last


def test_root_must_be_a_directory(inputs, tmp_path):
    proc = call_main("extract_features.py", ["--checkpoint", "none", "--list", inputs["list"], "--root",
                                             tmp_path / "nowhere", "--output_dir", tmp_path / "o", "--config",
                                             inputs["config"]])
    assert proc.returncode == 2
    assert re.fullmatch(r"config error: --root \S+nowhere: directory not found", proc.stderr.strip())
