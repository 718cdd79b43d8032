"""MFU against the bf16 peak table, with the names torch.cuda.get_device_name() reports."""
import pytest

from motionmae_ds.train.mfu import accelerator_device_name, mfu, peak_bf16_flops


@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-PCIE-40GB", 312), ("NVIDIA H100 80GB HBM3", 989),
    ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989)])
def test_peaks_by_device_name(name, tflops):
    assert peak_bf16_flops(name) == tflops * 1e12


def test_mfu_is_fraction_of_peak():
    assert mfu(156e12, "NVIDIA A100-SXM4-40GB") == pytest.approx(0.5)
    assert mfu(247.25e12, "NVIDIA H100 80GB HBM3") == pytest.approx(0.25)
    assert mfu(0.0, "NVIDIA H200") == 0.0


@pytest.mark.parametrize("name", ["cpu", "Tesla V100-SXM2-16GB", "NVIDIA GeForce RTX 4090", ""])
def test_unknown_devices_have_no_mfu(name):
    assert mfu(1e12, name) is None


def test_negative_rate_rejected():
    with pytest.raises(ValueError, match="achieved_flops_per_s=-1"):
        mfu(-1.0, "NVIDIA A100-SXM4-80GB")


def test_this_machine_reports_no_mfu():
    # The test machine runs DeepSpeed's CPU accelerator: its name must not match a GPU peak.
    assert mfu(1e12, accelerator_device_name()) is None
