"""hubconf.py through torch.hub.load(repo_dir, ..., source="local"): the paper sizes, weights from a local path and
from a URL, the checkpoint deciding the shape, and clear refusals."""
import pytest
import torch
from safetensors.torch import save_file

from motionmae_ds.checkpoint import read_weights
from motionmae_ds.checkpoint.hf_pretraining import save_hf_pretraining
from motionmae_ds.models import MODEL_SIZES, build_classifier, build_pretrain_model
from tests.checkpoint.zero_runs import TINY_DECODER, TINY_ENCODER
from tests.helpers import REPO

TINY = dict(**TINY_ENCODER, **TINY_DECODER)


def hub(entry: str, **kwargs):
    return torch.hub.load(str(REPO), entry, source="local", trust_repo=True, **kwargs)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("size,name", [("S", "vit_small"), ("B", "vit_base"), ("l", "vit_large"), ("huge", "vit_huge")])
def test_paper_sizes(size, name):
    with torch.device("meta"):  # shapes only: a ViT-H would take seconds to initialise for real
        enc = hub("motionmae_encoder", size=size)
        pre = hub("motionmae_pretraining", size=size)
        clf = hub("motionmae_classifier", size=size, num_classes=174)
    want = MODEL_SIZES[name]
    assert (enc.embed_dim, len(enc.blocks), enc.blocks[0].attn.num_heads) == (
        want.embed_dim, want.depth, want.num_heads)
    assert (pre.space_head.mask_token.shape[-1], len(pre.time_head.blocks)) == (
        want.decoder_embed_dim, want.decoder_depth)
    assert tuple(clf.head.weight.shape) == (174, want.embed_dim)
    with pytest.raises(ValueError, match="size='XL': choose one of S, B, L, H"):
        hub("motionmae_encoder", size="XL")


def test_pretraining_model_from_an_hf_pretraining_export(tmp_path):
    torch.manual_seed(0)
    model = build_pretrain_model(**TINY, decoder_mode="shared")
    save_hf_pretraining(tmp_path / "export", model.state_dict(), dict(TINY, decoder_mode="shared"))
    loaded = hub("motionmae_pretraining", checkpoint=tmp_path / "export")
    assert loaded.decoder_mode == "shared" and same_weights(loaded, model)
    # the checkpoint fixes the shape; a contradicting size is named, not silently applied
    with pytest.raises(ValueError, match=r"name='vit_base' \(the checkpoint has 'vit_tiny'\)"):
        hub("motionmae_pretraining", size="B", checkpoint=tmp_path / "export")


def test_encoder_from_a_url_is_downloaded_once_into_the_hub_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.manual_seed(1)
    source = build_pretrain_model(**TINY)
    file = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in source.encoder.state_dict().items()}, str(file))
    enc = hub("motionmae_encoder", size="tiny", checkpoint=file.as_uri(), embed_dim=48, depth=2, num_heads=3,
              num_frames=4, img_size=32)
    assert same_weights(enc, source.encoder) and not enc.training
    cached = list((tmp_path / "torch_home").rglob("enc.safetensors"))
    assert len(cached) == 1
    file.unlink()  # a second load reads the downloaded copy
    again = hub("motionmae_encoder", size="tiny", checkpoint=file.as_uri(), embed_dim=48, depth=2, num_heads=3,
                num_frames=4, img_size=32)
    assert same_weights(again, source.encoder)


def test_classifier_whole_from_a_finetuned_file_or_encoder_from_a_pretraining_export(tmp_path):
    torch.manual_seed(2)
    finetuned = build_classifier(**TINY_ENCODER, num_classes=7)
    torch.save(finetuned.state_dict(), tmp_path / "clf.pth")
    clf = hub("motionmae_classifier", size="tiny", checkpoint=tmp_path / "clf.pth", embed_dim=48, depth=2,
              num_heads=3, num_frames=4, img_size=32)
    assert clf.head.weight.shape[0] == 7 and same_weights(clf, finetuned)

    pretrained = build_pretrain_model(**TINY)
    save_hf_pretraining(tmp_path / "export", pretrained.state_dict(), TINY)
    fresh = hub("motionmae_classifier", checkpoint=tmp_path / "export", num_classes=5)
    assert fresh.head.weight.shape[0] == 5
    enc = pretrained.encoder.state_dict()
    assert all(torch.equal(fresh.state_dict()[k], enc[k]) for k in enc if k.startswith(("blocks.", "patch_embed.")))
    with pytest.raises(ValueError, match="num_classes is needed"):
        hub("motionmae_classifier", size="S")


def test_pretraining_model_from_a_deepspeed_run_takes_the_run_shape_and_exact_weights(zero2_pretrain):
    model = hub("motionmae_pretraining", checkpoint=zero2_pretrain.parent)  # the run directory
    state, _ = read_weights(zero2_pretrain, exact=True)
    assert model.encoder.embed_dim == 48 and sorted(model.state_dict()) == sorted(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
