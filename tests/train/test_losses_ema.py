"""Our finetuning losses and weight EMA (train/losses.py, train/ema.py), which replaced timm's in the training
processes: number for number against timm's (timm stays installed as the reference), and the EMA under ZeRO-3,
where the engine's module holds empty placeholders: built from, and updated with, the gathered weights."""
import json

import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy as TimmSmoothing
from timm.loss import SoftTargetCrossEntropy as TimmSoft
from timm.utils import ModelEmaV3

from motionmae_ds.train.ema import ModelEma
from motionmae_ds.train.finetune import FinetuneTask
from motionmae_ds.train.losses import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from tests.finetune_support import motion_lists, write_config
from tests.helpers import REPO, train_in_process


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_losses_equal_timms(smoothing):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 174, generator=g) * 3
    labels = torch.randint(0, 174, (16,), generator=g)
    ours = LabelSmoothingCrossEntropy(smoothing)(logits, labels)
    assert torch.equal(ours, TimmSmoothing(smoothing)(logits, labels))
    soft = torch.softmax(torch.randn(16, 174, generator=g), dim=-1)
    assert torch.equal(SoftTargetCrossEntropy()(logits, soft), TimmSoft()(logits, soft))
    # by hand, one row: (1 - s) * -log p[label] + s * mean(-log p)
    logp = torch.log_softmax(logits[:1].double(), dim=-1)[0]
    hand = (1 - smoothing) * -logp[labels[0]] + smoothing * -logp.mean()
    assert abs(LabelSmoothingCrossEntropy(smoothing)(logits[:1], labels[:1]).item() - hand.item()) < 1e-5


def _net(dtype):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    return net.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_ema_equals_timms_model_ema_v3(dtype):
    # a bf16 model (DeepSpeed's) takes timm's mul/add path, an fp32 one its lerp path; buffers (BatchNorm's running
    # statistics, its integer batch count) move with the weights
    model = _net(dtype)
    ours = ModelEma(model, decay=0.9)
    theirs = ModelEmaV3(model, decay=0.9, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g).to(dtype))
        model.train()(torch.randn(4, 8, generator=g).to(dtype))  # moves the running statistics
        ours.update(model, step)
        theirs.update(model, step)
        for (name, a), b in zip(ours.module.state_dict().items(), theirs.module.state_dict().values()):
            assert a.dtype == b.dtype and torch.equal(a, b), (step, name)
    assert ours.module.state_dict()["1.num_batches_tracked"] == 5
    assert not ours.module.training and all(p.dtype == torch.float32 for p in ours.module.parameters())


def test_ema_of_a_probe_leaves_its_frozen_encoder_alone_and_out_of_its_state():
    # a probe: the first layer frozen (the encoder), the rest trained; the frozen weights are the model's own, by
    # hand: never averaged, not in the state a checkpoint keeps, and taken from the model again on request
    model = _net(torch.float32)
    model[0].requires_grad_(False)
    ema = ModelEma(model, decay=0.5)
    assert ema.frozen == {"0.weight", "0.bias"}
    g = torch.Generator().manual_seed(1)
    expected = {k: v.clone() for k, v in ema.module.state_dict().items()}
    for step in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():  # even a frozen weight that moved (which a probe never does) stays out
                p.add_(torch.randn(p.shape, generator=g))
        model.eval()
        ema.update(model, step)
        d = 0.0 if step == 1 else 0.5
        for name, value in model.state_dict().items():
            if name not in ema.frozen and value.is_floating_point():
                expected[name] = d * expected[name] + (1 - d) * value
        for name, value in ema.module.state_dict().items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    state = ema.state_dict()
    assert set(state) == set(model.state_dict()) - {"0.weight", "0.bias"}
    # restored into a fresh average of the model as it is now: trained entries from the state, frozen from the model
    again = ModelEma(model, decay=0.5)
    again.load_state_dict(state)
    for name, value in again.module.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[name] if name in ema.frozen else state[name],
                                   rtol=0, atol=0, msg=name)
    # a whole module's state (checkpoints written before) loads; a state without a trained entry is refused
    again.load_state_dict(ema.module.state_dict())
    with pytest.raises(ValueError, match=r"the EMA state lacks 1 trained entries \(2.weight"):
        again.load_state_dict({k: v for k, v in state.items() if k != "2.weight"})
    # copy_frozen takes the frozen part from a model that reloaded its encoder
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    again.copy_frozen(model)
    assert torch.equal(again.module[0].weight, torch.full((8, 8), 3.0))
    assert torch.equal(again.module[2].weight, state["2.weight"])


class EmaChecked(FinetuneTask):
    """Checks every EMA update against the hand formula on the gathered weights: ema = d * ema + (1 - d) * model,
    d = 0 at step 1 (a copy of the model), the configured decay after."""

    def setup(self, run):
        super().setup(run)
        self.errors, self.sizes = [], None

    def after_step(self, engine, step):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            model = {k: v.detach().float().clone() for k, v in engine.module.state_dict().items()}
        before = {k: v.clone() for k, v in self.ema.module.state_dict().items()}
        super().after_step(engine, step)
        d = 0.0 if step == 1 else self.cfg.finetune.model_ema_decay
        after = self.ema.module.state_dict()
        self.sizes = sorted((k, v.numel()) for k, v in after.items())
        self.errors.append(max(float((after[k] - (d * before[k] + (1 - d) * model[k])).abs().max())
                               for k in after if after[k].is_floating_point()))

    def finish(self, run, summary):
        super().finish(run, summary)
        summary["ema_errors"], summary["ema_sizes"] = self.errors, self.sizes


def test_ema_under_zero3_is_built_and_updated_from_the_gathered_weights(tmp_path):
    lists = motion_lists(tmp_path / "cache")
    cfg = write_config(tmp_path / "ft.yaml", data={"train_list": lists["train"], "rand_aug": "", "random_erase": 0.0},
                       schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 4}, eval={"val_every_epochs": 0},
                       finetune={"model_ema": True, "model_ema_decay": 0.5})
    # threshold 0: ZeRO-3 partitions every weight of the tiny model (the placeholders a deep copy would copy)
    ds = json.loads((REPO / "ds_configs" / "zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps(ds))
    summary, _ = train_in_process("finetune", cfg, tmp_path / "run", ds_config=zero3, task=EmaChecked)
    assert len(summary["ema_errors"]) == summary["steps"] == 6
    assert max(summary["ema_errors"]) < 1e-6, summary["ema_errors"]
    from motionmae_ds.builders import build_finetune_model
    from motionmae_ds.config import load_finetune_config

    full = sorted((k, v.numel()) for k, v in build_finetune_model(load_finetune_config(cfg)).state_dict().items())
    assert summary["ema_sizes"] == full  # whole weights, not ZeRO-3's empty placeholders
