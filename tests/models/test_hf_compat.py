"""Our classifier equals HF transformers' VideoMAE classifier given the same weights: the
parameter layout (qkv + q_bias/v_bias), the position table, LayerNorm eps and pooling all match."""
import torch
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

from motionmae_ds.models import build_classifier


def to_hf(state: dict, depth: int) -> dict:
    out = {"videomae.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "videomae.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "fc_norm.weight": state["fc_norm.weight"], "fc_norm.bias": state["fc_norm.bias"],
           "classifier.weight": state["head.weight"], "classifier.bias": state["head.bias"]}
    for i in range(depth):
        ours, hf = f"blocks.{i}.", f"videomae.encoder.layer.{i}."
        q, k, v = state[ours + "attn.qkv.weight"].chunk(3)
        att = hf + "attention.attention."
        out.update({att + "query.weight": q, att + "key.weight": k, att + "value.weight": v,
                    att + "query.bias": state[ours + "attn.q_bias"], att + "value.bias": state[ours + "attn.v_bias"]})
        for mine, theirs in (("attn.proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
                             ("mlp.fc2", "output.dense"), ("norm1", "layernorm_before"), ("norm2", "layernorm_after")):
            out[hf + theirs + ".weight"] = state[ours + mine + ".weight"]
            out[hf + theirs + ".bias"] = state[ours + mine + ".bias"]
    return out


def test_logits_match_hf_videomae(videos, tiny_clf):
    torch.manual_seed(0)
    clf = build_classifier(**tiny_clf, init_scale=1.0).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a swapped tensor cannot go unnoticed
        for name, p in clf.named_parameters():
            if p.dim() == 1:
                p.normal_(0.0 if "bias" in name else 1.0, 0.1)
    cfg = VideoMAEConfig(image_size=32, patch_size=16, num_channels=3, num_frames=4, tubelet_size=2,
                         hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768,
                         qkv_bias=True, use_mean_pooling=True, num_labels=5, layer_norm_eps=1e-6)
    hf = VideoMAEForVideoClassification(cfg).eval()
    hf.load_state_dict(to_hf(clf.state_dict(), 2), strict=True)
    with torch.no_grad():
        theirs = hf(pixel_values=videos.permute(0, 2, 1, 3, 4)).logits  # HF takes (B, T, C, H, W)
        ours = clf(videos)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
