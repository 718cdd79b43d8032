"""The training loop and its hooks without a launcher (each run in a fork of the test process: a one-rank gloo
group, the real DeepSpeed engine on the CPU accelerator) and the real pretraining task on the tiny synthetic recipe,
test subclasses adding a hook where a test needs one. Save cadence, keep-last, the client
state, log rows averaging the meter, resume at every kind of position (exact weights and losses), the
non-finite stop and bad-video counting. What needs ranks, kill -9, signals between processes or the exit
codes of the entry points stays with the launcher tests."""
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.data.synthetic import ensure_synthetic_dataset
from motionmae_ds.runtime.errors import NonFiniteLossError, TooManyBadVideosError
from motionmae_ds.runtime.preemption import Preempted
from motionmae_ds.train.pretrain import PretrainTask
from tests.helpers import assert_same_steps, read_log, train_in_process

# 12 videos / batch 2 = 6 steps per epoch on one rank
PER_EPOCH = 6
LOSSES = ("loss", "loss_frame", "loss_motion", "grad_norm")


def _steps(run_dir) -> dict:
    return {r["step"]: r for r in read_log(run_dir)}


def _curves(run_dir) -> dict:
    """The logged values that do not depend on timing."""
    return {step: {k: r[k] for k in (*LOSSES, "lr", "epoch")} for step, r in _steps(run_dir).items()}


def _saved(stdout: str) -> list[int]:
    """Steps of the checkpoints a run announced, in order."""
    return [int(line.split("step")[-1].rstrip(")")) for line in stdout.splitlines() if line.startswith("checkpoint ")]


def _weights(run_dir, step: int) -> dict:
    return ckpt.fp32_state_dict(run_dir / "checkpoints", ckpt.tag_for(step))


def test_a_run_leaves_nothing_behind_in_the_test_process(tiny_config, tmp_path):
    cfg = tiny_config(schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2})
    before_env, before_cwd, before_threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    before_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    first, _ = train_in_process("pretrain", cfg, tmp_path / "a")
    assert dict(os.environ) == before_env and os.getcwd() == before_cwd and torch.get_num_threads() == before_threads
    assert {sig: signal.getsignal(sig) for sig in before_handlers} == before_handlers
    # the run's process group lived in the fork: an entry point failing in this process later exits normally
    assert not dist.is_initialized()
    second, _ = train_in_process("pretrain", cfg, tmp_path / "b")
    assert first == second and first["steps"] == PER_EPOCH and first["resumed_from"] is None
    assert _curves(tmp_path / "a") == _curves(tmp_path / "b") and len(_curves(tmp_path / "a")) == PER_EPOCH


def test_cadence_keep_last_and_client_state(tiny_config, tmp_path):
    # 3 epochs of 6 steps: every 4th step inside an epoch, every 2nd epoch's end, and the last epoch's end;
    # step 12 is both a multiple of 4 and epoch 1's end, and is saved once
    cfg = tiny_config(schedule={"epochs": 3, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_steps": 4, "save_every_epochs": 2, "keep_last": 2})
    out = tmp_path / "run"
    _, stdout = train_in_process("pretrain", cfg, out)
    assert _saved(stdout) == [4, 8, 12, 16, 18]
    ckpts = out / "checkpoints"
    assert ckpt.list_tags(ckpts) == [ckpt.tag_for(16), ckpt.tag_for(18)]  # keep_last 2
    assert ckpt.read_latest(ckpts) == ckpt.tag_for(18)
    state = ckpt.read_client_state(ckpts, ckpt.tag_for(16))
    # step 16 = epoch 2, its 4th micro-batch; 4 x 2 clips seen in the epoch, none bad
    assert (state["kind"], state["epoch"], state["step"], state["micro_in_epoch"]) == ("pretrain", 2, 16, 4)
    assert (state["epoch_bad"], state["epoch_seen"], state["world_size"], state["micro_batch"]) == (0, 8, 1, 2)
    assert state["config"]["run"]["save_every_steps"] == 4 and set(state["rng"]) == {"torch", "numpy", "python"}
    # log_every 1: the meter holds nothing between rows
    assert state["meter_micro_steps"] == 0

    # keep_last 0 keeps every tag; save_every_epochs 0 and no step cadence: the last epoch's end only
    _, stdout = train_in_process("pretrain", cfg, tmp_path / "all", sets=["run.keep_last=0"])
    assert ckpt.list_tags(tmp_path / "all" / "checkpoints") == [ckpt.tag_for(s) for s in (4, 8, 12, 16, 18)]
    _, stdout = train_in_process("pretrain", cfg, tmp_path / "last",
                                 sets=["run.save_every_steps=0", "run.save_every_epochs=0"])
    assert _saved(stdout) == [18]


class StopAfter(PretrainTask):
    """Pretraining that signals itself (SIGTERM, as a scheduler would) right after optimizer step ``at``."""

    def __init__(self, cfg, at: int) -> None:
        super().__init__(cfg)
        self.at = at

    def after_step(self, engine, step: int) -> None:
        super().after_step(engine, step)
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_log_rows_average_the_meter_and_resume_mid_row(tiny_config, tmp_path):
    # reference: a row per step. Then rows every 4th step: step 1 (the first row), 4 (steps 2-4), 6 (the epoch's
    # last, steps 5-6), 8 (7-8), 12 (9-12). The stop after step 2 is seen by step 3's all-reduce, which then
    # checkpoints mid-row: steps 2 and 3 are in the meter and must be in the resumed run's row at step 4
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2}, run={"save_every_epochs": 0})
    ref_dir, rows_dir = tmp_path / "ref", tmp_path / "rows"
    train_in_process("pretrain", cfg, ref_dir)
    reference = _steps(ref_dir)
    with pytest.raises(Preempted, match="at epoch 0 step 3"):
        train_in_process("pretrain", cfg, rows_dir, sets=["run.log_every=4"], task=StopAfter, at=2)
    assert ckpt.read_client_state(rows_dir / "checkpoints", ckpt.tag_for(3))["meter_micro_steps"] == 2
    _, stdout = train_in_process("pretrain", cfg, rows_dir, sets=["run.log_every=4"])
    assert "resumed from" in stdout
    rows = _steps(rows_dir)
    assert sorted(rows) == [1, 4, 6, 8, 12]
    for step, span in {1: [1], 4: [2, 3, 4], 6: [5, 6], 8: [7, 8], 12: [9, 10, 11, 12]}.items():
        for key in ("loss", "loss_frame", "loss_motion"):
            assert rows[step][key] == pytest.approx(sum(reference[s][key] for s in span) / len(span), rel=1e-12)
        assert rows[step]["lr"] == reference[step]["lr"] and rows[step]["grad_norm"] == reference[step]["grad_norm"]


@pytest.mark.parametrize("stop_after", [3, PER_EPOCH - 1], ids=["mid_epoch", "epoch_end"])
def test_resume_retraces_the_uninterrupted_run(tiny_config, tmp_path, stop_after):
    # decoder masking and drop path draw from the position's generators: a resumed step must draw the same
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2}, model={"drop_path_rate": 0.1},
                      masking={"kind": "random", "ratio": 0.5, "decoder_ratio": 0.5, "decoder_heads": "complementary"},
                      run={"save_every_epochs": 1, "keep_last": 0})
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    train_in_process("pretrain", cfg, ref_dir)
    stopped = stop_after + 1  # the request is seen by the next step's all-reduce
    with pytest.raises(Preempted, match=f"step {stopped}; checkpoint"):
        train_in_process("pretrain", cfg, cut_dir, task=StopAfter, at=stop_after)
    state = ckpt.read_client_state(cut_dir / "checkpoints", ckpt.tag_for(stopped))
    assert (state["epoch"], state["micro_in_epoch"]) == (0, stopped)
    summary, stdout = train_in_process("pretrain", cfg, cut_dir)
    assert summary["resumed_from"] == ckpt.tag_for(stopped)
    # an epoch-end checkpoint resumes at the next epoch's start
    epoch, step = (1, PER_EPOCH) if stopped == PER_EPOCH else (0, stopped)
    assert f"resumed from {cut_dir / 'checkpoints' / ckpt.tag_for(stopped)}: epoch {epoch}, step {step}" in stdout
    reference, resumed = _steps(ref_dir), _steps(cut_dir)
    assert sorted(resumed) == list(range(1, 2 * PER_EPOCH + 1))
    assert_same_steps(reference, resumed, 1, 2 * PER_EPOCH, LOSSES, rel=0.0)
    final_ref, final_cut = _weights(ref_dir, 2 * PER_EPOCH), _weights(cut_dir, 2 * PER_EPOCH)
    assert final_ref.keys() == final_cut.keys()
    for name, value in final_ref.items():
        assert torch.equal(value, final_cut[name]), name


class NanAt(PretrainTask):
    """Pretraining whose ``at``-th micro-step (0-based) computes a NaN loss."""

    def __init__(self, cfg, at: int) -> None:
        super().__init__(cfg)
        self.at, self.calls = at, 0

    def loss(self, engine, batch, ctx):
        loss, stats, clips = super().loss(engine, batch, ctx)
        if self.calls == self.at:
            loss = loss * float("nan")
            stats = [loss, *stats[1:]]
        self.calls += 1
        return loss, stats, clips


def test_nonfinite_loss_stops_before_the_update_and_the_last_checkpoint_resumes(tiny_config, tmp_path):
    # checkpoints at steps 2 and 4; the loss of micro-step 4 (0-based, i.e. optimizer step 5) becomes NaN
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_steps": 2, "keep_last": 5})
    out = tmp_path / "nan"
    ckpts = out / "checkpoints"
    with pytest.raises(NonFiniteLossError) as err:
        train_in_process("pretrain", cfg, out, task=NanAt, at=4)
    assert str(err.value) == (f"non-finite loss nan at epoch 0 step 5 (micro-step 4); stopped before the update "
                              f"without saving; last good checkpoint {ckpts / 'step00000004'}")
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]
    assert ckpt.read_latest(ckpts) == "step00000004" and not list(ckpts.glob(".tmp-*"))
    state = ckpt.read_client_state(ckpts, "step00000004")
    assert state["step"] == 4 and state["micro_in_epoch"] == 4
    assert all(torch.isfinite(v).all() for v in _weights(out, 4).values())
    # the same run without the poison resumes from the last good checkpoint to the end
    summary, _ = train_in_process("pretrain", cfg, out)
    assert summary["resumed_from"] == "step00000004"
    assert [r["step"] for r in read_log(out)] == list(range(1, 13))

    # before any checkpoint the message says so
    with pytest.raises(NonFiniteLossError, match=r"at epoch 0 step 1 \(micro-step 0\).*no checkpoint written yet"):
        train_in_process("pretrain", cfg, tmp_path / "early", task=NanAt, at=0)


def _mixed_list(tmp_path, synthetic_cache):
    """16 entries, 3 of them unreadable (empty, text, truncated MP4); the bad paths."""
    good_list = ensure_synthetic_dataset(synthetic_cache, kind="pretrain", num_videos=12, num_frames=12, size=32)
    good = [line.split()[0] for line in Path(good_list).read_text().splitlines() if line.strip()]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "empty.mp4").write_bytes(b"")
    (bad_dir / "notes.mp4").write_text("this is a text file, not a video\n")
    (bad_dir / "cut.mp4").write_bytes(Path(good[0]).read_bytes()[:300])
    bad = sorted(str(p) for p in bad_dir.iterdir())
    entries = good[:4] + [bad[0]] + good[4:8] + [bad[1]] + good[8:] + [bad[2], good[0]]
    list_file = tmp_path / "mixed.txt"
    list_file.write_text("".join(f"{p} 0\n" for p in entries))
    return list_file, bad


def test_bad_videos_are_counted_named_and_stop_the_run_above_the_limit(tiny_config, tmp_path, synthetic_cache):
    list_file, bad = _mixed_list(tmp_path, synthetic_cache)
    # one epoch over 16 entries, batch 2: 8 steps, each entry once
    cfg = tiny_config(data={"synthetic": False, "list_file": str(list_file), "max_bad_fraction": 0.9},
                      schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2})
    out = tmp_path / "run"
    _, stdout = train_in_process("pretrain", cfg, out)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["bad_video"] for r in records if "bad_video" in r} == set(bad)
    for path in bad:
        assert f"skipped bad video {path}" in stdout
    assert [(r["bad_videos"], r["samples"]) for r in records if "bad_videos" in r] == [(3, 16)]
    assert "epoch 0: 3 of 16 samples came from unreadable videos" in stdout
    assert [r["step"] for r in read_log(out)] == list(range(1, 9))

    # 3/16 = 18.75 % is above 0.1: the epoch ends, is logged, and the run stops without its checkpoint
    with pytest.raises(TooManyBadVideosError) as err:
        train_in_process("pretrain", cfg, tmp_path / "strict", sets=["data.max_bad_fraction=0.1"])
    assert str(err.value) == (f"epoch 0: 3/16 = 18.8% of samples were unreadable videos, above "
                              f"data.max_bad_fraction=0.1; fix the list ({list_file}) or raise the limit")
    assert not (tmp_path / "strict" / "checkpoints" / "latest").exists()


def test_bad_video_counts_survive_a_mid_epoch_resume(tiny_config, tmp_path, synthetic_cache):
    list_file, bad = _mixed_list(tmp_path, synthetic_cache)
    cfg = tiny_config(data={"synthetic": False, "list_file": str(list_file), "max_bad_fraction": 0.9},
                      schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2})
    out = tmp_path / "run"
    with pytest.raises(Preempted):
        train_in_process("pretrain", cfg, out, task=StopAfter, at=5)
    state = ckpt.read_client_state(out / "checkpoints", ckpt.tag_for(6))
    assert state["epoch_seen"] == 12 and 0 <= state["epoch_bad"] <= 3
    train_in_process("pretrain", cfg, out)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # the epoch's count includes what was seen before the stop
    assert [(r["bad_videos"], r["samples"]) for r in records if "bad_videos" in r] == [(3, 16)]
    assert {r["bad_video"] for r in records if "bad_video" in r} == set(bad)
