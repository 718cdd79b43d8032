"""The attentive probe's parts (models/attentive.py) against hand-written computations, and its frozen encoder."""
import math

import pytest
import torch

from motionmae_ds.models import build_classifier
from motionmae_ds.models.attentive import AttentivePooler, AttentiveProbe, CrossAttention
from motionmae_ds.models.validation import ModelConfigError


def test_cross_attention_is_per_head_softmax_of_scaled_dot_products():
    torch.manual_seed(0)
    xattn = CrossAttention(12, num_heads=3)
    queries, tokens = torch.randn(2, 4, 12), torch.randn(2, 7, 12)
    q = queries @ xattn.q.weight.T + xattn.q.bias
    kv = tokens @ xattn.kv.weight.T + xattn.kv.bias
    k, v = kv[..., :12], kv[..., 12:]
    heads = []
    for h in range(3):
        s = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(weights @ v[..., s])
    expected = torch.cat(heads, dim=-1) @ xattn.proj.weight.T + xattn.proj.bias
    torch.testing.assert_close(xattn(queries, tokens), expected, rtol=1e-5, atol=1e-6)


def test_pooler_ignores_token_order_and_pools_into_its_queries():
    torch.manual_seed(1)
    pooler = AttentivePooler(16, num_heads=2, num_queries=3).eval()
    tokens = torch.randn(2, 10, 16)
    out = pooler(tokens)
    assert out.shape == (2, 3, 16)
    # no position enters the pooler: the grid's order is the encoder's business, not the pooler's
    torch.testing.assert_close(pooler(tokens[:, torch.randperm(10)]), out, rtol=1e-5, atol=1e-6)
    # the queries are learned parameters: each row of the batch starts from the same ones
    assert pooler.query_tokens.shape == (1, 3, 16) and pooler.query_tokens.requires_grad
    with pytest.raises(ModelConfigError, match="num_heads=5 does not divide the width 16"):
        AttentivePooler(16, num_heads=5)


def test_probe_trains_pooler_and_head_only_and_keeps_the_encoder_bitwise():
    torch.manual_seed(2)
    clf = build_classifier(name="vit_tiny", num_classes=4, num_frames=4, img_size=32, embed_dim=48, depth=2,
                           num_heads=3, drop_path_rate=0.2)
    probe = AttentiveProbe(clf).train()
    assert not probe.backbone.training and probe.pooler.training
    trainable = sorted(n for n, p in probe.named_parameters() if p.requires_grad)
    assert trainable and all(n.startswith(("pooler.", "backbone.head.")) for n in trainable)
    assert "backbone.head.weight" in trainable and "pooler.query_tokens" in trainable
    encoder_before = {n: p.clone() for n, p in probe.backbone.named_parameters() if not n.startswith("head.")}
    opt = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=1e-2)
    videos, labels = torch.randn(3, 3, 4, 32, 32), torch.tensor([0, 1, 3])
    pooled_before = probe.pooler.query_tokens.clone()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(probe(videos), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, encoder_before[n]) for n, p in probe.backbone.named_parameters() if n in encoder_before)
    assert not torch.equal(probe.pooler.query_tokens, pooled_before)
    # the logits are the head on the mean of the pooled queries of the frozen encoder's tokens
    with torch.no_grad():
        tokens = probe.tokens(videos)
        expected = probe.backbone.head(probe.pooler(tokens).mean(dim=1))
        torch.testing.assert_close(probe(videos), expected)
    assert tokens.shape == (3, 2 * 2 * 2, 48) and probe(videos).shape == (3, 4)
