"""DAVIS layout and palette PNGs (data/davis.py) and the embedded synthetic VOS set (data/synthetic_vos.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from motionmae_ds.data.davis import (
    DavisLayoutError,
    davis_palette,
    read_annotation,
    read_sequences,
    read_split,
    write_annotation,
)
from motionmae_ds.data.synthetic_vos import ensure_synthetic_vos


def test_davis_palette_is_the_voc_colour_map():
    p = davis_palette()
    assert len(p) == 768
    colours = [tuple(p[3 * i: 3 * i + 3]) for i in range(256)]
    assert colours[:8] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
                           (0, 128, 128), (128, 128, 128)]
    assert colours[255] == (224, 224, 192)  # VOC's "void" colour


@pytest.mark.parametrize("palette", [davis_palette(), bytes(range(12)), bytes(np.random.default_rng(1).integers(
    0, 256, 768, dtype=np.uint8))], ids=["davis", "four_colours", "random"])
def test_palette_png_read_and_written_back_is_byte_identical(tmp_path, palette):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(palette) // 3, (37, 53)).astype(np.uint8)
    # a file made by PIL directly, as another tool would make it
    original = Image.frombytes("P", (53, 37), labels.tobytes())
    original.putpalette(palette)
    original.save(tmp_path / "00000.png")
    read_labels, read_palette = read_annotation(tmp_path / "00000.png")
    assert read_labels.tobytes() == labels.tobytes() and read_palette == palette
    write_annotation(tmp_path / "copy.png", read_labels, read_palette)
    again_labels, again_palette = read_annotation(tmp_path / "copy.png")
    assert again_labels.tobytes() == labels.tobytes()
    assert again_palette == palette
    assert again_labels.dtype == np.uint8 and again_labels.shape == (37, 53)


def test_non_palette_annotation_is_one_line_naming_the_file(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DavisLayoutError, match=r"rgb\.png: annotation is a 'RGB' image, not a palette PNG"):
        read_annotation(tmp_path / "rgb.png")


def test_layout_errors_name_the_path(tmp_path):
    with pytest.raises(DavisLayoutError, match=r"ImageSets/2017/val\.txt: split file not found"):
        read_split(tmp_path, "val")
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    with pytest.raises(DavisLayoutError, match=r"val\.txt:1: sequence bear: no frames in .*JPEGImages/480p/bear"):
        read_sequences(tmp_path, "val")
    frames = tmp_path / "JPEGImages" / "480p" / "bear"
    frames.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames / "00000.jpg")
    with pytest.raises(DavisLayoutError, match=r"Annotations/480p/bear/00000\.png: the first frame of bear"):
        read_sequences(tmp_path, "val")


def test_synthetic_vos_set_is_davis_layout_with_two_to_three_objects_and_cached(tmp_path):
    root = ensure_synthetic_vos(tmp_path, num_sequences=3, num_frames=6, height=32, width=48)
    sequences = read_sequences(root, "val")
    assert [s.name for s in sequences] == ["seq_000", "seq_001", "seq_002"]
    for seq in sequences:
        assert len(seq.frames) == 6 and seq.fully_annotated
        labels = np.stack([read_annotation(a)[0] for a in seq.annotations])
        assert labels.shape == (6, 32, 48)
        assert 3 <= len(np.unique(labels[0])) <= 4                       # background + 2-3 objects
        assert set(np.unique(labels)) == set(np.unique(labels[0]))      # nobody is ever fully hidden
        assert read_annotation(seq.annotations[0])[1] == davis_palette()
        with Image.open(seq.frames[0]) as im:
            assert im.size == (48, 32) and im.mode == "RGB"
    stamp = sequences[0].annotations[3].stat().st_mtime_ns
    assert ensure_synthetic_vos(tmp_path, num_sequences=3, num_frames=6, height=32, width=48) == root
    assert sequences[0].annotations[3].stat().st_mtime_ns == stamp    # reused, not regenerated
