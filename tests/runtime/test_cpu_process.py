"""keep_freed_memory really changes what glibc does: the activation-sized blocks a step allocates and
frees are, once the heap has grown to hold them, reused without page faults, where glibc's default maps,
faults in and unmaps every block above its mmap threshold (at most 32 MiB) on every step."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCKS_MIB = (64, 32, 16)  # one "step": allocate, touch, then free all of them
PAGE = os.sysconf("SC_PAGE_SIZE")
STEP_PAGES = sum(BLOCKS_MIB) * (1 << 20) // PAGE
BIG_PAGES = (64 << 20) // PAGE  # above glibc's largest dynamic mmap threshold: mapped every step by default
STEPS, SETTLED = 30, 10

CHILD = r"""
import json, resource, sys
import torch
from motionmae_ds.runtime.cpu_process import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
faults, rss = [], []
for _ in range(%d):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.empty(mib << 20, dtype=torch.uint8).fill_(1) for mib in %r]  # touch every page
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    rss.append(int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) << 10)
print(json.dumps({"took": took, "faults": faults, "rss": rss}))
""" % (STEPS, BLOCKS_MIB)


def run_child(mode: str, **env) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "MOTIONMAE_KEEP_FREED"))}
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**clean, **env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default = run_child("default")
    assert min(default["faults"]) > 0.9 * BIG_PAGES, default["faults"]
    keep = run_child("keep")
    assert keep["took"] is True
    assert keep["faults"][0] > 0.9 * STEP_PAGES  # the first step maps the memory
    # glibc's bins take a few steps to settle (posix_memalign asks for a little more than a freed block
    # holds); from then on the same memory serves every step and the resident set is flat
    assert max(keep["faults"][-SETTLED:]) < 0.01 * STEP_PAGES, keep["faults"]
    assert max(keep["rss"][-SETTLED:]) - min(keep["rss"][-SETTLED:]) < (8 << 20)


@pytest.mark.parametrize("env", [{"MOTIONMAE_KEEP_FREED_MEMORY": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"}])
def test_opt_out_and_user_settings_win(env):
    res = run_child("keep", **env)
    assert res["took"] is False
    assert min(res["faults"]) > 0.9 * BIG_PAGES
