"""The machine part of bench/gpu_check.py: what it is (device, CUDA, NCCL, bf16, library versions) and the tests
marked ``gpu`` (bench/gpu_tests), run by pytest in a subprocess and counted from its JUnit XML."""
from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

import torch
from common import cpu_name

REPO = Path(__file__).resolve().parents[1]
# pytest's budget for the gpu tests (each subprocess test has 300 s of its own), and for DeepSpeed's FusedAdam
# with --fused_adam: its JIT build alone took ~400 s
GPU_TESTS_TIMEOUT_S = 600
FUSED_ADAM_TIMEOUT_S = 900


# -- environment --------------------------------------------------------------------------------------
def _version(module: str) -> Optional[str]:
    try:
        return getattr(importlib.import_module(module), "__version__", "present")
    except Exception as exc:  # a missing wheel is a finding, not a crash
        return f"missing ({type(exc).__name__})"


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "host": platform.node(),
        "python": platform.python_version(), "torch": torch.__version__, "cuda_available": cuda,
        "cuda_runtime": torch.version.cuda, "cpu_count": os.cpu_count(),
        "deepspeed": _version("deepspeed"), "transformers": _version("transformers"), "av": _version("av"),
        "decord": _version("decord"), "torchcodec": _version("torchcodec"),
    }
    if cuda:
        env.update(device=torch.cuda.get_device_name(0),
                   capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                   memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1),
                   bf16=torch.cuda.is_bf16_supported(), nccl=".".join(map(str, torch.cuda.nccl.version())),
                   flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                   efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled())
    else:
        env.update(device=cpu_name(), bf16=True, nccl=None)
    return env


# -- the gpu tests ------------------------------------------------------------------------------------
def gpu_tests(timeout: float, marker: str = "gpu and not fused_adam") -> dict[str, Any]:
    """pytest over bench/gpu_tests (``marker``) in a subprocess; counts from its JUnit XML. Without CUDA the
    tests are only collected (``ran`` false): they cannot run there, and a skip would be no check."""
    if not torch.cuda.is_available():
        cmd = [sys.executable, "-m", "pytest", "bench/gpu_tests", "-m", marker, "-q", "-p", "no:cacheprovider",
               "--collect-only"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        collected = sum("::" in line for line in proc.stdout.splitlines())
        return {"command": " ".join(cmd[1:]), "exit": proc.returncode, "ran": False, "tests": collected,
                "passed": 0, "failures": 0, "errors": int(proc.returncode != 0), "skipped": 0, "failed": [],
                "tail": (proc.stdout + proc.stderr)[-2000:]}
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "gpu.xml"
        cmd = [sys.executable, "-m", "pytest", "bench/gpu_tests", "-m", marker, "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        out: dict[str, Any] = {"command": " ".join(cmd[1:]), "exit": proc.returncode, "ran": True}
        if xml.is_file():
            suite = ET.parse(xml).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
            out.update(counts)
            out["failed"] = [f"{c.get('classname')}.{c.get('name')}" for c in suite.iter("testcase")
                             if c.find("failure") is not None or c.find("error") is not None]
        out["tail"] = (proc.stdout + proc.stderr)[-2000:]
    return out
