import numpy as np
import pytest
import torch
import videos
from PIL import Image
from torch.utils.data import DataLoader

from motionmae_ds.data.datasets import DataLoadError, VideoClipDataset
from motionmae_ds.data.decode import VideoReader, count_decodable_frames, count_present_frames
from motionmae_ds.data.finishing import PackedClips, normalize_batch
from motionmae_ds.data.lists import VideoRecord, read_list
from motionmae_ds.data.loader import collate_clips
from motionmae_ds.data.sampling import make_generator, repeated_train_indices, train_clip_indices
from motionmae_ds.models.targets import IMAGENET_MEAN, IMAGENET_STD

from clip_reference import assert_same_clip, assert_same_frames, finished, old_train_clip  # isort: skip

ACCURACY_VIDEOS = ("h264", "vp9", "avi_bframes", "mpeg_ps", "vfr", "gray", "short10")


def _norm(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> float64 (3, T, H, W), ImageNet-normalised."""
    x = (frames.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return x.transpose(3, 0, 1, 2)


def _norm_item(video: torch.Tensor) -> np.ndarray:
    """An evaluation item's uint8 clip(s) normalised as the evaluation loop does (on its device)."""
    return normalize_batch(video, IMAGENET_MEAN, IMAGENET_STD).numpy()


def _rec(path, label=0, start=0, num_frames=None):
    return VideoRecord(str(path), label, start, num_frames, False)


@pytest.mark.parametrize("name", ACCURACY_VIDEOS)
def test_val_clip_equals_reference_decode(name, good_videos, reference):
    # 64x48 frames, short side kept at 48, centre 48x48 crop: no resampling, so pixels must match exactly.
    ref = reference(good_videos[name])
    ds = VideoClipDataset([_rec(good_videos[name], label=3)], mode="val", num_frames=8, sampling_rate=4,
                          input_size=48, short_side_size=48)
    item = ds[0]
    # Hand-computed centre clips: 48 frames -> span 29 centred on 24; 40 -> centred on 20; 24 -> stride
    # lowered to 3 (span 22); 10 -> stride 1 (span 8) centred on 5.
    expected_idx = {48: list(range(10, 39, 4)), 40: list(range(6, 35, 4)), 24: list(range(1, 23, 3)),
                    10: list(range(1, 9))}[len(ref)]
    assert item["label"] == 3 and item["index"] == 0 and item["skipped"] == []
    np.testing.assert_allclose(_norm_item(item["video"]), _norm(ref[expected_idx][:, :, 8:56]), atol=1e-5)


@pytest.mark.parametrize("name", ("h264", "avi_bframes", "short10"))
def test_pretrain_clip_decodes_the_sampled_frames(name, good_videos, reference):
    ref = reference(good_videos[name])
    ds = VideoClipDataset([_rec(good_videos[name])] * 3, mode="pretrain", num_frames=8, sampling_rate=4,
                          input_size=32, seed=5)
    ds.set_epoch(2)
    for i in range(3):
        gen = make_generator(5, 2, i, 0)  # the dataset's documented draw for (seed, epoch, index, attempt 0)
        idx = train_clip_indices(len(ref), 8, 4, gen)
        item = ds[i]
        # the worker ships exactly the sampled frames, uncropped; the device finishes them like the old path
        assert_same_frames(item, item["views"][0].positions, ref[idx])
        assert_same_clip(finished(item, 32)[0], old_train_clip(torch.from_numpy(ref[idx]), gen, 32), item)


def test_videomae_v2_start_offset(good_videos, reference):
    ref = reference(good_videos["h264"])
    ds = VideoClipDataset([_rec(good_videos["h264"], start=20, num_frames=28)], mode="val", num_frames=4,
                          sampling_rate=2, input_size=48, short_side_size=48)
    # 28 frames, span 7, centre 14 -> record frames 11, 13, 15, 17 -> file frames 31, 33, 35, 37
    np.testing.assert_allclose(_norm_item(ds[0]["video"]), _norm(ref[[31, 33, 35, 37]][:, :, 8:56]), atol=1e-5)


def test_test_mode_all_views_in_one_item(good_videos, reference):
    ref = reference(good_videos["h264"])
    ds = VideoClipDataset([_rec(good_videos["h264"], label=1)], mode="test", num_frames=4, sampling_rate=4,
                          input_size=40, short_side_size=48, test_clips=2, test_crops=3)
    video = ds[0]["video"]
    assert video.shape == (6, 3, 4, 40, 40)
    # 48 frames, span 13: segment centres 12 and 36 -> starts 6 and 30; crops at x = 0, 12, 24, y = 4.
    for k, start in enumerate((6, 30)):
        frames = ref[list(range(start, start + 13, 4))]
        for c, x in enumerate((0, 12, 24)):
            np.testing.assert_allclose(_norm_item(video[k * 3 + c]), _norm(frames[:, 4:44, x : x + 40]), atol=1e-5)


def test_frame_folders(frame_folders):
    for name in ("rgb", "gray", "custom"):
        spec = frame_folders[name]
        ref = videos.reference_folder_frames(spec["path"], range(spec["num_frames"]), spec["template"], spec["start"])
        for num_frames in (spec["num_frames"], None):  # None: counted from the files
            rec = VideoRecord(str(spec["path"]), 2, spec["start"], num_frames, True, spec["template"])
            ds = VideoClipDataset([rec], mode="val", num_frames=4, sampling_rate=1, input_size=48,
                                  short_side_size=48)
            n = spec["num_frames"]
            start = min(max(int(np.floor(n / 2 - 2 + 0.5)), 0), n - 4)
            np.testing.assert_allclose(_norm_item(ds[0]["video"]), _norm(ref[start : start + 4][:, :, 8:56]),
                                       atol=1e-5)


def test_determinism_and_epochs(good_videos, tmp_path):
    list_file = tmp_path / "list.txt"
    list_file.write_text("".join(f"{good_videos[n]} {i}\n" for i, n in enumerate(("h264", "vp9", "vfr", "gray"))))
    records = read_list(str(list_file))
    kw = dict(mode="train", num_frames=4, sampling_rate=2, input_size=32, rand_aug="rand-m9-mstd0.5-inc1",
              random_erase=0.25, seed=7)
    a, b = VideoClipDataset(records, **kw), VideoClipDataset(records, **kw)
    for i in range(4):
        assert torch.equal(a[i]["video"], b[i]["video"]) and a[i]["views"] == b[i]["views"] and a[i]["label"] == i
    b.set_epoch(1)
    assert all(not torch.equal(a[i]["video"], b[i]["video"]) for i in range(4))
    # Worker count and timing do not matter: 2 workers give the batches of the main process.
    a.set_epoch(1)
    main = [x["video"] for x in DataLoader(a, batch_size=2, collate_fn=collate_clips)]
    workers = [x["video"] for x in DataLoader(a, batch_size=2, collate_fn=collate_clips, num_workers=2)]
    assert len(main) == 2 and all(isinstance(x, PackedClips) for x in main + workers)
    assert all(len(x.frames) == len(y.frames) == 2 and x.views == y.views for x, y in zip(main, workers))
    assert all(torch.equal(a, b) for x, y in zip(main, workers) for a, b in zip(x.frames, y.frames))


@pytest.mark.parametrize("name,backend", [("h264", "pyav"), ("avi_bframes", "pyav"), ("vfr", "pyav"),
                                          ("h264", "auto"), ("mp4_mpeg4_bframes", "torchcodec"), ("vp9", "decord")])
def test_pretrain_repeats_are_clips_with_their_own_starts_each_frame_exact(name, backend, good_videos, reference):
    ref = reference(good_videos[name])
    repeats = 4
    ds = VideoClipDataset([_rec(good_videos[name])] * 3, mode="pretrain", num_frames=4, sampling_rate=3,
                          input_size=32, num_repeats=repeats, seed=7, backend=backend)
    ds.set_epoch(1)
    for i in range(3):
        item = ds[i]
        video = finished(item, 32)
        assert video.shape == (repeats, 3, 4, 32, 32)
        # the documented draws: the R clips' starts from the item's generator, then each clip's crop and flip
        gen = make_generator(7, 1, i, 0)
        clips = repeated_train_indices("dense", len(ref), 4, 3, repeats, gen)
        assert len({clip[0] for clip in clips}) == repeats, "starts must differ"
        # the union of the clips' frames travels once, each frame exact
        assert item["video"].shape[0] == len({f for clip in clips for f in clip})
        for r, clip in enumerate(clips):
            assert_same_frames(item, item["views"][r].positions, ref[clip])
            assert_same_clip(video[r], old_train_clip(torch.from_numpy(ref[clip]), gen, 32), item)
    # repeats=1 draws exactly the single clip of the plain pretraining item
    one = VideoClipDataset([_rec(good_videos[name])], mode="pretrain", num_frames=4, sampling_rate=3,
                           input_size=32, seed=7, backend=backend)
    gen = make_generator(7, 0, 0, 0)
    idx = train_clip_indices(len(ref), 4, 3, gen)
    assert_same_clip(finished(one[0], 32)[0], old_train_clip(torch.from_numpy(ref[idx]), gen, 32), one[0])


@pytest.mark.parametrize("name", ["h264", "avi_bframes", "mpeg_ps", "vfr"])
def test_pretrain_repeats_decode_every_frame_once_in_one_pass(name, good_videos, reference):
    """Counted in PyAV's real decode: seeking files (MP4) and forward-only ones (AVI, MPEG-PS)."""
    ref = reference(good_videos[name])
    ds = VideoClipDataset([_rec(good_videos[name])], mode="pretrain", num_frames=6, sampling_rate=2,
                          input_size=32, num_repeats=4, seed=3, backend="pyav")
    for epoch in range(3):
        ds.set_epoch(epoch)
        gen = make_generator(3, epoch, 0, 0)
        clips = repeated_train_indices("dense", len(ref), 6, 2, 4, gen)
        union = {i for clip in clips for i in clip}
        with VideoReader(good_videos[name], "pyav") as reader:
            ds._load_from(_rec(good_videos[name]), reader, gen_copy := make_generator(3, epoch, 0, 0))
            counter = reader.counter
        del gen_copy
        assert max(counter.decoded.values()) == 1, "a frame went through the decoder twice"
        # 4:2:0 frames travel as they are: the worker converts none to RGB (the device does, only the boxes)
        assert counter.converted == 0, "the worker converted frames to RGB"
        if name in ("avi_bframes", "mpeg_ps"):  # forward decode: exactly the frames up to the last wanted one
            assert sorted(counter.decoded) == list(range(max(union) + 1))
        else:  # seeking: never more than the file, never a GOP twice
            assert union <= set(counter.decoded) and counter.total_decoded <= len(ref)


def test_short_videos_give_full_clips_in_every_mode(good_videos, reference):
    # 10 frames, clips of 16: stride 1 and the last frame repeated, for one clip and for repeated clips
    ref = reference(good_videos["short10"])
    expected = list(range(10)) + [9] * 6
    val = VideoClipDataset([_rec(good_videos["short10"])], mode="val", num_frames=16, input_size=48,
                           short_side_size=48)
    np.testing.assert_allclose(_norm_item(val[0]["video"]), _norm(ref[expected][:, :, 8:56]), atol=1e-5)
    for mode in ("train", "pretrain"):
        ds = VideoClipDataset([_rec(good_videos["short10"])], mode=mode, num_frames=16, input_size=32,
                              num_repeats=2)
        assert finished(ds[0], 32).shape == (2, 3, 16, 32, 32)


def test_repeated_sampling_decodes_once_augments_twice(good_videos):
    ds = VideoClipDataset([_rec(good_videos["h264"])], mode="train", num_frames=4, sampling_rate=2,
                          input_size=32, num_repeats=2)
    item = ds[0]
    assert item["video"].shape[0] == 4 and item["views"][0].positions == item["views"][1].positions  # decoded once
    video = finished(item, 32)
    assert video.shape == (2, 3, 4, 32, 32) and not torch.equal(video[0], video[1])


def test_bad_files_are_skipped_reported_and_replaced(good_videos, bad_videos):
    bad = ["zero_bytes", "text_as_mp4", "audio_only", "missing", "truncated_mp4"]
    # The list claims 40 frames (as for the intact file); the truncated copy decodes only about 16.
    records = [_rec(good_videos["h264"], label=5)] + [_rec(bad_videos[n], label=9, num_frames=40) for n in bad]
    ds = VideoClipDataset(records, mode="val", num_frames=8, sampling_rate=4, input_size=48, short_side_size=48)
    for i, name in enumerate(bad, start=1):
        item = ds[i]
        assert item["video"].shape == (3, 8, 48, 48)
        assert item["label"] == 5 and item["index"] == 0  # the only good record is the replacement
        paths = [p for p, _ in item["skipped"]]
        assert paths[0] == str(bad_videos[name]) and all(reason for _, reason in item["skipped"])
        assert set(paths) <= {str(bad_videos[n]) for n in bad}
    batch = collate_clips([ds[0], ds[1], ds[2]])
    assert batch["video"].shape == (3, 3, 8, 48, 48) and batch["label"].tolist() == [5, 5, 5]
    assert [p for p, _ in batch["skipped"]][:1] == [str(bad_videos["zero_bytes"])]
    # the batch names every item's skipped files, in item order
    assert batch["skipped"] == ds[1]["skipped"] + ds[2]["skipped"]
    # replacements are a function of the list and the index: a fresh dataset skips the same files, for the same
    # reasons, and lands on the same replacement
    again = VideoClipDataset(records, mode="val", num_frames=8, sampling_rate=4, input_size=48, short_side_size=48)
    for i in (3, 5):
        first, second = ds[i], again[i]
        assert second["skipped"] == first["skipped"] and second["index"] == first["index"] == 0
        assert torch.equal(second["video"], first["video"])
    strict = VideoClipDataset(records, mode="val", num_frames=8, sampling_rate=4, input_size=48,
                              short_side_size=48, max_retries=0)
    with pytest.raises(DataLoadError, match="zero_bytes.mp4"):
        strict[1]
    all_bad = VideoClipDataset(records[1:], mode="pretrain", num_frames=4, input_size=32, max_retries=3)
    with pytest.raises(DataLoadError, match="4 videos in a row"):
        all_bad[0]


def test_bad_arguments_name_the_setting(good_videos):
    recs = [_rec(good_videos["h264"])]
    with pytest.raises(ValueError, match="mode"):
        VideoClipDataset(recs, mode="training")
    with pytest.raises(ValueError, match="num_frames"):
        VideoClipDataset(recs, num_frames=0)
    with pytest.raises(ValueError, match="random_erase"):
        VideoClipDataset(recs, mode="train", random_erase=2.0)
    with pytest.raises(ValueError, match="short_side_size"):
        VideoClipDataset(recs, mode="test", input_size=64, short_side_size=48)
    with pytest.raises(ValueError, match="records"):
        VideoClipDataset([], mode="val")
    with pytest.raises(ValueError, match="rand_aug"):
        VideoClipDataset(recs, mode="train", rand_aug="rand-q9")


def test_config_frame_template_and_start_reach_frame_folder_lists(frame_folders, tmp_path):
    from motionmae_ds.builders import build_dataset
    from motionmae_ds.config import ConfigError, load_finetune_config, load_pretrain_config
    from motionmae_ds.train.finetune import build_split

    spec = frame_folders["custom"]  # frame{:04d}.jpeg numbered from 0, 6 frames
    lst = tmp_path / "frames.txt"
    lst.write_text(f"{spec['path']} {spec['num_frames']} 1\n")
    ref = videos.reference_folder_frames(spec["path"], range(spec["num_frames"]), spec["template"], spec["start"])
    keys = [f"data.frame_template={spec['template']}", f"data.frame_start={spec['start']}",
            "data.list_format=frame_dir"]
    cfg = load_pretrain_config(None, [f"data.list_file={lst}", "model.num_frames=4", "model.img_size=48", *keys])
    # pretraining: a random clip loads with nothing skipped (the default template would find no file)
    item = build_dataset(cfg, str(lst), mode="pretrain")[0]
    assert item["skipped"] == [] and tuple(finished(item, 48).shape) == (1, 3, 4, 48, 48)
    ft = load_finetune_config(None, [f"data.train_list={lst}", "model.num_frames=4", "model.img_size=48",
                                     "data.short_side_size=48", "model.num_classes=2", *keys])
    clip = _norm_item(build_split(ft, str(lst), "val")[0]["video"])
    # val sampling of 4 frames at stride 4 from a 6-frame folder lowers the stride to 1 (frames 1..4)
    np.testing.assert_allclose(clip, _norm(ref[1:5][:, :, 8:56]), atol=1e-5)
    # the default template does not name these files: every retry fails, naming the missing frame
    plain = load_pretrain_config(None, [f"data.list_file={lst}", "model.num_frames=4", "model.img_size=48",
                                       "data.list_format=frame_dir"])
    with pytest.raises(DataLoadError, match="img_0000"):
        build_dataset(plain, str(lst), mode="pretrain")[0]
    for bad, what in (("data.frame_template=frames.jpg", "one integer field"),
                      ("data.frame_template=img_{:05d}_{}.jpg", "one integer field"),
                      ("data.frame_start=-1", "data.frame_start=-1")):
        with pytest.raises(ConfigError, match=what):
            load_pretrain_config(None, [f"data.list_file={lst}", bad])


def test_present_frames_are_counted_without_decoding(tmp_path):
    """The dataset counts frame files that exist (cheap, per sample); the list scan counts those that decode."""
    for i in range(1, 4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"img_{i:05d}.jpg")
    (tmp_path / "img_00004.jpg").write_bytes(b"not an image")
    (tmp_path / "img_00006.jpg").write_bytes(b"after a gap")
    assert count_present_frames(tmp_path) == 4
    assert count_decodable_frames(tmp_path) == 3
    assert count_present_frames(tmp_path, start=5) == 0
