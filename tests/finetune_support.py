"""What the finetuning and evaluation tests share: the tiny classifier, its configs, the motion-classes lists and
saved weights. Imported as ``tests.finetune_support``."""
import json
from pathlib import Path

import torch

from motionmae_ds.data.synthetic import ensure_synthetic_dataset
from motionmae_ds.models import build_classifier

TINY_MODEL = {"name": "vit_tiny", "num_classes": 4, "num_frames": 4, "img_size": 32, "patch_size": 16,
              "tubelet_size": 2, "embed_dim": 48, "depth": 2, "num_heads": 3}


def motion_lists(root: Path) -> dict:
    return ensure_synthetic_dataset(root, kind="motion_classes", num_videos=32, num_frames=12, size=32)


def write_config(path: Path, **sections) -> Path:
    base = {
        "model": dict(TINY_MODEL, drop_path_rate=0.1),
        "data": {"synthetic": False, "sampling_rate": 2, "flip": False, "scale": [0.5, 1.0], "short_side_size": 32,
                 "rand_aug": "rand-m9-mstd0.5-inc1", "random_erase": 0.25, "num_workers": 0},
        "optim": {"base_lr": 0.05},
        "schedule": {"epochs": 2, "warmup_epochs": 1, "batch_size": 2},
        "finetune": {"init": "none"},
        "eval": {"test_clips": 2, "test_crops": 3, "batch_size": 2, "val_every_epochs": 1},
        "run": {"seed": 0, "log_every": 1, "save_every_epochs": 1},
    }
    for sec, values in sections.items():
        base.setdefault(sec, {}).update(values)
    path.write_text(json.dumps(base, indent=1))  # JSON is YAML
    return path


def save_tiny_classifier(path: Path, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_classifier(**TINY_MODEL, init_scale=1.0)  # a full-size head: predictions that differ per video
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"model": state}, path)
    return state


def predictions(path: Path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
