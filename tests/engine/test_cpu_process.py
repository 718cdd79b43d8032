"""keep_freed_memory really changes what glibc does: a 64 MiB activation-sized block allocated and freed
every step is, once the heap has grown to hold it, reused without page faults instead of being mapped,
faulted in and unmapped every step; and the resident set stops growing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = 64 << 20
PAGES = BLOCK // os.sysconf("SC_PAGE_SIZE")

CHILD = r"""
import json, resource, sys
import torch
from motionmae_ds.engine.cpu_process import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
faults, rss = [], []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(%d, dtype=torch.uint8)
    x.fill_(1)  # touch every page, as a step writes its activations
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    rss.append(int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) << 10)
print(json.dumps({"took": took, "faults": faults, "rss": rss}))
""" % BLOCK


def run_child(mode: str, **env) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "MOTIONMAE_KEEP_FREED"))}
    proc = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**clean, **env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default = run_child("default")
    # glibc's default: a 64 MiB block is above the mmap threshold, mapped and unmapped every time
    assert min(default["faults"]) > 0.9 * PAGES
    keep = run_child("keep")
    assert keep["took"] is True
    assert keep["faults"][0] > 0.9 * PAGES  # the first step maps the memory
    # glibc's bins take a few steps to settle (posix_memalign asks for a little more than the freed
    # block); from then on the same memory serves every step and the resident set is flat
    assert max(keep["faults"][-4:]) < 0.02 * PAGES
    assert max(keep["rss"][-4:]) - min(keep["rss"][-4:]) < BLOCK // 8


@pytest.mark.parametrize("env", [{"MOTIONMAE_KEEP_FREED_MEMORY": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"}])
def test_opt_out_and_user_settings_win(env):
    res = run_child("keep", **env)
    assert res["took"] is False
    assert min(res["faults"]) > 0.9 * PAGES
