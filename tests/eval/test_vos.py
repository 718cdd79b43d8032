"""VOS evaluation: J and F against hand-computed values and vos-benchmark (the DAVIS evaluation), label
propagation recovering exact masks from features that are one-hot per object, and launch/eval_vos.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from vos_benchmark.benchmark import benchmark
from vos_benchmark.evaluator import Evaluator

from motionmae_ds.data.davis import davis_palette, read_annotation, read_frame, read_sequences, write_annotation
from motionmae_ds.data.synthetic_vos import ensure_synthetic_vos
from motionmae_ds.eval.vos import PropagationSettings, evaluate_sequences, propagate_frame
from motionmae_ds.eval.vos_metrics import SequenceScores, boundary_f_measure, boundary_map, region_similarity, summarize
from tests.helpers import call_main, launch


def square(top: int, left: int, side: int = 4, size: int = 20) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[top: top + side, left: left + side] = True
    return m


def test_j_and_f_of_hand_made_masks():
    a, b = square(2, 2), square(2, 5)  # 4x4 squares, columns 2-5 and 5-8: one shared column
    assert region_similarity(a, b) == pytest.approx(4 / 28)  # 4 shared pixels of 16 + 16 - 4
    # Boundaries sit half a pixel towards the origin: the 5x5 ring at rows 1-5, columns 1-5 (16 pixels).
    ring = np.zeros((20, 20), dtype=bool)
    ring[1:6, 1:6] = True
    ring[2:5, 2:5] = False
    assert (boundary_map(a) == ring).all()
    # 20x20: the tolerance is ceil(0.008 * 28.3) = 1 pixel (a plus-shaped disc). Of a's ring, columns 3-5 of
    # the top and bottom rows and the 3 inner pixels of its right column (next to b's left column) are within
    # 1 pixel of b's ring: precision 9/16, and recall 9/16 by symmetry.
    assert boundary_f_measure(a, b) == pytest.approx(9 / 16)
    assert boundary_f_measure(a, square(2, 3)) == 1.0   # one pixel off: inside the tolerance
    empty = np.zeros((20, 20), dtype=bool)
    assert region_similarity(empty, empty) == 1.0 and boundary_f_measure(empty, empty) == 1.0
    assert region_similarity(a, empty) == 0.0 and boundary_f_measure(a, empty) == 0.0
    seq = SequenceScores("s")
    seq.add_frame(a.astype(np.uint8), b.astype(np.uint8), [1])
    seq.add_frame(a.astype(np.uint8), a.astype(np.uint8), [1])
    summary = summarize([seq])
    assert summary["J"] == pytest.approx(100 * (4 / 28 + 1) / 2)
    assert summary["F"] == pytest.approx(100 * (9 / 16 + 1) / 2)
    assert summary["J&F"] == pytest.approx((summary["J"] + summary["F"]) / 2)


def blobs(rng: np.random.Generator, h: int, w: int, objects: int) -> np.ndarray:
    coarse = torch.from_numpy(rng.integers(0, objects + 1, (1, 1, h // 7 + 1, w // 7 + 1)).astype(np.float32))
    return F.interpolate(coarse, size=(h, w), mode="nearest")[0, 0].numpy().astype(np.uint8)


@pytest.mark.parametrize("h,w", [(23, 31), (64, 97), (120, 200)])
def test_j_and_f_equal_vos_benchmark_per_object(h, w):
    rng = np.random.default_rng(h)
    ours, theirs = SequenceScores("s"), Evaluator()
    for _ in range(3):
        gt, pred = blobs(rng, h, w, 3), blobs(rng, h, w, 3)
        pred[: h // 2] = gt[: h // 2]  # partly right, so F is neither 0 nor 1
        ours.add_frame(pred, gt, [1, 2, 3])
        theirs.feed_frame(pred, gt)
    iou, boundary = theirs.conclude()
    for obj, (j, f) in ours.object_means().items():
        assert j == pytest.approx(iou[obj], abs=1e-9) and f == pytest.approx(boundary[obj], abs=1e-9)


def test_sequence_means_equal_vos_benchmark_on_a_davis_layout(tmp_path):
    rng = np.random.default_rng(7)
    palette = davis_palette()
    scores = []
    for s, objects in (("a", 2), ("b", 3)):
        seq = SequenceScores(s)
        for t in range(5):
            gt, pred = blobs(rng, 40, 56, objects), blobs(rng, 40, 56, objects)
            gt[0, :objects + 1], pred[-1, :objects + 1] = np.arange(objects + 1), np.arange(objects + 1)
            write_annotation(tmp_path / "gt" / s / f"{t:05d}.png", gt, palette)
            write_annotation(tmp_path / "pred" / s / f"{t:05d}.png", pred, palette)
            if 0 < t < 4:  # DAVIS scores all frames but the first and the last
                seq.add_frame(pred, gt, list(range(1, objects + 1)))
        scores.append(seq)
    jf, j, f, _ = benchmark([str(tmp_path / "gt")], [str(tmp_path / "pred")], num_processes=1, verbose=False)
    ours = summarize(scores)
    assert ours["J&F"] == pytest.approx(jf[0]) and ours["J"] == pytest.approx(j[0]) and ours["F"] == pytest.approx(f[0])
    assert ours["num_objects"] == 5


def onehot_features(frames: np.ndarray, seq) -> torch.Tensor:
    labels = np.stack([read_annotation(a)[0] for a in seq.annotations]).astype(np.int64)
    return F.one_hot(torch.from_numpy(labels), 4).float()  # (T, H, W, 4): the feature grid is the pixel grid


def test_propagation_of_one_hot_features_scores_100_on_the_synthetic_set(tmp_path):
    root = ensure_synthetic_vos(tmp_path, num_sequences=2, num_frames=10, height=32, width=48)
    sequences = read_sequences(root, "val")
    metrics = evaluate_sequences(sequences, onehot_features, PropagationSettings(), tmp_path / "out")  # CRW's
    assert metrics["J&F"] == 100.0 and metrics["J"] == 100.0 and metrics["F"] == 100.0
    # every object of the ground truth's first frames is scored (2 or 3 per synthetic sequence)
    objects = [len(set(np.unique(read_annotation(seq.annotations[0])[0]).tolist()) - {0}) for seq in sequences]
    assert metrics["num_objects"] == sum(objects) and all(n in (2, 3) for n in objects)
    for seq in sequences:  # the written masks are the ground truth, palette included
        for t, ann in enumerate(seq.annotations):
            written = read_annotation(tmp_path / "out" / "results" / seq.name / f"{t:05d}.png")
            truth = read_annotation(ann)
            assert (written[0] == truth[0]).all() and written[1] == truth[1]


def test_propagation_respects_radius_topk_and_temperature():
    # one label per context position: the prediction shows which positions were used and with what weight
    h, w = 1, 7
    query = torch.zeros(h, w, 2)
    query[..., 0] = 1.0
    keys = torch.zeros(1, h, w, 2)
    keys[0, 0, :, 0] = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = torch.eye(7).view(1, 7, h, w)
    settings = PropagationSettings(topk=2, radius=2.0, temperature=0.1)
    out = propagate_frame(query, keys, labels, settings)
    # position 3 reaches 1..5 (radius 2), its two most similar are 1 and 2: softmax of (0.9, 0.8) / 0.1
    weights = torch.softmax(torch.tensor([9.0, 8.0]), 0)
    assert torch.allclose(out[:, 0, 3], torch.tensor([0, weights[0], weights[1], 0, 0, 0, 0]), atol=1e-6)
    # position 6 reaches 4..6 only
    weights = torch.softmax(torch.tensor([6.0, 5.0]), 0)
    assert torch.allclose(out[:, 0, 6], torch.tensor([0, 0, 0, 0, weights[0], weights[1], 0]), atol=1e-6)


def colour_features(frames: np.ndarray, _seq) -> torch.Tensor:
    """Each 8x8 cell's mean colour: real features of the frames, which propagate imperfect masks."""
    x = F.avg_pool2d(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0, 8)
    return F.normalize(x.permute(0, 2, 3, 1), dim=-1)


def test_overlays_show_the_frame_the_prediction_and_the_truth(tmp_path):
    root = ensure_synthetic_vos(tmp_path, num_sequences=2, num_frames=6, height=32, width=48)
    sequences = read_sequences(root, "val")
    out = tmp_path / "out"
    evaluate_sequences(sequences, colour_features, PropagationSettings(), out, overlay_frames=4)
    wrong = predicted_objects = 0
    for seq in sequences:
        files = sorted((out / "overlays" / seq.name).glob("*.png"))
        assert [f.name for f in files] == [f"{t:05d}.png" for t in range(4)]  # the first 4 of 6 frames
        for t, path in enumerate(files):
            image = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
            frame = read_frame(seq.frames[t]).astype(np.float64)
            h, w = frame.shape[:2]
            pred, palette = read_annotation(out / "results" / seq.name / f"{t:05d}.png")
            truth = read_annotation(seq.annotations[t])[0]
            assert image.shape == (h, 3 * w + 8, 3)
            assert (image[:, w:w + 4] == 255).all() and (image[:, 2 * w + 4:2 * w + 8] == 255).all()
            assert (image[:, :w] == frame).all()
            colours = np.frombuffer(palette, dtype=np.uint8).reshape(-1, 3).astype(np.float64)
            for labels, panel in ((pred, image[:, w + 4:2 * w + 4]), (truth, image[:, 2 * w + 8:])):
                background = labels == 0
                assert (panel[background] == frame[background]).all()
                # half the frame, half the object's palette colour (rounded)
                expected = (frame[~background] + colours[labels[~background]]) / 2
                assert (np.abs(panel[~background] - expected) <= 0.5).all()
            assert (truth > 0).any()
            predicted_objects += int((pred > 0).sum())
            wrong += int((pred != truth).sum())
    # the masks differ somewhere and the prediction has objects: its panel was checked against the prediction
    assert wrong > 0 and predicted_objects > 0


def test_eval_vos_on_a_davis_layout_writes_results_and_scores(tmp_path):
    # 64x96 frames: a 4x6 feature grid, on which even random-init features give masks that partly overlap the
    # objects (at 32x64 every pixel became background, J&F 0, and the comparison below would check nothing)
    root = ensure_synthetic_vos(tmp_path / "cache", num_sequences=2, num_frames=5, height=64, width=96)
    out = tmp_path / "out"
    proc = launch("eval_vos.py", ["--checkpoint", "none", "--davis", root, "--output_dir", out, "--set",
                                  "model.depth=1", "model.embed_dim=48", "model.num_heads=3", "--overlay_frames", "3"],
                  timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "random_init" / "metrics.json").read_text())
    assert set(metrics["sequences"]) == {"seq_000", "seq_001"}
    # the scores of the masks the run wrote, as vos-benchmark (the DAVIS evaluation) computes them from the files
    jf, j, f, _ = benchmark([str(root / "Annotations" / "480p")], [str(out / "random_init" / "results")],
                            num_processes=1, verbose=False)
    assert (metrics["J&F"], metrics["J"], metrics["F"]) == pytest.approx((jf[0], j[0], f[0]), abs=1e-6)
    assert metrics["J"] > 0 and metrics["F"] > 0  # not the degenerate all-background masks
    assert metrics["settings"]["topk"] == 10 and metrics["settings"]["pairing"] == "successor"
    assert len(list((out / "random_init" / "results" / "seq_001").glob("*.png"))) == 5
    for seq in ("seq_000", "seq_001"):
        assert sorted(p.name for p in (out / "random_init" / "overlays" / seq).glob("*.png")) == \
            ["00000.png", "00001.png", "00002.png"]
    assert "random_init" in proc.stdout and "J&F" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--topk", "0"], "config error: --topk must be >= 1, got 0"),
    (["--temperature", "0"], "config error: --temperature must be > 0, got 0.0"),
    (["--overlay_frames", "-1"], "config error: --overlay_frames must be >= 0, got -1"),
    (["--checkpoint", "/nonexistent/run"], "config error: --checkpoint /nonexistent/run: no such file"),
    (["--checkpoint", "none", "--davis", "/nonexistent/davis"], "config error: --davis: /nonexistent/davis/"
                                                                "ImageSets/2017/val.txt: split file not found"),
])
def test_eval_vos_bad_input_is_one_line_and_exit_2(args, message):
    proc = call_main("eval_vos.py", args)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(message) and len(proc.stderr.strip().splitlines()) == 1
