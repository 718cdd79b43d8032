"""Bad inputs to launch/convert_checkpoint.py: exit 2, exactly one line on stderr naming the problem, and
nothing written (no output, no temporary leftovers, ``latest`` untouched). The first case runs the real
command in a subprocess; the others call its main() in this process (tests.helpers.call_main), the same code
without a fresh interpreter per case."""
import shutil

import pytest

from motionmae_ds.checkpoint import MODEL_STATES
from tests.helpers import call_main


def convert(*args):
    return call_main("convert_checkpoint.py", args)


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def assert_fails(proc, *needles):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def ckpt(zero2_pretrain, tmp_path):
    return shutil.copytree(zero2_pretrain, tmp_path / "run" / "checkpoints")


def test_not_a_checkpoint(convert_cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert_fails(convert_cli("--checkpoint", tmp_path / "nowhere", "--output", out / "x.pth", "--format", "plain"),
                 "nowhere: no such file or directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_fails(convert("--checkpoint", empty, "--output", out / "x.pth", "--format", "plain"),
                 f"{empty}: not a DeepSpeed checkpoint directory")
    (empty / "weights.pth").write_bytes(b"not a checkpoint")
    assert_fails(convert("--checkpoint", empty / "weights.pth", "--output", out / "x.pth", "--format", "encoder"),
                 "weights.pth: not a DeepSpeed checkpoint directory")
    assert list(out.iterdir()) == []


def test_missing_tag_and_dangling_latest(ckpt, tmp_path):
    before = snapshot(ckpt)
    tag = (ckpt / "latest").read_text().strip()
    for fmt in ("plain", "universal"):
        assert_fails(convert("--checkpoint", ckpt, "--tag", "step00000099", "--output", tmp_path / "o",
                             "--format", fmt),
                     "tag 'step00000099' not found", f"available: {tag}")
    (ckpt / "latest").write_text("step00000042")
    assert_fails(convert("--checkpoint", ckpt, "--output", tmp_path / "o", "--format", "plain"),
                 "latest: names tag 'step00000042'", "does not exist")
    (ckpt / "latest").write_text(tag)
    assert snapshot(ckpt) == before and not (tmp_path / "o").exists()


@pytest.mark.parametrize("fmt", ["hf", "universal"])
def test_corrupt_shard(ckpt, tmp_path, fmt):
    tag = (ckpt / "latest").read_text().strip()
    shard = ckpt / tag / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    truncate(shard)
    before = snapshot(ckpt.parent)
    out = tmp_path / "out"
    args = ["--checkpoint", ckpt, "--format", fmt] + (["--output", out] if fmt != "universal" else [])
    proc = convert(*args)
    if fmt == "universal":
        assert_fails(proc, f"{ckpt / tag}: ds_to_universal failed")
    else:
        assert_fails(proc, f"{shard}: corrupt or unreadable checkpoint shard")
    assert snapshot(ckpt.parent) == before  # no temp folder, no latest_universal, latest unchanged
    assert not out.exists() and list(tmp_path.glob(".out*")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no universal run dir, whole or half made


def test_corrupt_model_states_and_existing_output(ckpt, tmp_path):
    tag = (ckpt / "latest").read_text().strip()
    out = tmp_path / "x.pth"
    out.write_bytes(b"keep me")
    assert_fails(convert("--checkpoint", ckpt, "--output", out, "--format", "plain"), f"{out}: exists")
    truncate(ckpt / tag / MODEL_STATES)
    assert_fails(convert("--checkpoint", ckpt, "--output", out, "--format", "plain", "--force"),
                 f"{MODEL_STATES}: corrupt or unreadable checkpoint file")
    assert out.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["run", "x.pth"]
