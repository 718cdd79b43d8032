"""Loader workers start without the rank's decoder state (issue #33): the risky sequence - the main process decodes
with every backend and keeps its decoders (frame threads, swscale contexts, decord's threads) alive, then workers
start - repeated 20 times through ``make_loader``; every round must deliver the exact frames before a timeout, from
workers that were not forked from the process that decoded."""
from __future__ import annotations

import functools
import os

import av
import torch
import worker_probe

from motionmae_ds.data.datasets import VideoClipDataset
from motionmae_ds.data.decode import VideoReader
from motionmae_ds.data.lists import VideoRecord
from motionmae_ds.data.loader import make_loader

BACKENDS = ("pyav", "decord", "torchcodec", "auto")


def _decode_in_parent(path: str) -> list:
    """What a rank may hold when its loader starts: readers of every backend with decoded frames, and a PyAV
    decoder with frame threads and a threaded swscale conversion, all still open."""
    held = []
    for backend in BACKENDS:
        reader = VideoReader(path, backend=backend)
        reader.get([0, 2])
        held.append(reader)
    container = av.open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame threads
    for _, frame in zip(range(3), container.decode(stream)):
        frame.to_ndarray(format="rgb24")
    held.append(container)
    return held


def test_workers_start_clean_after_the_parent_decoded_20_times(good_videos, monkeypatch):
    monkeypatch.setattr("motionmae_ds.data.loader.ignore_stop_signals",
                        functools.partial(worker_probe.not_forked_from, os.getpid()))
    records = [VideoRecord(str(good_videos[n]), i, 0, None, False)
               for i, n in enumerate(("h264", "vp9", "avi_bframes", "mpeg_ps"))]
    dataset = VideoClipDataset(records, mode="val", num_frames=4, sampling_rate=2, input_size=48, short_side_size=48)
    expected = [dataset[i]["video"] for i in range(len(records))]
    for round_ in range(20):
        held = _decode_in_parent(str(good_videos["h264"]))
        loader = make_loader(dataset, None, 1, 2, 60, torch.device("cpu"))
        got = [batch["video"][0] for batch in loader]  # a hang in a worker fails here after 60 s
        assert len(got) == len(records), round_
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), round_
        for obj in held:
            obj.close()
