"""CUDA-only paths, each against what it must do on a GPU: SDPA's flash or memory-efficient kernel in bf16, the
pinned-memory training loader, fused AdamW (and DeepSpeed's FusedAdam, marker ``fused_adam``, information only),
masks drawn on the device, a training step with no host synchronisation, and a one-rank NCCL process group through
our init. Run by bench/gpu_check.py on CUDA
(bench/gpu_tests/conftest.py), outside tests/, so the CPU suite never collects them."""
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, free_port

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _model(**extra):
    from motionmae_ds.models import build_pretrain_model

    return build_pretrain_model(name="vit_small", num_frames=16, img_size=224, **extra).to(CUDA)


def test_sdpa_runs_flash_or_efficient_kernels_in_bf16():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from motionmae_ds.models.vit import attention

    q, k, v = (torch.randn(2, 6, 1568, 64, device=CUDA, dtype=torch.bfloat16) for _ in range(3))
    reference = attention(q.float(), k.float(), v.float(), "matmul")
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        # restricted to one kernel, SDPA raises when that kernel cannot take the call
        with sdpa_kernel([backend]):
            out = attention(q, k, v, "auto")
        torch.testing.assert_close(out.float(), reference, rtol=2e-2, atol=2e-2)
    # the padded decoder's key mask: flash takes no mask, the efficient kernel must
    key_mask = torch.ones(2, 1568, dtype=torch.bool, device=CUDA)
    key_mask[1, 1500:] = False
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        attention(q, k, v, "auto", key_mask)
    # and the whole model: every attention call of a bf16 step on those two kernels only
    model = _model().to(torch.bfloat16)
    from motionmae_ds.models import build_mask_generator

    mask = build_mask_generator("tube", model.grid, 0.9)(2, device=CUDA)
    videos = torch.randn(2, 3, 16, 224, 224, device=CUDA)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        model(videos, mask)["loss"].backward()


def test_masks_are_drawn_on_the_device_and_the_step_never_syncs():
    from motionmae_ds.models import build_decoder_mask, build_mask_generator
    from motionmae_ds.models.masking import mask_counts

    model = _model().to(torch.bfloat16)
    gen = torch.Generator(device=CUDA).manual_seed(0)
    masker = build_mask_generator("tube", model.grid, 0.9)
    decoder = build_decoder_mask(grid=model.grid, ratio=0.5, heads="complementary")
    counts = mask_counts(masker, decoder)
    videos = torch.randn(4, 3, 16, 224, 224, device=CUDA)
    mask = masker(4, generator=gen)
    keep = decoder(4, generator=gen)
    assert mask.device.type == "cuda" and all(t.device.type == "cuda" for t in keep.values())
    assert (mask.sum(1) == counts.num_masked).all()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host sync now raises
    try:
        for k in (None, keep):
            out = model(videos, mask, decoder_keep=k, counts=counts)
            out["loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out["loss"]).item()


def test_training_loader_pins_its_batches(tmp_path):
    from motionmae_ds.builders import read_records
    from motionmae_ds.config import config_from_dict
    from motionmae_ds.data.datasets import VideoClipDataset
    from motionmae_ds.data.loader import make_loader
    from motionmae_ds.data.synthetic import ensure_synthetic_dataset

    list_file = ensure_synthetic_dataset(tmp_path / "videos", kind="pretrain", seed=0, num_videos=4, num_frames=12,
                                         size=32)
    cfg = config_from_dict({"data": {"synthetic": True}})
    records = read_records(cfg.data, str(list_file), "synthetic")
    dataset = VideoClipDataset(records, mode="pretrain", num_frames=4, sampling_rate=2, input_size=32)
    dataset.set_epoch(0)
    for workers in (0, 2):
        batch = next(iter(make_loader(dataset, None, 2, workers, 60, CUDA)))
        assert batch["video"].is_pinned()
        moved = batch["video"].to(CUDA, non_blocking=True)
        torch.cuda.synchronize()
        assert all(torch.equal(a.cpu(), b) for a, b in zip(moved.frames, batch["video"].frames))
    assert not next(iter(make_loader(dataset, None, 2, 0, 60, torch.device("cpu"))))["video"].is_pinned()


def test_the_device_finishes_clips_without_syncs_as_the_cpu_does(tmp_path):
    from motionmae_ds.data.finishing import View, finish_clips, pack_items
    from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD

    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (6, 40, 56, 3), dtype=torch.uint8, generator=g)
    i420 = torch.randint(16, 236, (6, 60, 56), dtype=torch.uint8, generator=g)
    views = [[View((0, 2, 4), (3, 5, 30, 41), True)], [View((5, 1, 3), (1, 2, 33, 50), False, (2, 3, 9, 7, 11))]]
    batch = pack_items([rgb, i420], views, ["rgb", "bt709"]).pin_memory()
    finish_clips(batch, CUDA, 32, IMAGENET_MEAN, IMAGENET_STD)  # mean/std made once per device here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host sync now raises
    try:
        out = finish_clips(batch, CUDA, 32, IMAGENET_MEAN, IMAGENET_STD)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = finish_clips(batch, torch.device("cpu"), 32, IMAGENET_MEAN, IMAGENET_STD)
    # the erased box holds noise from each device's own generator; everything else must agree
    keep = torch.ones_like(ref, dtype=torch.bool)
    keep[1, :, :, 2:11, 3:10] = False
    # within one level of 255 (the truncation of the 4:2:0 conversion may land on either side in float)
    assert torch.allclose(out.cpu()[keep], ref[keep], atol=1.01 / (255 * min(IMAGENET_STD)))


def test_fused_adamw_on_cuda_matches_the_unfused_one():
    from motionmae_ds.builders import build_adamw
    from motionmae_ds.train.optim import param_groups

    results = []
    for device_type in ("cuda", "cpu"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64)).to(CUDA)
        opt = build_adamw(param_groups(model, 0.05), 1e-2, (0.9, 0.95), 1e-8, device_type=device_type)
        assert bool(opt.defaults.get("fused")) == (device_type == "cuda")
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 64, device=CUDA, generator=torch.Generator(CUDA).manual_seed(1))).square().mean(
            ).backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _run(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DS_ACCELERATOR": "cuda", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
           "LOCAL_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.fused_adam
def test_deepspeed_fused_adam_matches_torch_adamw():
    # DeepSpeed's CUDA FusedAdam (JIT-built here unless the wheel shipped it), against torch's AdamW; not part of
    # the check (the trainer never uses it): bench/gpu_check.py --fused_adam runs it as information
    code = """
import torch
from deepspeed.ops.adam import FusedAdam
torch.manual_seed(0)
w = torch.randn(1000, device="cuda", requires_grad=True)
v = w.detach().clone().requires_grad_(True)
a = FusedAdam([w], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, adam_w_mode=True)
b = torch.optim.AdamW([v], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
for i in range(3):
    g = torch.randn(1000, device="cuda", generator=torch.Generator("cuda").manual_seed(i))
    w.grad, v.grad = g.clone(), g.clone()
    a.step(); b.step()
torch.testing.assert_close(w, v, rtol=1e-5, atol=1e-6)
print("fused adam ok")
"""
    proc = _run(code, timeout=800)  # the JIT build alone took ~400 s
    assert proc.returncode == 0 and "fused adam ok" in proc.stdout, proc.stderr[-3000:]


def test_one_rank_nccl_group_through_our_init():
    code = """
import torch, torch.distributed as dist
from motionmae_ds.runtime import distributed as du
du.init_distributed()
assert dist.get_backend() == "nccl", dist.get_backend()
assert du.device() == torch.device("cuda", 0) and torch.cuda.current_device() == 0
print("sum", du.all_reduce_sum(torch.tensor([1.5, 2.0], dtype=torch.float64)).tolist())   # a CPU tensor
print("dev", du.all_reduce_sum(torch.ones(3, device="cuda")).sum().item())
print("objs", du.gather_objects([("rank", du.rank())]))
du.barrier()
dist.destroy_process_group()
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sum [1.5, 2.0]" in proc.stdout and "dev 3.0" in proc.stdout and "objs [('rank', 0)]" in proc.stdout


def test_evaluation_runs_bf16_autocast_with_tf32_on_cuda():
    from motionmae_ds.models import build_classifier
    from motionmae_ds.runtime.distributed import inference_precision

    clf = build_classifier(name="vit_small", num_classes=10, num_frames=16, img_size=224).to(CUDA).eval()
    videos = torch.randn(2, 3, 16, 224, 224, device=CUDA)
    with torch.no_grad():
        reference = clf(videos)
        with inference_precision(CUDA):
            logits = clf(videos)
            inner = torch.nn.functional.linear(videos[:, 0, 0, :4], torch.randn(8, 224, device=CUDA))
    assert reference.dtype == torch.float32 and inner.dtype == torch.bfloat16
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    torch.testing.assert_close(logits.float(), reference, rtol=5e-2, atol=5e-2)
