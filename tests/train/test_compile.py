"""run.compile: regional torch.compile (inductor, on this CPU) of the transformer blocks. Compiled and eager
pretraining give the same losses, their checkpoints carry the eager names (no ``_orig_mod.``), and each resumes
the other's checkpoint: eager -> compiled and compiled -> eager. Activation checkpointing around compiled blocks
(drop path on: the recompute must draw what the forward drew) gives the gradients of the compiled blocks without it."""
import shutil
import subprocess

import torch

from motionmae_ds import checkpoint as ckpt
from motionmae_ds.builders import compile_blocks
from motionmae_ds.models import build_pretrain_model
from tests.helpers import ZERO2, launch_cmd, read_log, start

TOL = 1e-3


def test_compile_blocks_keeps_the_eager_names():
    kwargs = dict(name="vit_tiny", num_frames=4, img_size=32, patch_size=16, tubelet_size=2, depth=2,
                  decoder_depth=1)
    eager, compiled = build_pretrain_model(**kwargs), build_pretrain_model(**kwargs)
    assert compile_blocks(compiled) == 2 + 1 + 1  # encoder, space head, time head
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in eager.named_parameters()]


def test_activation_checkpointing_around_compiled_blocks_keeps_the_gradients():
    # one decoder (the space head): two block kinds to compile, the encoder's and the decoder's
    model = build_pretrain_model(name="vit_tiny", num_frames=4, img_size=32, patch_size=16, tubelet_size=2, depth=2,
                                 decoder_depth=1, drop_path_rate=0.5, target="frame")
    compile_blocks(model)
    videos = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, ::2] = True
    grads = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)  # the same drop-path draws in both runs
        loss = model(videos, mask)["loss"]
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, a), (loss_b, b) = grads
    assert torch.equal(loss_a, loss_b) and sorted(a) == sorted(b) and len(a) > 20
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


def _both(tmp_path, jobs: dict) -> dict:
    """Run launch/pretrain.py (one process, no launcher) for each name -> args side by side; their outputs."""
    procs = {name: start(launch_cmd("pretrain.py", args), log_path=tmp_path / f"{name}.txt")
             for name, args in jobs.items()}
    out = {}
    for name, proc in procs.items():
        try:
            proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        text = (tmp_path / f"{name}.txt").read_text()
        assert proc.returncode == 0, text[-3000:]
        out[name] = text
    return out


def _close(a: dict, b: dict, steps) -> None:
    for step in steps:
        for key in ("loss", "loss_frame", "loss_motion"):
            assert abs(a[step][key] - b[step][key]) <= TOL, (step, key, a[step][key], b[step][key])
        assert a[step]["lr"] == b[step]["lr"]


def test_compiled_and_eager_match_and_resume_each_other(tiny_config, tmp_path):
    # 12 videos / batch 2 = 6 steps per epoch, 3 epochs, one process
    cfg = tiny_config(schedule={"epochs": 3, "warmup_epochs": 1, "batch_size": 2}, model={"depth": 2},
                      run={"log_every": 1, "save_every_epochs": 1, "keep_last": 0})
    base = ["--config", cfg, "--deepspeed_config", ZERO2]
    eager_dir, compiled_dir = tmp_path / "eager", tmp_path / "compiled"
    _both(tmp_path, {"eager": base + ["--output_dir", eager_dir],
                     "compiled": base + ["--output_dir", compiled_dir, "--set", "run.compile=true"]})
    eager, compiled = ({r["step"]: r for r in read_log(d)} for d in (eager_dir, compiled_dir))
    assert sorted(eager) == sorted(compiled) == list(range(1, 19))
    _close(eager, compiled, range(1, 19))
    assert compiled[18]["loss"] < compiled[1]["loss"]

    for run_dir in (eager_dir, compiled_dir):
        ckpt_dir = run_dir / "checkpoints"
        names = list(ckpt.load_model_states(ckpt_dir, ckpt.tag_for(12))["module"])
        assert names and not [n for n in names if "_orig_mod" in n]
        assert ckpt.read_client_state(ckpt_dir, ckpt.tag_for(12))["config"]["run"]["compile"] == (
            run_dir == compiled_dir)

    # the last epoch again, the other way round: the eager checkpoint of step 12 resumed compiled, the compiled one
    # eager (run.compile is resume-safe); as if both had stopped there, the last checkpoint goes and `latest` names
    # step 12 again
    for run_dir in (eager_dir, compiled_dir):
        shutil.rmtree(run_dir / "checkpoints" / ckpt.tag_for(18))
        (run_dir / "checkpoints" / "latest").write_text(ckpt.tag_for(12))
    outs = _both(tmp_path, {"eager_then_compiled": base + ["--output_dir", eager_dir, "--set", "run.compile=true"],
                            "compiled_then_eager": base + ["--output_dir", compiled_dir]})
    for name, run_dir in (("eager_then_compiled", eager_dir), ("compiled_then_eager", compiled_dir)):
        assert f"resumed from {run_dir / 'checkpoints' / ckpt.tag_for(12)}" in outs[name]
    eager, compiled = ({r["step"]: r for r in read_log(d)} for d in (eager_dir, compiled_dir))
    assert sorted(eager) == sorted(compiled) == list(range(1, 19))
    _close(eager, compiled, range(13, 19))
