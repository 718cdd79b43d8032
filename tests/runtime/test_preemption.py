"""Stop signals as schedulers send them, through the real ``deepspeed`` launcher with two ranks and a loader worker
each: SIGTERM to every process ``pkill -f`` matches (the ranks; their loader workers, started from a forkserver, do
not carry the rank's command line), and SIGTERM to the whole
process group (``kill -- -PGID``, as scancel and a pod eviction signal every process) while a checkpoint is being
written. Every rank finishes its step, one complete checkpoint is written, every rank exits with 75, and the same
command resumes: its log is the uninterrupted run's, row for row, the stop falling between two log rows.
SIGUSR1 takes the same path (the flag is checked in-process)."""
import os
import signal
import time

import psutil
import pytest

from motionmae_ds.runtime.preemption import PREEMPTED_EXIT_CODE, PreemptionFlag
from tests.helpers import REPO, ZERO2, launch_cmd, pkill_run, read_log, start, start_pretrain, wait_for
from tests.helpers import run_pretrain as run

HELD_SAVE = REPO / "tests" / "runtime" / "held_save_pretrain.py"
RANKS_PATTERN = "launch/pretrain.py --local_rank="
# what differs between two runs of the same steps: the clock
TIMINGS = ("samples_per_s", "tflops", "data_wait_s", "data_wait")


def _rows(run_dir) -> dict[int, dict]:
    return {r["step"]: {k: v for k, v in r.items() if k not in TIMINGS} for r in read_log(run_dir)}


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # it exited since it was listed (a loader worker between epochs)
        return []


def _session(sid: int) -> list[psutil.Process]:
    alive = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


def _complete(ckpts, tag) -> None:
    assert (ckpts / tag / "mp_rank_00_model_states.pt").is_file()
    assert len(list((ckpts / tag).glob("*zero_pp_rank_*_optim_states.pt"))) == 2
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")]  # nothing temporary left


def test_scheduler_signals_checkpoint_exit_75_and_resume_the_same_rows(tiny_config, tmp_path):
    # 12 videos / (2 ranks x 2) = 3 steps per epoch, 4 epochs; rows at steps 1, 3, 4, 6, 8, 9, 12 (every 4th and
    # each epoch's last); a checkpoint only at the end unless a scenario asks for more
    cfg = tiny_config(schedule={"epochs": 4, "warmup_epochs": 1, "batch_size": 2},
                      model={"drop_path_rate": 0.1}, data={"num_workers": 1},
                      run={"save_every_epochs": 4, "save_every_steps": 0, "log_every": 4, "keep_last": 0})
    args = ["--config", cfg, "--deepspeed_config", ZERO2]
    ref = run(args + ["--output_dir", tmp_path / "ref"], ranks=2, timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    reference = _rows(tmp_path / "ref")
    assert sorted(reference) == [1, 3, 4, 6, 8, 9, 12]
    assert all({"data_wait_s", "data_wait"} <= set(r) for r in read_log(tmp_path / "ref"))

    # 1. SIGTERM to every process the README's pkill pattern matches: both ranks (the
    #    pattern is limited to this run's session: other runs on this machine keep theirs)
    cut = tmp_path / "cut"
    proc = start_pretrain(args + ["--output_dir", cut], ranks=2, log_path=tmp_path / "cut.txt")
    matched: list = []

    def steps_logged() -> bool:
        if not any(r["step"] >= 4 for r in read_log(cut)):
            return False
        matched[:] = [p for p in _session(proc.pid) if RANKS_PATTERN in " ".join(_cmdline(p))]
        return True

    code = pkill_run(proc, "TERM", RANKS_PATTERN, steps_logged, "training steps")
    # the two ranks (their loader workers start from a forkserver, whose command line is not the rank's: the
    # whole-group SIGTERM below reaches them)
    assert len(matched) == 2, [_cmdline(p)[:3] for p in matched]
    text = (tmp_path / "cut.txt").read_text()
    assert code == PREEMPTED_EXIT_CODE, text[-3000:]
    assert "Traceback" not in text and "killed by signal" not in text, text[-3000:]
    ckpts = cut / "checkpoints"
    tags = sorted(p.name for p in ckpts.iterdir() if p.is_dir())
    assert len(tags) == 1 and (ckpts / "latest").read_text().strip() == tags[0], tags
    _complete(ckpts, tags[0])
    assert text.count("stopped: stopped on request") == 2  # each rank left through the preemption path
    again = run(args + ["--output_dir", cut], ranks=2, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {ckpts / tags[0]}" in again.stdout
    assert _rows(cut) == reference

    # 2. SIGTERM to the whole process group while rank 0 is writing the step-4 checkpoint (held open until the
    #    signal is sent): the launcher dies of it, the ranks finish that save, take step 5 (the next all-reduce
    #    carries the request), save it and exit 75; step 5 lies between two log rows, so the checkpoint holds a
    #    half-filled row
    held = tmp_path / "held"
    held.mkdir()
    cmd = launch_cmd(HELD_SAVE, args + ["--output_dir", held, "--set", "run.save_every_steps=4"], ranks=2)
    proc = start(cmd, tmp_path / "held.txt", {"MOTIONMAE_TEST_HOLD_SAVE": str(held)})
    try:
        wait_for(lambda: (held / "saving").exists(), 300, "the held save", proc)
        os.killpg(proc.pid, signal.SIGTERM)
        (held / "go").write_text("")
        proc.wait(timeout=60)  # the `deepspeed` command itself dies of the signal
        wait_for(lambda: not _session(proc.pid), 120, "every process of the run to exit")
    finally:
        for p in _session(proc.pid):
            p.kill()
    text = (tmp_path / "held.txt").read_text()
    assert text.count("stopped: stopped on request at epoch 1 step 5") == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    ckpts = held / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step00000004", "step00000005"]
    assert (ckpts / "latest").read_text().strip() == "step00000005"
    _complete(ckpts, "step00000004")
    _complete(ckpts, "step00000005")
    again = run(args + ["--output_dir", held, "--set", "run.save_every_steps=4"], ranks=2, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert _rows(held) == reference


def test_flag_records_sigterm_and_sigusr1_and_restores_handlers():
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        before = signal.getsignal(sig)
        flag = PreemptionFlag().install()
        assert not flag.requested
        os.kill(os.getpid(), sig)  # the handler runs before the next bytecode: the process is not stopped
        assert flag.requested and flag.signum == sig
        os.kill(os.getpid(), signal.SIGTERM if sig == signal.SIGUSR1 else signal.SIGUSR1)
        assert flag.signum == sig  # the first request is the one reported
        flag.restore()
        assert signal.getsignal(sig) == before


def test_ctrl_c_interrupts_at_once_and_then_the_stop_signals_are_ignored():
    # a terminal's Ctrl-C reaches the launcher too, which answers with SIGTERM to its ranks: that must not cut short
    # the rank's cleanup and its one line
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        flag = PreemptionFlag().install()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises first
        os.kill(os.getpid(), signal.SIGTERM)  # ignored now: this process goes on
        assert flag.interrupted and not flag.requested
        flag.restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_ctrl_c_while_saving_leaves_no_half_written_checkpoint(tiny_config, tmp_path):
    # Ctrl-C sends SIGINT to the foreground process group, here while the first checkpoint is being written: the run
    # stops at once (130, one line) and leaves no checkpoint, complete or partial, and no `latest`
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_steps": 2, "save_every_epochs": 0})
    out = tmp_path / "run"
    out.mkdir()
    cmd = launch_cmd(HELD_SAVE, ["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out], ranks=1)
    proc = start(cmd, tmp_path / "run.txt", {"MOTIONMAE_TEST_HOLD_SAVE": str(out)})
    try:
        wait_for(lambda: (out / "saving").exists(), 300, "the held save", proc)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        wait_for(lambda: not _session(proc.pid), 60, "every process of the run to exit")
    finally:
        for p in _session(proc.pid):
            p.kill()
    text = (tmp_path / "run.txt").read_text()
    assert "interrupted: stopped without writing a checkpoint" in text, text[-3000:]
    ckpts = out / "checkpoints"
    assert not [p.name for p in ckpts.iterdir() if p.is_dir() or p.name.startswith((".", "latest"))], \
        list(ckpts.iterdir())
