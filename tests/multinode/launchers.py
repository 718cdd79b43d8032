"""Helpers for multi-"node" runs on one machine: the SLURM script's dry run, one ``deepspeed --no_ssh`` launcher
per "node" of a hostfile job, and process-tree lookups for killing one rank. Ports, the environment, starting
and killing a run and reading its log are in tests/helpers.py."""
from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import psutil

from tests.helpers import REPO, run_env, start

_HERE = Path(__file__).resolve().parent
PRETRAIN = REPO / "launch" / "pretrain.py"
SBATCH = REPO / "launch" / "slurm_pretrain.sbatch"
VITL_JSON = REPO / "ds_configs" / "zero2_vitl_32gpu.json"


def render_sbatch(hosts: list[str], gpus: int, extra: list[str] = (), **env: str) -> subprocess.CompletedProcess:
    """The SLURM script's --dry_run output for these hosts (no SLURM needed)."""
    full = run_env()
    for key in ("SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_JOB_ID"):
        full.pop(key, None)
    full.update(MOTIONMAE_HOSTS=" ".join(hosts), GPUS_PER_NODE=str(gpus), **{k: str(v) for k, v in env.items()})
    return subprocess.run(["bash", str(SBATCH), "--dry_run", *map(str, extra)], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=60)


def rendered_commands(stdout: str) -> tuple[list[str], list[list[str]]]:
    """(srun argv, [per-node deepspeed argv, ...]) from a dry run."""
    lines = [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]
    return lines[0], lines[1:]


def srun_task(srun_argv: list[str]) -> list[str]:
    """What srun runs on every node: the argv after srun's own options."""
    return srun_argv[srun_argv.index("bash"):]


def node_launcher(node_rank: int, port: int, hostfile: Path, args: list, script: Path = PRETRAIN,
                  log_path: Path = None, extra_env: dict = None) -> subprocess.Popen:
    """One `deepspeed --no_ssh` launcher for one "node" of a hostfile job, in its own process group."""
    cmd = ["deepspeed", "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node_rank),
           "--master_addr", "127.0.0.1", "--master_port", str(port), str(script), *map(str, args)]
    return start(cmd, log_path, extra_env)


def rank_workers(launcher: subprocess.Popen) -> list[psutil.Process]:
    """The training processes (not the launchers) below a deepspeed launcher."""
    kids = psutil.Process(launcher.pid).children(recursive=True)
    return [p for p in kids if any(a.startswith("--local_rank") for a in p.cmdline())]


def wait_exit(proc: subprocess.Popen, timeout: float) -> tuple[int | None, float]:
    """(return code or None if still running after `timeout`, seconds waited)."""
    t0 = time.time()
    try:
        return proc.wait(timeout=timeout), time.time() - t0
    except subprocess.TimeoutExpired:
        return None, time.time() - t0


def slurm_stubs(bin_dir: Path, record: Path) -> Path:
    """``srun``, ``scontrol`` and ``pkill`` for running launch/slurm_pretrain.sbatch on this machine as a one-node
    job: srun runs its command here as node 0, ``scontrol show hostnames`` names localhost and ``scontrol requeue``
    is written to ``record``; pkill is the real one limited to the job's session (the machine is shared, a node of
    a real job is not)."""
    import shutil

    bin_dir.mkdir(parents=True, exist_ok=True)
    scripts = {
        "srun": '#!/bin/bash\nwhile [[ "${1:-}" == -* ]]; do shift; done\nSLURM_NODEID=0 exec "$@"\n',
        "scontrol": (f'#!/bin/bash\ncase "$1" in\n  show) echo localhost ;;\n  requeue) echo "requeue $2" >> '
                     f'{shlex.quote(str(record))} ;;\nesac\n'),
        "pkill": f'#!/bin/bash\nexec {shutil.which("pkill")} -s 0 "$@"\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir
