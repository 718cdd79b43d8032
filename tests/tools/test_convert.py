"""plain / encoder formats from a real 2-rank ZeRO-2 bf16 checkpoint, against DeepSpeed's own consolidation."""
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import load_file

from motionmae_ds.checkpoint import load_into
from motionmae_ds.models import build_classifier, build_pretrain_model
from motionmae_ds.tools.convert import export
from tests.checkpoint.zero_runs import TINY_DECODER, TINY_ENCODER

TINY_MODEL = dict(TINY_ENCODER, **TINY_DECODER)


def reference(ckpt):
    tag = (ckpt / "latest").read_text().strip()
    return {k: v.clone() for k, v in get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag).items()}


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32, k
        assert torch.equal(a[k], b[k]), k


def test_plain_equals_zero_to_fp32_and_loads_without_deepspeed(zero2_pretrain, convert_cli, tmp_path):
    out = tmp_path / "plain.pth"
    proc = convert_cli("--checkpoint", zero2_pretrain, "--output", out, "--format", "plain")
    assert proc.returncode == 0, proc.stderr
    state = torch.load(out, map_location="cpu", weights_only=True)
    ref = reference(zero2_pretrain)
    assert_same(state, ref)
    # the fp32 master, not the bf16 module copy: at least one weight differs from its bf16 rounding
    assert any(not torch.equal(v, v.bfloat16().float()) for v in state.values())
    model = build_pretrain_model(**TINY_MODEL)
    model.load_state_dict(state, strict=True)
    # a file, not views of one flat buffer: the encoder-only file below is much smaller
    enc = export(zero2_pretrain, tmp_path / "enc.pth", "encoder")
    assert enc.stat().st_size < 0.6 * out.stat().st_size


def test_plain_safetensors_and_tag_selection(zero2_pretrain, tmp_path):
    out = tmp_path / "plain.safetensors"
    tag = (zero2_pretrain / "latest").read_text().strip()
    assert export(zero2_pretrain, out, "plain", tag=tag, use_safetensors=True) == out
    assert_same(load_file(str(out)), reference(zero2_pretrain))


def test_encoder_format_names_and_finetune_loader(zero2_pretrain, tmp_path):
    out = tmp_path / "encoder.pth"
    export(zero2_pretrain.parent, out, "encoder")  # a run dir
    enc = torch.load(out, map_location="cpu", weights_only=True)
    ref = reference(zero2_pretrain)
    assert_same(enc, {k[len("encoder."):]: v for k, v in ref.items() if k.startswith("encoder.")})
    assert "patch_embed.proj.weight" in enc and "blocks.1.attn.qkv.weight" in enc and "norm.weight" in enc
    assert not any(k.startswith(("space_head", "time_head", "decoder")) for k in enc)

    # the finetuning loader takes it: every encoder tensor lands, only fc_norm/head are new
    clf = build_classifier(name="vit_tiny", num_classes=3, num_frames=4, img_size=32, patch_size=16, tubelet_size=2,
                           embed_dim=48, depth=2, num_heads=3)
    report = load_into(clf, out, "finetune")
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.dropped == ["norm.weight", "norm.bias"]
    for k, v in clf.state_dict().items():
        if not k.startswith(("fc_norm", "head")):
            assert torch.equal(v, enc[k]), k

    # and continued pretraining: a fresh MotionMAE's encoder becomes exactly these weights
    model = build_pretrain_model(**TINY_MODEL)
    result = load_into(model, out, "continue_pretraining")
    assert result.missing == [] and len(result.loaded) == len(enc)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc[k]), k


def test_classifier_checkpoint_plain_and_encoder(zero2_classifier, tmp_path):
    out = tmp_path / "clf.pth"
    export(zero2_classifier / (zero2_classifier / "latest").read_text().strip(), out, "plain")  # a tag dir
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert_same(state, reference(zero2_classifier))
    enc = tmp_path / "clf_enc.safetensors"
    export(zero2_classifier, enc, "encoder", use_safetensors=True)
    enc_state = load_file(str(enc))
    assert_same(enc_state, {k: v for k, v in state.items() if not k.startswith(("fc_norm", "head"))})
    # a finetuned encoder has no pretraining norm: continued pretraining keeps the fresh one and says so
    model = build_pretrain_model(**TINY_MODEL)
    fresh_norm = model.encoder.norm.weight.clone()
    result = load_into(model, enc, "continue_pretraining")
    assert result.missing == ["norm.weight", "norm.bias"]
    assert torch.equal(model.encoder.norm.weight, fresh_norm)
    assert torch.equal(model.encoder.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])
