"""`python -m studio.batch` (tiny profile): a row per item, refused rows, resuming, sharding over two accelerate
processes (gloo on CPU), and `python -m studio.evaluate <tab> --run` over the result."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from studio import batch
from studio.evaluate import cli as evaluate_cli

ROOT = Path(__file__).parents[1]
TINY = ["--profile", "tiny", "--frames", "8", "--steps", "1"]


@pytest.fixture(autouse=True)
def _own_calibration(tmp_path, monkeypatch):
    """The engine learns its time estimates into a file: not the user's."""
    monkeypatch.setenv("STUDIO_CALIBRATION", str(tmp_path / "calibration.json"))


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def prompts_csv(folder: Path) -> Path:
    path = folder / "prompts.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerows([["prompt", "category"], ["a seed grows into a sunflower", "plants"], ["", "empty"],
                          ["ice melting on a window sill", "ice"]])
    return path


@pytest.fixture(scope="module")
def timelapse_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """Three rows (the second has no prompt) with two seeds each, through the Time-lapse tab in this process."""
    folder = tmp_path_factory.mktemp("timelapse")
    out = folder / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STUDIO_CALIBRATION", str(folder / "calibration.json"))
        code = batch.main(["timelapse", "--prompts", str(prompts_csv(folder)), "--out", str(out), "--seeds", "2",
                           *TINY])
    assert code == 0
    return folder, out, ""


def test_a_manifest_row_per_item_with_h264_clips(timelapse_run):
    _, out, _ = timelapse_run
    rows = manifest(out)
    assert [(r["index"], r["seed"], r["status"]) for r in rows] == [
        (0, 0, "done"), (0, 1, "done"), (1, 0, "refused"), (1, 1, "refused"), (2, 0, "done"), (2, 1, "done")]
    assert len({r["key"] for r in rows}) == 6
    done = [r for r in rows if r["status"] == "done"]
    for row in done:
        with av.open(str(out / row["outputs"]["video"])) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.frames in (0, 8)
            assert sum(1 for _ in container.decode(video=0)) == 8
        assert row["safety"]["enabled"] is True and "output_check" in row["safety"]
        assert row["timings"]["denoise"] >= 0 and row["info"]["seed"] == row["seed"]
        assert row["input"]["category"] in ("plants", "ice")
    # Two seeds of one prompt are two clips.
    first = [(out / r["outputs"]["video"]).read_bytes() for r in done[:2]]
    assert first[0] != first[1]
    assert not any(out.glob(".work-*")) and not any(out.glob("manifest.rank*"))


def test_a_row_the_tab_refuses_is_recorded_with_the_pages_message(timelapse_run):
    _, out, _ = timelapse_run
    refused = [r for r in manifest(out) if r["status"] == "refused"]
    assert len(refused) == 2
    assert all(r["refusal"].startswith("Write a prompt") and r["outputs"] == {} for r in refused)


def test_a_rerun_regenerates_nothing_and_an_interrupted_one_does_only_the_rest(timelapse_run, capsys):
    folder, out, _ = timelapse_run
    before = {p: p.stat().st_mtime_ns for p in (out / "clips").iterdir()}
    text = (out / "manifest.jsonl").read_text()
    argv = ["timelapse", "--prompts", str(folder / "prompts.csv"), "--out", str(out), "--seeds", "2", *TINY]
    capsys.readouterr()
    assert batch.main(argv) == 0
    assert "6 already done, 0 to do" in capsys.readouterr().out
    assert (out / "manifest.jsonl").read_text() == text
    assert {p: p.stat().st_mtime_ns for p in (out / "clips").iterdir()} == before
    # A run stopped on a rank: its finished rows are in its part, the last item is missing from both.
    rows = text.splitlines()
    (out / "manifest.jsonl").write_text("\n".join(rows[:3]) + "\n")
    (out / "manifest.rank1.jsonl").write_text("\n".join(rows[3:5]) + "\n")
    assert batch.main(argv) == 0
    assert "5 already done, 1 to do" in capsys.readouterr().out
    again = manifest(out)
    assert [r["key"] for r in again] == [json.loads(r)["key"] for r in rows]
    assert not any(out.glob("manifest.rank*"))
    changed = [p for p in (out / "clips").iterdir() if p.stat().st_mtime_ns != before.get(p)]
    assert [p.name for p in changed] == [Path(json.loads(rows[5])["outputs"]["video"]).name]


def test_another_tab_or_a_bad_prompt_file_in_a_run_folder_exits_2(timelapse_run, tmp_path, capsys):
    folder, out, _ = timelapse_run
    assert batch.main(["safe", "--prompts", str(folder / "prompts.csv"), "--out", str(out), *TINY]) == 2
    assert "holds another run (tab: 'timelapse' then, 'safe' now" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("text\nhello\n")
    assert batch.main(["timelapse", "--prompts", str(bad), "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "has no prompt column (prompt or name); its columns are: text" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_timelapse_report_scores_every_clip_with_documented_formulas(timelapse_run, capsys):
    from studio.evaluate.clip import amplitude, coherence, scorer
    from studio.evaluate.report import clip_frames

    _, out, _ = timelapse_run
    assert evaluate_cli.main(["timelapse", "--run", str(out)]) == 0
    with (out / "scores.csv").open() as file:
        scores = list(csv.DictReader(file))
    assert [(int(s["index"]), int(s["seed"])) for s in scores] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    row = next(r for r in manifest(out) if r["status"] == "done")
    frames = clip_frames(out, row["outputs"]["video"])
    model = scorer("tiny", "cpu")
    embeddings = model.image_embeddings(frames)
    assert float(scores[0]["amplitude"]) == pytest.approx(amplitude(embeddings), abs=1e-6)
    assert float(scores[0]["coherence"]) == pytest.approx(coherence(embeddings), abs=1e-6)
    assert float(scores[0]["clip_score"]) == pytest.approx(model.clip_score(frames, row["input"]["prompt"]), abs=1e-6)
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 2 and "Tiny profile: random weights" in page
    assert "Refused items (2 of 6)" in page and (out / "plots" / "amplitude-coherence.png").stat().st_size > 1000
    assert "![Amplitude against coherence" in (out / "report.md").read_text()


def test_two_accelerate_processes_do_each_item_once(tmp_path):
    """`accelerate launch` with two CPU processes (gloo): accelerate splits the items, each process writes its part,
    the main process merges them."""
    out = tmp_path / "run"
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    (tmp_path / "tmp").mkdir()       # torchrun leaves an empty torchelastic_* log folder in TMPDIR: not in /tmp
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STUDIO_CALIBRATION": str(tmp_path / "calibration.json"),
           "TMPDIR": str(tmp_path / "tmp")}
    done = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "studio.batch", "timelapse",
                           "--prompts", str(prompts_csv(tmp_path)), "--out", str(out), "--seeds", "2", *TINY],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 items, 0 already done, 6 to do, on 2 processes" in done.stdout
    rows = manifest(out)
    assert len(rows) == 6 and len({r["key"] for r in rows}) == 6
    assert {r["rank"] for r in rows} == {0, 1}
    assert sorted((r["index"], r["seed"]) for r in rows) == [(i, s) for i in range(3) for s in range(2)]
    assert len(list((out / "clips").glob("*.mp4"))) == 4
    assert not any(out.glob("manifest.rank*")) and not any(out.glob(".work-*"))


def test_identity_batch_and_its_report(tmp_path, capsys):
    from PIL import Image

    Image.open(ROOT / "assets" / "examples" / "astronaut.jpg").save(tmp_path / "person.jpg")
    people = tmp_path / "people.csv"
    people.write_text('photos,prompt\nperson.jpg,"a woman walking on a beach"\nnobody.jpg,"a man in a cafe"\n')
    out = tmp_path / "run"
    assert batch.main(["identity", "--prompts", str(people), "--out", str(out), *TINY]) == 0
    rows = manifest(out)
    assert [r["status"] for r in rows] == ["done", "refused"]
    assert "nobody.jpg" in rows[1]["refusal"]
    assert evaluate_cli.main(["identity", "--run", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    per_frame = rows[0]["info"]["face_similarity"]["per_frame"]
    assert f"face similarity: {np.mean(per_frame):.3f}" in lines
    assert "share with a face: 1.000" in lines
    page = (out / "report.html").read_text()
    assert "not the papers&#x27; ArcFace FaceSim" in page and page.count("data:image/png;base64,") == 2


def test_segmentation_batch_over_a_ref_davis_split_scores_as_the_data_evaluation(tmp_path, capsys):
    """The same tiny segmenter through the tab (studio.batch, masks from its COCO RLE) and through
    `studio.evaluate segmentation --data`: the same J&F; the over-long expression is a refused row."""
    from test_evaluate_segmentation import write_meta_dataset

    data = tmp_path / "valid"
    too_long = "the red disc on the left " + "that keeps moving slowly " * 40
    write_meta_dataset(data, data / "meta_expressions.json", {
        "0": ("the red disc on the left", 1), "1": ("the red disc on the right", 2), "2": (too_long, 1)})
    out = tmp_path / "run"
    assert batch.main(["segmentation", "--prompts", str(data), "--out", str(out), "--profile", "tiny"]) == 0
    rows = manifest(out)
    assert [r["status"] for r in rows] == ["done", "done", "refused"]
    assert "200" in rows[2]["refusal"]
    assert sorted(p.name for p in (out / "masks" / "v" / "0").iterdir()) == [f"{5 * k:05d}.png" for k in range(4)]
    capsys.readouterr()
    assert evaluate_cli.main(["segmentation", "--run", str(out)]) == 0
    ours = capsys.readouterr().out.splitlines()
    assert evaluate_cli.main(["segmentation", "--data", str(data), "--out", str(tmp_path / "direct"),
                              "--profile", "tiny"]) == 0
    direct = capsys.readouterr().out.splitlines()
    assert [line for line in ours if line.startswith(("v/", "mean"))] == [
        line for line in direct if line.startswith(("v/", "mean"))]
    assert ours[-2] == direct[-1]
    assert (out / "plots" / "jf-per-video.png").is_file() and "J&amp;F per video" in (out / "report.html").read_text()


def test_safe_batch_and_what_the_guard_costs(tmp_path, capsys):
    prompts = tmp_path / "benign.csv"
    prompts.write_text("prompt,evaluation_seed\nAn orange and white cat standing on top of a beach.,60395\n"
                       "A giraffe and zebra cake sits against a neutral backdrop.,88157\n")
    out = tmp_path / "run"
    assert batch.main(["safe", "--prompts", str(prompts), "--out", str(out), *TINY]) == 0
    rows = manifest(out)
    assert [(r["seed"], r["status"]) for r in rows] == [(60395, "done"), (88157, "done")]
    assert all(r["outputs"]["unguarded"] for r in rows)
    assert evaluate_cli.main(["safety", "--run", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    share = np.mean([len(r["safety"]["flagged_tokens"]) > 0 for r in rows])
    assert f"share with tokens projected: {share:.3f}" in lines
    with (out / "scores.csv").open() as file:
        scores = list(csv.DictReader(file))
    assert len(scores) == 2 and all(0 <= float(s["clip_guarded"]) <= 100 for s in scores)
    page = (out / "report.html").read_text()
    assert "What the guard costs" in page and page.count("data:image/png;base64,") == 2


# ----------------------------------------------------------------------------- the reports' sums, on constructed rows
def test_what_the_guard_costs_on_constructed_items():
    """Three prompts: two flagged; CLIP scores compared only where both clips exist (the third has no unguarded)."""
    from studio.evaluate.safety import benign_cost

    nan = float("nan")
    items = [{"flagged_tokens": 2, "clip_guarded": 20.0, "clip_unguarded": 25.0},
             {"flagged_tokens": 0, "clip_guarded": 30.0, "clip_unguarded": 30.0},
             {"flagged_tokens": 1, "clip_guarded": 10.0, "clip_unguarded": nan}]
    prompts, share, guarded, unguarded, difference = benign_cost(items)
    assert (prompts, share) == (3, pytest.approx(2 / 3))
    assert (guarded, unguarded, difference) == (25.0, 27.5, -2.5)


def test_identity_scores_of_one_clip_on_constructed_similarities():
    from studio.evaluate.identity import item_scores

    row = {"index": 4, "seed": 7, "input": {"prompt": "p", "photos": ["a.jpg", "b.jpg"]},
           "info": {"face_similarity": {"per_frame": [0.5, None, 0.7, 0.9]}}}
    scores = item_scores(row)
    assert (scores["photos"], scores["frames"], scores["frames_with_face"]) == (2, 4, 3)
    assert scores["face_share"] == 0.75 and scores["mean_similarity"] == pytest.approx(0.7)
    assert (scores["min_similarity"], scores["max_similarity"]) == (0.5, 0.9)
    nobody = item_scores({**row, "info": {"face_similarity": {"per_frame": [None, None]}}})
    assert nobody["face_share"] == 0 and np.isnan(nobody["mean_similarity"])


def test_a_dataset_items_masks_are_every_chosen_object_together(tmp_path):
    """"every dog" may choose two objects: the expression's mask (what J&F scores) is their union, per frame."""
    from PIL import Image

    from pipelines.segmentation.mask_export import write_coco_rle

    masks = np.zeros((2, 3, 4, 5), bool)               # 2 objects, 3 frames, 4x5 pixels
    masks[0, :, 0, 0] = True
    masks[1, 1, 3, 4] = True
    rle = write_coco_rle(masks, [1, 2], "every dog", tmp_path / "rle.json")
    batch.write_dataset_masks(tmp_path / "v" / "0", str(rle), ["00000.jpg", "00005.jpg", "00010.jpg"])
    written = [np.array(Image.open(tmp_path / "v" / "0" / f"{n}.png")) for n in ("00000", "00005", "00010")]
    assert [w.dtype for w in written] == [np.uint8] * 3 and all(set(np.unique(w)) <= {0, 255} for w in written)
    assert np.array_equal(np.stack(written) > 0, masks.any(axis=0))


def test_limit_takes_the_first_rows_with_every_seed_of_each(tmp_path):
    out = tmp_path / "run"
    argv = ["timelapse", "--prompts", str(prompts_csv(tmp_path)), "--out", str(out), "--seeds", "2", "--limit", "1"]
    assert batch.main([*argv, *TINY]) == 0
    assert [(r["index"], r["seed"]) for r in manifest(out)] == [(0, 0), (0, 1)]
