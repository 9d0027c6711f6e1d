"""`python -m studio.evaluate segmentation`: J&F of DAVIS-layout folders, and of the segmenter on a small dataset."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.core.errors import InputError
from pipelines.segmentation.metrics import video_scores
from pipelines.segmentation.synthetic import make_video
from studio.evaluate import cli
from studio.evaluate import segmentation as segmentation_eval

SIZE = (48, 64)


def write_grey(folder: Path, masks: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{k:05d}.png")


def write_palette(folder: Path, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, label in enumerate(labels.astype(np.uint8)):
        image = Image.frombytes("P", label.shape[::-1], label.tobytes())
        image.putpalette(segmentation_eval.davis_palette())
        image.save(folder / f"{k:05d}.png")


def run(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = cli.main(["segmentation", *argv])
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err


def row(lines: list[str], name: str) -> list[str]:
    return next(line.split() for line in lines if line.split()[0] == name)


@pytest.fixture
def davis(tmp_path) -> tuple[Path, Path, dict]:
    """gt/ and pred/ with two videos: "exact" predicted perfectly, "shifted" 3 px to the right. Returns the
    expected scores, computed with pipelines.segmentation.metrics directly."""
    gt, pred, expected = tmp_path / "gt", tmp_path / "pred", {}
    for name, seed, shift in (("exact", 0, 0), ("shifted", 1, 3)):
        truth = make_video(frames=5, size=SIZE, seed=seed).masks["target"]
        guess = np.roll(truth, shift, axis=2)
        write_grey(gt / name, truth)
        write_grey(pred / name, guess)
        expected[name] = video_scores(list(guess), list(truth))
    return gt, pred, expected


def test_per_video_scores_and_the_last_line(davis, tmp_path, capsys):
    gt, pred, expected = davis
    out = tmp_path / "scores.csv"
    code, lines, _ = run(capsys, "--pred", str(pred), "--gt", str(gt), "--out", str(out))
    assert code == 0
    assert row(lines, "exact")[1:] == ["5", "1.000", "1.000", "1.000"]
    shifted = expected["shifted"]
    assert shifted["J"] < 1 and shifted["F"] < 1
    assert row(lines, "shifted")[2:] == [f"{shifted['J']:.3f}", f"{shifted['F']:.3f}", f"{shifted['JF']:.3f}"]
    j, f = (1 + shifted["J"]) / 2, (1 + shifted["F"]) / 2
    assert lines[-1] == f"J&F: {(j + f) / 2:.3f}"
    with out.open(newline="") as file:
        rows = {r["video"]: r for r in csv.DictReader(file)}
    assert list(rows) == ["exact", "shifted", "mean"]
    assert float(rows["shifted"]["J"]) == pytest.approx(shifted["J"], abs=1e-6)
    assert float(rows["mean"]["F"]) == pytest.approx(f, abs=1e-6)
    assert float(rows["mean"]["J&F"]) == pytest.approx((j + f) / 2, abs=1e-6)


def test_a_missing_predicted_frame_counts_as_an_empty_mask(davis, capsys):
    gt, pred, _ = davis
    (pred / "exact" / "00002.png").unlink()
    truth = np.stack([np.array(Image.open(p)) > 0 for p in sorted((gt / "exact").glob("*.png"))])
    guess = truth.copy()
    guess[2] = False
    expected = video_scores(list(guess), list(truth))
    code, lines, _ = run(capsys, "--pred", str(pred), "--gt", str(gt))
    assert code == 0 and row(lines, "exact")[2] == f"{expected['J']:.3f}" == f"{0.8:.3f}"


def test_palette_masks_with_several_objects_are_scored_object_by_object(tmp_path, capsys):
    video = make_video(frames=4, size=SIZE)
    labels = video.masks["target"] * 1 + video.masks["distractor"] * 2
    write_palette(tmp_path / "gt" / "v", labels)
    write_palette(tmp_path / "pred" / "v", video.masks["target"] * 1)          # found the target only
    code, lines, _ = run(capsys, "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"))
    assert code == 0
    assert row(lines, "v/1")[2:] == ["1.000", "1.000", "1.000"]
    assert row(lines, "v/2")[2:] == ["0.000", "0.000", "0.000"]
    assert lines[-1] == "J&F: 0.500"
    # A grey (0/255) prediction has no ids: foreground against foreground, one row.
    write_grey(tmp_path / "grey" / "v", labels > 0)
    code, lines, _ = run(capsys, "--pred", str(tmp_path / "grey"), "--gt", str(tmp_path / "gt"))
    assert code == 0 and row(lines, "v")[2:] == ["1.000", "1.000", "1.000"] and lines[-1] == "J&F: 1.000"


def test_missing_ground_truth_or_no_videos_exits_2(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    code, _, err = run(capsys, "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "nowhere"))
    assert code == 2 and "does not exist" in err
    (tmp_path / "gt" / "empty-video").mkdir(parents=True)
    code, _, err = run(capsys, "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"))
    assert code == 2 and "no videos" in err


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, dict]:
    """A Ref-DAVIS-like folder with two videos, one expression each; returns it and the true masks by expression."""
    data, truth = tmp_path / "data", {}
    for name, seed, obj in (("left", 0, "target"), ("newcomer", 2, "newcomer")):
        video = make_video(frames=4, size=SIZE, seed=seed)
        (data / "JPEGImages" / name).mkdir(parents=True)
        for k, frame in enumerate(video.frames):
            Image.fromarray(frame).save(data / "JPEGImages" / name / f"{k:05d}.jpg", quality=95)
        write_grey(data / "Annotations" / name, video.masks[obj])
        truth[video.object(obj).expression] = video.masks[obj]
    (data / "expressions.json").write_text(json.dumps({"left": ["the red disc on the left"],
                                                       "newcomer": ["the yellow square"]}))
    return data, truth


def fake_segmenter(monkeypatch, answer) -> list[tuple]:
    """Stands in for pipelines.segmentation.pipeline (another engineer's), recording each call."""
    calls = []

    def segment_frames(frames, expression, profile):
        calls.append((frames.shape, frames.dtype, expression, profile))
        return answer(frames, expression)

    module = types.ModuleType("pipelines.segmentation.pipeline")
    module.segment_frames = segment_frames
    monkeypatch.setitem(sys.modules, "pipelines.segmentation.pipeline", module)
    return calls


def test_data_mode_segments_writes_masks_and_scores_them(dataset, tmp_path, monkeypatch, capsys):
    data, truth = dataset
    calls = fake_segmenter(monkeypatch, lambda frames, expression: truth[expression])
    out = tmp_path / "out"
    code, lines, _ = run(capsys, "--data", str(data), "--out", str(out), "--profile", "tiny")
    assert code == 0 and lines[-1] == "J&F: 1.000"
    assert sorted(calls) == [((4, *SIZE, 3), np.uint8, "the red disc on the left", "tiny"),
                             ((4, *SIZE, 3), np.uint8, "the yellow square", "tiny")]
    written = Image.open(out / "left" / "00000.png")
    assert written.mode == "P" and set(np.unique(np.array(written))) == {0, 1}
    assert (out / "scores.csv").is_file() and sorted(p.name for p in (out / "newcomer").iterdir()) == [
        f"{k:05d}.png" for k in range(4)]


def test_data_mode_with_a_segmenter_that_finds_nothing(dataset, tmp_path, monkeypatch, capsys):
    data, truth = dataset
    fake_segmenter(monkeypatch, lambda frames, expression: np.zeros(frames.shape[:3], bool))
    code, lines, _ = run(capsys, "--data", str(data), "--out", str(tmp_path / "out"), "--profile", "tiny")
    # "newcomer" is empty in its first two frames: an empty prediction scores 1 there, 0 elsewhere.
    newcomer = video_scores([np.zeros(SIZE, bool)] * 4, list(truth["the yellow square"]))
    assert newcomer["JF"] == pytest.approx(0.5)
    assert code == 0 and row(lines, "left")[2:] == ["0.000", "0.000", "0.000"]
    assert lines[-1] == f"J&F: {newcomer['JF'] / 2:.3f}"


def test_data_mode_without_expressions_exits_2(dataset, tmp_path, capsys):
    data, _ = dataset
    (data / "expressions.json").unlink()
    code, _, err = run(capsys, "--data", str(data), "--out", str(tmp_path / "out"))
    assert code == 2 and "expressions.json" in err


def test_an_expression_the_segmenter_refuses_gets_empty_masks_and_the_run_goes_on(dataset, tmp_path, monkeypatch,
                                                                                     capsys):
    data, truth = dataset

    def answer(frames, expression):
        if expression == "the yellow square":
            raise InputError("No “yellow square” found in the 4 frame(s) searched.")
        return truth[expression]

    calls = fake_segmenter(monkeypatch, answer)
    out = tmp_path / "out"
    code, lines, err = run(capsys, "--data", str(data), "--out", str(out), "--profile", "tiny")
    assert code == 0 and len(calls) == 2
    assert "failed: video newcomer, expression 0 ('the yellow square'): No “yellow square” found" in err
    assert "failed expressions: 1 of 2" in lines[-2] and lines[-1].startswith("J&F: ")
    assert row(lines, "left")[2:] == ["1.000", "1.000", "1.000"]
    written = [np.array(Image.open(out / "newcomer" / f"{k:05d}.png")) for k in range(4)]
    assert all(not mask.any() for mask in written)
    with (out / "failures.csv").open(newline="") as file:
        assert [(r["video"], r["expression"], r["text"]) for r in csv.DictReader(file)] == [
            ("newcomer", "0", "the yellow square")]


def write_meta_dataset(data: Path, meta_file: Path, expressions: dict[str, tuple[str, int]], frames: int = 4) -> dict:
    """Ref-YouTube-VOS / ReferFormer layout: one video "v" (target = id 1, distractor = id 2 in its palette
    annotations), `expressions` {key: (text, obj_id)}. Returns the synthetic video's masks by object id."""
    video = make_video(frames=frames, size=SIZE, seed=3)
    (data / "JPEGImages" / "v").mkdir(parents=True)
    names = [f"{5 * k:05d}" for k in range(frames)]      # YouTube-VOS numbers every 5th frame
    for name, frame in zip(names, video.frames, strict=True):
        Image.fromarray(frame).save(data / "JPEGImages" / "v" / f"{name}.jpg", quality=95)
    labels = video.masks["target"] * 1 + video.masks["distractor"] * 2
    (data / "Annotations" / "v").mkdir(parents=True)
    for name, label in zip(names, labels.astype(np.uint8), strict=True):
        image = Image.frombytes("P", label.shape[::-1], label.tobytes())
        image.putpalette(segmentation_eval.davis_palette())
        image.save(data / "Annotations" / "v" / f"{name}.png")
    meta_file.parent.mkdir(parents=True, exist_ok=True)
    meta_file.write_text(json.dumps({"videos": {"v": {
        "expressions": {key: {"exp": text, "obj_id": str(obj)} for key, (text, obj) in expressions.items()},
        "frames": names}}}))
    return {1: video.masks["target"], 2: video.masks["distractor"]}


def test_meta_expressions_score_each_expression_against_its_own_obj_id(tmp_path, monkeypatch, capsys):
    """Expression "0" names object 2 and "1" object 1 (not "expression i = object i + 1"); the segmenter answers each
    with its object's exact mask, so only the obj_id mapping can make every row 1. meta_expressions.json sits where
    ReferFormer's conversion puts it, <root>/meta_expressions/<split>/."""
    root = tmp_path / "ref-davis"
    data = root / "valid"
    texts = {"0": ("the red disc on the right", 2), "1": ("the red disc on the left", 1)}
    masks = write_meta_dataset(data, root / "meta_expressions" / "valid" / "meta_expressions.json", texts)
    by_text = {text: masks[obj] for text, obj in texts.values()}
    fake_segmenter(monkeypatch, lambda frames, expression: by_text[expression])
    out = tmp_path / "out"
    code, lines, _ = run(capsys, "--data", str(data), "--out", str(out), "--profile", "tiny")
    assert code == 0
    assert row(lines, "v/0")[1:] == ["4", "1.000", "1.000", "1.000"]
    assert row(lines, "v/1")[1:] == ["4", "1.000", "1.000", "1.000"]
    assert lines[-2] == "failed expressions: 0 of 2" and lines[-1] == "J&F: 1.000"
    written = Image.open(out / "v" / "0" / "00005.png")          # Ref-YouTube-VOS's submission layout, 0/255
    assert written.mode == "L" and np.array_equal(np.array(written) > 0, masks[2][1])
    # The same masks scored the old way (expression i against object i + 1) would not all be 1.
    assert video_scores(list(masks[2]), list(masks[1]))["JF"] < 0.5


def test_real_tiny_segmenter_on_a_meta_expressions_dataset_records_the_expression_it_refuses(tmp_path, capsys):
    """End to end with the studio's own segmenter (tiny profile, random weights: the scores mean nothing)."""
    data = tmp_path / "train"
    too_long = "the red disc on the left " + "that keeps moving slowly " * 40
    write_meta_dataset(data, data / "meta_expressions.json", {
        "0": ("the red disc on the left", 1), "1": ("the red disc on the right", 2), "2": (too_long, 1)})
    out = tmp_path / "out"
    code, lines, err = run(capsys, "--data", str(data), "--out", str(out), "--profile", "tiny")
    assert code == 0, err
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and failed[0].startswith("failed: video v, expression 2 (") and "long" in failed[0]
    assert lines[-2].startswith("failed expressions: 1 of 3") and lines[-1].startswith("J&F: ")
    assert float(lines[-1].split()[-1]) >= 0
    for key in ("0", "1", "2"):
        assert sorted(p.name for p in (out / "v" / key).iterdir()) == [f"{5 * k:05d}.png" for k in range(4)]
    assert not any(np.array(Image.open(p)).any() for p in (out / "v" / "2").iterdir())
    assert [r[0] for r in csv.reader((out / "scores.csv").open())] == ["video", "v/0", "v/1", "v/2", "mean"]


# ----------------------------------------------------------------- DAVIS's void label and object counting
def void_case() -> tuple[np.ndarray, np.ndarray]:
    """One object, a 6 x 6 square (36 px), inside an annotator's void band one pixel wide (label 255, 28 px); the
    prediction is the 8 x 8 square that covers the band. Worked out by hand, DAVIS's way: the band is neither object
    nor background, so J = 36 / (64 - 28) = 1 and, the band cleared from both masks first, F = 1 (J&F 1). Counting
    the band as background gives J = 36 / 64 = 0.5625 and F < 1; counting 255 as a second object scores it 0."""
    gt = np.zeros((2, 10, 10), np.uint8)
    gt[:, 1:9, 1:9] = 255
    gt[:, 2:8, 2:8] = 1
    pred = np.zeros((2, 10, 10), np.uint8)
    pred[:, 1:9, 1:9] = 1
    return gt, pred


def test_the_void_label_is_no_object_and_its_pixels_are_not_scored(tmp_path, capsys):
    from pipelines.segmentation.metrics import f_measure, jaccard

    gt, pred = void_case()
    write_palette(tmp_path / "gt" / "v", gt)
    write_palette(tmp_path / "pred" / "v", pred)
    code, lines, _ = run(capsys, "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out",
                         str(tmp_path / "s.csv"))
    assert code == 0 and [r.split()[0] for r in lines[1:-1]] == ["v", "mean"]          # one object, not "v/255"
    assert row(lines, "v")[2:] == ["1.000", "1.000", "1.000"]
    assert jaccard(pred[0] == 1, gt[0] == 1) == pytest.approx(36 / 64)                # without the void: worse
    assert f_measure(pred[0] == 1, gt[0] == 1) < 1
    assert jaccard(pred[0] == 1, gt[0] == 1, void=gt[0] == 255) == 1.0


def test_objects_are_those_of_the_first_annotated_frame_and_void_stays_out_of_each(tmp_path, capsys):
    """DAVIS counts objects on the first frame (ids 1 .. its largest): an id that appears later is not scored. Each
    object's J and F skip the void pixels."""
    gt = np.zeros((3, 24, 32), np.uint8)
    gt[:, 2:10, 2:10], gt[:, 2:10, 20:28] = 1, 2
    gt[1:, 15:20, 5:10] = 3                      # appears on frame 1: not an object of the sequence
    gt[:, 12, :] = 255                           # a void line
    pred = gt.copy()
    pred[pred == 255] = 2                        # the prediction paints the void line as object 2
    pred[pred == 3] = 0
    write_palette(tmp_path / "gt" / "v", gt)
    write_palette(tmp_path / "pred" / "v", pred)
    code, lines, _ = run(capsys, "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"))
    assert code == 0 and [r.split()[0] for r in lines[1:-1]] == ["v/1", "v/2", "mean"]
    assert row(lines, "v/1")[2:] == row(lines, "v/2")[2:] == ["1.000", "1.000", "1.000"]


def test_hungarian_matching_pairs_objects_by_their_scores_not_their_ids(tmp_path, capsys):
    gt = np.zeros((2, 24, 32), np.uint8)
    gt[:, 2:10, 2:10], gt[:, 2:10, 20:28] = 1, 2
    pred = np.zeros_like(gt)
    pred[:, 2:10, 2:10], pred[:, 2:10, 20:28] = 2, 1         # the same objects, the ids swapped
    write_palette(tmp_path / "gt" / "v", gt)
    write_palette(tmp_path / "pred" / "v", pred)
    argv = ("--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"))
    _, by_id, _ = run(capsys, *argv)
    assert row(by_id, "mean")[2:] == ["0.000", "0.000", "0.000"]
    code, matched, _ = run(capsys, *argv, "--match", "hungarian")
    assert code == 0 and row(matched, "mean")[2:] == ["1.000", "1.000", "1.000"]
    one = pred.copy()
    one[one == 2] = 0                                        # one predicted object for two: the other scores empty
    write_palette(tmp_path / "pred" / "v", one)
    _, half, _ = run(capsys, *argv, "--match", "hungarian")
    assert row(half, "v/2")[2:] == ["1.000", "1.000", "1.000"] and row(half, "v/1")[2:] == ["0.000", "0.000", "0.000"]
