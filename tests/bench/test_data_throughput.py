"""bench/data_throughput.py: ``--list`` sizes the loader from the user's own videos (a real run on a list file of
real videos), and decode_only decodes exactly the frames ours decodes, without converting any."""
import re
import subprocess
import sys
from pathlib import Path

from motionmae_ds.data.lists import VideoRecord
from motionmae_ds.data.synthetic import ensure_synthetic_dataset
from tests.bench.scripts import load_script
from tests.helpers import REPO, run_env

SCRIPT = REPO / "bench" / "data_throughput.py"


def test_list_prints_clips_per_core_and_workers_per_gpu(tmp_path):
    lst = Path(ensure_synthetic_dataset(tmp_path / "set", kind="pretrain", num_videos=4, num_frames=24, size=32))
    text = lst.read_text().replace(str(lst.parent) + "/", "")  # relative paths: --root resolves them
    rel = tmp_path / "relative.txt"
    rel.write_text(text)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--list", str(rel), "--root", str(lst.parent), "--sample", "3",
                           "--repeats", "1", "--num_frames", "4", "--sampling_rate", "2", "--target", "500",
                           "--clock", "cpu"], cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "3 of 4 videos" in proc.stdout
    rate = float(re.search(r"num_repeats=1\): ([\d.]+) clips/s per core", proc.stdout).group(1))
    workers = int(re.search(r"for 500 clips/s per GPU: (\d+) workers per GPU", proc.stdout).group(1))
    assert rate > 0 and 500 / rate <= workers < 500 / rate + 1.01  # ceil(target / rate); the printed rate is rounded


def test_decode_only_decodes_the_frames_ours_decodes_and_converts_none(tmp_path):
    dt = load_script("data_throughput")
    path = str(dt.make_bench_video(tmp_path / "v.mp4", 64, 48, 60, 0))
    records = [VideoRecord(path, 0, 0, None, False)] * 10
    from motionmae_ds.data.decode import VideoReader

    seen = {}
    original = VideoReader.decode_only

    def spy(self, indices):
        seen.setdefault("decode_only", []).append(sorted(set(indices)))
        n = original(self, indices)
        seen.setdefault("converted", []).append(self.counter.converted)
        return n

    VideoReader.decode_only = spy
    try:
        for r in (1, 4):
            assert dt.DecodeOnly(records, r)(3) == r
    finally:
        VideoReader.decode_only = original
    ours = [dt.Ours(records, r).ds[3] for r in (1, 4)]
    for item, wanted in zip(ours, seen["decode_only"]):
        union = sorted({p for v in item["views"] for p in v.positions})
        assert len(union) == len(wanted) and item["video"].shape[0] == len(wanted)
    assert seen["converted"] == [0, 0]
