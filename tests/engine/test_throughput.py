"""The logged TFLOP/s and MFU come from the analytic counter of the configured model."""
from motionmae_ds.config import load_config
from motionmae_ds.engine.builders import model_kwargs
from motionmae_ds.engine.throughput import FlopCounter
from motionmae_ds.models.flops import pretrain_macs


def test_tflops_is_six_flops_per_mac_per_sample_and_no_mfu_on_cpu():
    cfg = load_config(None, ["masking.ratio=0.75", "masking.kind=tube"])
    counter = FlopCounter(cfg)
    macs = pretrain_macs(mask_ratio=0.75, mask_kind="tube", **model_kwargs(cfg))
    assert counter.flops_per_sample == 6 * macs
    assert counter.tflops_per_device(2.5) == 6 * macs * 2.5 / 1e12
    assert counter.mfu(2.5) is None  # the CPU has no entry in the bf16 peak table
    counter.device_name = "NVIDIA A100-SXM4-80GB"
    assert abs(counter.mfu(1e12 / (6 * macs)) - 1.0 / 312) < 1e-12
