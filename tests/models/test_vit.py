"""ViT pieces against hand computations: position tables, attention, drop path, visible-only encoder."""
import math

import torch
import torch.nn as nn

from motionmae_ds.models import build_classifier, build_pretrain_model
from motionmae_ds.models.pos_embed import build_pos_table, sincos_1d_table, sincos_3d_table
from motionmae_ds.models.vit import Attention, Block, DropPath


def test_sincos_1d_by_hand():
    table = sincos_1d_table(3, 4)
    expected = [[0.0, 1.0, 0.0, 1.0],
                [math.sin(1), math.cos(1), math.sin(1 / 100), math.cos(1 / 100)],
                [math.sin(2), math.cos(2), math.sin(2 / 100), math.cos(2 / 100)]]
    torch.testing.assert_close(table, torch.tensor(expected), rtol=0, atol=1e-7)
    assert build_pos_table("sincos_1d", (2, 2, 2), 6).shape == (1, 8, 6)


def test_sincos_1d_equals_hf_videomae_table():
    # The default must equal the table HF transformers' VideoMAE adds, or exported weights drift.
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table
    ours = build_pos_table("sincos_1d", (8, 14, 14), 768)
    assert torch.equal(ours, get_sinusoid_encoding_table(1568, 768).float())


def test_sincos_3d_is_separable():
    grid, dim = (2, 3, 4), 32
    table = sincos_3d_table(grid, dim)
    dt, dh = 2 * (dim // 8), 2 * ((dim - 2 * (dim // 8)) // 4)
    dw = dim - dt - dh
    for ti in range(2):
        for hi in range(3):
            for wi in range(4):
                row = torch.cat([sincos_1d_table(2, dt)[ti], sincos_1d_table(3, dh)[hi], sincos_1d_table(4, dw)[wi]])
                assert torch.equal(table[(ti * 3 + hi) * 4 + wi], row)


def test_attention_matches_explicit_heads():
    torch.manual_seed(0)
    attn = Attention(8, num_heads=2)
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(2, 5, 8)
    w_q, w_k, w_v = attn.qkv.weight.chunk(3)
    q = x @ w_q.T + attn.q_bias
    k = x @ w_k.T  # k has no bias by design
    v = x @ w_v.T + attn.v_bias
    heads = []
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        a = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 2.0, dim=-1)  # sqrt(head_dim) = 2
        heads.append(a @ v[..., s])
    expected = attn.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)
    assert sorted(n for n, _ in attn.named_parameters()) == [
        "proj.bias", "proj.weight", "q_bias", "qkv.weight", "v_bias"]


class OldMlp(nn.Module):
    """The Mlp our blocks had before timm's: the state dicts it wrote must load and compute the same."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def test_timm_mlp_loads_old_state_dicts_and_computes_the_same():
    torch.manual_seed(0)
    old = OldMlp(16, 64)
    block = Block(16, num_heads=2).train()  # train mode: timm's dropouts (p=0) must stay no-ops
    assert sorted(block.mlp.state_dict()) == sorted(old.state_dict()) == [
        "fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    block.mlp.load_state_dict(old.state_dict(), strict=True)
    x = torch.randn(3, 5, 16, requires_grad=True)
    for dtype in (torch.float32, torch.bfloat16):
        outs = []
        for mlp in (old.to(dtype), block.mlp.to(dtype)):
            y = mlp(x.to(dtype))
            (gx,) = torch.autograd.grad(y.square().sum(), x)
            outs.append((y, gx))
        assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_block_state_dict_names_are_unchanged():
    clf = build_classifier(name="vit_tiny", num_classes=5, num_frames=4, img_size=32, depth=1)
    assert sorted(k for k in clf.state_dict() if k.startswith("blocks.0.")) == sorted(
        f"blocks.0.{k}" for k in ("norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight",
                                  "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                                  "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"))


def test_drop_path_is_per_sample_and_rescaled():
    dp = DropPath(0.5).train()
    x = torch.ones(2000, 3)
    y = dp(x)
    kept = y[:, 0] != 0
    assert torch.equal(y[kept], torch.full_like(y[kept], 2.0))  # 1 / (1 - 0.5)
    assert torch.equal(y[~kept], torch.zeros_like(y[~kept]))
    assert 0.4 < kept.float().mean() < 0.6
    assert torch.equal(dp.eval()(x), x)


def test_encoder_sees_only_visible_tokens(videos, half_mask, tiny):
    model = build_pretrain_model(**tiny).eval()
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    visible_ids = model.plan_tokens(half_mask)["frame"].visible_ids
    out = model.encoder(videos, visible_ids)
    assert seen == [(2, 4, 192)]
    # Reference: embed everything, keep the visible rows by boolean indexing, run the blocks.
    x = model.encoder.embed(videos)[~half_mask].reshape(2, 4, 192)
    for blk in model.encoder.blocks:
        x = blk(x)
    torch.testing.assert_close(out, model.encoder.norm(x))
    # Masked pixels cannot reach the encoder output.
    changed = videos.clone()
    changed[0, :, 0:2, 0:16, 0:16] += 5.0  # token 0 of sample 0 is masked
    torch.testing.assert_close(model.encoder(changed, visible_ids), out, rtol=0, atol=0)
