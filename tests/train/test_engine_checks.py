"""The engine's combinations that cannot work, refused at start with one line, and the fused AdamW's step counts
after DeepSpeed's universal loader has set them."""
import json

import pytest
import torch

from motionmae_ds.builders import build_adamw, steps_on_param_device
from motionmae_ds.config import ConfigError, load_pretrain_config
from motionmae_ds.config.checks import check_engine
from tests.helpers import REPO, train_in_process


def _zero3(tmp_path):
    ds = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp_path / "zero3.json"
    path.write_text(json.dumps(ds))
    return path


def test_zero3_with_compile_is_refused_with_one_line(tiny_config, tmp_path):
    cfg = tiny_config(run={"compile": True})
    with pytest.raises(ConfigError) as info:
        check_engine(load_pretrain_config(cfg), 3, "zero3.json")
    message = str(info.value)
    assert "\n" not in message and "run.compile=true" in message and "ZeRO stage 3" in message
    for stage in (0, 1, 2):
        check_engine(load_pretrain_config(cfg), stage, "zero2.json")
    check_engine(load_pretrain_config(tiny_config(model={"grad_checkpointing": True})), 3, "zero3.json")
    # the real start: refused before the engine is built, as the entry point's config error (exit code 2)
    with pytest.raises(ConfigError, match="run.compile=true with ZeRO stage 3"):
        train_in_process("pretrain", cfg, tmp_path / "run", ds_config=_zero3(tmp_path))


def _fused_steps(step_value):
    """Two fused AdamW steps, the step count replaced in between by ``step_value`` (what a loader left)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(16))
    opt = build_adamw([{"params": [p]}], 1e-2, (0.9, 0.95), 1e-8, device_type="cuda")  # fused: torch's CPU kernel
    assert opt.defaults["fused"]
    for i in range(2):
        p.grad = torch.full((16,), 0.5 + i)
        opt.step()
        if i == 0:
            opt.state[p]["step"] = step_value
    return p.detach().clone(), opt.state[p]["step"]


@pytest.mark.parametrize("loaded", [1, 1.0, torch.tensor(1.0, dtype=torch.float64), torch.tensor(1)])
def test_fused_adamw_steps_become_float32_tensors_on_their_parameters_device(loaded):
    reference, step = _fused_steps(torch.tensor(1.0))
    weights, fixed = _fused_steps(loaded)
    assert fixed.dtype == torch.float32 and fixed.device == weights.device and fixed.item() == step.item() == 2
    assert torch.equal(weights, reference)
    # the hook itself: a no-op once the steps are in place
    opt = build_adamw([{"params": [torch.nn.Parameter(torch.zeros(2))]}], 1e-2, (0.9, 0.95), 1e-8,
                      device_type="cuda")
    steps_on_param_device(opt)
