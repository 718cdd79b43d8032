"""Crash states of a save leave `latest` loadable: leftovers of the temp tag, a half-replaced tag."""
import pytest

from motionmae_ds.engine import checkpoint as ckpt


def make_tag(root, name, complete=True):
    d = root / name
    d.mkdir(parents=True)
    if complete:
        (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
    return d


def test_crash_inside_save_keeps_previous_latest(tmp_path):
    make_tag(tmp_path, "step00000004")
    (tmp_path / "latest").write_text("step00000004")
    make_tag(tmp_path, ".tmp-step00000008", complete=False)  # killed while DeepSpeed was writing
    assert ckpt.read_latest(tmp_path) == "step00000004"
    ckpt.remove_stale(tmp_path)
    assert not (tmp_path / ".tmp-step00000008").exists() and (tmp_path / "step00000004").is_dir()


def test_crash_between_renames_restores_old_copy(tmp_path):
    make_tag(tmp_path, ".old-step00000008")
    (tmp_path / "latest").write_text("step00000008")
    assert ckpt.read_latest(tmp_path) == "step00000008"
    assert (tmp_path / "step00000008" / "mp_rank_00_model_states.pt").is_file()


def test_incomplete_latest_is_an_error_and_absent_is_none(tmp_path):
    assert ckpt.read_latest(tmp_path) is None
    make_tag(tmp_path, "step00000002", complete=False)
    (tmp_path / "latest").write_text("step00000002")
    with pytest.raises(FileNotFoundError, match="step00000002.*incomplete"):
        ckpt.read_latest(tmp_path)


def test_prune_keeps_last_and_current(tmp_path):
    for s in (2, 4, 6, 8):
        make_tag(tmp_path, ckpt.tag_for(s))
    ckpt._prune(tmp_path, keep_last=2, keep=ckpt.tag_for(8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step00000006", "step00000008"]
    assert ckpt.tag_for(12) == "step00000012"
