"""Real runs: 2-rank ZeRO-2 partitioning, outputs, loss falling, and the visualize tool on the result."""
import json
import subprocess
import sys

import torch

from tests.helpers import REPO, ZERO2, read_log, run_env
from tests.helpers import run_pretrain as run


def test_two_ranks_partition_optimizer_state(tiny_config, tmp_path, synthetic_cache):
    cfg = tiny_config(schedule={"epochs": 3, "warmup_epochs": 1, "batch_size": 2},
                      run={"save_every_epochs": 3, "visualize": True, "log_every": 1})
    out = tmp_path / "run2"
    res = run(["--config", cfg, "--deepspeed_config", ZERO2, "--output_dir", out], ranks=2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["total_batch"] == 4
    # 12 videos / 2 ranks / batch 2 = 3 steps per epoch, 3 epochs
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, 10))
    for key in ("epoch", "loss", "loss_frame", "loss_motion", "lr", "grad_norm", "samples_per_s", "tflops"):
        assert key in log[0]
    assert log[0]["tflops"] > 0 and log[0]["loss"] > 0
    assert abs(log[0]["loss"] - log[0]["loss_frame"] - log[0]["loss_motion"]) < 1e-5

    tag = (out / "checkpoints" / "latest").read_text().strip()
    assert tag == "step00000009"
    tag_dir = out / "checkpoints" / tag
    shards = sorted(tag_dir.glob("bf16_zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    assert [s.name[:19] for s in shards] == ["bf16_zero_pp_rank_0", "bf16_zero_pp_rank_1"]
    module = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    n_params = sum(v.numel() for v in module.values())
    sizes = []
    for shard in shards:
        osd = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        parts = osd["single_partition_of_fp32_groups"]
        sizes.append(sum(p.numel() for p in parts))
        # Adam moments exist only for this rank's partition
        moments = sum(s["exp_avg"].numel() for s in osd["base_optimizer_state"]["state"].values())
        assert moments == sizes[-1]
    # each rank holds half of the (padded) fp32 master, not all of it
    assert sum(sizes) >= n_params and max(sizes) <= n_params // 2 + 64
    assert abs(sizes[0] - sizes[1]) <= 64
    assert (out / "config.yaml").is_file() and any((out / "tb").iterdir())
    assert (out / "vis" / f"{tag}.png").is_file()

    # the figure tool works from the checkpoint alone, for any video file
    video = sorted(synthetic_cache.rglob("*.mp4"))[0]
    vis = subprocess.run([sys.executable, str(REPO / "launch" / "visualize.py"), "--checkpoint",
                          str(out / "checkpoints"), "--video", str(video), "--output_dir", str(tmp_path / "fig")],
                         env=run_env(), capture_output=True, text=True, timeout=120)
    assert vis.returncode == 0, vis.stderr[-2000:]
    from PIL import Image

    for name in ("mask90", "mask95"):
        img = Image.open(tmp_path / "fig" / f"{video.stem}_{name}.png")
        assert img.width > 100 and img.height > 100


def test_single_process_without_launcher_learns(tiny_config, tmp_path):
    cfg = tiny_config(schedule={"epochs": 6, "warmup_epochs": 1, "batch_size": 2}, run={"save_every_epochs": 0})
    out = tmp_path / "plain"
    res = run(["--config", cfg, "--output_dir", out], launcher="python")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = read_log(out)
    assert len(log) == 36
    first = sum(r["loss"] for r in log[:3]) / 3
    last = sum(r["loss"] for r in log[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    # only the final checkpoint (save_every_epochs 0)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step00000036"
    assert "done: 36 steps" in res.stdout
