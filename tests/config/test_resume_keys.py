"""What a resume may change: the comparison of a recorded config with a requested one, key by key, and the split
into keys that change the training and resume-safe ones (config/resume.py)."""
from motionmae_ds.config import load_finetune_config, load_pretrain_config
from motionmae_ds.config.finetune import FinetuneConfig
from motionmae_ds.config.pretrain import PretrainConfig
from motionmae_ds.config.resume import Change, config_changes, deepspeed_changes, is_resume_safe, split_changes


def test_config_changes_key_by_key():
    recorded = load_pretrain_config().to_dict()
    requested = load_pretrain_config(None, ["schedule.epochs=2", "data.scale=[0.4, 1.0]", "run.log_every=3",
                                            "data.num_workers=0"]).to_dict()
    defaults = PretrainConfig().to_dict()
    changes = config_changes(recorded, requested, defaults)
    # in the config's order; tuples and YAML lists compare as lists
    assert changes == [Change("data.scale", [0.5, 1.0], [0.4, 1.0]), Change("data.num_workers", 2, 0),
                       Change("schedule.epochs", 52, 2), Change("run.log_every", 8, 3)]
    training, safe = split_changes(changes)
    assert [c.key for c in training] == ["data.scale", "schedule.epochs"]
    assert [c.key for c in safe] == ["data.num_workers", "run.log_every"]
    assert [c.line() for c in changes] == ["data.scale: [0.5, 1.0] -> [0.4, 1.0]", "data.num_workers: 2 -> 0",
                                           "schedule.epochs: 52 -> 2", "run.log_every: 8 -> 3"]
    assert config_changes(recorded, load_pretrain_config().to_dict(), defaults) == []


def test_a_key_the_record_lacks_compares_as_its_default():
    # a run recorded before a key existed ran with that key's default
    requested = load_finetune_config(None, ["finetune.probe_queries=4"]).to_dict()
    recorded = {section: dict(values) for section, values in requested.items()}
    del recorded["finetune"]["probe_queries"], recorded["finetune"]["probe_heads"]
    recorded["finetune"]["gone_key"] = 1  # no longer a key: not compared
    changes = config_changes(recorded, requested, FinetuneConfig().to_dict())
    assert changes == [Change("finetune.probe_queries", 1, 4)]
    assert [c.line() for c in split_changes(changes)[0]] == ["finetune.probe_queries: 1 -> 4"]


def test_deepspeed_changes_leave_out_the_derived_keys():
    recorded = {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2, "reduce_bucket_size": 5},
                "train_batch_size": 16, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
                "checkpoint": {"load_universal": False}, "steps_per_print": 10}
    requested = {"bf16": {"enabled": False}, "zero_optimization": {"stage": 2, "reduce_bucket_size": 7},
                 "gradient_clipping": 1.0, "steps_per_print": 20, "tensorboard": {"enabled": True}}
    changes = deepspeed_changes(recorded, requested)
    assert [c.line() for c in changes] == [
        "deepspeed.bf16.enabled: true -> false", "deepspeed.gradient_clipping: (not set) -> 1.0",
        "deepspeed.steps_per_print: 10 -> 20", "deepspeed.tensorboard.enabled: (not set) -> true",
        "deepspeed.zero_optimization.reduce_bucket_size: 5 -> 7"]
    training, safe = split_changes(changes)
    assert [c.key for c in training] == ["deepspeed.bf16.enabled", "deepspeed.gradient_clipping"]
    assert not is_resume_safe("deepspeed.zero_optimization.stage") and is_resume_safe("run.keep_last")
    assert not is_resume_safe("deepspeed.steps_per_print_x") and not is_resume_safe("run.seed")
