"""Model FLOP utilisation: achieved training FLOP/s over the device's dense bf16 peak."""
from __future__ import annotations

from typing import Optional

import torch

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendor data sheets. Checked in
# order, so the specific variants come before the generic names ("h100": SXM, "H100 80GB HBM3"; "h200": SXM);
# the NVL parts (H100 NVL, H200 NVL) are the lower-clocked PCIe boards: 835.
BF16_PEAK_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("h200", "nvl"), 835.0),
    (("h200",), 989.0),
    (("h100", "pcie"), 756.0),
    (("h100", "nvl"), 835.0),
    (("h100",), 989.0),
    (("a100",), 312.0),
)


def peak_bf16_flops(device_name: str) -> Optional[float]:
    """Dense bf16 peak in FLOP/s of a device named like `torch.cuda.get_device_name()`
    ("NVIDIA A100-SXM4-80GB"), or None when the table does not know it (CPUs included)."""
    name = device_name.lower()
    for keys, tflops in BF16_PEAK_TFLOPS:
        if all(k in name for k in keys):
            return tflops * 1e12
    return None


def mfu(achieved_flops_per_s: float, device_name: str) -> Optional[float]:
    """Fraction of the bf16 peak reached (0.42 = 42 %), None for a device without a known peak."""
    peak = peak_bf16_flops(device_name)
    if peak is None:
        return None
    if achieved_flops_per_s < 0:
        raise ValueError(f"achieved_flops_per_s={achieved_flops_per_s} must be >= 0")
    return achieved_flops_per_s / peak


def accelerator_device_name(device_index: Optional[int] = None) -> str:
    """The product name of the DeepSpeed accelerator's device ("NVIDIA H100 PCIe"); accelerators
    without one (the CPU) give their short name ("cpu"), which has no peak in the table."""
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if acc.device_name().startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device_index)
    return acc.device_name()
