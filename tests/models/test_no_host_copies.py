"""No host-to-device copy from Python data inside the step: the CPU stand-in for CUDA's sync-debug mode.

A ``TorchDispatchMode`` sees every aten call of the model's forward and backward and of the mask draws, and fails
on ``aten.lift_fresh`` (a tensor made from Python numbers or lists: ``torch.tensor([...])``, which on an accelerator
is a blocking host-to-device copy), on any call that takes a CPU tensor and returns one on another device (a copy
from the host), and on ``aten._local_scalar_dense`` (``.item()``, a read back to the host). The step runs on the CPU,
where ``torch.tensor(python_data)`` shows as ``lift_fresh`` (made straight on another device it does not reach the
mode), and on the ``meta`` device, whose tensors are not on the host, so a CPU tensor moved to it shows as the copy
it would be on a GPU. One warm-up step first: what is made once per device (mean/std, the running cell's offsets)
is allowed."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from motionmae_ds.models import build_decoder_mask, build_mask_generator, build_pretrain_model
from motionmae_ds.models.masking import mask_counts
from tests.models.conftest import TINY

META = torch.device("meta")
CPU = torch.device("cpu")


class HostCopies(TorchDispatchMode):
    """Records every call that brings Python data or a host tensor to the device, or reads a value back."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        name = str(func.overloadpacket.__name__)
        if name in ("lift_fresh", "lift_fresh_copy", "_local_scalar_dense"):
            self.found.append(name)
        elif any(t.device.type == "cpu" for t in inputs) and any(t.device.type != "cpu" for t in outputs):
            self.found.append(f"{name} (host -> {outputs[0].device.type})")
        return out


def _step(model, videos, masker, decoder, counts):
    mask = masker(videos.shape[0], device=videos.device)
    keep = decoder(videos.shape[0], device=videos.device) if decoder is not None else None
    out = model(videos, mask, decoder_keep=keep, counts=counts)
    out["loss"].backward()


@pytest.mark.parametrize("device", [CPU, META], ids=str)
@pytest.mark.parametrize("decoder_ratio", [0.0, 0.5])
@pytest.mark.parametrize("target", ["frame_motion", "motion"])
def test_the_step_makes_no_host_copies(decoder_ratio, target, device):
    model = build_pretrain_model(**TINY, target=target, norm_target=True).to(device)
    masker = build_mask_generator("tube", model.grid, 0.5)
    decoder = build_decoder_mask(grid=model.grid, ratio=decoder_ratio, heads="complementary")
    counts = mask_counts(masker, decoder)
    videos = torch.randn(2, 3, 4, 32, 32).to(device)
    _step(model, videos, masker, decoder, counts)  # what is made once per device is made here
    with HostCopies() as seen:
        for _ in range(2):
            _step(model, videos, masker, decoder, counts)
    assert seen.found == [], seen.found


def test_the_mode_catches_what_it_is_for():
    with HostCopies() as seen:
        torch.tensor([0.5, 0.25])
        torch.ones(2).to(META)
        torch.ones(2).sum().item()
    assert seen.found == ["lift_fresh", "_to_copy (host -> meta)", "_local_scalar_dense"]
