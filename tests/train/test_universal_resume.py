"""A 2-rank run's mid-epoch checkpoint (the real launcher), converted to DeepSpeed's universal format in a run
directory of its own, resumes on 1 rank (in this process: the one-rank group of tests/helpers.py's
train_in_process): the trainer's own load puts the 2-rank run's exact fp32 master weights and Adam moments into the
engine, moves the position to the new layout, and the run trains the rest of the epoch and the next."""
import json

import pytest
import torch

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.config import ConfigError
from motionmae_ds.train.pretrain import PretrainTask
from tests.helpers import ZERO2, call_main, read_log, train_in_process
from tests.helpers import run_pretrain as run


class RecordLoad(PretrainTask):
    """Pretraining that writes what the trainer's resume put into the engine to ``dump``: the client state it
    hands the task (position already rescaled), and every parameter's fp32 master weight and Adam moments."""

    def __init__(self, cfg, dump: str) -> None:
        super().__init__(cfg)
        self.dump = dump

    def setup(self, run) -> None:
        super().setup(run)
        self.engine = run.engine

    def load_client_state(self, state) -> None:
        super().load_client_state(state)
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        engine = self.engine
        # ZeRO-2 links the moments to the parameters at the first step; DeepSpeed's step makes this same call
        engine.optimizer._lazy_init_hp_params_optimizer_state()
        out = {"client": {k: v for k, v in state.items() if k in ("tag", "epoch", "step", "micro_in_epoch")},
               "fp32": {}, "exp_avg": {}, "exp_avg_sq": {},
               "adam_step": sorted({int(s["step"]) for s in engine.optimizer.optimizer.state.values() if "step" in s})}
        for name, p in engine.module.named_parameters():
            out["fp32"][name] = safe_get_full_fp32_param(p).cpu().clone()
            out["exp_avg"][name] = safe_get_full_optimizer_state(p, "exp_avg").cpu().clone()
            out["exp_avg_sq"][name] = safe_get_full_optimizer_state(p, "exp_avg_sq").cpu().clone()
        torch.save(out, self.dump)


def test_two_rank_checkpoint_resumes_mid_epoch_on_one_rank(tiny_config, tmp_path):
    # 12 videos: 3 steps per epoch on 2 ranks x batch 2, 6 on 1 rank; a checkpoint every 2 steps, so step 2 is
    # one inside the epoch (8 of its 12 samples seen)
    cfg = tiny_config(schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_steps": 2, "keep_last": 0})
    out = tmp_path / "run"
    first = run(["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out], ranks=2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert ckpt.list_tags(ckpts) == ["step00000002", "step00000003", "step00000004", "step00000006"]
    saved = ckpt.read_client_state(ckpts, "step00000002")
    assert (saved["epoch"], saved["micro_in_epoch"], saved["world_size"]) == (0, 2, 2)

    # latest back at step 2, as a run killed after it would have left it: without conversion a different world
    # size is refused (a config error: exit 2 and one line through the entry point, tests/runtime/test_failures.py)
    ckpt.write_latest(ckpts, "step00000002")
    with pytest.raises(ConfigError, match="written by 2 ranks.*universal"):
        train_in_process("pretrain", cfg, out)

    # the converter's main() in this process (its subprocess form is tested in tests/tools), on the mid-epoch tag,
    # into a run directory of its own: the source's latest stays where it was
    one_rank = tmp_path / "one_rank"
    conv = call_main("convert_checkpoint.py", ["--checkpoint", ckpts, "--tag", "step00000002", "--output", one_rank,
                                               "--format", "universal"])
    assert conv.returncode == 0, conv.stdout[-3000:] + conv.stderr[-3000:]
    assert (ckpts / "latest").read_text().strip() == "step00000002"
    universal = one_rank / "checkpoints" / "step00000002_universal"
    assert (one_rank / "checkpoints" / "latest").read_text().strip() == universal.name
    assert (one_rank / "config.yaml").read_bytes() == (out / "config.yaml").read_bytes()
    source_ckpts, out, ckpts = ckpts, one_rank, one_rank / "checkpoints"

    dump = tmp_path / "loaded.pt"
    _, stdout = train_in_process("pretrain", cfg, out, task=RecordLoad, dump=str(dump))
    # 8 samples of epoch 0 were seen: 4 micro-steps of 1 rank x 2, so the 1-rank run trains 2 more steps in epoch 0
    # (3, 4), then epoch 1's 6 (5..10); the log drops the 2-rank run's step 3, after the checkpoint
    assert f"resumed from {universal}: epoch 0, step 2" in stdout
    assert [(r["epoch"], r["step"]) for r in read_log(out)] == [(0, s) for s in (1, 2, 3, 4)] + [
        (1, s) for s in range(5, 11)]
    loaded = torch.load(dump, weights_only=False)
    assert loaded["client"] == {"tag": universal.name, "epoch": 0, "step": 2, "micro_in_epoch": 4}
    assert loaded["adam_step"] == [2]
    # what the trainer loaded is exactly what the 2-rank run held: its fp32 weights as DeepSpeed consolidates
    # them from the ZeRO shards, and its moments as the conversion wrote them per parameter (that the conversion
    # keeps the 2-rank engine's moments exactly: tests/checkpoint/test_universal.py)
    consolidated = ckpt.fp32_state_dict(source_ckpts, "step00000002")
    assert sorted(loaded["fp32"]) == sorted(consolidated)
    for name, value in consolidated.items():
        assert torch.equal(loaded["fp32"][name], value), name
        for kind in ("fp32", "exp_avg", "exp_avg_sq"):
            written = torch.load(universal / "zero" / name / f"{kind}.pt", weights_only=False)["param"]
            assert torch.equal(loaded[kind][name], written.view_as(value)), (kind, name)
    assert all(loaded["exp_avg_sq"][n].abs().sum() > 0 for n in consolidated)  # moments are not trivially zero

    # latest now names the ordinary checkpoint the 1-rank run wrote, which the next launch reads the ordinary
    # way (prepare_resume follows latest: tests/checkpoint/test_universal.py)
    assert (ckpts / "latest").read_text().strip() == "step00000010"
    assert not (ckpts / "step00000010" / "zero").exists()
    # the copy's history: the source run's, then the conversion, this run's resume and completion
    events = [json.loads(line)["event"] for line in (out / "history.jsonl").read_text().splitlines()]
    assert events == ["start", "complete", "converted", "resume", "complete"]
