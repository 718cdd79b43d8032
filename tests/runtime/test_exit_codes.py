"""README's "Exit codes" table, row by row, through the real entry points (launch/pretrain.py, finetune.py,
evaluate.py run as commands, most under the real ``deepspeed`` launcher, which hands a rank's exit code on as its
own): each row's code and its one line on stderr, no traceback. No test wrapper sits around an entry point here,
and nothing is injected: each failure comes from the inputs a user could give.

Rows whose command runs are already made elsewhere are referenced, not run again (the suite's wall time):
- 0: pretraining under the launcher (tests/train/test_pretrain_run.py, tests/train/test_resume.py's relaunch),
  finetuning under the launcher with its test pass (tests/train/test_finetune_run.py), evaluate.py under the
  launcher and without (tests/eval/test_evaluate_ranks.py). Each asserts returncode 0.
- 2 for pretraining as a real process: tests/runtime/test_failures.py::test_bad_configs_exit_2_with_one_line; the
  shared-machine causes of 2 (a busy port, an unusable output directory, a failed checkpoint write, a decoder
  backend that cannot load): tests/runtime/test_shared_machine.py.
- 3 for pretraining under the launcher, at a chosen step, keeping the last checkpoint:
  tests/runtime/test_failures.py::test_nonfinite_loss_stops_and_keeps_last_checkpoint.
- 5 for pretraining, two "nodes" (one rank each, so the launcher's code is the rank's):
  tests/multinode/test_rank_failure.py (killed and frozen peers).
- 75 (SIGTERM and SIGUSR1, pretraining and finetuning, and the SLURM script's requeue on it):
  tests/runtime/test_preemption.py and tests/multinode/test_slurm_script.py.
- 130 (Ctrl-C): tests/runtime/test_preemption.py::test_ctrl_c_while_saving_leaves_no_half_written_checkpoint.
"""
import json
import os
import re
from pathlib import Path

from motionmae_ds.data.synthetic import ensure_synthetic_dataset
from motionmae_ds.runtime.errors import EXIT_BAD_DATA, EXIT_CONFIG, EXIT_NON_FINITE, EXIT_PEER_LOST
from tests.finetune_support import motion_lists, save_tiny_classifier, write_config
from tests.helpers import REPO, ZERO2, call_main, free_port, kill9, launch_cmd, start, wait_for
from tests.multinode.launchers import node_launcher, rank_workers, wait_exit

README = (REPO / "README.md").read_text()


def _run_all(runs: dict[str, list[str]], tmp_path: Path, timeout: float = 300) -> dict[str, tuple[int, str]]:
    """Start every command at once (each in its own process group, output to a file), wait for all:
    name -> (exit code, output)."""
    procs = {name: start(cmd, tmp_path / f"{name}.log") for name, cmd in runs.items()}
    try:
        codes = {name: p.wait(timeout=timeout) for name, p in procs.items()}
    finally:
        for p in procs.values():
            kill9(p)
    return {name: (codes[name], (tmp_path / f"{name}.log").read_text()) for name in runs}


def _one_line(output: str, prefix: str) -> str:
    """Our one line, from ``prefix`` to its end; there is exactly one, and no traceback. (It may follow a progress
    bar's last frame on the same terminal line: tqdm writes to stderr without a newline, as a terminal shows it.)"""
    lines = [line[line.index(prefix):] for line in output.splitlines() if prefix in line]
    assert len(lines) == 1 and "Traceback" not in output, output[-3000:]
    return lines[0]


def test_the_table_is_the_one_tested_here():
    # a row added to README's table must be run here or referenced above
    rows = re.findall(r"^\| (\d+) \| ", README.split("## Exit codes", 1)[1].split("\n## ", 1)[0], re.M)
    assert rows == ["0", "2", "3", "4", "5", "75", "130"]
    assert (EXIT_CONFIG, EXIT_NON_FINITE, EXIT_BAD_DATA, EXIT_PEER_LOST) == (2, 3, 4, 5)


def test_2_bad_config_or_input(tmp_path):
    # before any process group (the entry points' main() in this process: the same code, no start-up) ...
    pre = call_main("pretrain.py", ["--set", "schedule.epochs=many"])
    assert pre.returncode == 2
    assert "schedule.epochs: expected an integer, got 'many'" in _one_line(pre.stderr, "config error: ")
    ev = call_main("evaluate.py", ["--checkpoint", tmp_path / "nothing.pth"])
    assert ev.returncode == 2
    assert f"--checkpoint {tmp_path / 'nothing.pth'}: no such file" in _one_line(ev.stderr, "config error: ")
    # ... and under the launcher once the process group exists, where the entry point must leave through its
    # os._exit path: finetuning with a DeepSpeed JSON whose micro batch disagrees with the YAML
    lists = motion_lists(tmp_path / "cache")
    cfg = write_config(tmp_path / "ft.yaml", data={"train_list": lists["train"]})
    ds = json.loads(ZERO2.read_text())
    ds["train_micro_batch_size_per_gpu"] = 16
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    (code, out), = _run_all({"finetune": launch_cmd("finetune.py", [
        "--config", cfg, "--deepspeed_config", tmp_path / "ds.json", "--output_dir", tmp_path / "run"],
        ranks=1)}, tmp_path).values()
    assert code == 2, out[-3000:]
    line = _one_line(out, "config error: ")
    assert "train_micro_batch_size_per_gpu=16 disagrees" in line and "schedule.batch_size gives 2" in line


def test_3_non_finite_loss(tiny_config, tmp_path):
    # a learning rate that blows the weights up in the first update: the second step's loss is not finite, in
    # pretraining (one process, no launcher) and finetuning (under the launcher) alike; no checkpoint yet
    pre_cfg = tiny_config(optim={"base_lr": 1e32}, schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2})
    lists = motion_lists(tmp_path / "cache")
    ft_cfg = write_config(tmp_path / "ft.yaml", data={"train_list": lists["train"]}, optim={"base_lr": 1e32},
                          schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2})
    results = _run_all({
        "pretrain": launch_cmd("pretrain.py", ["--config", pre_cfg, "--output_dir", tmp_path / "pretrain"]),
        "finetune": launch_cmd("finetune.py", ["--config", ft_cfg, "--output_dir", tmp_path / "finetune"], ranks=1),
    }, tmp_path)
    for name, (code, out) in results.items():
        assert code == 3, (name, out[-3000:])
        line = _one_line(out, "error: non-finite loss ")
        assert re.fullmatch(r"error: non-finite loss (nan|inf|-inf) at epoch 0 step 2 \(micro-step 1\); stopped "
                            r"before the update without saving; no checkpoint written yet", line), (name, line)
        assert not (tmp_path / name / "checkpoints" / "latest").exists()


def test_4_too_many_unreadable_videos(tiny_config, tmp_path, synthetic_cache):
    # 16 entries, 3 unreadable (empty, text, truncated MP4): 18.75 % of the epoch, above a limit of 0.1
    good_list = ensure_synthetic_dataset(synthetic_cache, kind="pretrain", num_videos=12, num_frames=12, size=32)
    good = [line.split()[0] for line in Path(good_list).read_text().splitlines() if line.strip()]
    bad = [tmp_path / "empty.mp4", tmp_path / "notes.mp4", tmp_path / "cut.mp4"]
    bad[0].write_bytes(b"")
    bad[1].write_text("this is a text file, not a video\n")
    bad[2].write_bytes(Path(good[0]).read_bytes()[:300])
    entries = good[:4] + [bad[0]] + good[4:8] + [bad[1]] + good[8:] + [bad[2], good[0]]
    list_file = tmp_path / "mixed.txt"
    list_file.write_text("".join(f"{p} 0\n" for p in entries))
    cfg = tiny_config(data={"synthetic": False, "list_file": str(list_file), "max_bad_fraction": 0.1},
                      schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2})
    out_dir = tmp_path / "run"
    (code, out), = _run_all({"pretrain": launch_cmd("pretrain.py", ["--config", cfg, "--output_dir", out_dir],
                                                    ranks=1)}, tmp_path).values()
    assert code == 4, out[-3000:]
    assert _one_line(out, "error: epoch 0: ") == (
        f"error: epoch 0: 3/16 = 18.8% of samples were unreadable videos, above data.max_bad_fraction=0.1; "
        f"fix the list ({list_file}) or raise the limit")
    # the whole epoch was trained and logged, its checkpoint not written
    steps = [json.loads(r)["step"] for r in (out_dir / "log.jsonl").read_text().splitlines() if '"loss"' in r]
    assert steps == list(range(1, 9)) and not (out_dir / "checkpoints" / "latest").exists()


def test_5_evaluation_loses_a_peer(tmp_path):
    """evaluate.py on two "nodes" (one launcher and one rank each, so node 0's launcher exits with rank 0's code).
    Rank 1's first test video is a named pipe: once rank 1 has opened it (a writer can then open it without
    blocking) it is mid-evaluation, with the process group made, and is killed there; rank 0 meets the lost peer in
    its gather of the scores, however far it got by then."""
    lists = motion_lists(tmp_path / "cache")
    good = Path(lists["test"]).read_text().splitlines()
    pipe = tmp_path / "stuck.mp4"
    os.mkfifo(pipe)
    test_list = tmp_path / "test.txt"
    # the sampler deals items in turn: rank 0 gets 0, 2, 4; rank 1 gets 1 (the pipe), 3
    test_list.write_text("\n".join([good[0], f"{pipe} {good[1].split()[-1]}", *good[1:4]]) + "\n")
    save_tiny_classifier(tmp_path / "clf.pth")
    cfg = write_config(tmp_path / "eval.yaml", data={"train_list": lists["train"], "test_list": str(test_list)},
                       eval={"test_clips": 1, "test_crops": 1, "batch_size": 1})
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    args = ["--checkpoint", tmp_path / "clf.pth", "--config", cfg, "--output_dir", tmp_path / "out"]
    port, writer = free_port(), []
    nodes = [node_launcher(n, port, hostfile, args, script=REPO / "launch" / "evaluate.py",
                           log_path=tmp_path / f"node{n}.log") for n in (0, 1)]

    def rank1_opened_the_pipe() -> bool:
        try:
            writer.append(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while no reader has it open
            return True
        except OSError:
            return False

    try:
        wait_for(rank1_opened_the_pipe, timeout=300, what="rank 1 opening its first test video", proc=nodes[1])
        victim = rank_workers(nodes[1])
        assert len(victim) == 1
        victim[0].kill()
        code0, waited = wait_exit(nodes[0], 90)
    finally:
        for p in nodes:
            kill9(p)
        for fd in writer:
            os.close(fd)
    log0 = (tmp_path / "node0.log").read_text()
    assert code0 == EXIT_PEER_LOST, f"node 0: {code0} after {waited:.0f}s:\n{log0[-3000:]}"
    line = _one_line(log0, "error: rank 0/2 on ")
    assert "lost contact with another rank" in line and "rerun the same command" in line
    assert not (tmp_path / "out" / "metrics.json").exists()
