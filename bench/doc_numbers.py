"""The numbers README.md and docs/*.md quote for the embedded demo, made by running the documented commands.

    python bench/doc_numbers.py                    # runs them all in order, prints the docs' tables
    python bench/doc_numbers.py --update_docs      # ... and writes each table into its doc
    python bench/doc_numbers.py --from_runs DIR    # tables of an earlier run of this script, nothing run

Each command is the one the docs show, run as a user types it, in a work directory (``--workdir``, default
``runs/doc_numbers``, emptied first) whose ``launch``, ``configs`` and ``ds_configs`` link to this checkout, so the
commands' relative paths (``runs/pretrain_demo`` as the finetunes' ``finetune.init``) resolve there and no earlier
``runs/`` of yours is resumed or overwritten. The ``deepspeed`` commands get a free ``--master_port`` (beside other
runs on the machine); the tables show them without it. The numbers come from the runs' own files (log.jsonl,
metrics.json, knn.json), the wall time from the clock around the command. The docs hold each table between
``<!-- doc_numbers: NAME -->`` and ``<!-- /doc_numbers -->``; ``--update_docs`` replaces what is between them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch
from common import cpu_name

REPO = Path(__file__).resolve().parents[1]
LINKED = ("launch", "configs", "ds_configs")
ZERO2 = "--deepspeed_config ds_configs/zero2.json"
RESULTS = "doc_numbers.json"


@dataclass
class Step:
    """One documented command and where its numbers come from (paths relative to the work directory)."""
    name: str
    command: str
    read: Callable[[Path], dict]
    what: str
    numbers: dict = field(default_factory=dict)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _pretrain_numbers(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    return {"steps": losses[-1]["step"], "first_loss": losses[0]["loss"], "last_loss": losses[-1]["loss"]}


def _top1(run: Path) -> dict:
    m = _json(run / "metrics.json")
    return {"top1": m["top1"], "videos": m["num_videos"], "views": m["views_per_video"]}


def _knn(run: Path) -> dict:
    m = _json(run / "knn.json")
    return {"top1": m["top1"], "videos": m["num_test"]}


def _vos(run: Path) -> dict:
    out = {}
    for name in ("checkpoint", "random_init"):
        m = _json(run / name / "metrics.json")
        out[name] = {"J&F": m["J&F"], "J": m["J"], "F": m["F"]}
    return out


FT = f"deepspeed launch/finetune.py {ZERO2}"
PROBE_RANDOM = "--set finetune.init=none finetune.probe_random_init=true"


def steps() -> list[Step]:
    """The documented commands in the order the README gives them (later ones read runs/pretrain_demo)."""
    return [
        Step("pretrain", f"deepspeed launch/pretrain.py {ZERO2} --output_dir runs/pretrain_demo",
             lambda w: _pretrain_numbers(w / "runs/pretrain_demo"), "demo pretraining"),
        Step("finetune", f"{FT} --output_dir runs/finetune_demo",
             lambda w: _top1(w / "runs/finetune_demo"), "finetune, demo pretraining init"),
        Step("finetune_random", f"{FT} --set finetune.init=none --output_dir runs/finetune_random",
             lambda w: _top1(w / "runs/finetune_random"), "finetune, random init"),
        Step("linprobe", f"{FT} --config configs/linprobe_demo.yaml --output_dir runs/linprobe_demo",
             lambda w: _top1(w / "runs/linprobe_demo"), "linear probe, demo encoder"),
        Step("linprobe_random", f"{FT} --config configs/linprobe_demo.yaml {PROBE_RANDOM} "
             f"--output_dir runs/linprobe_random",
             lambda w: _top1(w / "runs/linprobe_random"), "linear probe, random encoder"),
        Step("attentive", f"{FT} --config configs/attentive_probe_demo.yaml --output_dir runs/attentive_probe_demo",
             lambda w: _top1(w / "runs/attentive_probe_demo"), "attentive probe, demo encoder"),
        Step("attentive_random", f"{FT} --config configs/attentive_probe_demo.yaml {PROBE_RANDOM} "
             f"--output_dir runs/attentive_probe_random",
             lambda w: _top1(w / "runs/attentive_probe_random"), "attentive probe, random encoder"),
        Step("knn", "python launch/knn_eval.py --checkpoint runs/pretrain_demo --output_dir runs/knn_demo",
             lambda w: _knn(w / "runs/knn_demo"), "k-NN, demo encoder"),
        Step("knn_random", "python launch/knn_eval.py --checkpoint none --output_dir runs/knn_random",
             lambda w: _knn(w / "runs/knn_random"), "k-NN, random encoder"),
        Step("vos", "python launch/eval_vos.py --output_dir runs/eval_vos",
             lambda w: _vos(w / "runs/eval_vos"), "VOS, demo encoder and random init"),
    ]


# -- the machine --------------------------------------------------------------------------------------------

def bf16_support() -> str:
    """What the CPU offers for bf16 (its flags), or the accelerator's word where there is one."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}: bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        return "bf16 unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"bf16 in hardware ({', '.join(found)})" if found else "no bf16 in hardware (emulated)"


def machine() -> dict:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "bf16": bf16_support(), "torch": torch.__version__,
            "load_at_start": round(load, 2)}


# -- running ----------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_workdir(workdir: Path) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in LINKED:
        (workdir / name).symlink_to(REPO / name, target_is_directory=True)


def run_step(step: Step, workdir: Path) -> dict:
    argv = step.command.split()
    if argv[0] == "deepspeed":
        argv[1:1] = ["--master_port", str(_free_port())]
    else:
        argv[0] = sys.executable
    log = workdir / f"{step.name}.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(argv, cwd=workdir, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if code != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"doc_numbers: '{step.command}' exited {code} (log {log}):\n{tail}")
    return {"wall_s": round(wall, 1), **step.read(workdir)}


def adopt_pretraining(source: Path, workdir: Path) -> None:
    """``source`` (a finished demo pretraining run) copied to ``workdir/runs/pretrain_demo``, its numbers recorded
    without a wall time; the copy, so nothing is ever written into ``source``."""
    target = workdir / "runs" / "pretrain_demo"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    step = next(s for s in steps() if s.name == "pretrain")
    results = {"steps": {"pretrain": {"wall_s": None, "adopted_from": str(source.resolve()), **step.read(workdir)}},
               "total_s": 0.0}
    (workdir / RESULTS).write_text(json.dumps(results, indent=1) + "\n")


def run_all(workdir: Path, only: Optional[list[str]] = None, jobs: int = 1) -> dict:
    """Run the plan (the pretraining first, alone); ``jobs`` > 1 runs the commands after it that many at once
    (their wall times then overlap). ``doc_numbers.json`` is rewritten after every command; with ``only``, the
    other commands' numbers of an earlier run in ``workdir`` are kept."""
    plan = [s for s in steps() if not only or s.name in only]
    earlier = workdir / RESULTS
    previous = _json(earlier) if only and earlier.exists() else {}
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
               "commit": _commit(), "jobs": jobs, "steps": previous.get("steps", {}),
               "total_s": previous.get("total_s", 0.0)}
    began = time.perf_counter()
    lock = threading.Lock()

    def one(step: Step) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {step.command}", flush=True)
        numbers = run_step(step, workdir)
        with lock:
            results["steps"][step.name] = numbers
            (workdir / RESULTS).write_text(json.dumps(results, indent=1) + "\n")
            print(f"[{time.perf_counter() - began:6.0f} s] {step.name}: {numbers}", flush=True)

    first = [s for s in plan if s.name == "pretrain"]
    for step in first:
        one(step)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(one, s) for s in plan if s not in first]:
            future.result()
    results["total_s"] = round(results["total_s"] + time.perf_counter() - began, 1)
    (workdir / RESULTS).write_text(json.dumps(results, indent=1) + "\n")
    return results


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- tables -----------------------------------------------------------------------------------------------

def _when(results: dict) -> str:
    m = results["machine"]
    jobs = results.get("jobs", 1)
    together = f"; the commands after the pretraining ran {jobs} at once" if jobs > 1 else ""
    return (f"Measured {results['date']} by `python bench/doc_numbers.py` (commit {results['commit']}, "
            f"{results['total_s'] / 60:.0f} min for all commands{together}) on {m['cpu']}, {m['cores']} cores, "
            f"{m['bf16']}, torch {m['torch']}, load average {m['load_at_start']} at the start.")


def _row(results: dict, name: str, cells: Callable[[dict], list[str]]) -> Optional[str]:
    step = results["steps"].get(name)
    if step is None:
        return None
    command = next(s.command for s in steps() if s.name == name)
    return "| " + " | ".join([f"`{command}`", *cells(step)]) + " |"


def _minutes(s: dict) -> str:
    wall = s.get("wall_s")
    if wall is None:
        return "not timed (--pretrain_from)"
    return f"{wall:.0f} s" if wall < 600 else f"{wall / 60:.1f} min"


def _table(results: dict, header: list[str], rows: list[tuple[str, Callable[[dict], list[str]]]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [r for name, cells in rows if (r := _row(results, name, cells)) is not None]
    return "\n".join(lines + ["", _when(results)])


def _top1_cells(s: dict) -> list[str]:
    return [f"{s['top1']:.1f}", _minutes(s)]


def table_readme(results: dict) -> str:
    def pretrain(s: dict) -> list[str]:
        return [f"{s['steps']} steps, loss {s['first_loss']:.3f} -> {s['last_loss']:.3f}", _minutes(s)]

    def vos(s: dict) -> list[str]:
        return [f"J&F {s['checkpoint']['J&F']:.1f} (random init {s['random_init']['J&F']:.1f})", _minutes(s)]

    def top1(s: dict) -> list[str]:
        return [f"test top-1 {s['top1']:.1f}", _minutes(s)]

    def knn(s: dict) -> list[str]:
        return [f"val top-1 {s['top1']:.1f}", _minutes(s)]

    rows = [("pretrain", pretrain), ("finetune", top1), ("finetune_random", top1), ("linprobe", top1),
            ("attentive", top1), ("knn", knn), ("vos", vos)]
    return _table(results, ["command", "result", "wall time"], rows)


def table_evaluation(results: dict) -> dict[str, str]:
    def vos(s: dict) -> list[str]:
        c, r = s["checkpoint"], s["random_init"]
        return [f"{c['J&F']:.1f} / {c['J']:.1f} / {c['F']:.1f}", f"{r['J&F']:.1f} / {r['J']:.1f} / {r['F']:.1f}",
                _minutes(s)]

    vos_table = _table(results, ["command", "demo encoder J&F / J / F", "random init J&F / J / F", "wall time"],
                       [("vos", vos)])
    probes = _table(results, ["command", "top-1", "wall time"],
                    [("linprobe", _top1_cells), ("linprobe_random", _top1_cells), ("attentive", _top1_cells),
                     ("attentive_random", _top1_cells), ("knn", _top1_cells), ("knn_random", _top1_cells)])
    return {"evaluation_vos": vos_table, "evaluation_probes": probes}


def table_reproduction(results: dict) -> str:
    def pretrain(s: dict) -> list[str]:
        return [f"loss {s['first_loss']:.3f} -> {s['last_loss']:.3f} over {s['steps']} steps", _minutes(s)]

    def top1(s: dict) -> list[str]:
        return [f"test top-1 {s['top1']:.1f} ({s['videos']} videos x {s['views']} views)", _minutes(s)]

    return _table(results, ["command", "result", "wall time"],
                  [("pretrain", pretrain), ("finetune", top1), ("finetune_random", top1), ("linprobe", top1)])


def tables(results: dict) -> dict[str, str]:
    """Marker name -> the table (with its date and machine line) that goes between the doc's markers."""
    return {"readme": table_readme(results), **table_evaluation(results),
            "reproduction": table_reproduction(results)}


DOCS = {"readme": "README.md", "evaluation_vos": "docs/EVALUATION.md", "evaluation_probes": "docs/EVALUATION.md",
        "reproduction": "docs/REPRODUCTION.md"}


def replace_block(text: str, name: str, table: str) -> str:
    """``text`` with what lies between ``<!-- doc_numbers: name -->`` and the next ``<!-- /doc_numbers -->``
    replaced by ``table``; ValueError when the doc has no such markers."""
    begin, end = f"<!-- doc_numbers: {name} -->", "<!-- /doc_numbers -->"
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        raise ValueError(f"no '{begin}' ... '{end}' block")
    return text[:start + len(begin)] + "\n" + table + "\n" + text[stop:]


def update_docs(made: dict[str, str], root: Path = REPO) -> list[Path]:
    written = []
    for name, table in made.items():
        path = root / DOCS[name]
        try:
            path.write_text(replace_block(path.read_text(), name, table))
        except ValueError as exc:
            raise SystemExit(f"doc_numbers: {path}: {exc}") from None
        written.append(path)
    return sorted(set(written))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=str(REPO / "runs" / "doc_numbers"),
                   help="where the runs go (emptied first); default runs/doc_numbers")
    p.add_argument("--only", nargs="+", choices=[s.name for s in steps()],
                   help="run these commands only (later ones need runs/pretrain_demo of an earlier run)")
    p.add_argument("--pretrain_from", default=None,
                   help="copy this finished demo pretraining run in as runs/pretrain_demo instead of running it "
                        "(its numbers are read from its log; its wall time is not measured)")
    p.add_argument("--from_runs", default=None, help="print the tables of an earlier run's doc_numbers.json")
    p.add_argument("--jobs", type=int, default=1,
                   help="commands after the pretraining run this many at once (default 1: wall times alone)")
    p.add_argument("--update_docs", action="store_true", help="write the tables into README.md and docs/")
    args = p.parse_args(argv)
    if args.from_runs:
        results = _json(Path(args.from_runs) / RESULTS)
    else:
        workdir = Path(args.workdir).resolve()
        if not args.only or not workdir.exists():
            prepare_workdir(workdir)
        only = args.only
        if args.pretrain_from:
            adopt_pretraining(Path(args.pretrain_from), workdir)
            only = [s.name for s in steps() if s.name != "pretrain" and (not args.only or s.name in args.only)]
        results = run_all(workdir, only, args.jobs)
    made = tables(results)
    for name, table in made.items():
        print(f"\n<!-- doc_numbers: {name} -->  ({DOCS[name]})\n{table}\n<!-- /doc_numbers -->")
    if args.update_docs:
        for path in update_docs(made):
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
