"""Checkpoint directory layout: crash states of a save leave `latest` loadable (leftovers of the temp tag, a
half-replaced tag), pruning, and every path a user may give resolving to (checkpoint dir, tag)."""
import pytest

from motionmae_ds import checkpoint as ckpt


def make_tag(root, name, complete=True):
    d = root / name
    d.mkdir(parents=True)
    if complete:
        (d / ckpt.MODEL_STATES).write_bytes(b"x")
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
    assert (tmp_path / "step00000008" / ckpt.MODEL_STATES).is_file()


def test_incomplete_latest_is_an_error_and_absent_is_none(tmp_path):
    assert ckpt.read_latest(tmp_path) is None
    make_tag(tmp_path, "step00000002", complete=False)
    (tmp_path / "latest").write_text("step00000002")
    with pytest.raises(FileNotFoundError, match="step00000002.*incomplete"):
        ckpt.read_latest(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="step00000002.*incomplete"):
        ckpt.resolve(tmp_path)


def test_zero3_tag_is_complete_without_model_states(tmp_path):
    tag = tmp_path / "step00000003"
    tag.mkdir()
    (tag / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    assert not ckpt.is_complete(tag)
    (tag / f"zero_pp_rank_0_{ckpt.MODEL_STATES}").write_bytes(b"x")
    (tmp_path / "latest").write_text("step00000003")
    assert ckpt.is_complete(tag) and ckpt.read_latest(tmp_path) == "step00000003"
    assert ckpt.saved_world_size(tmp_path, "step00000003") == 1


def test_prune_keeps_last_and_current(tmp_path):
    for s in (2, 4, 6, 8):
        make_tag(tmp_path, ckpt.tag_for(s))
    ckpt.prune(tmp_path, keep_last=2, keep=ckpt.tag_for(8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step00000006", "step00000008"]
    assert ckpt.tag_for(12) == "step00000012"


def test_resolve_run_checkpoint_and_tag_dirs(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    make_tag(ckpts, "step00000004")
    make_tag(ckpts, "step00000008")
    make_tag(ckpts, ".old-step00000002")
    (ckpts / "latest").write_text("step00000008")
    for path in (tmp_path / "run", ckpts, ckpts / "step00000008"):
        assert ckpt.resolve(path) == (ckpts, "step00000008"), path
    assert ckpt.resolve(ckpts, "step00000004") == (ckpts, "step00000004")
    assert ckpt.list_tags(ckpts) == ["step00000004", "step00000008"]
    with pytest.raises(ckpt.CheckpointError, match="tag 'step00000099' not found .available: step00000004, "):
        ckpt.resolve(tmp_path / "run", "step00000099")
    (ckpts / "latest").unlink()
    with pytest.raises(ckpt.CheckpointError, match="no 'latest' file; pass --tag"):
        ckpt.resolve(ckpts)
    with pytest.raises(ckpt.CheckpointError, match="no such file"):
        ckpt.resolve(tmp_path / "nowhere")
    with pytest.raises(ckpt.CheckpointError, match="not a DeepSpeed checkpoint directory .a file."):
        ckpt.resolve(ckpts / "step00000004" / ckpt.MODEL_STATES)


def test_write_latest_and_read_pointer(tmp_path):
    assert ckpt.read_pointer(tmp_path) is None
    ckpt.write_latest(tmp_path, "step00000001")
    ckpt.write_latest(tmp_path, "step00000001_universal", ckpt.LATEST_UNIVERSAL)
    assert ckpt.read_pointer(tmp_path) == "step00000001"
    assert ckpt.read_pointer(tmp_path, ckpt.LATEST_UNIVERSAL) == "step00000001_universal"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "latest_universal"]  # no temp files left


def test_best_is_never_pruned_and_a_half_replaced_best_comes_back(tmp_path):
    for s in (2, 4, 6):
        make_tag(tmp_path, ckpt.tag_for(s))
    make_tag(tmp_path, "best")
    ckpt.prune(tmp_path, keep_last=1, keep=ckpt.tag_for(6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step00000006"]
    # a replacement of best killed between its two renames: the previous best is put back, not deleted
    (tmp_path / "best").rename(tmp_path / ".old-best")
    make_tag(tmp_path, ".tmp-best", complete=False)
    # an .old- copy whose tag was replaced completely is a leftover
    make_tag(tmp_path, ".old-step00000006")
    ckpt.remove_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step00000006"]
    assert (tmp_path / "best" / ckpt.MODEL_STATES).is_file()
