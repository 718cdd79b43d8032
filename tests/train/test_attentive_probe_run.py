"""The attentive probe (finetune.probe: attentive) as the loop trains it: the frozen encoder bitwise unchanged,
only the pooler and the head trained, the multi-view test; the engine's checkpoint holds the encoder as loaded
from finetune.init and optimiser states for the probe alone (in this process). A 2-rank run through the
launcher, killed with -9 and relaunched, retraces the steps it had logged past its checkpoint."""
import json

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

    final = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"))
    for name, value in init.items():
        if name.startswith(("head.", "fc_norm.")):
            continue
        # the source's weights as the bf16 engine holds them, bit for bit
        assert torch.equal(final["backbone." + name], value.bfloat16().float()), name
    # the optimiser's states: fp32 master weights and two Adam moments of the probe's parameters, none of the
    # encoder's (the module file keeps the encoder's bf16 copy, loaded from finetune.init)
    optim_files = list((out / "checkpoints").glob("*/*optim_states.pt"))
    assert len(optim_files) == 1
    states = torch.load(optim_files[0], weights_only=False)["optimizer_state_dict"]
    master = sum(t.numel() for t in states["single_partition_of_fp32_groups"])
    assert master == sum(final[n].numel() for n in trainable)
    # what --eval and evaluate.py load: the run's checkpoint, whole, into a freshly built probe
    fresh = build_finetune_model(load_finetune_config(cfg))
    report = ckpt.load_into(fresh, out / "checkpoints", "evaluate")
    assert report.whole and {n for n, _ in fresh.named_parameters()} <= set(final)
    assert all(torch.equal(p.detach(), final[n]) for n, p in fresh.named_parameters())


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
