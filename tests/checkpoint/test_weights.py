"""Loading pretrained weights (ckpt.load_into) into the classifier: VideoMAE names, prefixes, DeepSpeed
checkpoints, pos tables; into a pretraining model's encoder (continue_pretraining, model.init_encoder); and
for evaluation and frozen features."""
import argparse
import json
import textwrap

import pytest
import torch

from motionmae_ds.builders import build_model
from motionmae_ds.checkpoint import MODEL_STATES, CheckpointError, load_into, read_weights
from motionmae_ds.checkpoint.hf import save_hf_videomae
from motionmae_ds.config import load_pretrain_config
from motionmae_ds.models import build_classifier, build_pretrain_model
from tests.checkpoint.zero_runs import deepspeed_run

TINY = dict(name="vit_tiny", num_frames=4, img_size=32, patch_size=16, tubelet_size=2, depth=2,
            embed_dim=48, num_heads=3)


def _clf(num_classes=5, seed=0, **kw):
    torch.manual_seed(seed)
    return build_classifier(num_classes=num_classes, **{**TINY, **kw})


def _videomae_pretrain_state(src):
    """What a VideoMAE pretraining checkpoint holds for this encoder: encoder.* (with a final norm), a decoder."""
    enc = {f"encoder.{k}": v.clone() for k, v in src.state_dict().items()
           if not k.startswith(("head.", "fc_norm."))}
    d = TINY["embed_dim"]
    enc["encoder.norm.weight"], enc["encoder.norm.bias"] = torch.ones(d), torch.zeros(d)
    dec = {"encoder_to_decoder.weight": torch.randn(24, d), "mask_token": torch.zeros(1, 1, 24),
           "decoder.blocks.0.attn.qkv.weight": torch.randn(72, 24), "decoder.blocks.0.attn.q_bias": torch.zeros(24),
           "decoder.norm.weight": torch.ones(24), "decoder.head.weight": torch.randn(1536, 24)}
    return {**enc, **dec}


def test_videomae_pretrain_checkpoint_loads_encoder_and_reports(tmp_path):
    src = _clf(seed=1)
    state = _videomae_pretrain_state(src)
    assert "encoder.blocks.0.attn.q_bias" in state and "encoder.blocks.1.attn.v_bias" in state
    state["encoder.blocks.0.attn.relative_position_bias"] = torch.zeros(3)  # a name we do not have
    del state["encoder.blocks.1.mlp.fc2.bias"]
    path = tmp_path / "videomae_pretrain.pth"
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-3), "epoch": 799}, path)

    dst = _clf(seed=2)
    head_before = dst.head.weight.detach().clone()
    logs = []
    report = load_into(dst, path, "finetune", log=logs.append)
    for name, value in src.state_dict().items():
        if name.startswith(("head.", "fc_norm.")) or name == "blocks.1.mlp.fc2.bias":
            continue
        assert torch.equal(dst.state_dict()[name], value), name
    assert torch.equal(dst.head.weight, head_before)  # the head stays fresh
    assert report.missing == ["blocks.1.mlp.fc2.bias"]
    assert report.unexpected == ["blocks.0.attn.relative_position_bias"]
    assert {"encoder_to_decoder.weight", "mask_token", "decoder.head.weight", "norm.weight"} <= set(report.dropped)
    assert report.mismatched == []
    assert "missing: blocks.1.mlp.fc2.bias" in logs[0] and "unexpected: blocks.0.attn.relative_position_bias" in logs[0]


@pytest.mark.parametrize("wrapper,prefix", [("module", "module."), ("state_dict", "_orig_mod."),
                                            ("model", "backbone.module.")])
def test_videomae_finetune_names_with_prefixes(tmp_path, wrapper, prefix):
    src = _clf(num_classes=7, seed=3)  # a finetuned classifier with another number of classes
    state = {prefix + k: v for k, v in src.state_dict().items()}
    path = tmp_path / "ft.pth"
    torch.save({wrapper: state}, path)

    dst = _clf(num_classes=5, seed=4)
    report = load_into(dst, path, "finetune")
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert {"head.weight", "head.bias"} <= set(report.dropped)
    assert torch.equal(dst.blocks[1].attn.q_bias, src.blocks[1].attn.q_bias)
    assert torch.equal(dst.fc_norm.weight, src.fc_norm.weight)

    # keep_head: same class count loads the head; another class count is reported and left fresh
    same = _clf(num_classes=7, seed=5)
    assert load_into(same, path, "finetune_with_head").missing == []
    assert torch.equal(same.head.weight, src.head.weight)
    other = _clf(num_classes=5, seed=5)
    report = load_into(other, path, "finetune_with_head")
    assert "head.weight" in report.dropped and any("does not fit" in n for n in report.notes)


def test_shape_mismatch_is_reported_not_loaded(tmp_path):
    src = _clf(seed=1, embed_dim=48)
    state = {k: v for k, v in src.state_dict().items()}
    state["patch_embed.proj.weight"] = torch.randn(48, 3, 4, 16, 16)  # another tubelet size
    torch.save(state, tmp_path / "x.pth")
    dst = _clf(seed=2)
    before = dst.patch_embed.proj.weight.detach().clone()
    report = load_into(dst, tmp_path / "x.pth", "finetune")
    assert report.mismatched == ["patch_embed.proj.weight (48, 3, 4, 16, 16) vs model (48, 3, 2, 16, 16)"]
    assert torch.equal(dst.patch_embed.proj.weight, before)


def test_learned_pos_embed_is_resampled_in_3d(tmp_path):
    src = _clf(seed=1)
    state = dict(src.state_dict())
    # learned table on a (2, 4, 4) grid, value = 10 * t + channel: constant over space
    t_vals = torch.arange(2, dtype=torch.float32)[:, None, None, None] * 10 + torch.arange(48.0)
    state["pos_embed"] = t_vals.expand(2, 4, 4, 48).reshape(1, 32, 48).clone()
    torch.save({"model": state}, tmp_path / "learned.pth")
    dst = _clf(seed=2)  # 32 px / 16 -> (2, 2, 2) grid
    report = load_into(dst, tmp_path / "learned.pth", "finetune")
    assert "pos_embed" in report.loaded and any("(2, 4, 4) to (2, 2, 2)" in n for n in report.notes)
    table = dst.pos_embed.reshape(2, 2, 2, 48)
    assert torch.allclose(table[0], torch.arange(48.0).expand(2, 2, 48))
    assert torch.allclose(table[1], (torch.arange(48.0) + 10).expand(2, 2, 48))
    assert "pos_embed" in dst.state_dict()  # kept with the model's checkpoints from now on


def test_bad_sources_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_into(_clf(), tmp_path / "missing.pth", "finetune")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_into(_clf(), tmp_path / "empty", "finetune")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_into(_clf(), tmp_path / "junk.pth", "finetune")
    torch.save({"epoch": 3}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_into(_clf(), tmp_path / "nostate.pth", "finetune")


_SAVE_SCRIPT = textwrap.dedent("""
    import torch, deepspeed
    from deepspeed.utils import safe_get_full_fp32_param
    from motionmae_ds.runtime import distributed as dist_utils
    from motionmae_ds.models import build_mask_generator, build_pretrain_model
    dist_utils.init_distributed()
    torch.manual_seed(0)
    model = build_pretrain_model(name="vit_tiny", num_frames=4, img_size=32, depth=2, embed_dim=48, num_heads=3,
                                 decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = {{"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
           "train_batch_size": 2 * dist_utils.world_size(), "bf16": {{"enabled": True}},
           "zero_optimization": {{"stage": 2}}}}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    # one real step, so the fp32 master weights differ from their bf16 module copies
    torch.manual_seed(1 + dist_utils.rank())
    mask = build_mask_generator(kind="random", grid=(2, 2, 2), ratio=0.5)(2)
    engine.backward(engine(torch.randn(2, 3, 4, 32, 32), mask)["loss"])
    engine.step()
    master = {{n: safe_get_full_fp32_param(p).clone() for n, p in engine.module.named_parameters()}}
    if dist_utils.rank() == 0:
        torch.save(master, {ref!r})
    engine.save_checkpoint({ckpt!r}, tag="step00000001")
""")


def test_deepspeed_checkpoint_of_two_ranks_gives_exact_fp32_encoder(tmp_path):
    ckpt, ref = tmp_path / "run" / "checkpoints", tmp_path / "ref.pt"
    script = tmp_path / "save.py"
    script.write_text(_SAVE_SCRIPT.format(ref=str(ref), ckpt=str(ckpt)))
    deepspeed_run([], ranks=2, script=script)
    shards = sorted(p.name for p in (ckpt / "step00000001").glob("*optim_states.pt"))
    assert len(shards) == 2, shards  # written by 2 ZeRO ranks
    reference = torch.load(ref)

    dst = build_classifier(num_classes=3, **TINY)
    report = load_into(dst, tmp_path / "run", "finetune")  # the run dir (latest -> tag)
    assert report.missing == [] and report.unexpected == [] and "fp32 master" in report.summary()
    for name, value in dst.state_dict().items():
        if not name.startswith(("head.", "fc_norm.")):
            assert torch.equal(value, reference["encoder." + name]), name  # exact: the fp32 master copy
    assert any(n.startswith("space_head.") for n in report.dropped)
    assert any(n.startswith("time_head.") for n in report.dropped)

    # the bf16 module copy of a tag directory without ZeRO shards still loads (rounded to bf16)
    for shard in (ckpt / "step00000001").glob("*optim_states.pt"):
        shard.unlink()
    state, info = read_weights(ckpt / "step00000001")
    assert "mp_rank_00" in info["weights"]
    w = reference["encoder.blocks.0.mlp.fc1.weight"]
    assert not torch.equal(w, w.bfloat16().float())  # the step left fp32 detail below bf16 precision
    assert torch.equal(state["encoder.blocks.0.mlp.fc1.weight"], w.bfloat16().float())


def test_pos_embed_kind_of_the_pretraining_run_must_match(tmp_path):
    """Sin-cos tables are not saved with the weights: a run pretrained with the 3-D table and a classifier
    built with the 1-D one would pair the weights with the wrong positions. Refused with the key to set."""
    import yaml

    src = _clf(seed=1, pos_embed="sincos_3d")
    tag = tmp_path / "run" / "checkpoints" / "step00000008"
    tag.mkdir(parents=True)
    torch.save({"module": {f"encoder.{k}": v for k, v in src.state_dict().items()}},
               tag / MODEL_STATES)
    (tag.parent / "latest").write_text("step00000008")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"model": {"pos_embed": "sincos_3d"}}))
    with pytest.raises(CheckpointError, match=r"pretrained with model.pos_embed=sincos_3d, this model uses "
                                                  r"sincos_1d; set model.pos_embed=sincos_3d"):
        load_into(_clf(seed=2), tmp_path / "run", "finetune")
    dst = _clf(seed=2, pos_embed="sincos_3d")
    report = load_into(dst, tmp_path / "run", "finetune")
    assert "blocks.0.attn.qkv.weight" in report.loaded
    assert torch.equal(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_hf_directory_initialises_the_classifier(tmp_path):
    torch.manual_seed(0)
    source = build_classifier(num_classes=5, **TINY)
    save_hf_videomae(tmp_path / "hf", source.state_dict(), dict(TINY, num_classes=5))
    torch.manual_seed(1)
    target = build_classifier(num_classes=5, **TINY)
    report = load_into(target, tmp_path / "hf", "finetune_with_head")
    assert not report.missing, report.summary()
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


def test_model_init_encoder_starts_pretraining_from_a_pth(tmp_path):
    torch.manual_seed(0)
    donor = build_pretrain_model(decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3, **TINY)
    weights = tmp_path / "donor.pth"
    torch.save({"model": donor.state_dict()}, weights)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(json.dumps({
        "model": dict(TINY, decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3,
                      init_encoder=str(weights)),
        "data": {"synthetic": True}}))
    torch.manual_seed(1)
    model = build_model(load_pretrain_config(cfg_file))
    for name, value in donor.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], value), name
    # the decoders are not taken from the source
    assert not torch.equal(model.space_head.head.weight, donor.space_head.head.weight)


def test_init_encoder_refuses_another_pos_embed_kind(tmp_path):
    """The HF directory records its 1-D table; a pretraining model built with the 3-D one would pair the
    weights with the wrong positions."""
    torch.manual_seed(0)
    donor = build_pretrain_model(decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3, **TINY)
    save_hf_videomae(tmp_path / "hf", donor.encoder.state_dict(), TINY)
    model = build_pretrain_model(decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3, pos_embed="sincos_3d",
                                 **TINY)
    with pytest.raises(CheckpointError, match="pos_embed=sincos_1d, this model uses sincos_3d"):
        load_into(model, tmp_path / "hf", "continue_pretraining")


def test_evaluate_loads_a_finetuned_learned_table_into_the_fixed_buffer(tmp_path):
    """A classifier finetuned from a learned table saves it with its weights; evaluation loads the whole model
    by name, the table included, although a fresh model's table is not part of its state dict."""
    src = _clf(seed=1)
    learned = torch.arange(8 * 48, dtype=torch.float32).reshape(1, 8, 48)
    torch.save({"model": {**src.state_dict(), "pos_embed": learned}}, tmp_path / "learned.pth")
    finetuned = _clf(seed=2)
    load_into(finetuned, tmp_path / "learned.pth", "finetune_with_head")
    torch.save({"module": finetuned.state_dict()}, tmp_path / "finetuned.pth")

    evaluated = _clf(seed=3)
    assert "pos_embed" not in evaluated.state_dict()
    report = load_into(evaluated, tmp_path / "finetuned.pth", "evaluate")
    assert report.whole and "pos_embed" in report.loaded
    assert report.summary() == f"loaded {len(report.loaded)} tensors from {tmp_path / 'finetuned.pth'} (file)"
    assert torch.equal(evaluated.pos_embed, learned)
    for name, value in src.state_dict().items():
        assert torch.equal(evaluated.state_dict()[name], value), name


def test_evaluate_refuses_what_does_not_fill_the_classifier(tmp_path):
    from motionmae_ds.checkpoint import WeightsDoNotFitError
    from motionmae_ds.models.classifier import LinearProbe

    src = _clf(seed=1)
    torch.save(_videomae_pretrain_state(src), tmp_path / "pretrain.pth")  # no head: not a classifier
    with pytest.raises(WeightsDoNotFitError, match=r"pretrain.pth: does not hold a complete classifier\n"):
        load_into(_clf(seed=2), tmp_path / "pretrain.pth", "evaluate")
    torch.save(src.state_dict(), tmp_path / "clf.pth")
    with pytest.raises(WeightsDoNotFitError, match=r"clf.pth: not a LinearProbe checkpoint"):
        load_into(LinearProbe(_clf(seed=2)), tmp_path / "clf.pth", "evaluate")
    with pytest.raises(WeightsDoNotFitError, match=r"clf.pth: no weight matched the model"):
        load_into(_clf(seed=2, embed_dim=96, num_heads=3), tmp_path / "clf.pth", "finetune")
    with pytest.raises(ValueError, match="purpose='classify' is not one of"):
        load_into(_clf(), tmp_path / "clf.pth", "classify")


def test_frozen_encoder_takes_a_pretraining_models_encoder(tmp_path):
    from motionmae_ds.models.vit import VisionTransformerEncoder

    torch.manual_seed(0)
    donor = build_pretrain_model(decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3, **TINY)
    torch.save({"model": donor.state_dict()}, tmp_path / "donor.pth")
    encoder = VisionTransformerEncoder(4, 32, 16, 2, 3, 48, 2, 3)
    report = load_into(encoder, tmp_path / "donor.pth", "frozen_encoder")
    assert report.missing == [] and len(report.loaded) == len(encoder.state_dict())
    assert any(n.startswith("space_head.") for n in report.dropped)
    for name, value in donor.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], value), name
