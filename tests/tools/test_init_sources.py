"""An HF VideoMAE directory initialises finetuning; any encoder source initialises continued pretraining."""
import json

import torch

from motionmae_ds.config import load_config
from motionmae_ds.engine.builders import build_model
from motionmae_ds.models import build_classifier, build_pretrain_model
from motionmae_ds.models.pretrained import load_pretrained
from motionmae_ds.tools.hf_interop import save_hf_videomae

TINY = dict(name="vit_tiny", num_frames=4, img_size=32, patch_size=16, tubelet_size=2, embed_dim=48, depth=2,
            num_heads=3)


def test_hf_directory_initialises_the_classifier(tmp_path):
    torch.manual_seed(0)
    source = build_classifier(num_classes=5, **TINY)
    save_hf_videomae(tmp_path / "hf", source.state_dict(), dict(TINY, num_classes=5))
    torch.manual_seed(1)
    target = build_classifier(num_classes=5, **TINY)
    report = load_pretrained(target, tmp_path / "hf", keep_head=True)
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
    model = build_model(load_config(cfg_file))
    for name, value in donor.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], value), name
    # the decoders are not taken from the source
    assert not torch.equal(model.space_head.head.weight, donor.space_head.head.weight)
