"""What every test suite shares to start real runs and watch them: the repo's paths, a free port, the environment
of the processes tests start, launcher command lines, waiting on and killing a run, reading its log.

    from tests.helpers import REPO, ZERO2, free_port, kill9, launch, launch_cmd, read_log, run_env, start, wait_for

pytest.ini puts the repo root on sys.path, so test modules and conftest files import this as ``tests.helpers``
(as they import ``tests.checkpoint.zero_runs``). The processes the tests start, launchers and worker
scripts alike, get no such path: they import ``motionmae_ds`` from the install, which is what the launcher tests
check, and take what they need from the tests on their command line.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
ZERO2 = REPO / "ds_configs" / "zero2.json"


# Master ports for the runs tests start. A port the OS picks (bind to 0) and the test then releases can be handed to
# another process before the launcher binds it: to another xdist worker's run, or as the local end of any outgoing
# connection, since the OS picks both from its ephemeral range. These come from just below that range, where no
# connection gets a port by chance, and each is held for the test that asked for it by an exclusive lock on a file
# named after it, in a directory that every test process on the machine shares: no two tests hold one port at a time.
# The autouse fixture in tests/conftest.py releases a test's ports when it ends.
PORT_SPAN = 8000
_PORT_LOCKS = Path(tempfile.gettempdir()) / "motionmae_test_ports"
_held_ports: dict[int, int] = {}  # port -> descriptor of its lock file


def _port_range() -> tuple[int, int]:
    """[low, high) under the kernel's ephemeral range (Linux: ip_local_port_range; 32768 elsewhere)."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    high = max(ephemeral_low, 1024 + PORT_SPAN)
    return high - PORT_SPAN, high


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port for a run's master (TCP store), held by this test until it ends (``release_ports``)."""
    _PORT_LOCKS.mkdir(exist_ok=True)
    low, high = _port_range()
    first = low + (os.getpid() * 7919 + time.monotonic_ns()) % (high - low)  # workers start far apart
    for k in range(high - low):
        port = low + (first - low + k) % (high - low)
        if port in _held_ports:
            continue
        fd = os.open(_PORT_LOCKS / str(port), os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another test holds it
            os.close(fd)
            continue
        if _bindable(port):
            _held_ports[port] = fd
            return port
        os.close(fd)  # in use outside the tests (or in TIME_WAIT): the next one
    raise RuntimeError(f"no free port in [{low}, {high}) for a test run")


def release_ports() -> None:
    """Hand back the ports this test process holds (the runs that used them have ended)."""
    for fd in _held_ports.values():
        os.close(fd)
    _held_ports.clear()


def run_env(**extra: str) -> dict[str, str]:
    """The environment of a process a test starts: the CPU accelerator, one thread per rank, unbuffered output."""
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def launch_cmd(script: str | Path, args: Sequence = (), ranks: int = 0) -> list[str]:
    """``script`` (a file name in launch/, or an absolute path) with ``args``: ``ranks`` 0 runs plain ``python``
    (one process, no launcher), more runs the real ``deepspeed`` launcher with that many ranks on a free port."""
    path = str(script if Path(script).is_absolute() else REPO / "launch" / script)
    if ranks:
        return ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port()), path, *map(str, args)]
    return [sys.executable, path, *map(str, args)]


def launch(script: str | Path, args: Sequence = (), ranks: int = 0, timeout: float = 300, cwd: Path = REPO
           ) -> subprocess.CompletedProcess:
    """``launch_cmd(script, args, ranks)`` run to its end, output captured."""
    return subprocess.run(launch_cmd(script, args, ranks), cwd=cwd, env=run_env(), capture_output=True, text=True,
                          timeout=timeout)


def call_main(script: str, args: Sequence = ()) -> subprocess.CompletedProcess:
    """``launch/<script>``'s ``main(args)`` in this process, stdout and stderr captured, as a CompletedProcess.
    For failures that happen before any process group or engine exists (bad arguments, configs, files): the
    same code a user's command runs, without the 5-10 s of interpreter and import start-up a subprocess costs
    here. Each test file that uses it keeps at least one real subprocess of the same entry point."""
    import contextlib
    import importlib.util
    import io

    path = REPO / "launch" / script
    spec = importlib.util.spec_from_file_location(f"_launch_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess([str(path), *map(str, args)], code, out.getvalue(), err.getvalue())


def start(cmd: list[str], log_path: Optional[Path] = None, extra_env: Optional[dict[str, str]] = None,
          cwd: Path = REPO) -> subprocess.Popen:
    """``cmd`` in the background, stdout and stderr to ``log_path``, in its own process group (so ``kill9``
    reaches a launcher and every rank below it)."""
    env = run_env(**(extra_env or {}))
    if log_path is None:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_terminal_signals)
    with open(log_path, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_terminal_signals)


def _terminal_signals() -> None:
    """In the child before it runs: SIGINT and SIGQUIT as a terminal's command has them. A suite started in the
    background by a script (``cmd &`` without job control) inherits them ignored, and Python then installs no
    KeyboardInterrupt handler, so a test's Ctrl-C would not reach the run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a run from ``start`` (stopped processes included) and reap it; ranks that
    outlived their launcher go too."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


KILLED_AT_STEP = REPO / "tests" / "train" / "killed_at_step.py"


def run_killed_at(kind: str, step: int, args: Sequence, ranks: int, log_path: Path, script: Optional[Path] = None,
                  extra_env: Optional[dict[str, str]] = None) -> list[dict]:
    """``launch/<kind>.py`` (or a test-only ``script`` that runs it) through the ``deepspeed`` launcher, SIGKILLed as
    a whole (launcher, ranks, workers) when it reaches optimizer ``step`` (tests/train/killed_at_step.py): kill -9
    at a known step on any machine. Returns the rows it had logged, which must be exactly the steps before
    ``step``."""
    output_dir = Path(args[list(args).index("--output_dir") + 1])
    env = {"MOTIONMAE_TEST_KILL_ENTRY": kind, "MOTIONMAE_TEST_KILL_AT_STEP": str(step),
           "MOTIONMAE_TEST_KILL_SCRIPT": str(script or ""), **(extra_env or {})}
    proc = start(launch_cmd(KILLED_AT_STEP, args, ranks), log_path, env)
    try:
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            kill9(proc)
    rows = read_log(output_dir)
    assert code == -signal.SIGKILL, (code, log_path.read_text()[-3000:])
    assert [r["step"] for r in rows][-1:] == [step - 1], (step, [r["step"] for r in rows])
    return rows


def pkill_run(proc: subprocess.Popen, sig: str, pattern: str, ready: Callable[[], bool], what: str,
              timeout: float = 120) -> int:
    """Once ``ready()`` holds, ``pkill -SIG -f -- PATTERN`` as a user types it, limited to the run's session (other
    runs on the machine keep theirs), and wait for the run to exit: its exit code. A run still there afterwards (a
    failed wait) is SIGKILLed with its whole group, so a failing test leaves nothing running."""
    try:
        wait_for(ready, 300, what, proc)
        subprocess.run(["pkill", f"-{sig}", "-s", str(proc.pid), "-f", "--", pattern], check=True)
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill9(proc)


def wait_for(pred: Callable[[], bool], timeout: float, what: str, proc: Optional[subprocess.Popen] = None) -> None:
    """Poll ``pred`` until it holds; fail the test on timeout, or at once if ``proc`` exits first."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def read_log(run_dir: Path) -> list[dict]:
    """The training-step records (those with a loss) of ``run_dir/log.jsonl``; a half-written last line is skipped."""
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            records.append(record)
    return records


def assert_same_steps(reference: dict[int, dict], resumed: dict[int, dict], first: int, last: int,
                      keys: Sequence[str], rel: float = 1e-5) -> None:
    """Steps ``first..last`` of a resumed run's log equal the uninterrupted run's: ``keys`` to ``rel``, lr exactly."""
    for step in range(first, last + 1):
        for key in keys:
            a, b = reference[step][key], resumed[step][key]
            assert abs(a - b) <= rel * max(abs(a), 1e-8), (step, key, a, b)
        assert reference[step]["lr"] == resumed[step]["lr"], step


def run_pretrain(args: list, ranks: int = 1, launcher: str = "deepspeed", timeout: float = 300,
                 cwd: Path = REPO) -> subprocess.CompletedProcess:
    """launch/pretrain.py with ``args`` under the ``deepspeed`` launcher with ``ranks`` ranks, or plain ``python``."""
    return launch("pretrain.py", args, 0 if launcher == "python" else ranks, timeout, cwd)


def start_pretrain(args: list, ranks: int = 1, log_path: Optional[Path] = None) -> subprocess.Popen:
    """launch/pretrain.py in the background under the ``deepspeed`` launcher, in its own process group."""
    return start(launch_cmd("pretrain.py", args, ranks), log_path)


# -- runs without a launcher, in a fork of this process ------------------------------------------------------------
# The trainer's own launcher-free path (init_distributed makes a one-rank gloo group) runs in a forked child of the
# test process: no interpreter start-up and no imports (the ~20 s a launched run costs before its first step),
# and nothing of the run survives it. In the test process itself the group would outlive the test, and every later
# entry point that fails in-process (call_main) would leave through os._exit, taking pytest with it.

_RUN_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _train_child(conn, kind: str, config: str, output_dir: Path, sets: Sequence[str], resume: bool, ds_config: Path,
                 task: Optional[type], task_args: dict) -> None:
    import torch

    from motionmae_ds.config import load_finetune_config, load_pretrain_config
    from motionmae_ds.train.finetune import FinetuneTask
    from motionmae_ds.train.pretrain import PretrainTask
    from motionmae_ds.train.trainer import Trainer

    for key in _RUN_ENV_KEYS:  # a launcher-free start, whatever the test process has
        os.environ.pop(key, None)
    # one thread, as run_env gives the runs tests start (two threads on the shared 2-core machine ran the tiny
    # model ~9x slower), and torch's threads are not fork-safe beyond one
    torch.set_num_threads(1)
    load, task_cls = {"pretrain": (load_pretrain_config, PretrainTask),
                      "finetune": (load_finetune_config, FinetuneTask)}[kind]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cfg = load(config, list(sets))
            summary = Trainer((task or task_cls)(cfg, **task_args), ds_config, output_dir, resume).run()
        conn.send(("ok", summary, out.getvalue()))
    except BaseException as exc:  # handed to the test, which re-raises it
        exc.add_note(traceback.format_exc())
        try:
            conn.send(("error", exc, out.getvalue()))
        except Exception:  # an exception that does not pickle
            conn.send(("error", RuntimeError(traceback.format_exc()), out.getvalue()))
    finally:
        conn.close()


def train_in_process(kind: str, config: str | Path, output_dir: Path, sets: Sequence[str] = (), resume: bool = True,
                     ds_config: Path = ZERO2, task: Optional[type] = None, timeout: float = 600,
                     **task_args) -> tuple[dict, str]:
    """A pretraining (``kind`` "pretrain") or finetuning run as ``launch/<kind>.py`` runs it without a launcher,
    in a fork of this process; (summary, its console lines). ``task`` replaces the kind's Task class (a subclass
    that adds a test's hook; the fork needs no pickling). An error of the run is raised here, as the exception
    the entry point would map to an exit code."""
    import multiprocessing

    # what every run imports, imported once here rather than in each fork: the training code, TensorBoard's writer,
    # and the module DeepSpeed's optimizer check imports at every engine's start (it pulls in torch's inductor, ~3 s)
    import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401

    import motionmae_ds.train.finetune  # noqa: F401
    import motionmae_ds.train.pretrain  # noqa: F401

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_train_child, args=(send, kind, str(config), Path(output_dir),
                                                       [str(s) for s in sets], resume, ds_config, task, task_args))
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise AssertionError(f"the {kind} run did not finish within {timeout} s")
        status, value, stdout = receive.recv()
    except EOFError:
        child.join(30)
        raise AssertionError(f"the {kind} run died without a result (exit code {child.exitcode})") from None
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()
    if status == "error":
        raise value
    return value, stdout
