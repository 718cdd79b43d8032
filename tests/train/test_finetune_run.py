"""Real finetuning runs on tiny synthetic motion classes: 2-rank ZeRO-2 with mixup, repeated sampling and EMA
through the launcher; a linear probe whose encoder stays frozen (in this process); the --eval/evaluate.py pass;
bad input."""
import json

import torch

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.builders import build_finetune_model
from motionmae_ds.config import load_finetune_config
from tests.finetune_support import motion_lists, predictions, save_tiny_classifier, write_config
from tests.helpers import REPO, ZERO2, launch, train_in_process


def _log(run_dir):
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


def test_two_rank_finetune_with_mixup_repeats_and_ema(tmp_path):
    lists = motion_lists(tmp_path / "cache")
    save_tiny_classifier(tmp_path / "init.pth", seed=3)
    cfg = write_config(tmp_path / "ft.yaml",
                       data={"train_list": lists["train"], "val_list": lists["val"], "test_list": lists["test"],
                             "num_repeats": 2},
                       finetune={"init": str(tmp_path / "init.pth"), "model_ema": True, "model_ema_decay": 0.5},
                       run={"save_every_steps": 11, "keep_last": 0})  # steps 11 and 12 both kept, for the EMA
    out = tmp_path / "run"
    res = launch("finetune.py", ["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out], ranks=2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "loaded" in res.stdout and "dropped" in res.stdout  # the init report is printed
    info = json.loads((out / "run_info.json").read_text())
    # 24 train videos / 2 ranks / 2 videos per micro-batch = 6 steps per epoch, each 2 x 2 clips per rank
    assert info["world_size"] == 2 and info["steps_per_epoch"] == 6 and info["total_batch"] == 4
    log = _log(out)
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert all(r["loss"] > 0 for r in steps) and steps[0]["lr"] < steps[5]["lr"]  # warmup
    # TFLOP/s per device from the classifier's MAC count and the clips/s of both ranks; no MFU on the CPU
    from motionmae_ds.config import load_finetune_config
    from motionmae_ds.train.throughput import finetune_flops_per_sample
    per_clip = finetune_flops_per_sample(load_finetune_config(str(cfg), []))
    for r in steps:
        assert r["clips_per_s"] > 0 and "mfu" not in r
        assert abs(r["tflops"] - per_clip * r["clips_per_s"] / 2 / 1e12) <= 1e-9 * r["tflops"]
    assert [r["epoch"] for r in log if "val_top1" in r] == [0, 1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_videos"] == 4 and metrics["views_per_video"] == 6  # 32 videos -> 4 test videos
    assert len(predictions(out / "predictions.jsonl")) == 4
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step00000012"
    # the EMA's values: after step 12 (decay 0.5) it is half its step-11 value and half the weights the module
    # held after step 12, the bf16 copy of the fp32 master weights
    ema11 = ckpt.read_client_state(ckpts, "step00000011")["ema"]
    ema12 = ckpt.read_client_state(ckpts, "step00000012")["ema"]
    weights = ckpt.fp32_state_dict(ckpts, "step00000012")
    assert set(weights) <= set(ema12)
    for name, value in weights.items():
        expected = 0.5 * ema11[name] + 0.5 * value.bfloat16().float()
        torch.testing.assert_close(ema12[name], expected, rtol=0, atol=1e-6, msg=name)
    assert any(not torch.equal(ema12[n], weights[n].bfloat16().float()) for n in weights)  # not a copy of the model
    ema_metrics = json.loads((out / "ema_metrics.json").read_text())
    assert ema_metrics["num_videos"] == 4 and ema_metrics["views_per_video"] == 6

    # --eval: only the test pass, on the run's fp32 weights (evaluate.py is exercised in test_evaluate_ranks)
    res = launch("finetune.py", ["--config", cfg, "--output_dir", out, "--eval", "--set", "eval.test_clips=1",
                                 "eval.test_crops=1"], ranks=0)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    again = json.loads((out / "eval" / "metrics.json").read_text())
    assert again["num_videos"] == 4 and again["views_per_video"] == 1


def test_linear_probe_keeps_the_encoder_frozen(tmp_path):
    lists = motion_lists(tmp_path / "cache")
    init = save_tiny_classifier(tmp_path / "init.pth", seed=5)
    cfg = write_config(tmp_path / "lp.yaml",
                       data={"train_list": lists["train"], "test_list": lists["test"], "rand_aug": "",
                             "random_erase": 0.0},
                       mixup={"prob": 0.0, "label_smoothing": 0.0}, optim={"base_lr": 1.0, "weight_decay": 0.0},
                       schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 4},
                       finetune={"init": str(tmp_path / "init.pth"), "linear_probe": True},
                       eval={"test_clips": 1, "test_crops": 1})
    out = tmp_path / "probe"
    train_in_process("finetune", cfg, out)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # the checkpoint holds the probe alone (checkpoint/engine_io.py): the head, trained, and the feature norm's
    # running statistics; the frozen encoder is finetune.init's, which every reader of the checkpoint loads again
    final = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"))
    assert sorted(final) == ["backbone.head.bias", "backbone.head.weight", "probe_norm.num_batches_tracked",
                             "probe_norm.running_mean", "probe_norm.running_var"]
    assert not torch.equal(final["backbone.head.weight"], init["head.weight"].bfloat16().float())
    probe = build_finetune_model(load_finetune_config(cfg))
    assert ckpt.load_into(probe, out / "checkpoints", "evaluate").whole
    weights = probe.state_dict()
    for name, value in init.items():
        if not name.startswith(("head.", "fc_norm.")):
            assert torch.equal(weights["backbone." + name], value), name
    assert torch.equal(weights["backbone.head.weight"], final["backbone.head.weight"])
    assert torch.equal(weights["probe_norm.running_var"], final["probe_norm.running_var"])
    assert json.loads((out / "metrics.json").read_text())["num_videos"] == 4


def _main(script, argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"launch_{script}", REPO / "launch" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in argv])


def test_bad_input_is_one_line(tmp_path, capsys):
    """Errors raised before any process group exists, so the launchers' main() runs in-process here."""
    missing = write_config(tmp_path / "m.yaml", data={"train_list": str(tmp_path / "nope.txt")})
    assert _main("finetune", ["--config", missing, "--deepspeed_config", ZERO2]) == 2
    err = capsys.readouterr().err
    assert "data.train_list=" in err and "file not found" in err and len(err.strip().splitlines()) == 1
    assert _main("finetune", ["--set", "mixup.cutmix=1.0"]) == 2
    err = capsys.readouterr().err
    assert "mixup.cutmix: unknown key" in err and len(err.strip().splitlines()) == 1
    lists = motion_lists(tmp_path / "cache")
    no_init = write_config(tmp_path / "n.yaml", data={"train_list": lists["train"]},
                           finetune={"init": str(tmp_path / "runs" / "pretrain_demo" / "checkpoints")})
    assert _main("finetune", ["--config", no_init]) == 2
    err = capsys.readouterr().err
    assert "finetune.init=" in err and "run the pretraining demo first" in err and "finetune.init=none" in err
    assert _main("evaluate", ["--checkpoint", tmp_path / "nothing.pth"]) == 2
    assert "nothing.pth" in capsys.readouterr().err
    bad_label = tmp_path / "bad_label.txt"
    bad_label.write_text(open(lists["train"]).read().splitlines()[0].rsplit(" ", 1)[0] + " 9\n")
    assert _main("evaluate", ["--checkpoint", tmp_path / "m.yaml", "--config",
                              write_config(tmp_path / "b.yaml", data={"train_list": str(bad_label),
                                                                      "test_list": str(bad_label)})]) == 2
    err = capsys.readouterr().err
    assert "label 9" in err and "model.num_classes=4" in err
