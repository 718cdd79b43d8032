"""Training from WebDataset shards: 2-rank pretraining over 13 members (one corrupt), which does not divide by the
ranks, with kill -9 and resume over the shards (the real launcher); finetuning from shards (in this process); bad
settings."""
import json
import subprocess
from collections import Counter
from pathlib import Path

from motionmae_ds.data.lists import read_list
from motionmae_ds.data.synthetic import ensure_synthetic_dataset
from tests.finetune_support import motion_lists, write_config
from tests.helpers import (
    REPO,
    ZERO2,
    assert_same_steps,
    call_main,
    launch_cmd,
    read_log,
    run_env,
    run_killed_at,
    train_in_process,
)

PROBE = Path(__file__).with_name("shard_sample_log.py")
CORRUPT = 5  # position of the corrupt member in the shards


def _make_shards(tmp_path: Path, list_file: str, corrupt_at: int | None = None) -> str:
    records = read_list(list_file)
    lines = [f"{r.path} 12 {r.label}" for r in records]
    if corrupt_at is not None:
        broken = tmp_path / "broken.mp4"
        broken.write_text("<html>this download failed</html>\n" * 30)
        lines.insert(corrupt_at, f"{broken} 12 0")
    lst = tmp_path / "shard_list.txt"
    lst.write_text("\n".join(lines) + "\n")
    res = call_main("make_shards.py", [lst, "--output_dir", tmp_path / "shards", "--shard_size_mb", "0.02"])
    assert res.returncode == 0, res.stderr
    pattern = res.stdout.split("data.shards: ")[1].strip().strip('"')
    assert "{000000.." in pattern  # several shards
    return pattern


def _samples(log_dir: Path) -> dict[int, list[dict]]:
    return {rank: [json.loads(x) for x in (log_dir / f"rank{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}


def test_two_ranks_over_shards_count_every_member_once_skip_the_corrupt_one_and_resume_after_kill9(
        tiny_config, tmp_path):
    pretrain_list = ensure_synthetic_dataset(tmp_path / "cache", kind="pretrain", num_videos=12, num_frames=12,
                                             size=32)
    pattern = _make_shards(tmp_path, pretrain_list, corrupt_at=CORRUPT)
    # 13 members, 2 ranks x batch 1: padded to 14, 7 steps per epoch, 4 epochs; checkpoints every 5 steps (5, 10,
    # 15, 20, 25: none at an epoch's end, so the resume below is mid-epoch) and the last epoch's end; one loader
    # worker per rank
    cfg = tiny_config(data={"synthetic": False, "shards": pattern, "num_workers": 1, "max_bad_fraction": 0.2},
                      schedule={"epochs": 4, "warmup_epochs": 1, "batch_size": 1},
                      run={"save_every_steps": 5, "save_every_epochs": 0, "log_every": 1})
    args = ["--config", cfg, "--deepspeed_config", ZERO2]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    for d in ("ref_samples", "cut_samples"):
        (tmp_path / d).mkdir()

    ref = subprocess.run(launch_cmd(PROBE, args + ["--output_dir", ref_dir], ranks=2), cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=run_env(MOTIONMAE_TEST_SAMPLE_LOG=str(tmp_path / "ref_samples")))
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    reference = {r["step"]: r for r in read_log(ref_dir)}
    assert sorted(reference) == list(range(1, 29))

    # every member asked for once per epoch across the two ranks, plus the one padding repeat: member epoch % 13
    samples = _samples(tmp_path / "ref_samples")
    for epoch in range(4):
        per_rank = [[s for s in samples[rank] if s["epoch"] == epoch] for rank in (0, 1)]
        assert [len(p) for p in per_rank] == [7, 7]
        asked = Counter(s["asked"] for p in per_rank for s in p)
        assert asked == Counter(list(range(13)) + [epoch % 13]), (epoch, asked)
        skipped = [name for p in per_rank for s in p for name in s["skipped"]]
        assert len(skipped) == 1 and skipped[0].endswith(f":{CORRUPT:09d}.mp4")
    corrupt_name = skipped[0]
    log = [json.loads(x) for x in (ref_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r.get("bad_video") == corrupt_name] == [0, 1, 2, 3]
    assert [(r["bad_videos"], r["samples"]) for r in log if "bad_videos" in r] == [(1, 14)] * 4
    assert f"skipped bad video {corrupt_name}: " in ref.stdout

    # kill -9 mid-epoch, rerun the same command: the resumed steps log the uninterrupted run's losses
    # kill -9 at step 13: the last checkpoint is step 10's (mid-epoch: 7 steps per epoch), steps 11 and 12 are
    # logged past it
    rows = run_killed_at("pretrain", 13, args + ["--output_dir", cut_dir], 2, tmp_path / "cut1.txt", PROBE,
                         {"MOTIONMAE_TEST_SAMPLE_LOG": str(tmp_path / "cut_samples")})
    resumed_tag = (cut_dir / "checkpoints" / "latest").read_text().strip()
    assert resumed_tag == "step00000010" and [r["step"] for r in rows] == list(range(1, 13))
    resumed_step = 10
    again = subprocess.run(launch_cmd(PROBE, args + ["--output_dir", cut_dir], ranks=2), cwd=REPO,
                           capture_output=True, text=True, timeout=300,
                           env=run_env(MOTIONMAE_TEST_SAMPLE_LOG=str(tmp_path / "cut_samples")))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {cut_dir / 'checkpoints' / resumed_tag}" in again.stdout
    resumed = {r["step"]: r for r in read_log(cut_dir)}
    assert sorted(resumed) == list(range(1, 29))
    assert_same_steps(reference, resumed, resumed_step + 1, 28, ("loss", "loss_frame", "loss_motion", "grad_norm"))


def test_finetuning_trains_from_shards(tmp_path):
    lists = motion_lists(tmp_path / "cache")
    pattern = _make_shards(tmp_path, lists["train"])
    cfg = write_config(tmp_path / "ft.yaml", data={"shards": pattern, "test_list": lists["test"]},
                       schedule={"epochs": 1, "warmup_epochs": 0, "batch_size": 4},
                       eval={"test_clips": 1, "test_crops": 1, "batch_size": 4})
    out = tmp_path / "run"
    train_in_process("finetune", cfg, out)
    info = json.loads((out / "run_info.json").read_text())
    assert info["steps_per_epoch"] == 6  # 24 members / batch 4
    assert len(read_log(out)) == 6
    assert json.loads((out / "metrics.json").read_text())["num_videos"] == 4


def test_unusable_shard_settings_exit_2_with_one_line(tiny_config, tmp_path):
    missing = tmp_path / "none" / "shard-{000000..000001}.tar"
    first = tmp_path / "none" / "shard-000000.tar"
    for sets, message in (
        ([f"data.shards={missing}"], f"data.shards={missing}: {first}: file not found"),
        (["data.shards=pipe:curl -s http://host/s.tar"], "is a pipe: URL (shards are read by byte range)"),
        (["data.synthetic=true", f"data.shards={missing}"], "and data.synthetic are both set"),
    ):
        cfg = tiny_config(data={"synthetic": False})
        res = call_main("pretrain.py", ["--config", cfg, "--set", *sets])
        assert res.returncode == 2, res.stdout + res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr
