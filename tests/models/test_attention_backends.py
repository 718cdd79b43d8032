"""The CPU kernels (models/cpu_kernels.py) against torch's own: the same outputs and gradients
(forward and backward); "auto" choosing per device and dtype; each model holding its own backend."""
import pytest
import torch
import torch.nn.functional as F

from motionmae_ds.models import (
    ModelConfigError,
    build_classifier,
    build_mask_generator,
    build_pretrain_model,
    cpu_kernels,
)
from motionmae_ds.models.cpu_kernels import matmul_attention
from motionmae_ds.models.vit import Attention, attention

# bf16 keeps 8 bits of mantissa: 2^-8 relative, a few ulps after the softmax and two matmuls.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}


def qkv(dtype, b=2, h=3, n=37, d=16):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, h, n, d, generator=g).to(dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_attention_equals_sdpa_forward_and_backward(dtype):
    q, k, v = qkv(dtype)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    results = []
    for fn in (F.scaled_dot_product_attention, matmul_attention):
        out = fn(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        results.append((out, *grads))
    for ref, got in zip(*results):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), ref.float(), **TOL[dtype])


def test_matmul_attention_backward_passes_gradcheck():
    # the hand-written backward (in-place softmax and softmax-gradient kernels) against finite
    # differences in float64, on a token count that is not a multiple of any vector width
    q, k, v = (t.detach().double().requires_grad_() for t in qkv(torch.float32, b=1, h=2, n=13, d=8))
    assert torch.autograd.gradcheck(matmul_attention, (q, k, v))


@pytest.mark.parametrize("budget", [13 * 13, 2 * 13 * 13, 64 * 13, 10 ** 9])
def test_matmul_attention_tiles_agree_with_the_whole_computation(monkeypatch, budget):
    # budgets forcing one head per tile, two heads per tile, query chunks of one head, and one tile
    monkeypatch.setattr(cpu_kernels, "ATTENTION_TILE_ELEMENTS", budget)
    q, k, v = (t.detach().double().requires_grad_() for t in qkv(torch.float32, b=2, h=3, n=13, d=8))
    assert torch.autograd.gradcheck(matmul_attention, (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(matmul_attention(q, k, v), ref)


def test_attention_tiles_cover_every_query_row_once():
    for heads, n, n_keys, budget in [(6, 1568, 1568, 1 << 22), (24, 160, 160, 1 << 22), (16, 1568, 1568, 10 ** 6),
                                     (5, 100, 7, 700), (3, 130, 130, 64 * 130), (1, 1, 1, 1)]:
        seen = torch.zeros(heads, n, dtype=torch.int64)
        for h, i in cpu_kernels.attention_tiles(heads, n, n_keys, budget):
            seen[h, i] += 1
            assert (h.stop - h.start == 1) or (i.start == 0 and i.stop >= n)  # rows contiguous in (H, N, d)
        assert torch.equal(seen, torch.ones_like(seen))


def test_matmul_attention_cross_shapes():
    # more keys than queries and a value width unlike the query width, as SDPA allows
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 11, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(matmul_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    assert torch.autograd.gradcheck(matmul_attention, (q, k, v))


def test_matmul_attention_leaves_its_inputs_alone():
    q, k, v = qkv(torch.bfloat16)
    before = [t.detach().clone() for t in (q, k, v)]
    out = matmul_attention(q, k, v)
    grad_out = torch.ones_like(out)
    kept = grad_out.clone()
    out.backward(grad_out)
    assert all(torch.equal(t.detach(), b) for t, b in zip((q, k, v), before)) and torch.equal(grad_out, kept)


def test_matmul_attention_by_hand():
    # One query, two keys with scores 0 and ln(3) * sqrt(d): weights 1/4 and 3/4.
    d = 4
    q = torch.tensor([[[[1.0, 0, 0, 0]]]])
    k = torch.tensor([[[[0.0, 0, 0, 0], [torch.log(torch.tensor(3.0)).item() * d ** 0.5, 0, 0, 0]]]])
    v = torch.tensor([[[[4.0, 0, 0, 0], [8.0, 0, 0, 0]]]])
    torch.testing.assert_close(matmul_attention(q, k, v), torch.tensor([[[[7.0, 0, 0, 0]]]]))


def spy_on_paths(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(cpu_kernels, "matmul_attention", lambda *a: calls.append("matmul") or a[2])
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a: calls.append("sdpa") or a[2])
    return calls


def test_auto_picks_matmul_only_for_bf16_on_cpu(monkeypatch):
    calls = spy_on_paths(monkeypatch)
    for dtype in (torch.bfloat16, torch.float32):
        attention(*[t.detach() for t in qkv(dtype)])
    attention(*[t.detach() for t in qkv(torch.bfloat16)], "sdpa")
    attention(*[t.detach() for t in qkv(torch.float32)], "matmul")
    assert calls == ["matmul", "sdpa", "sdpa", "matmul"]


def test_auto_keeps_sdpa_off_the_cpu():
    # a meta tensor stands in for an accelerator's: only the device and dtype are read
    assert cpu_kernels.prefers_matmul_attention(torch.empty(1, 1, 4, 8, dtype=torch.bfloat16))
    assert not cpu_kernels.prefers_matmul_attention(torch.empty(1, 1, 4, 8, dtype=torch.bfloat16, device="meta"))
    assert not cpu_kernels.prefers_matmul_attention(torch.empty(1, 1, 4, 8))


def test_each_model_holds_its_own_backend(monkeypatch):
    # two models in one process, set differently: each runs its own path, neither moves the other
    # or a model built afterwards
    torch.manual_seed(0)
    pre = build_pretrain_model(name="vit_tiny", num_frames=4, img_size=32, depth=1, decoder_depth=1)
    clf = build_classifier(name="vit_tiny", num_classes=5, num_frames=4, img_size=32, depth=1)
    pre.set_attention_backend("matmul")
    clf.set_attention_backend("sdpa")
    layers = {name: [m.backend for m in model.modules() if isinstance(m, Attention)]
              for name, model in (("pre", pre), ("clf", clf))}
    assert layers == {"pre": ["matmul"] * 3, "clf": ["sdpa"]}  # encoder + both decoders; one block
    fresh = build_classifier(name="vit_tiny", num_classes=5, num_frames=4, img_size=32, depth=1)
    assert [m.backend for m in fresh.modules() if isinstance(m, Attention)] == ["auto"]

    calls = spy_on_paths(monkeypatch)
    videos = torch.randn(2, 3, 4, 32, 32)
    mask = build_mask_generator("tube", pre.grid, 0.5)(2, generator=torch.Generator().manual_seed(0))
    pre(videos, mask)
    assert calls == ["matmul"] * 3
    calls.clear()
    clf.to(torch.bfloat16)(videos)  # bf16 on the CPU, where "auto" would take the matmul path
    assert calls == ["sdpa"]
    calls.clear()
    fresh.to(torch.bfloat16)(videos)
    assert calls == ["matmul"]


def test_off_the_cpu_the_model_runs_plain_conv3d_and_sdpa(monkeypatch):
    # the meta device stands in for an accelerator (no GPU in CI): bf16 there, under "auto", must not
    # reach the CPU kernels
    def refuse(*args):
        raise AssertionError("a CPU kernel ran off the CPU")

    monkeypatch.setattr(cpu_kernels, "matmul_attention", refuse)
    monkeypatch.setattr(cpu_kernels, "gemm_tubelet_embed", refuse)
    with torch.device("meta"):
        clf = build_classifier(name="vit_tiny", num_classes=5, num_frames=4, img_size=32, depth=1)
        logits = clf.to(torch.bfloat16)(torch.empty(2, 3, 4, 32, 32))
    assert logits.shape == (2, 5) and logits.device.type == "meta"


def test_encoder_alone_sets_its_backend():
    pre = build_pretrain_model(name="vit_tiny", num_frames=4, img_size=32, depth=2, decoder_depth=1)
    pre.encoder.set_attention_backend("sdpa")
    assert [m.backend for m in pre.modules() if isinstance(m, Attention)] == ["sdpa", "sdpa", "auto", "auto"]


def test_unknown_backend_rejected():
    clf = build_classifier(name="vit_tiny", num_classes=5, num_frames=4, img_size=32, depth=1)
    with pytest.raises(ModelConfigError, match="attention backend 'flash3'"):
        clf.set_attention_backend("flash3")
    with pytest.raises(ModelConfigError, match="attention backend 'flash3'"):
        attention(*[t.detach() for t in qkv(torch.float32)], "flash3")
    assert [m.backend for m in clf.modules() if isinstance(m, Attention)] == ["auto"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemm_patch_embedding_equals_conv3d(dtype):
    """On the CPU the tubelet embedding runs as one GEMM; it must match the Conv3d it stands for,
    in the output and in the weight and bias gradients."""
    torch.manual_seed(0)
    clf = build_classifier(name="vit_tiny", num_classes=5, num_frames=4, img_size=48, depth=1).to(dtype)
    embed = clf.patch_embed
    videos = torch.randn(2, 3, 4, 48, 48)
    out = embed(videos)
    out.square().sum().backward()
    got = (out, embed.proj.weight.grad, embed.proj.bias.grad)
    embed.zero_grad(set_to_none=True)
    ref_out = embed.proj(videos.to(dtype)).flatten(2).transpose(1, 2)  # the Conv3d itself
    ref_out.square().sum().backward()
    ref = (ref_out, embed.proj.weight.grad, embed.proj.bias.grad)
    assert out.shape == (2, 2 * 3 * 3, 192)
    for g, r in zip(got, ref):
        # The gradients sum over all 72 tokens: compare relative to each tensor's scale.
        scale = r.abs().max().float().item()
        rel = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(g.float(), r.float(), rtol=rel, atol=rel * scale)


@pytest.mark.parametrize("backend", ["sdpa", "matmul"])
def test_key_mask_equals_attention_without_the_padding(monkeypatch, backend):
    # sample 0 has 9 real tokens, sample 1 all 13: padding keys (and the padded queries' outputs, which
    # the model discards) must not change any real token's output or gradient
    monkeypatch.setattr(cpu_kernels, "ATTENTION_TILE_ELEMENTS", 2 * 13 * 13)  # several tiles
    q, k, v = (t.detach().double().requires_grad_() for t in qkv(torch.float32, b=2, h=3, n=13, d=8))
    key_mask = torch.ones(2, 13, dtype=torch.bool)
    key_mask[0, 9:] = False
    out = attention(q, k, v, backend, key_mask)
    real = attention(q[:1, :, :9], k[:1, :, :9], v[:1, :, :9], backend)
    torch.testing.assert_close(out[:1, :, :9], real)
    torch.testing.assert_close(out[1:], attention(q[1:], k[1:], v[1:], backend))
    grads = torch.autograd.grad(out[:1, :, :9].sum(), (q, k, v))
    ref = torch.autograd.grad(real.sum(), (q, k, v))
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want)


def test_tiled_attention_with_key_mask_has_the_true_gradient(monkeypatch):
    # numerical against analytic gradient of the tiled kernel through padded keys (once: it is the slow check)
    monkeypatch.setattr(cpu_kernels, "ATTENTION_TILE_ELEMENTS", 2 * 13 * 13)  # several tiles
    q, k, v = (t.detach().double().requires_grad_() for t in qkv(torch.float32, b=2, h=3, n=13, d=8))
    key_mask = torch.ones(2, 13, dtype=torch.bool)
    key_mask[0, 9:] = False
    assert torch.autograd.gradcheck(lambda a, b, c: matmul_attention(a, b, c, key_mask), (q, k, v))
