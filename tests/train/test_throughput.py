"""The logged TFLOP/s and MFU come from the analytic counter of the configured model."""
from motionmae_ds.builders import model_kwargs
from motionmae_ds.config import load_pretrain_config
from motionmae_ds.models.flops import pretrain_macs
from motionmae_ds.train.throughput import FlopCounter


def test_tflops_is_six_flops_per_mac_per_sample_and_no_mfu_on_cpu():
    cfg = load_pretrain_config(None, ["masking.ratio=0.75", "masking.kind=tube"])
    counter = FlopCounter(cfg)
    macs = pretrain_macs(mask_ratio=0.75, mask_kind="tube", **model_kwargs(cfg))
    assert counter.flops_per_sample == 6 * macs
    assert counter.tflops_per_device(2.5) == 6 * macs * 2.5 / 1e12
    assert counter.mfu(2.5) is None  # the CPU has no entry in the bf16 peak table
    counter.device_name = "NVIDIA A100-SXM4-80GB"
    assert abs(counter.mfu(1e12 / (6 * macs)) - 1.0 / 312) < 1e-12


def test_finetune_counter_is_six_flops_per_classifier_mac_and_two_for_a_probe():
    from motionmae_ds.config import load_finetune_config
    from motionmae_ds.models.flops import attentive_probe_step_macs, classifier_macs
    from motionmae_ds.train.throughput import FlopCounter

    cfg = load_finetune_config(None, ["model.num_frames=8", "model.img_size=64", "model.num_classes=7"])
    m = cfg.model
    macs = classifier_macs(name=m.name, num_classes=7, num_frames=8, img_size=64, patch_size=m.patch_size,
                           tubelet_size=m.tubelet_size, embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads)
    assert FlopCounter.finetuning(cfg).flops_per_sample == 6 * macs
    probe = load_finetune_config(None, ["model.num_frames=8", "model.img_size=64", "model.num_classes=7",
                                        "finetune.linear_probe=true"])
    assert FlopCounter.finetuning(probe).flops_per_sample == 2 * macs
    # the attentive probe: the frozen encoder forward, the pooler and head forward and backward
    # (models/flops.py's count, checked against torch's counter in tests/models/test_flops.py)
    attentive = load_finetune_config(None, ["model.num_frames=8", "model.img_size=64", "model.num_classes=7",
                                            "finetune.probe=attentive", "finetune.probe_queries=2",
                                            "finetune.probe_random_init=true", "finetune.init=none"])
    step = attentive_probe_step_macs(num_queries=2, name=m.name, num_classes=7, num_frames=8, img_size=64,
                                     patch_size=m.patch_size, tubelet_size=m.tubelet_size, embed_dim=m.embed_dim,
                                     depth=m.depth, num_heads=m.num_heads)
    assert FlopCounter.finetuning(attentive).flops_per_sample == 2 * step
    assert 2 * macs < 2 * step < 6 * macs


def test_decoder_masking_counts_the_decoded_tokens_only():
    cfg = load_pretrain_config(None, ["masking.decoder_ratio=0.5", "masking.decoder_heads=complementary"])
    macs = pretrain_macs(mask_ratio=cfg.masking.ratio, mask_kind=cfg.masking.kind, decoder_ratio=0.5,
                         decoder_heads="complementary", **model_kwargs(cfg))
    assert FlopCounter(cfg).flops_per_sample == 6 * macs
    full = load_pretrain_config(None)
    assert FlopCounter(cfg).flops_per_sample < FlopCounter(full).flops_per_sample
