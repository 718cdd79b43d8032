"""A checkpoint saved by 2 ranks converts to the encoder format and finetunes on 1 rank (the real finetuning
launcher under `deepspeed`); the finetuned checkpoint then exports to HF with our logits."""
import json
from pathlib import Path

import torch
from transformers import VideoMAEForVideoClassification

from motionmae_ds.checkpoint import fp32_state_dict, read_client_state, resolve
from motionmae_ds.models import build_classifier
from motionmae_ds.tools.convert import export
from tests.checkpoint.zero_runs import videos_to_hf

FINETUNE = {
    "model": {"name": "vit_tiny", "num_classes": 4, "num_frames": 4, "img_size": 32, "patch_size": 16,
              "tubelet_size": 2, "embed_dim": 48, "depth": 2, "num_heads": 3, "drop_path_rate": 0.0},
    "data": {"synthetic": True, "synthetic_videos": 32, "synthetic_frames": 12, "synthetic_size": 32,
             "sampling_rate": 2, "num_workers": 0, "rand_aug": "", "random_erase": 0.0, "flip": False,
             "short_side_size": 32},
    "mixup": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "label_smoothing": 0.0},
    "optim": {"base_lr": 0.01},
    "schedule": {"epochs": 1, "warmup_epochs": 0, "batch_size": 4},
    "eval": {"val_every_epochs": 0, "test_clips": 1, "test_crops": 1, "batch_size": 4},
    "run": {"seed": 0, "log_every": 1, "save_every_epochs": 1},
}
REPO = Path(__file__).resolve().parents[2]


def test_two_rank_checkpoint_finetunes_on_one(zero2_pretrain, worker, tmp_path, tmp_path_factory):
    encoder = export(zero2_pretrain, tmp_path / "encoder.pth", "encoder")
    cfg = json.loads(json.dumps(FINETUNE))
    cfg["finetune"] = {"init": str(encoder)}
    cfg["data"]["cache_dir"] = str(tmp_path_factory.getbasetemp() / "synthetic_cache")
    (tmp_path / "ft.yaml").write_text(json.dumps(cfg))
    run_dir = tmp_path / "ft"
    proc = worker(["--config", tmp_path / "ft.yaml", "--deepspeed_config", REPO / "ds_configs" / "zero2.json",
                   "--output_dir", run_dir], ranks=1, script=REPO / "launch" / "finetune.py")
    # every encoder tensor of the 2-rank run was used; only the classifier's own parts are new
    assert "loaded 28 tensors" in proc.stdout and "missing 0; unexpected 0; shape mismatch 0" in proc.stdout
    assert "freshly initialised: fc_norm, head" in proc.stdout

    # the finetuned checkpoint (1 rank) -> HF classifier with the same logits
    ckpt_dir, tag = resolve(run_dir)
    assert read_client_state(ckpt_dir, tag)["world_size"] == 1
    hf_dir = export(run_dir, tmp_path / "hf", "hf")
    hf = VideoMAEForVideoClassification.from_pretrained(hf_dir).eval()
    clf = build_classifier(**FINETUNE["model"])
    clf.load_state_dict(fp32_state_dict(ckpt_dir, tag))
    clf.eval()
    videos = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, theirs = clf(videos), hf(pixel_values=videos_to_hf(videos)).logits
    assert ((ours - theirs).norm() / ours.norm()).item() < 1e-4
