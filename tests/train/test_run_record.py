"""A run directory holds one run: what a relaunch into it does, decided from its record before anything is built
(each run in a fork of the test process, tests/helpers.train_in_process). The same decisions through the real
launcher and their exit codes: tests/runtime/test_relaunch.py."""
import hashlib
import json

import pytest

from motionmae_ds.config import ConfigError
from motionmae_ds.train.finetune import FinetuneTask
from motionmae_ds.train.pretrain import PretrainTask
from tests.finetune_support import motion_lists, write_config
from tests.helpers import ZERO2, read_log, train_in_process
from tests.stop_at import StopAt

PER_EPOCH = 6  # 12 videos / batch 2 on one rank


def snapshot(run_dir) -> dict:
    """Every file under ``run_dir`` (TensorBoard's and the checkpoints' included) -> the hash of its bytes."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def history(run_dir) -> list:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


class MarkBuild(PretrainTask):
    """Pretraining that leaves a file when its model is built."""

    def __init__(self, cfg, marker: str) -> None:
        super().__init__(cfg)
        self.marker = marker

    def build_model(self):
        open(self.marker, "w").close()
        return super().build_model()


def test_completed_run_is_left_alone_and_another_config_is_refused(tiny_config, tmp_path):
    cfg = tiny_config(schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2})
    out = tmp_path / "run"
    first, stdout = train_in_process("pretrain", cfg, out)
    assert first["resumed_from"] is None and first["steps"] == PER_EPOCH
    assert [e["event"] for e in history(out)] == ["start", "complete"]
    assert history(out)[-1]["tag"] == "step00000006" and history(out)[-1]["step"] == PER_EPOCH
    assert json.loads((out / "run_info.json").read_text())["kind"] == "pretrain"
    before = snapshot(out)

    # the same command, and one that changes only resume-safe keys: complete, nothing touched, nothing built
    marker = tmp_path / "built"
    for sets in ([], ["run.log_every=3", "data.num_workers=1", "run.keep_last=5"]):
        again, stdout = train_in_process("pretrain", cfg, out, sets=sets, task=MarkBuild, marker=str(marker))
        assert again["complete"] and again["steps"] is None
        assert f"{out} is complete (step 6, checkpoint {out / 'checkpoints' / 'step00000006'})" in stdout
        assert not marker.exists() and snapshot(out) == before

    # keys that change the training: refused before the model is built, one line per key, nothing touched
    with pytest.raises(ConfigError) as refused:
        train_in_process("pretrain", cfg, out, sets=["schedule.epochs=2", "optim.base_lr=0.05", "run.log_every=4"],
                         task=MarkBuild, marker=str(marker))
    lines = str(refused.value).splitlines()
    assert lines[0].startswith(f"{out} holds a run started with another config")
    # in the config's order; run.log_every may change
    assert lines[1:] == ["  optim.base_lr: 0.1 -> 0.05", "  schedule.epochs: 1 -> 2",
                         f"give the new run its own directory (--output_dir NEW_DIR), or start {out} over "
                         f"(--no_resume)"]
    assert not marker.exists() and snapshot(out) == before

    # a finetuning run into a pretraining run's directory: the kinds, and the ways out
    lists = motion_lists(tmp_path / "cache")
    ft = write_config(tmp_path / "ft.yaml", data={"train_list": lists["train"]}, schedule={"epochs": 1})
    with pytest.raises(ConfigError, match=rf"^{out} holds a pretraining run \(launch/pretrain.py\); "
                                          r"launch/finetune.py cannot resume it: give the new run its own directory"):
        train_in_process("finetune", ft, out, task=FinetuneTask)
    assert snapshot(out) == before

    # --no_resume starts a new run there: a new record, a history that starts again
    train_in_process("pretrain", cfg, out, sets=["schedule.epochs=2"], resume=False)
    assert [e["event"] for e in history(out)] == ["start", "complete"]
    assert "epochs: 2" in (out / "config.yaml").read_text() and len(read_log(out)) == 2 * PER_EPOCH


def test_interrupted_run_resumes_with_resume_safe_changes(tiny_config, tmp_path):
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_steps": 4, "save_every_epochs": 0})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_in_process("pretrain", cfg, out, task=StopAt, stop=5)
    assert (out / "checkpoints" / "latest").read_text() == "step00000004"
    record = {name: (out / name).read_bytes() for name in ("config.yaml", "run_info.json")}

    summary, stdout = train_in_process("pretrain", cfg, out, sets=["run.log_every=2", "data.num_workers=1"])
    assert summary["resumed_from"] == "step00000004" and summary["steps"] == 2 * PER_EPOCH
    assert "resume-safe settings changed since the run started (recorded -> requested): data.num_workers: 0 -> 1; " \
           "run.log_every: 1 -> 2" in stdout
    # the record is the run's first one, byte for byte; the resume is in the history
    assert {name: (out / name).read_bytes() for name in record} == record
    events = history(out)
    assert [e["event"] for e in events] == ["start", "resume", "complete"]
    assert events[1]["tag"] == "step00000004" and events[1]["step"] == 4
    assert events[1]["changed"] == {"run.log_every": [1, 2], "data.num_workers": [0, 1]}
    assert events[2]["tag"] == "step00000012"
    # steps 1-4 from the first process (step 5 was after its checkpoint), then every 2nd and each epoch's last
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4, 6, 8, 10, 12]


def test_deepspeed_engine_settings_are_part_of_the_run(tiny_config, tmp_path):
    cfg = tiny_config(schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2}, run={"save_every_steps": 3})
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_in_process("pretrain", cfg, out, task=StopAt, stop=4)
    before = snapshot(out)
    zero2 = json.loads(ZERO2.read_text())
    safe = {**zero2, "steps_per_print": 10, "zero_optimization": {**zero2["zero_optimization"],
                                                                   "reduce_bucket_size": 1000}}
    (tmp_path / "clip.json").write_text(json.dumps({**safe, "gradient_clipping": 0.5}))
    (tmp_path / "zero1.json").write_text(json.dumps({**zero2, "zero_optimization": {"stage": 1}}))
    # compared by content, key by key: clipping changes the updates; another ZeRO stage too (and its buckets are
    # resume-safe, so only the stage is named)
    with pytest.raises(ConfigError) as refused:
        train_in_process("pretrain", cfg, out, ds_config=tmp_path / "clip.json")
    assert str(refused.value).splitlines()[1:-1] == ["  deepspeed.gradient_clipping: 1.0 -> 0.5"]
    with pytest.raises(ConfigError) as refused:
        train_in_process("pretrain", cfg, out, ds_config=tmp_path / "zero1.json")
    assert str(refused.value).splitlines()[1:-1] == ["  deepspeed.zero_optimization.stage: 2 -> 1"]
    assert snapshot(out) == before
    # printing and bucket sizes only: resumed
    (tmp_path / "safe.json").write_text(json.dumps(safe))
    summary, _ = train_in_process("pretrain", cfg, out, ds_config=tmp_path / "safe.json")
    assert summary["resumed_from"] == "step00000003" and summary["steps"] == PER_EPOCH
    assert history(out)[1]["changed"] == {"deepspeed.steps_per_print": [1000000, 10],
                                          "deepspeed.zero_optimization.reduce_bucket_size": [200000000, 1000]}
