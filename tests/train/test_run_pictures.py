"""What a run leaves a person to look at: curves.png at every checkpoint and at the end (read back pixel by pixel
against log.jsonl), and a finetuning run's best-by-validation checkpoint beside the last ones."""
import json
import math
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.checkpoint.layout import BEST_RECORD, BEST_TAG
from motionmae_ds.models import build_classifier
from motionmae_ds.runtime.preemption import Preempted
from motionmae_ds.train import curves
from motionmae_ds.train.finetune import FinetuneTask
from motionmae_ds.train.pretrain import PretrainTask
from tests.finetune_support import TINY_MODEL, motion_lists, write_config
from tests.helpers import train_in_process


def _rows(log_path):
    return [json.loads(line) for line in log_path.read_text().splitlines()]


def _expected_pixel(panel, step, value):
    """Where a value must be drawn, from the panel's box and limits (the mapping written out here, not the
    module's)."""
    left, top, right, bottom = panel.box
    y = math.log10(value) if panel.log_y else value
    x_frac = (step - panel.xlim[0]) / (panel.xlim[1] - panel.xlim[0])
    y_frac = (y - panel.ylim[0]) / (panel.ylim[1] - panel.ylim[0])
    return round(left + x_frac * (right - left)), round(bottom - y_frac * (bottom - top))


def check_curves(png, rows, specs, expected_keys):
    """``png`` shows ``rows`` (log.jsonl's records, read here) as ``specs`` asks: every logged value of every key
    drawn in its series' colour where the panel's axes put it, axes spanning the logged range and no more than
    its padding, every panel holding its curves. Returns the panels."""
    image = np.asarray(Image.open(png).convert("RGB"))
    drawn, panels = curves.render(rows, specs)
    assert np.array_equal(np.asarray(drawn), image), "curves.png is not the picture of this log"
    assert {s.key for p in panels for s in p.series} == set(expected_keys)
    for panel in panels:
        left, top, right, bottom = panel.box
        all_points = []
        # the values straight from the log, not from the module
        logged = {s.key: [(r["step"], r[s.key]) for r in rows if s.key in r and math.isfinite(r[s.key])]
                  for s in panel.series}
        for i, series in enumerate(panel.series):
            points = logged[series.key]
            assert len(points) >= 2, (series.key, points)
            all_points += points
            colour = np.array(series.colour)
            hits = (image[top:bottom + 1, left:right + 1] == colour).all(axis=-1)
            assert hits.sum() >= 10 * len(points), f"{panel.title}/{series.key}: panel nearly blank"
            # a series drawn later covers this one where both have a point at the same place (train and val
            # top-1 of one epoch can be equal); no more than that
            later = {_expected_pixel(panel, st, v) for s in panel.series[i + 1:] for st, v in logged[s.key]}
            hidden = 0
            for step, value in points:
                x, y = _expected_pixel(panel, step, value)
                assert left <= x <= right and top <= y <= bottom, (series.key, step, value, (x, y), panel.box)
                if (image[y - 2:y + 3, x - 2:x + 3] == colour).all(axis=-1).any():
                    continue
                assert any(abs(x - lx) <= 2 and abs(y - ly) <= 2 for lx, ly in later), \
                    f"{panel.title}/{series.key}: step {step} value {value} not drawn at {(x, y)}"
                hidden += 1
            assert hidden <= len(points) // 4, f"{panel.title}/{series.key}: {hidden} of {len(points)} points hidden"
        steps = [s for s, _ in all_points]
        assert panel.xlim == (min(steps), max(steps))
        values = [math.log10(v) if panel.log_y else v for _, v in all_points]
        low, high = min(values), max(values)
        slack = 0.06 * (high - low) + 1e-12   # the module pads by 5 % of the range on each side
        assert panel.ylim[0] <= low and panel.ylim[1] >= high, (panel.title, panel.ylim, low, high)
        assert low - panel.ylim[0] <= slack and panel.ylim[1] - high <= slack, (panel.title, panel.ylim, low, high)
    return panels


class CurvesAtCheckpoints(PretrainTask):
    """Keeps the curves.png each checkpoint left, under the checkpoint's tag."""

    def on_checkpoint(self, run, tag):
        super().on_checkpoint(run, tag)
        shutil.copy(run.out_dir / "curves.png", run.out_dir / f"curves_{tag}.png")


def test_pretraining_curves_at_every_checkpoint_show_the_log(tiny_config, tmp_path):
    cfg = tiny_config(schedule={"epochs": 3, "warmup_epochs": 1, "batch_size": 2})
    out = tmp_path / "run"
    train_in_process("pretrain", cfg, out, task=CurvesAtCheckpoints)
    rows = _rows(out / "log.jsonl")
    keys = {"loss", "loss_frame", "loss_motion", "lr", "samples_per_s"}
    # 12 videos / batch 2 = 6 steps per epoch, a checkpoint after each epoch
    for step in (6, 12, 18):
        upto = [r for r in rows if r["step"] <= step]
        panels = check_curves(out / f"curves_{ckpt.tag_for(step)}.png", upto, PretrainTask.curve_panels, keys)
        assert all(p.xlim[1] == step for p in panels)
    final = check_curves(out / "curves.png", rows, PretrainTask.curve_panels, keys)
    assert [p.title for p in final] == ["loss", "loss per head", "learning rate", "clips/s"]
    assert not list(out.glob(".*.tmp"))


# validation top-1 by epoch, scripted: improves, then worsens
SCRIPTED_VAL = [50.0, 75.0, 25.0]


class ScriptedValidation(FinetuneTask):
    """The real validation pass, its top-1 replaced by ``SCRIPTED_VAL``; the module's weights at every validation
    are kept for the test. With ``stop_at`` it signals itself (SIGTERM, as a scheduler would) after that step."""

    def __init__(self, cfg, stop_at=None):
        super().__init__(cfg)
        self.stop_at = stop_at

    def after_step(self, engine, step):
        super().after_step(engine, step)
        if step == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def _evaluate(self, run, dataset, model):
        metrics, scores = super()._evaluate(run, dataset, model)
        if dataset is self.val_set:
            epoch = len(list(run.out_dir.glob("weights_epoch*.pt")))
            metrics = dict(metrics, top1=SCRIPTED_VAL[epoch])
            torch.save({k: v.detach().clone() for k, v in run.engine.module.state_dict().items()},
                       run.out_dir / f"weights_epoch{epoch}.pt")
        return metrics, scores

    def _save_best(self, run, state, metrics):
        super()._save_best(run, state, metrics)
        # what `latest` named right after each best was written (it must not be best)
        pointer = ckpt.read_pointer(run.out_dir / "checkpoints")
        with open(run.out_dir / "latest_after_best.txt", "a") as f:
            f.write(f"{pointer}\n")


def test_finetuning_keeps_the_best_checkpoint_and_resumes_from_the_last(tmp_path):
    lists = motion_lists(tmp_path / "cache")
    cfg = write_config(tmp_path / "ft.yaml", data={"train_list": lists["train"], "val_list": lists["val"]},
                       schedule={"epochs": 3, "warmup_epochs": 1, "batch_size": 4},
                       eval={"val_every_epochs": 1}, run={"save_every_epochs": 1, "keep_last": 1})
    out = tmp_path / "run"
    # stopped in epoch 2 and resumed: the resumed run must know the best so far (75, from the checkpoint's client
    # state) and so keep best at epoch 1 when epoch 2 validates worse
    with pytest.raises(Preempted, match="at epoch 2 step 14"):
        train_in_process("finetune", cfg, out, task=ScriptedValidation, stop_at=13)
    summary, stdout = train_in_process("finetune", cfg, out, task=ScriptedValidation)
    assert summary["resumed_from"] == "step00000014" and "best checkpoint" not in stdout
    ckpts = out / "checkpoints"
    # 24 training videos / batch 4 = 6 steps per epoch
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["best", "step00000018"]
    assert (ckpts / "latest").read_text().strip() == "step00000018"
    # best was written before each epoch's own checkpoint: latest still named the previous step tag (none yet at
    # epoch 0), never best
    assert (out / "latest_after_best.txt").read_text().split() == ["None", "step00000006"]
    record = json.loads((ckpts / BEST_TAG / BEST_RECORD).read_text())
    assert (record["epoch"], record["step"], record["val_top1"]) == (1, 12, 75.0)
    assert summary["best"]["epoch"] == 1
    client = ckpt.read_client_state(ckpts, "best")
    assert (client["epoch"], client["step"], client["best"]["val_top1"]) == (1, 12, 75.0)
    # the last checkpoint carries the record, so a resume keeps comparing against 75
    assert ckpt.read_client_state(ckpts, "step00000018")["best"]["step"] == 12
    # best holds the weights validated at epoch 1, not those of epoch 0 or 2
    at = {e: torch.load(out / f"weights_epoch{e}.pt") for e in range(3)}
    saved = ckpt.module_weights(ckpt.load_model_states(ckpts, "best"), "best")
    for name, value in at[1].items():
        assert torch.equal(saved[name], value), name
    assert any(not torch.equal(saved[n], at[2][n]) for n in at[2])
    assert any(not torch.equal(saved[n], at[0][n]) for n in at[0])
    # what evaluate.py does with --checkpoint RUN/checkpoints/best: the run dir is found, the weights fit
    assert ckpt.find_run_dir(ckpts / "best") == out
    model = build_classifier(**TINY_MODEL)
    ckpt.load_into(model, str(ckpts / "best"), "evaluate")
    # it loads the exact fp32 master weights, of which the engine's bf16 module held the rounding
    for name, value in model.state_dict().items():
        if name in at[1]:
            assert torch.equal(value.to(at[1][name].dtype), at[1][name]), name
    # logged with its metric: two improvements, none at the worse epoch
    rows = _rows(out / "log.jsonl")
    assert [(r["epoch"], r["best_val_top1"]) for r in rows if "best_val_top1" in r] == [(0, 50.0), (1, 75.0)]
    # the picture: loss, train and val top-1, lr and clips/s, each value where the log puts it
    panels = check_curves(out / "curves.png", rows, FinetuneTask.curve_panels,
                          {"loss", "train_top1", "val_top1", "lr", "clips_per_s"})
    accuracy = next(p for p in panels if p.title == "top-1 (%)")
    assert [s.key for s in accuracy.series] == ["train_top1", "val_top1"]
    assert accuracy.series[1].values == SCRIPTED_VAL
