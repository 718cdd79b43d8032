"""bench/gpu_check.py in its dry mode (chosen by itself without CUDA): one real run writes its JSON and table with
every part filled, and a failing case becomes a row with its error instead of stopping the check."""
import json
import subprocess
import sys

import torch

from tests.bench.scripts import load_script
from tests.helpers import REPO, run_env

SCRIPT = REPO / "bench" / "gpu_check.py"


def _module():
    return load_script("gpu_check")


def test_dry_mode_writes_the_json_and_the_table(tmp_path):
    out = tmp_path / "check" / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=REPO, env=run_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == ("full" if torch.cuda.is_available() else "dry")
    env = result["env"]
    assert env["torch"] == torch.__version__ and "bf16" in env and "nccl" in env
    tests = result["gpu_tests"]
    # the gpu-marked tests were collected and, without CUDA, not run (no pass counted); DeepSpeed's FusedAdam, which
    # the trainer never uses, is not among them
    assert tests["tests"] >= 6 and tests["failures"] == tests["errors"] == 0
    assert "test_deepspeed_fused_adam" not in tests["tail"] and "(1 deselected)" in tests["tail"]
    if not torch.cuda.is_available():
        assert tests["ran"] is False and tests["passed"] == 0 and tests["skipped"] == 0
    cases = {(r["impl"], r["act_ckpt"], r["compile"]) for r in result["steps"]}
    assert {("ours", False, False), ("ours", True, False), ("hf", False, False)} <= cases
    for row in result["steps"]:
        assert "error" not in row, row
        assert row["step_s"] > 0 and row["tflops"] > 0
        assert abs(row["clips_per_s"] - row["batch"] / row["step_s"]) <= 0.01 * row["clips_per_s"]  # both rounded
        assert row["peak_gib"] > 0
    hf = next(r for r in result["steps"] if r["impl"] == "hf")
    assert hf["ours_over_hf_step_time"] > 0
    assert [r["workers"] for r in result["loader"]] == list(result["settings"]["loader_workers"])
    assert all(r["clips_per_s"] > 0 and r["clips"] > 0 for r in result["loader"])
    decode, finishing = result["data"]  # NVDEC (without CUDA: torchcodec's CPU decoder against PyAV's) and finishing
    assert "error" not in decode and "error" not in finishing, result["data"]
    if "skipped" not in decode:
        assert decode["within_rounding"] and decode["clips"] >= 2 and decode["other_clips_per_s"] > 0
    assert finishing["out_shape"][1:3] == [3, finishing["frames"]] and finishing["ms_per_batch"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| model | impl |" in table and "gpu tests:" in table
    assert ("not run (no CUDA)" in table) is (not torch.cuda.is_available())
    assert table in proc.stdout


def test_a_failing_case_is_a_row_not_a_crash():
    gc = _module()

    def broken():
        raise RuntimeError("CUDA out of memory. Tried to allocate 4 GiB\nmore detail")

    row = gc.guarded(broken)
    assert row["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 4 GiB" and "wall_s" in row
    result = {"mode": "full", "env": {"date_utc": "d", "device": "x", "torch": "t", "cuda_runtime": "c", "nccl": "n",
                                      "bf16": True, "deepspeed": "v"},
              "gpu_tests": {"tests": 2, "passed": 1, "failures": 1, "errors": 0, "skipped": 0, "failed": ["a.b"]},
              "steps": [{"model": "vit_large", "impl": "ours", "act_ckpt": False, "compile": False, **row}],
              "loader": [{"workers": 8, **row}]}
    table = gc.table(result)
    assert "1 passed, 1 failed" in table and "failed: a.b" in table
    assert "| vit_large | ours | False | False | | RuntimeError: CUDA out of memory" in table


def test_fused_adam_is_information_and_the_budgets_fit():
    gc = _module()
    info = gc.gpu_tests(120, marker="fused_adam")
    assert info["tests"] == 1 and info["errors"] == 0 and "test_deepspeed_fused_adam" in info["tail"]
    # the check's own tests leave it out, and a budget below its ~400 s JIT build would kill it half-way
    assert "test_deepspeed_fused_adam" not in gc.gpu_tests(120)["tail"]
    assert gc.FUSED_ADAM_TIMEOUT_S > 800 > 400 and gc.GPU_TESTS_TIMEOUT_S > 300  # 300: each subprocess test's own
    result = {"mode": "full", "env": {"date_utc": "d", "device": "x", "torch": "t", "cuda_runtime": "c", "nccl": "n",
                                      "bf16": True, "deepspeed": "v"},
              "gpu_tests": {"tests": 1, "passed": 1, "failures": 0, "errors": 0, "skipped": 0, "failed": []},
              "fused_adam": {"tests": 1, "passed": 0, "failures": 1, "errors": 0, "failed": ["a.fused"]},
              "steps": [], "loader": []}
    assert "DeepSpeed FusedAdam (information only, the trainer uses torch's AdamW): failed: a.fused" in gc.table(result)


def test_full_mode_has_activation_checkpointing_with_compile_and_the_h200_nvl_peak():
    gc = _module()
    assert gc.step_cases("vit_base", gc.FULL) == [("ours", False, False), ("ours", True, False), ("hf", False, False),
                                                  ("ours", False, True), ("ours", True, True)]
    assert gc.step_cases("vit_large", gc.FULL) == [("ours", False, False), ("ours", True, False), ("hf", False, False)]
    from motionmae_ds.train.mfu import peak_bf16_flops

    assert peak_bf16_flops("NVIDIA H200 NVL") == 835e12 and peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA H100 NVL") == 835e12


def test_the_gpu_wheel_set_carries_the_shards_dependencies():
    script = (REPO / "bench" / "prepare_gpu_wheels.sh").read_text()
    pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().split() if "==" in line)
    assert f"webdataset=={pins['webdataset']}" in script and "braceexpand==" in script


def test_parts_split_the_cases_and_every_case_is_saved_as_it_ends(monkeypatch):
    """--part main runs all but the compiled step cases, --part compile only those, and the result so far is saved
    after every case (a lease's time limit then keeps what ran). The cases themselves are replaced by recorders:
    what is tested is the driver's choice and order."""
    gc = _module()
    ran = []

    def case(name):
        def record(*args, **kwargs):
            ran.append(name(*args, **kwargs) if callable(name) else name)
            return {"value": len(ran)}
        return record

    monkeypatch.setattr(gc, "gpu_tests", case("tests"))
    monkeypatch.setattr(gc, "engine_case", case(lambda cfg, p, hf: ("step", "hf" if hf else "ours",
                                                                   cfg.model.grad_checkpointing, cfg.run.compile)))
    monkeypatch.setattr(gc, "loader_case", case(lambda cfg, w, b: ("loader", w)))
    monkeypatch.setattr(gc, "bench_video", lambda dry, out: "video.mp4")
    monkeypatch.setattr(gc, "nvdec_case", case("nvdec"))
    monkeypatch.setattr(gc, "finishing_case", case("finishing"))
    compiled = [("step", "ours", False, True), ("step", "ours", True, True)]
    eager = [("step", "ours", False, False), ("step", "ours", True, False), ("step", "hf", False, False)]
    main = ["tests", *eager, ("loader", 0), ("loader", 2), "nvdec", "finishing"]
    for part, expected in (("main", main), ("compile", compiled), ("all", ["tests", *eager, *compiled, *main[4:]])):
        ran.clear()
        saved = []
        result = gc.run(True, compile_in_dry=True, part=part, save=lambda r, saved=saved: saved.append(json.dumps(r)))
        assert ran == expected, part
        # one save per case, each holding exactly the cases done by then
        assert len(saved) == len(expected)
        for k, snapshot in enumerate(saved):
            r = json.loads(snapshot)
            done = len(r["steps"]) + len(r["loader"]) + len(r["data"]) + ("value" in r["gpu_tests"])
            assert done == k + 1, (part, k)
        assert result["part"] == part
        assert ("value" in result["gpu_tests"]) is (part != "compile")
