"""The pretraining task inside the real loop (one rank, in a fork: tests/helpers.train_in_process) trains on the
loss of the step's plan: the encoder mask, then each head's decoder mask, drawn from the generator of the step's
position (seed, epoch, micro-step, rank). The first step's logged losses are checked against a per-sample
reference (tests/models/decoder_reference.py) computed here with that plan, the run's initial weights and the
batch the loop trained on, so a task that ignored the decoder masks, or passed one head's to both, would fail."""
import json

import torch

from motionmae_ds.builders import build_decoder_masker, build_masker, build_model
from motionmae_ds.config import load_pretrain_config
from motionmae_ds.data.finishing import finish_clips
from motionmae_ds.data.sampling import derive_seed
from motionmae_ds.train.pretrain import PretrainTask
from tests.helpers import ZERO2, read_log, train_in_process
from tests.models.decoder_reference import reference_head


class RecordFirstBatch(PretrainTask):
    """Pretraining that saves the clips of its first micro-step to ``dump``."""

    def __init__(self, cfg, dump: str) -> None:
        super().__init__(cfg)
        self.dump = dump

    def loss(self, engine, batch, ctx):
        if (ctx.epoch, ctx.micro) == (0, 0):
            d = self.cfg.data  # the clips as the step finishes them on its device
            torch.save(finish_clips(batch["video"], ctx.device, self.cfg.model.img_size, d.mean, d.std), self.dump)
        return super().loss(engine, batch, ctx)


def test_first_step_loss_is_the_plans_loss(tiny_config, tmp_path):
    # fp32 engine, so the reference can match to rounding; 0.5 of the tokens masked, each head decoding half of
    # those, the two heads complementary (the time head decodes what the space head skips)
    ds = json.loads(ZERO2.read_text())
    ds["bf16"] = {"enabled": False}
    fp32 = tmp_path / "zero2_fp32.json"
    fp32.write_text(json.dumps(ds))
    cfg = tiny_config(masking={"kind": "random", "ratio": 0.5, "decoder_ratio": 0.5,
                               "decoder_heads": "complementary"},
                      schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 2},
                      targets={"loss_weight_frame": 0.5, "loss_weight_motion": 2.0},
                      run={"save_every_epochs": 0})
    out, dump = tmp_path / "run", tmp_path / "first_batch.pt"
    train_in_process("pretrain", cfg, out, ds_config=fp32, task=RecordFirstBatch, dump=str(dump))
    first = read_log(out)[0]
    assert first["step"] == 1

    # the plan, by the loop's contract: the generator of (seed, epoch 0, micro-step 0, rank 0), encoder mask first
    pcfg = load_pretrain_config(str(cfg))
    torch.manual_seed(pcfg.run.seed)  # the run's initial weights
    model = build_model(pcfg)
    gen = torch.Generator().manual_seed(derive_seed(pcfg.run.seed, 0, 0, 0, 2))
    videos = torch.load(dump)
    mask = build_masker(pcfg, tuple(model.grid))(videos.shape[0], generator=gen)
    keep = build_decoder_masker(pcfg, tuple(model.grid))(videos.shape[0], generator=gen)
    assert not torch.equal(keep["frame"], keep["motion"])
    with torch.no_grad():
        reference = {kind: (lambda sse, count: float(sse / count))(*reference_head(model, videos, mask, keep[kind],
                                                                                   kind))
                     for kind in ("frame", "motion")}
        everything = model(videos, mask)  # every masked token decoded: what ignoring the decoder masks trains on
    for kind in ("frame", "motion"):
        assert abs(first[f"loss_{kind}"] - reference[kind]) <= 1e-5 * reference[kind], (kind, first, reference)
        # the reference tells the plans apart: decoding every masked token gives another loss
        assert abs(float(everything[f"loss_{kind}"]) - reference[kind]) > 1e-3 * reference[kind], kind
    want = 0.5 * reference["frame"] + 2.0 * reference["motion"]
    assert abs(first["loss"] - want) <= 1e-5 * want
