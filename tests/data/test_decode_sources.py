"""Decoding from memory (bytes, memoryviews, file objects: shard members) and inside DataLoader workers, against
the same forward reference decode as tests/data/test_decode.py."""
from __future__ import annotations

import gc
import io
import sys

import pytest
import torch
from videos import EXACT, assert_frames, index_sets

from motionmae_ds.data.decode import VideoDecodeError, VideoReader, probe_video, read_frames


class _ClipsFromFiles(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return read_frames(self.paths[i], [1, 3, 5, 7])


def test_reads_inside_dataloader_workers(good_videos, reference):
    paths = [str(good_videos[n]) for n in ("h264", "vp9", "avi_bframes", "mpeg_ps")]
    loader = torch.utils.data.DataLoader(_ClipsFromFiles(paths), batch_size=None, num_workers=2, timeout=60)
    for path, clip in zip(paths, loader):
        assert_frames(clip, reference(path), [1, 3, 5, 7])


def _destroy_inherited_readers(worker_id):
    # What a worker's garbage collector does to readers the parent left in a reference cycle.
    dataset = torch.utils.data.get_worker_info().dataset
    for reader in dataset.inherited:
        reader.close()
    dataset.inherited.clear()
    gc.collect()


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord", "torchcodec"])
def test_workers_destroy_readers_the_parent_used(good_videos, reference, backend):
    # Readers that decoded in the parent and are still alive at the fork: swscale's slice threads (PyAV's
    # RGB conversion) and decord's decoder thread do not exist in the child, and destroying their copies
    # there would hang the worker for ever (the DataLoader times out).
    paths = [str(good_videos[n]) for n in ("h264", "vp9", "avi_bframes", "mpeg_ps")]
    dataset = _ClipsFromFiles(paths)
    # the parent's readers: four of the backend's exact kinds of file (decord and torchcodec are not exact in AVI)
    own = [str(good_videos[n]) for n, b in EXACT if b == backend][:4]
    dataset.inherited = [VideoReader(p, backend=backend) for p in own]
    for reader in dataset.inherited:
        reader.get([0, 2])
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, timeout=30,
                                         worker_init_fn=_destroy_inherited_readers)
    for path, clip in zip(paths, loader):
        assert_frames(clip, reference(path), [1, 3, 5, 7])
    for path, reader in zip(own, dataset.inherited):  # the parent's readers still work
        assert_frames(reader.get([4]), reference(path), [4])
        reader.close()



def _in_memory(path, kind: str):
    data = path.read_bytes()
    return {"bytes": data, "memoryview": memoryview(data), "file": io.BytesIO(data)}[kind]


@pytest.mark.parametrize("name,backend", EXACT)
def test_in_memory_sources_equal_reference(good_videos, reference, name, backend):
    ref = reference(good_videos[name])
    sets = index_sets(len(ref), seed=3)[:6]
    for kind in ("bytes", "memoryview", "file"):
        with VideoReader(_in_memory(good_videos[name], kind), backend, name=f"shard/{name}") as reader:
            assert reader.path == f"shard/{name}" and reader.num_frames == len(ref)
            for indices in sets:
                assert_frames(reader.get(indices), ref, indices)
    # auto picks the same backend for the bytes as for the file
    assert VideoReader(_in_memory(good_videos[name], "bytes")).backend == VideoReader(good_videos[name]).backend
    info = probe_video(_in_memory(good_videos[name], "file"), backend)
    assert info.num_frames == len(ref) and not info.truncated


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord", "torchcodec"])
def test_bad_in_memory_videos_raise_errors_naming_the_member(bad_videos, backend):
    cases = {"zero_bytes": "empty (0 bytes)", "text_as_mp4": "cannot open", "audio_only": "no video stream"}
    for case, reason in cases.items():
        data = bad_videos[case].read_bytes()
        for call in (lambda data=data: read_frames(data, [0], backend, name="s-000001.tar:k1.mp4"),
                     lambda data=data: probe_video(data, backend, name="s-000001.tar:k1.mp4")):
            with pytest.raises(VideoDecodeError) as info:
                call()
            assert str(info.value).startswith("s-000001.tar:k1.mp4: ") and "\n" not in str(info.value)
            if backend != "decord":
                assert info.value.reason.startswith(reason), (case, info.value.reason)
    # unnamed bytes are named by their size
    with pytest.raises(VideoDecodeError, match=r"^<600 bytes>: cannot open"):
        read_frames(b"<html>" * 100, [0], backend)


def test_truncated_bytes_deliver_real_frames_then_raise(bad_videos, good_videos, reference):
    data = bad_videos["truncated_avi"].read_bytes()
    info = probe_video(data)
    assert 0 < info.num_frames < 48 and info.truncated
    ref = reference(good_videos["avi_bframes"])
    assert_frames(read_frames(data, [0, info.num_frames - 1]), ref, [0, info.num_frames - 1])
    with pytest.raises(VideoDecodeError, match="requested but"):
        read_frames(data, [info.num_frames], name="member.avi")


def test_non_binary_sources_are_type_errors(good_videos):
    with pytest.raises(TypeError, match="binary mode"):
        VideoReader(io.StringIO("abc"))
    with pytest.raises(TypeError, match="path, bytes or a binary file object"):
        VideoReader(12)


def test_torchcodec_missing_is_a_setup_error_not_a_bad_video(good_videos, monkeypatch):
    # Where torchcodec cannot load, every video would fail the same way: that must stop the run with what to
    # install (BackendUnavailable is no VideoDecodeError, so the datasets do not count it as a bad video).
    from motionmae_ds.data.decode import torchcodec as torchcodec_backend

    torchcodec_backend._load.cache_clear()
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # what an absent package looks like
    try:
        with pytest.raises(torchcodec_backend.BackendUnavailable, match="'torchcodec' is unavailable: torchcodec "
                                                                        "is not installed"):
            VideoReader(good_videos["h264"], "torchcodec")
        assert not torchcodec_backend.available()
        assert VideoReader(good_videos["mp4_mpeg4_bframes"]).backend == "pyav"  # auto never needs it
    finally:
        monkeypatch.undo()
        torchcodec_backend._load.cache_clear()
    assert torchcodec_backend.available(), torchcodec_backend._load()[1]
