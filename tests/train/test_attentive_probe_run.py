"""The attentive probe (finetune.probe: attentive) as the loop trains it: the frozen encoder bitwise unchanged,
only the pooler and the head trained, the multi-view test; the engine's checkpoint holds the probe alone (weights
and optimiser states), and its readers take the encoder from the run's finetune.init (in this process). A 2-rank
run through the launcher, killed with -9 and relaunched, retraces the steps it had logged past its checkpoint."""
import json
import shutil

import pytest
import torch

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.builders import build_finetune_model
from motionmae_ds.config import load_finetune_config
from motionmae_ds.train.finetune import FinetuneTask
from tests.finetune_support import motion_lists, save_tiny_classifier, write_config
from tests.helpers import ZERO2, launch, read_log, run_killed_at, train_in_process


class RecordingProbeTask(FinetuneTask):
    """Keeps the module's weights as the engine starts and what changed by the end, and the task's groups."""

    def setup(self, run):
        super().setup(run)
        self.at_start = {n: p.detach().clone() for n, p in run.engine.module.named_parameters()}
        # what the task hands the engine's optimiser (DeepSpeed's groups hold flat fp32 partitions, not names)
        self.groups = [(g["lr_scale"], list(g["param_names"])) for g in self.param_groups(run.engine.module)]

    def finish(self, run, summary):
        super().finish(run, summary)
        now = dict(run.engine.module.named_parameters())
        summary["changed"] = sorted(n for n, p in now.items() if not torch.equal(p.detach(), self.at_start[n]))
        summary["trainable"] = sorted(n for n, p in now.items() if p.requires_grad)
        summary["groups"] = self.groups
        summary["encoder_in_eval"] = not run.engine.module.backbone.training


def _probe_config(tmp_path, **extra):
    lists = motion_lists(tmp_path / "cache")
    save_tiny_classifier(tmp_path / "init.pth", seed=7)
    sections = dict(data={"train_list": lists["train"], "test_list": lists["test"], "rand_aug": "",
                          "random_erase": 0.0},
                    mixup={"prob": 0.0, "label_smoothing": 0.0},
                    optim={"base_lr": 0.5, "weight_decay": 0.01, "layer_decay": 1.0},
                    schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 4},
                    finetune={"init": str(tmp_path / "init.pth"), "probe": "attentive", "probe_queries": 2},
                    eval={"test_clips": 2, "test_crops": 3, "val_every_epochs": 0})
    for sec, values in extra.items():
        sections[sec] = {**sections.get(sec, {}), **values}
    return write_config(tmp_path / "probe.yaml", **sections)


def test_attentive_probe_trains_the_pooler_and_head_over_a_bitwise_frozen_encoder(tmp_path):
    cfg = _probe_config(tmp_path)
    init = torch.load(tmp_path / "init.pth")["model"]
    out = tmp_path / "probe"
    summary, stdout = train_in_process("finetune", cfg, out, task=RecordingProbeTask)
    assert "attentive probe: 24 training videos" in stdout
    # every pooler and head weight moved; no encoder weight did, not by one bit (the engine's bf16 copy)
    trainable = summary["trainable"]
    assert {n.split(".")[0] for n in trainable} == {"pooler", "backbone"}
    assert all(n.startswith("pooler.") or n.startswith("backbone.head.") for n in trainable)
    assert summary["changed"] == sorted(trainable) and summary["encoder_in_eval"]
    # the optimiser sees the probe's parameters alone, all at lr scale 1 (no layer decay)
    in_groups = sorted(n for _, names in summary["groups"] for n in names)
    assert in_groups == sorted(trainable) and {s for s, _ in summary["groups"]} == {1.0}
    # the multi-view test: 2 segments x 3 crops of each of the 4 test videos
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["num_videos"], metrics["views_per_video"]) == (4, 6) and 0.0 <= metrics["top1"] <= 100.0

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # the checkpoint holds the probe alone: DeepSpeed's consolidation gives the pooler and the head, nothing of the
    # frozen encoder, and the model-states file has no copy of it either (bf16 or frozen fragments)
    final = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"))
    assert sorted(final) == sorted(trainable)
    tag_dir = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    model_states = torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)
    assert sorted(model_states["module"]) == sorted(trainable) and not model_states.get("frozen_param_fragments")
    encoder_numel = sum(v.numel() for k, v in init.items() if not k.startswith(("head.", "fc_norm.")))
    # the file could not hold the encoder even in bf16 (2 bytes a weight)
    assert (tag_dir / "mp_rank_00_model_states.pt").stat().st_size < 2 * encoder_numel
    # the optimiser's states: fp32 master weights and two Adam moments of the probe's parameters, none of the
    # encoder's
    optim_files = list((out / "checkpoints").glob("*/*optim_states.pt"))
    assert len(optim_files) == 1
    states = torch.load(optim_files[0], weights_only=False)["optimizer_state_dict"]
    master = sum(t.numel() for t in states["single_partition_of_fp32_groups"])
    assert master == sum(final[n].numel() for n in trainable)
    # what --eval, evaluate.py and the converter read: the probe from the checkpoint, the encoder from the run's
    # finetune.init (the source's fp32 weights, bit for bit)
    raw, info = ckpt.read_weights(out / "checkpoints", exact=True)
    assert info["probe_encoder"] == str((tmp_path / "init.pth").resolve())
    for name, value in init.items():
        if not name.startswith(("head.", "fc_norm.")):
            assert torch.equal(raw["backbone." + name], value), name
    fresh = build_finetune_model(load_finetune_config(cfg))
    report = ckpt.load_into(fresh, out / "checkpoints", "evaluate")
    assert report.whole
    own = dict(fresh.named_parameters())
    assert all(torch.equal(own[n].detach(), final[n]) for n in trainable)
    assert all(torch.equal(own["backbone." + n].detach(), v) for n, v in init.items()
               if not n.startswith(("head.", "fc_norm.")))
    # the converter's plain export: the probe of the checkpoint and the encoder of finetune.init, one state dict
    from motionmae_ds.tools.convert import export

    exported = torch.load(export(out / "checkpoints", tmp_path / "probe.pth", "plain"))
    assert set(exported) == set(raw) and all(torch.equal(exported[k], raw[k]) for k in raw)
    # without its encoder's source the checkpoint cannot stand alone: one line naming what is missing
    (tmp_path / "init.pth").rename(tmp_path / "moved.pth")
    with pytest.raises(ckpt.CheckpointError, match=r"a probe checkpoint holds the probe alone; its encoder, the "
                                                   r"run's finetune.init \(\S+init.pth\), is not there to read"):
        ckpt.load_into(build_finetune_model(load_finetune_config(cfg)), out / "checkpoints", "evaluate")


class EncoderAtFinish(FinetuneTask):
    def finish(self, run, summary):
        super().finish(run, summary)
        # as numpy: torch tensors would cross to the test process through shared memory of a process that exits
        summary["encoder"] = {n: p.detach().float().numpy().copy() for n, p in
                              run.engine.module.backbone.named_parameters() if not n.startswith(("head.", "fc_norm."))}
        if self.ema is not None:
            summary["ema_encoder"] = {n: p.detach().float().numpy().copy() for n, p in
                                      self.ema.module.backbone.named_parameters()
                                      if not n.startswith(("head.", "fc_norm."))}


def test_a_resumed_probe_keeps_the_encoder_it_was_trained_on(tmp_path):
    # the run's finetune.init reads other weights when it resumes (a pretraining run it names went on and moved
    # its latest; here a link repointed): the checkpoint does not hold the encoder, so the probe goes on over the
    # one it was trained on
    link = tmp_path / "encoder.pth"
    link.symlink_to(tmp_path / "init.pth")
    # with a model EMA: its frozen part is the encoder too, and the checkpoint holds only its probe part
    cfg = _probe_config(tmp_path, schedule={"epochs": 2},
                        finetune={"init": str(link), "model_ema": True, "model_ema_decay": 0.5},
                        run={"save_every_epochs": 1, "keep_last": 0})
    first = torch.load(tmp_path / "init.pth")["model"]
    other = save_tiny_classifier(tmp_path / "other.pth", seed=8)
    out = tmp_path / "probe"
    train_in_process("finetune", cfg, out)
    # as if the run had stopped after epoch 0 (6 steps): its last checkpoint goes, `latest` names step 6 again
    ckpts = out / "checkpoints"
    shutil.rmtree(ckpts / "step00000012")
    (ckpts / "latest").write_text("step00000006")
    link.unlink()
    link.symlink_to(tmp_path / "other.pth")
    summary, _ = train_in_process("finetune", cfg, out, task=EncoderAtFinish)
    assert summary["resumed_from"] is not None
    encoder = {name: torch.from_numpy(array) for name, array in summary["encoder"].items()}
    assert encoder and all(torch.equal(v, first[n].bfloat16().float()) for n, v in encoder.items())
    assert not all(torch.equal(v, other[n].bfloat16().float()) for n, v in encoder.items())
    # the EMA's frozen encoder is the one trained on as well (the engine's bf16 weights, as the model runs them)
    ema_encoder = {name: torch.from_numpy(array) for name, array in summary["ema_encoder"].items()}
    assert sorted(ema_encoder) == sorted(encoder) and all(torch.equal(ema_encoder[n], v) for n, v in encoder.items())
    states = ckpt.read_client_state(out / "checkpoints", (out / "checkpoints" / "latest").read_text().strip())
    assert states["probe_encoder"] == str((tmp_path / "init.pth").resolve())
    # the EMA in the checkpoint: the probe's trained weights (and buffers), no copy of the encoder
    trained = {n for n, v in build_finetune_model(load_finetune_config(cfg)).named_parameters()
               if n.startswith(("pooler.", "backbone.head."))}
    assert trained and trained <= set(states["ema"])
    assert not any(k.startswith("backbone.") and not k.startswith(("backbone.head.", "backbone.fc_norm."))
                   for k in states["ema"])
    # and its readers take that encoder too, not the other weights its config's finetune.init now names
    raw, _ = ckpt.read_weights(out / "checkpoints")
    assert all(torch.equal(raw["backbone." + n], first[n]) for n in encoder)


def test_two_rank_attentive_probe_kill9_resumes_exactly(tmp_path):
    # 24 videos / (2 ranks x batch 2) = 6 steps per epoch, 2 epochs; a checkpoint every 5 steps (mid-epoch)
    cfg = _probe_config(tmp_path, schedule={"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
                        data={"num_workers": 1, "rand_aug": "rand-m9-mstd0.5-inc1"},
                        run={"save_every_steps": 5, "keep_last": 2, "save_every_epochs": 0})
    out = tmp_path / "run"
    args = ["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out]
    # kill -9 at step 8: the last checkpoint is step 5's (mid-epoch), steps 6 and 7 are logged past it
    before = {r["step"]: r for r in run_killed_at("finetune", 8, args, 2, tmp_path / "cut.txt")}
    tag = (out / "checkpoints" / "latest").read_text().strip()
    assert tag == "step00000005" and sorted(before) == list(range(1, 8)), tag
    resumed_step, killed_at = 5, 7

    again = launch("finetune.py", args, ranks=2)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / tag}" in again.stdout
    after = {r["step"]: r for r in read_log(out)}
    assert sorted(after) == list(range(1, 13))
    # the steps the killed run had logged past its checkpoint, retraced: same lr, same losses and accuracy
    for step in range(resumed_step + 1, killed_at + 1):
        assert after[step]["lr"] == before[step]["lr"], step
        for key in ("loss", "train_top1", "grad_norm"):
            assert abs(after[step][key] - before[step][key]) <= 1e-5 * max(abs(before[step][key]), 1e-8), (step, key)
    assert json.loads((out / "metrics.json").read_text())["views_per_video"] == 6
