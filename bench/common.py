"""What the bench scripts share: the Hugging Face VideoMAE model they compare ours against, waiting for the
device, the peak memory of a step, and the machine line of their reports. The scripts run as
``python bench/<script>.py``, which puts bench/ on the import path, so they import this file as ``common``."""
from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import torch

from motionmae_ds.models.registry import ModelSize


def hf_videomae_pretraining(size: ModelSize, num_frames: int, img_size: int, patch_size: int = 16,
                            tubelet_size: int = 2) -> torch.nn.Module:
    """transformers.VideoMAEForPreTraining with our encoder and decoder dimensions (``size``), no dropout, our
    LayerNorm eps and SDPA attention; raises if transformers would run another attention."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    config = VideoMAEConfig(
        image_size=img_size, patch_size=patch_size, num_channels=3, num_frames=num_frames,
        tubelet_size=tubelet_size, hidden_size=size.embed_dim, num_hidden_layers=size.depth,
        num_attention_heads=size.num_heads, intermediate_size=4 * size.embed_dim, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-6, qkv_bias=True,
        use_mean_pooling=False, decoder_hidden_size=size.decoder_embed_dim,
        decoder_num_hidden_layers=size.decoder_depth, decoder_num_attention_heads=size.decoder_num_heads,
        decoder_intermediate_size=4 * size.decoder_embed_dim, norm_pix_loss=False, attn_implementation="sdpa")
    model = VideoMAEForPreTraining(config)
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"HF VideoMAE runs {model.config._attn_implementation!r} attention, not sdpa")
    return model


def accelerator() -> Any:
    """DeepSpeed's accelerator (imported on first use: the scripts' --help should not wait for DeepSpeed)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer read next covers it (a no-op on the CPU)."""
    if device.type != "cpu":
        accelerator().synchronize()


class MemoryProbe:
    """Peak memory of one step above what was held before it: `max_memory_allocated` on an
    accelerator, the kernel's resident-set high-water mark (VmHWM, reset through clear_refs) on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.before = 0

    @staticmethod
    def _status_kib(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"/proc/self/status has no {key}")

    def start(self) -> None:
        if self.device.type == "cpu":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.before = self._status_kib("VmRSS") * 1024
        else:
            acc = accelerator()
            acc.synchronize()
            acc.reset_peak_memory_stats()
            self.before = acc.memory_allocated()

    def peak_delta(self) -> int:
        if self.device.type == "cpu":
            return self._status_kib("VmHWM") * 1024 - self.before
        acc = accelerator()
        acc.synchronize()
        return acc.max_memory_allocated() - self.before


def cpu_name() -> str:
    """The CPU model as lscpu names it (platform's guess where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def machine(threads: int) -> str:
    """One line for a report: CPU, cores, torch version, threads the benchmark ran with."""
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} thread{'s' * (threads != 1)}"
