"""Referring segmentation on the tiny profile: SAM 2 propagation both ways, clicks that stick, the grounding and
key-frame choice, the exports, and the endpoint with good and bad input (synthetic videos with exact masks)."""

from __future__ import annotations

import json
import os
import tempfile
import time
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from pipelines.core.cache import ModelCache
from pipelines.core.errors import InputError
from pipelines.core.video import read_video, write_mp4
from pipelines.segmentation import mask_export
from pipelines.segmentation.models import GROUNDERS, TRACKERS, SegmentationRegistry
from pipelines.segmentation.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KEEP_NEAR,
    Click,
    LazyFrames,
    SegmentationPipeline,
    SegmentationRequest,
    Tracker,
    key_frame,
    preprocess,
    sample_frames,
)
from pipelines.segmentation.relations import Candidate, iou, parse_expression
from pipelines.segmentation.synthetic import make_video

LOW = dict(box_threshold=0.05, text_threshold=0.05)   # the tiny grounder's random scores


@pytest.fixture(scope="module")
def video():
    return make_video(frames=16)


@pytest.fixture(scope="module")
def pipeline():
    return SegmentationPipeline(ModelCache("cpu"), SegmentationRegistry("tiny"))


@pytest.fixture(scope="module")
def sam2(pipeline):
    return pipeline.cache.get(pipeline.registry.models().tracker)


def target_box(video, frame: int) -> tuple[float, ...]:
    ys, xs = np.nonzero(video.masks["target"][frame])
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


# ----------------------------------------------------------------------------- SAM 2 without its processor
def test_preprocessing_is_the_processors_maths():
    """Sam2VideoProcessor (which needs torchvision) resizes the uint8 frame to the model's square with an antialiased
    bilinear filter, rescales by 1/255 and normalises with ImageNet's mean and std. The same maths, computed here
    with PIL's bilinear resize (which antialiases when shrinking): within one 8-bit level."""
    frames = make_video(frames=4, size=(180, 240)).frames
    ours = preprocess(frames, 128)
    assert ours.shape == (4, 3, 128, 128) and ours.dtype == torch.float32
    levels = (ours * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]) * 255
    assert torch.allclose(levels, levels.round(), atol=1e-3)            # whole 8-bit levels, as a uint8 resize gives
    for frame, mine in zip(frames, levels, strict=True):
        reference = np.asarray(Image.fromarray(frame).resize((128, 128), Image.Resampling.BILINEAR), np.float32)
        assert np.abs(mine.permute(1, 2, 0).numpy() - reference).max() <= 1.0 + 1e-3


def test_propagation_from_a_mid_video_key_frame_covers_every_frame_once_both_ways(sam2, video, monkeypatch):
    passes = []
    original = type(sam2).propagate_in_video_iterator

    def counting(self, session, start_frame_idx=None, reverse=False, **kwargs):
        frames = []
        passes.append((start_frame_idx, reverse, frames))
        for output in original(self, session, start_frame_idx=start_frame_idx, reverse=reverse, **kwargs):
            frames.append(output.frame_idx)
            yield output

    monkeypatch.setattr(type(sam2), "propagate_in_video_iterator", counting)
    key = 7
    masks = Tracker(sam2, video.frames).run({1: (key, target_box(video, key))}, (), key)
    (start_f, reverse_f, forward), (start_r, reverse_r, backward) = passes
    assert (start_f, reverse_f, start_r, reverse_r) == (key, False, key, True)
    assert forward == list(range(key, 16)) and backward == list(range(key, -1, -1))
    assert masks[1].shape == (16, 96, 128) and masks[1].dtype == bool


def test_a_refinement_click_survives_later_passes(sam2, video):
    """A click on a frame the box prompt's pass would otherwise overwrite: after both passes that frame's mask is the
    one its click produced, and the frame is a conditioning frame of the object."""
    tracker = Tracker(sam2, video.frames)
    key, clicked = 3, 10
    tracker._prompt(1, key, [target_box(video, key)[:2], target_box(video, key)[2:]], [2, 3])
    x, y = np.argwhere(video.masks["target"][clicked]).mean(0)[::-1]
    tracker._prompt(1, clicked, [(x, y)], [1])
    outputs = tracker.session.output_dict_per_obj[tracker.session.obj_id_to_idx(1)]
    after_click = outputs["cond_frame_outputs"][clicked]["pred_masks"].clone()
    done = {}                                                  # the prompts are in: run both passes
    for reverse in (False, True):
        for output in sam2.propagate_in_video_iterator(tracker.session, start_frame_idx=key, reverse=reverse):
            done.setdefault(output.frame_idx, output.pred_masks.clone())
    assert clicked in outputs["cond_frame_outputs"] and clicked not in outputs["non_cond_frame_outputs"]
    assert torch.equal(done[clicked][0], after_click[0])

    # Through the pipeline's own entry point: the click is on its frame's conditioning outputs after the run.
    tracker = Tracker(sam2, video.frames)
    tracker.run({1: (key, target_box(video, key))}, (Click(clicked, float(x), float(y), True, 1),), key)
    outputs = tracker.session.output_dict_per_obj[tracker.session.obj_id_to_idx(1)]
    assert clicked in outputs["cond_frame_outputs"]


def test_memory_per_frame_stays_flat(sam2):
    """Nothing the tracker never reads back is kept: no full-resolution masks, and ordinary outputs only near the
    current and the key frame, however long the video."""
    long = make_video(frames=48, seed=2)
    tracker = Tracker(sam2, long.frames)
    tracker.run({1: (0, target_box(long, 0))}, (), 0)
    outputs = tracker.session.output_dict_per_obj[0]
    kept = sorted(outputs["non_cond_frame_outputs"])
    # near the last frame tracked (47) or the key frame (0): at most 2·16 + 1, whatever the video's length
    assert len(kept) <= 2 * KEEP_NEAR + 1 and all(f >= 47 - KEEP_NEAR or f <= KEEP_NEAR for f in kept)
    stored = tracker.session.processed_frames.held
    assert list(stored) == [0]                                # frames already tracked are let go, but the key frame
    owned = stored[0].numel() * stored[0].element_size()
    assert stored[0].untyped_storage().nbytes() == owned      # and it owns only itself
    assert not any("high_res_masks" in entry for kind in outputs.values() for entry in kind.values())


# ----------------------------------------------------------------------------- grounding and the key frame
def test_frames_searched_are_spread_over_the_video():
    assert sample_frames(16, 8) == [0, 2, 4, 6, 9, 11, 13, 15] and sample_frames(5, 8) == [0, 1, 2, 3, 4]
    assert sample_frames(30, 1) == [0]


def test_the_key_frame_is_the_best_resolved_frame_not_frame_0():
    query = parse_expression("the dog on the left")
    boxes = {
        0: [Candidate((10, 10, 20, 20), 0.3), Candidate((60, 10, 70, 20), 0.9)],   # the leftmost scores 0.3
        5: [Candidate((12, 10, 22, 20), 0.8), Candidate((50, 10, 60, 20), 0.4)],   # the leftmost scores 0.8
        9: [],
    }
    frame, choice, agreement = key_frame(query, boxes, 128, 96)
    assert frame == 5 and choice.chosen == (0,) and "frame 5" in choice.reason
    # frame 0's 0.3 box is under half its best (no candidate): it sees 1 dog, frame 5 sees 2; the tie goes to 2
    assert agreement.count == 2 and agreement.frames == [5] and "disagree on how many dogs" in agreement.notes[0]
    with pytest.raises(InputError, match="No “dog” found in the 2 frame"):
        key_frame(query, {0: [], 3: []}, 128, 96)
    with pytest.raises(InputError, match="Only 1 dog found on frame 0"):
        key_frame(parse_expression("the second dog from the left"), {0: [Candidate((1, 1, 5, 5), 0.5)]}, 128, 96)


def test_several_objects_get_their_own_ids(pipeline, video):
    result = pipeline(SegmentationRequest(frames=video.frames, expression="the two circles", **LOW))
    assert result.object_ids == [1, 2] and result.masks.shape == (2, 16, 96, 128)
    x = [c.box[0] + c.box[2] for c in result.chosen]
    assert x == sorted(x)                                                     # ids left to right
    assert len({mask_export.colour(i) for i in result.object_ids}) == 2


def box_of_mask(mask) -> tuple[float, ...]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def test_an_occluded_target_on_some_frames_does_not_hand_its_words_to_another_object(pipeline, video, monkeypatch):
    """A grounder like the real one: both red discs, labelled, except on the frames where the occluder hides the
    left (target) disc, where it finds the right one alone and scores it best of all. "The red disc on the left" on
    those frames is the right disc: the key frame must come from the frames that agree (both discs seen), and the
    target be tracked; the explanation says the frames disagreed."""
    from pipelines.segmentation import pipeline as segmentation

    hidden = set(video.occluded_frames)
    assert hidden & set(segmentation.sample_frames(16, 8)) == {2, 4}

    def ground(model, processor, frame, phrase, box_threshold, text_threshold):
        index = next(i for i in range(16) if np.array_equal(video.frames[i], frame))
        found = [Candidate(box_of_mask(video.masks["distractor"][index]), 0.95 if index in hidden else 0.6, "disc")]
        if index not in hidden:
            found.append(Candidate(box_of_mask(video.masks["target"][index]), 0.7, "red disc"))
        return found

    def run(self, prompts, clicks, key):      # exact masks of whichever disc each prompt's box is on
        names = ("target", "distractor")
        return {i: video.masks[max(names, key=lambda n: iou(box, box_of_mask(video.masks[n][frame])))]
                for i, (frame, box) in prompts.items()}

    monkeypatch.setattr(segmentation, "ground", ground)
    monkeypatch.setattr(segmentation.Tracker, "run", run)
    result = pipeline(SegmentationRequest(frames=video.frames, expression="the red disc on the left"))
    assert result.key_frame not in hidden and result.object_ids == [1]
    assert np.array_equal(result.masks[0], video.masks["target"])
    assert any("disagree on how many red discs" in w and "1 on frames 2, 4" in w for w in result.warnings)
    assert result.disagree


def test_words_the_rules_do_not_read_are_refused_by_a_phrase_grounder_the_person_chose(pipeline, video):
    with pytest.raises(InputError, match="did not understand “closest to the camera” in “the disc closest to the "
                                         "camera”.*choose the Florence-2 grounder"):
        pipeline(SegmentationRequest(frames=video.frames, expression="the disc closest to the camera",
                                     grounder="LLMDet tiny", **LOW))


def test_with_the_default_grounder_unread_words_go_to_florence_with_the_whole_expression(pipeline, video,
                                                                                       monkeypatch):
    """The studio picks the grounder that reads the expression, says so, and runs it on the whole text."""
    from pipelines.segmentation import pipeline as segmentation

    asked = []

    def ground_expression(model, processor, frame, expression, every=False):
        asked.append((type(model).__name__, expression, every))
        index = next(i for i in range(16) if np.array_equal(video.frames[i], frame))
        return [Candidate(box_of_mask(video.masks["target"][index]), 1.0, "the disc closest to the camera")]

    def run(self, prompts, clicks, key):
        return {i: video.masks["target"] for i in prompts}

    monkeypatch.setattr(segmentation, "ground_expression", ground_expression)
    monkeypatch.setattr(segmentation.Tracker, "run", run)
    result = pipeline(SegmentationRequest(frames=video.frames, expression="the disc closest to the camera"))
    assert result.grounder == "Florence-2 large" and len(asked) == 8
    assert set(asked) == {("Florence2ForConditionalGeneration", "the disc closest to the camera", False)}
    assert "“closest to the camera”" in result.not_understood and "went to Florence-2 large" in result.not_understood
    assert result.reason.startswith("Florence-2 large read the whole expression “the disc closest to the camera” on 8")
    assert np.array_equal(result.masks[0], video.masks["target"])
    every = pipeline(SegmentationRequest(frames=video.frames, expression="all the discs without a hole"))
    assert every.grounder == "Florence-2 large" and asked[-1][2] is True     # "all": phrase grounding, every one


def test_florence_boxes_are_its_location_tokens_dequantised_onto_the_frame(monkeypatch):
    """What Florence-2 generates is parsed by its own processor: "<loc_i>" is bin i of 1000 across the frame, the box
    int((i + 0.5) x side / 1000), whole pixels (transformers' Florence2PostProcessor.dequantize); the prompt is its
    task's sentence."""
    from pipelines.segmentation.models import _tiny_florence_model, _tiny_florence_processor
    from pipelines.segmentation.pipeline import ground_expression

    model, processor = _tiny_florence_model("Florence-2 base"), _tiny_florence_processor()
    said = "</s><s>the circle<loc_100><loc_200><loc_500><loc_700>the circle<loc_900><loc_10><loc_999><loc_60></s>"
    prompts = []

    def generate(input_ids, **kwargs):
        prompts.append(processor.tokenizer.decode(input_ids[0], skip_special_tokens=True))
        return processor.tokenizer(said, add_special_tokens=False, return_tensors="pt").input_ids

    monkeypatch.setattr(model, "generate", generate)
    found = ground_expression(model, processor, np.zeros((96, 128, 3), np.uint8), "the circle on the left")
    assert prompts == ["Locate the circle on the left in the image."]
    assert [c.label for c in found] == ["the circle", "the circle"] and {c.score for c in found} == {1.0}
    bins = lambda *b: tuple(float(int((v + 0.5) * side / 1000)) for v, side in zip(b, (128, 96, 128, 96)))  # noqa: E731
    assert found[0].box == bins(100, 200, 500, 700) == (12.0, 19.0, 64.0, 67.0)
    assert found[1].box == bins(900, 10, 999, 60)
    ground_expression(model, processor, np.zeros((96, 128, 3), np.uint8), "every circle", every=True)
    assert prompts[-1] == "Locate the phrases in the caption: every circle"


def test_the_tiny_florence_runs_on_a_frame_and_an_empty_answer_is_a_clear_message(pipeline, video):
    """The tiny profile's Florence-2 (random weights) runs the real generate and parser; what it says is no box, and
    the person is told nothing was found rather than given an empty clip."""
    with pytest.raises(InputError, match="No .* found in the 3 frame"):
        pipeline(SegmentationRequest(frames=video.frames[:8], expression="the circle", grounder="Florence-2 base",
                                     ground_frames=3))


def test_regrounding_adds_objects_that_enter_late_with_new_ids(pipeline, video, monkeypatch):
    from pipelines.segmentation import pipeline as segmentation

    def ground(model, processor, frame, phrase, box_threshold, text_threshold):
        index = next(i for i in range(16) if np.array_equal(video.frames[i], frame))
        boxes = [Candidate(target_box(video, index), 0.9)]
        if video.masks["newcomer"][index].any():
            ys, xs = np.nonzero(video.masks["newcomer"][index])
            boxes.append(Candidate((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), 0.8))
        return boxes

    def run(self, prompts, clicks, key):      # exact masks: the tiny tracker's random ones would cover nothing
        return {i: video.masks["target" if i == 1 else "newcomer"] for i in prompts}

    monkeypatch.setattr(segmentation, "ground", ground)
    monkeypatch.setattr(segmentation.Tracker, "run", run)
    result = pipeline(SegmentationRequest(frames=video.frames, expression="the shape", reground_every=4))
    assert result.object_ids == [1, 2] and any("enter later: id 2 on frame 8" in w for w in result.warnings)


# ----------------------------------------------------------------------------- exports
def test_zip_and_rle_decode_back_to_the_masks(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((2, 5, 24, 32)) > 0.6
    archive = mask_export.masks_zip(masks, [1, 2], tmp_path / "m.zip")
    with zipfile.ZipFile(archive) as zipped:
        assert len(zipped.namelist()) == 10 and "2/00004.png" in zipped.namelist()
        back = np.asarray(Image.open(zipped.open("2/00003.png"))) > 127
    assert np.array_equal(back, masks[1, 3])
    data = json.loads(mask_export.write_coco_rle(masks, [1, 2], "the dogs", tmp_path / "m.json").read_text())
    decoded = mask_export.decode_coco_rle(data)
    assert np.array_equal(decoded[1], masks[0]) and np.array_equal(decoded[2], masks[1])
    assert data["annotations"][0]["area"] == int(masks[0, 0].sum())


def test_the_overlay_tints_outlines_and_labels_each_object():
    frames = np.full((2, 60, 80, 3), 100, np.uint8)
    masks = np.zeros((1, 2, 60, 80), bool)
    masks[0, :, 20:40, 20:50] = True
    out = mask_export.overlay(frames, masks, [1])
    inside = out[0, 30, 35].astype(int)
    assert np.abs(inside - np.round(0.6 * 100 + 0.4 * np.array(mask_export.colour(1)))).max() <= 1
    assert np.array_equal(out[0, 5, 5], frames[0, 5, 5])                      # outside: untouched
    assert tuple(out[0, 20, 35]) == mask_export.colour(1)                     # the outline


# ----------------------------------------------------------------------------- through the server
def test_segment_endpoint_gives_an_h264_overlay_and_masks_for_every_frame(client, pipeline, video, tmp_path):
    """The overlay has the input's frame count, size and frame rate; the zip and the COCO RLE hold, for every object
    and every frame, the masks the pipeline makes of the same decoded clip; the area plot's data are those masks'
    areas; info["fps"] is the input's frame rate."""
    from pipelines.core.video import read_clip
    from pipelines.segmentation.pipeline import MAX_FRAMES, MAX_PIXELS, MAX_SECONDS

    path = write_mp4(video.frames, tmp_path / "clip.mp4", fps=12)
    overlay, key_image, archive, rle, plot, explanation, info = client.predict(
        video=handle_file(str(path)), expression="the circle on the left", box_threshold=0.05, api_name="/segment")
    frames, fps, codec = read_video(overlay)
    assert frames.shape == (16, 96, 128, 3) and codec == "h264" and fps == 12
    assert info["fps"] == 12 and info["num_frames"] == 16 and info["size"] == [128, 96]

    # the same clip as the server decoded it, through the same (tiny, deterministic) pipeline
    decoded_clip, clip_fps = read_clip(path, MAX_FRAMES, MAX_SECONDS, MAX_PIXELS)
    assert clip_fps == 12
    expected = pipeline(SegmentationRequest(frames=decoded_clip, expression="the circle on the left",
                                            box_threshold=0.05))
    ids = expected.object_ids
    assert info["object_ids"] == ids and info["key_frame"] == expected.key_frame
    decoded = mask_export.decode_coco_rle(json.loads(open(rle).read()))
    assert list(decoded) == ids
    with zipfile.ZipFile(archive) as zipped:
        assert sorted(zipped.namelist()) == [f"{i}/{t:05d}.png" for i in ids for t in range(16)]
        for row, object_id in enumerate(ids):
            assert np.array_equal(decoded[object_id], expected.masks[row])
            for t in range(16):
                png = np.asarray(Image.open(zipped.open(f"{object_id}/{t:05d}.png")))
                assert png.shape == (96, 128) and set(np.unique(png)) <= {0, 255}
                assert np.array_equal(png == 255, expected.masks[row, t]), (object_id, t)
    areas = {str(i): [int(m.sum()) for m in expected.masks[row]] for row, i in enumerate(ids)}
    assert info["mask_area"] == areas
    table = {(str(r["object"]), int(r["frame"])): int(r["area"]) for r in _plot_rows(plot)}
    assert table == {(i, t): a for i, series in areas.items() for t, a in enumerate(series)}
    assert "found on frame" in explanation and info["reason"] in explanation
    assert str(info["key_frame"]) in info["candidates"]

    refined = client.predict(video=handle_file(str(path)), expression="the circle on the left",
                             clicks=json.dumps([{"frame": 2, "x": 30, "y": 40, "positive": False}]),
                             key_frame=info["key_frame"], box_threshold=0.05, api_name="/segment_refine")
    assert refined[-1]["clicks"][0]["frame"] == 2 and refined[-1]["key_frame"] == info["key_frame"]


def _plot_rows(plot) -> list[dict]:
    """A gr.LinePlot's value as the client gets it (columns and rows), as one dict per row."""
    value = plot.get("value", plot) if isinstance(plot, dict) else plot
    if isinstance(value, dict) and "data" in value and "columns" in value:
        return [dict(zip(value["columns"], row, strict=True)) for row in value["data"]]
    raise AssertionError(f"unexpected plot payload: {str(plot)[:300]}")


def _written(path, content):
    (path.write_text if isinstance(content, str) else path.write_bytes)(content)
    return path


def _no_frames(path):
    """An MP4 whose video stream never got a frame."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    container.start_encoding()
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return path


def _audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.mark.parametrize("make, expression, message", [
    (lambda d: _written(d / "notes.mp4", "not a video"), "the dog", "not a video we can read"),
    (lambda d: _audio_only(d / "sound.wav"), "the dog", "has no video stream"),
    (lambda d: _no_frames(d / "empty.mp4"), "the dog", "no video stream|no frames"),
    (lambda d: d / "clip.mp4", "   ", "Say what to segment"),
    (lambda d: d / "clip.mp4", "the dog " * 40, "use at most 200"),
    (lambda d: _written(d / "cut.mp4", (d / "clip.mp4").read_bytes()[:300]), "the dog",
     "not a video we can read|no video stream|no frames|could not be decoded"),
    (lambda d: write_mp4(np.zeros((301, 16, 16, 3), np.uint8), d / "long.mp4", fps=30), "the dog",
     "has 301 frames; the studio segments at most 300"),
    # 62 frames at 1 fps: 62 s, over the 60 s cap (and under the frame cap), refused from the header
    (lambda d: write_mp4(np.zeros((62, 16, 16, 3), np.uint8), d / "minute.mp4", fps=1), "the dog",
     r"minute\.mp4 is 62 s long; the studio segments at most 60 s\. Trim it first\."),
    # one 2000x1040 frame: 2.08 megapixels, over 1920x1080's 2.07
    (lambda d: write_mp4(np.zeros((1, 1040, 2000, 3), np.uint8), d / "wide.mp4", fps=8), "the dog",
     r"wide\.mp4 is 2000×1040; the studio takes videos up to 2\.1 megapixels a frame \(1080p\)\. Downscale it"),
], ids=["text-file", "audio-only", "zero-frames", "empty-expression", "overlong-expression", "corrupt",
        "too-many-frames", "over-duration", "over-resolution"])
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, server_outputs, video, tmp_path, make,
                                                                    expression, message, monkeypatch):
    """Refused with its message, and nothing left behind: no output, no temporary file (the call's temporary files
    would land in tempfile.gettempdir(), pointed here at an empty folder for the call), nothing in Gradio's temp dir
    but the upload itself. Then the server still segments."""
    write_mp4(video.frames[:8], tmp_path / "clip.mp4", fps=8)
    bad = make(tmp_path)
    gradio_temp = Path(os.environ["GRADIO_TEMP_DIR"])
    before = sorted(server_outputs.glob("*")) if server_outputs.exists() else []
    temp_before = set(gradio_temp.rglob("*"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert tempfile.gettempdir() == str(scratch)
    with pytest.raises(AppError, match=message):
        client.predict(video=handle_file(str(bad)), expression=expression, api_name="/segment")
    monkeypatch.undo()
    after = sorted(server_outputs.glob("*")) if server_outputs.exists() else []
    assert after == before                                    # nothing written for a refused call
    assert list(scratch.iterdir()) == []                      # no temporary file left
    new = {p for p in set(gradio_temp.rglob("*")) - temp_before if p.is_file()}
    assert {p.name for p in new} <= {bad.name}                # Gradio's copy of the upload, nothing else
    assert client.predict(video=handle_file(str(tmp_path / "clip.mp4")), expression="the circle",
                          box_threshold=0.05, api_name="/segment")[-1]["num_frames"] == 8


def test_bad_clicks_are_refused_naming_the_problem(client, video, tmp_path):
    path = write_mp4(video.frames[:8], tmp_path / "clip.mp4", fps=8)
    for clicks, message in (("{not json", "JSON list"), ('[{"frame": 1}]', "needs frame, x and y"),
                            ('[{"frame": 99, "x": 1, "y": 1}]', "past the video's last frame")):
        with pytest.raises(AppError, match=message):
            client.predict(video=handle_file(str(path)), expression="the circle", clicks=clicks,
                           box_threshold=0.05, api_name="/segment_refine")




def test_stop_ends_tracking_and_the_next_call_runs(pipeline, video):
    """Stop raises from the progress report at the next frame; the cache stays usable and the next call completes."""
    from pipelines.core.errors import Cancelled

    seen = []

    def stop_after_three(fraction, desc):
        if desc.startswith("Tracking"):
            seen.append(desc)
            if len(seen) == 3:
                raise Cancelled("Stopped.")

    request = SegmentationRequest(frames=video.frames, expression="the circle", **LOW)
    with pytest.raises(Cancelled):
        pipeline(request, progress=stop_after_three)
    assert seen == ["Tracking frame 1/16", "Tracking frame 2/16", "Tracking frame 3/16"]
    assert pipeline(request).masks.shape == (1, 16, 96, 128)
    assert not any(c["locked"] for c in pipeline.cache.stats()["components"])


def test_box_prompts_are_scaled_to_the_models_square_per_axis(sam2):
    """A 128×96 video into a 128×128 model: x scales by 128/128, y by 128/96 (hand-computed)."""
    tracker = Tracker(sam2, np.zeros((2, 96, 128, 3), np.uint8))
    points = tracker._points([(64.0, 48.0), (128.0, 96.0)], [2, 3])
    assert torch.allclose(points["point_coords"][0, 0].cpu(), torch.tensor([[64.0, 64.0], [128.0, 128.0]]))
    assert points["point_labels"].tolist() == [[[2, 3]]]


# ----------------------------------------------------------------------------- Stop while grounding
def test_stop_during_grounding_ends_the_call_before_anything_is_tracked(pipeline, video, monkeypatch):
    """Grounding reports after each frame, through the Reporter the endpoints use: Stop pressed while frame 3 of 8
    grounds ends the call once that frame is done, with the stop error; no frame after it is grounded, no tracker is
    made, and the models are unlocked."""
    import threading

    from pipelines.core.errors import Cancelled
    from pipelines.segmentation import pipeline as segmentation
    from studio.engine import _STOP_FLAGS, Reporter

    stop, grounded, trackers, shown = threading.Event(), [], [], []
    real_ground = segmentation.ground

    def ground(*args, **kwargs):
        grounded.append(time.monotonic())
        if len(grounded) == 3:
            stop.set()                                         # Stop pressed while the third frame grounds
        return real_ground(*args, **kwargs)

    class Spy(segmentation.Tracker):
        def __init__(self, *args, **kwargs):
            trackers.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(segmentation, "ground", ground)
    monkeypatch.setattr(segmentation, "Tracker", Spy)
    _STOP_FLAGS["stop-while-grounding"] = stop
    report = Reporter(lambda fraction, desc: shown.append(desc), "stop-while-grounding")
    try:
        with pytest.raises(Cancelled, match="Stopped"):
            pipeline(SegmentationRequest(frames=video.frames, expression="the circle", ground_frames=8, **LOW),
                     progress=report)
        ended = time.monotonic()
    finally:
        del _STOP_FLAGS["stop-while-grounding"]
    assert len(grounded) == 3 and trackers == []               # nothing grounded after Stop, nothing tracked
    assert shown == ["Loading models", "Grounding frame 1/8", "Grounding frame 2/8"]
    assert ended - grounded[-1] < 5                             # the frame in flight, then out
    assert not any(c["locked"] for c in pipeline.cache.stats()["components"])


def test_stop_during_regrounding_ends_the_call_between_frames(pipeline, video, monkeypatch):
    """Re-grounding (objects that enter late) reports per frame too: Stop there ends the call at the next frame."""
    from pipelines.core.errors import Cancelled
    from pipelines.segmentation import pipeline as segmentation

    calls, shown = [], []

    def ground(model, processor, frame, phrase, box_threshold, text_threshold):
        calls.append(frame)
        index = next(i for i in range(16) if np.array_equal(video.frames[i], frame))
        return [Candidate(target_box(video, index), 0.9)]          # only the tracked target: nothing new

    def run(self, prompts, clicks, key):
        return {i: video.masks["target"] for i in prompts}

    def progress(fraction, desc):
        shown.append(desc)
        if desc.startswith("Re-grounding frame 2/"):
            raise Cancelled("Stopped.")

    monkeypatch.setattr(segmentation, "ground", ground)
    monkeypatch.setattr(segmentation.Tracker, "run", run)
    with pytest.raises(Cancelled):
        pipeline(SegmentationRequest(frames=video.frames, expression="the shape", reground_every=4, ground_frames=8),
                 progress=progress)
    assert len(calls) == 8 + 2                                  # 8 searched frames, then 2 of the 4 re-grounding ones
    assert [d for d in shown if d.startswith("Re-grounding")] == [
        "Re-grounding frame 1/4 (objects that enter late)", "Re-grounding frame 2/4 (objects that enter late)"]


# ----------------------------------------------------------------------------- the models each name loads
@pytest.mark.parametrize("grounder, cls", [
    ("Grounding DINO tiny", "GroundingDinoForObjectDetection"),
    ("MM-Grounding-DINO tiny", "MMGroundingDinoForObjectDetection"),
    ("LLMDet tiny", "MMGroundingDinoForObjectDetection"),
])
def test_each_grounder_runs_end_to_end_on_the_tiny_profile(pipeline, video, grounder, cls):
    result = pipeline(SegmentationRequest(frames=video.frames[:8], expression="the circle", grounder=grounder,
                                          ground_frames=3, **LOW))
    loaded = pipeline.cache.get(pipeline.registry.models(grounder).grounder)
    assert type(loaded).__name__ == cls and type(loaded.config).__name__ == cls.replace("ForObjectDetection", "Config")
    assert result.masks.shape[1:] == (8, 96, 128) and result.masks.dtype == bool
    assert result.chosen and result.key_frame in result.candidates and set(result.candidates) == {0, 4, 7}


def test_grounder_and_tracker_hub_ids_and_classes_are_pinned():
    from pipelines.segmentation.models import (
        DEFAULT_GROUNDER,
        DEFAULT_TRACKER,
        GROUNDER_CLASSES,
        _tiny_grounder_model,
        _tiny_tracker,
    )

    assert GROUNDERS == {
        "Grounding DINO tiny": "IDEA-Research/grounding-dino-tiny",
        "MM-Grounding-DINO tiny": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
        "LLMDet tiny": "iSEE-Laboratory/llmdet_tiny",
        "Florence-2 base": "florence-community/Florence-2-base",
        "Florence-2 large": "florence-community/Florence-2-large",
    }
    assert GROUNDER_CLASSES == {
        "Grounding DINO tiny": "GroundingDinoForObjectDetection",
        "MM-Grounding-DINO tiny": "MMGroundingDinoForObjectDetection",
        "LLMDet tiny": "MMGroundingDinoForObjectDetection",
        "Florence-2 base": "Florence2ForConditionalGeneration",
        "Florence-2 large": "Florence2ForConditionalGeneration",
    }
    assert TRACKERS == {
        "SAM 2.1 tiny": "facebook/sam2.1-hiera-tiny",
        "SAM 2.1 small": "facebook/sam2.1-hiera-small",
        "SAM 2.1 base-plus": "facebook/sam2.1-hiera-base-plus",
        "SAM 2.1 large": "facebook/sam2.1-hiera-large",
    }
    assert (DEFAULT_GROUNDER, DEFAULT_TRACKER) == ("Grounding DINO tiny", "SAM 2.1 tiny")
    for name, cls in GROUNDER_CLASSES.items():                 # the tiny profile builds the same classes
        assert type(_tiny_grounder_model(name)).__name__ == cls
    for name in TRACKERS:                                      # every SAM 2.1 size: one class
        assert type(_tiny_tracker(name)).__name__ == "Sam2VideoModel"
    for profile in ("tiny", "real"):                           # cache keys name the hub ids
        models = SegmentationRegistry(profile).models("LLMDet tiny", "SAM 2.1 large")
        assert "iSEE-Laboratory/llmdet_tiny" in models.grounder.key
        assert "facebook/sam2.1-hiera-large" in models.tracker.key


# ----------------------------------------------------------------------------- frames made when read
@torch.inference_mode()
def eager_masks(model, frames: np.ndarray, key: int, box) -> np.ndarray:
    """The path before lazy frames: the whole clip preprocessed up front into transformers' own session (its
    constructor takes the video), the box as two points labelled 2 and 3, forward then reverse from the key frame."""
    import torch.nn.functional as F
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    count, height, width = frames.shape[:3]
    size = model.config.image_size
    session = Sam2VideoInferenceSession(
        video=preprocess(frames, size), video_height=height, video_width=width, inference_device=model.device,
        inference_state_device=model.device, video_storage_device="cpu", dtype=model.dtype,
        max_vision_features_cache_size=1)
    x1, y1, x2, y2 = box
    points = torch.tensor([[x1, y1], [x2, y2]], dtype=torch.float32) * torch.tensor([size / width, size / height])
    index = session.obj_id_to_idx(1)
    session.add_point_inputs(index, key, {"point_coords": points[None, None],
                                          "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32)})
    session.remove_mask_inputs(index, key)
    session.obj_with_new_inputs.append(1)
    model(inference_session=session, frame_idx=key)
    masks = np.zeros((count, height, width), bool)
    for reverse in (False, True):
        for output in model.propagate_in_video_iterator(session, start_frame_idx=key, reverse=reverse):
            up = F.interpolate(output.pred_masks.float(), (height, width), mode="bilinear", align_corners=False)
            masks[output.frame_idx] = (up[:, 0] > 0)[0].numpy()
    return masks


def test_frames_are_preprocessed_when_read_and_masks_match_the_eager_path(sam2, video, monkeypatch):
    """Nothing is preprocessed up front; each frame is made once, when SAM 2 reads it, and let go once tracked (the
    key frame kept): at most two frames held at any time. The masks are bit-identical to an eager session's."""
    key = 7
    box = target_box(video, key)
    tracker = Tracker(sam2, video.frames)
    store = tracker.session.processed_frames
    assert isinstance(store, LazyFrames) and store.held == {} and tracker.session.num_frames == 16
    most = [0]
    read = LazyFrames.__getitem__

    def counting(self, frame):
        pixels = read(self, frame)
        most[0] = max(most[0], len(self.held))
        return pixels

    monkeypatch.setattr(LazyFrames, "__getitem__", counting)
    masks = tracker.run({1: (key, box)}, (), key)[1]
    assert store.made == 16 and most[0] <= 2 and list(store.held) == [key]
    assert masks.any() and np.array_equal(masks, eager_masks(sam2, video.frames, key, box))
    eager = preprocess(video.frames, sam2.config.image_size)
    again = LazyFrames(video.frames, sam2.config.image_size, torch.float32)
    assert all(torch.equal(again[t], eager[t]) for t in (0, 5, 15))   # one at a time: the batch's values exactly
    with pytest.raises(KeyError):
        again[16]


# ----------------------------------------------------------------------------- clicks after tracking
def test_a_click_on_an_already_tracked_frame_is_promoted_and_survives_re_propagation(sam2, video):
    """SAM 2's known pitfall: a click on a frame that was already tracked is stored as an ordinary output, and the
    next pass overwrites it. Track, click such a frame (not the key frame) for object 1, propagate again both ways:
    the frame is one of the object's conditioning frames and its mask is the one the click produced; a third pass
    keeps it."""
    key, clicked = 3, 10
    tracker = Tracker(sam2, video.frames)
    first = tracker.run({1: (key, target_box(video, key))}, (), key)[1]
    outputs = tracker.session.output_dict_per_obj[tracker.session.obj_id_to_idx(1)]
    assert clicked in outputs["non_cond_frame_outputs"] and clicked not in outputs["cond_frame_outputs"]
    y, x = np.argwhere(video.masks["target"][clicked]).mean(0)
    positive = not first[clicked][int(y), int(x)]                # the click says what the first pass got wrong
    after_click = tracker.click(Click(clicked, float(x), float(y), positive, 1))
    assert after_click.shape == (96, 128) and not np.array_equal(after_click, first[clicked])   # it changed the mask
    assert clicked in outputs["cond_frame_outputs"] and clicked not in outputs["non_cond_frame_outputs"]
    second = tracker.propagate(key)[1]
    assert sorted(outputs["cond_frame_outputs"]) == [key, clicked]
    assert np.array_equal(second[clicked], after_click)
    third = tracker.propagate(key)[1]
    assert clicked in outputs["cond_frame_outputs"] and np.array_equal(third[clicked], after_click)
    assert np.array_equal(third, second)                         # nothing new: the same clip again
    # a click on the key frame adds to its box (SAM 2's add_point_inputs alone would replace the box by the click)
    tracker.click(Click(key, float(x), float(y), False, 1))
    inputs = tracker.session.point_inputs_per_obj[tracker.session.obj_id_to_idx(1)][key]
    assert inputs["point_labels"].tolist() == [[[2, 3, 0]]] and inputs["point_coords"].shape == (1, 1, 3, 2)


def test_two_objects_prompted_on_different_frames_are_tracked_through_sam2(sam2, video):
    """Real (tiny) SAM 2, no stubs: the target boxed on frame 3, the newcomer (visible from frame 8) on frame 11;
    each object's prompt frame is its conditioning frame, every frame gets both masks."""
    first, second = 3, 11
    ys, xs = np.nonzero(video.masks["newcomer"][second])
    newcomer = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    tracker = Tracker(sam2, video.frames)
    masks = tracker.run({1: (first, target_box(video, first)), 2: (second, newcomer)}, (), first)
    assert sorted(masks) == [1, 2] and all(m.shape == (16, 96, 128) for m in masks.values())
    for object_id, frame in ((1, first), (2, second)):
        index = tracker.session.obj_id_to_idx(object_id)
        outputs = tracker.session.output_dict_per_obj[index]
        assert frame in outputs["cond_frame_outputs"]
        prompted = tracker._upsample(outputs["cond_frame_outputs"][frame]["pred_masks"])[0].numpy()
        assert np.array_equal(masks[object_id][frame], prompted)
    assert not np.array_equal(masks[1], masks[2])


# ----------------------------------------------------------------------------- outputs, checked
def test_key_frame_boxes_draws_candidates_grey_and_the_chosen_box_in_its_objects_colour():
    frame = np.full((96, 128, 3), 50, np.uint8)
    grey, chosen = Candidate((10, 10, 40, 40), 0.5), Candidate((70, 20, 110, 60), 0.9)
    image = mask_export.key_frame_boxes(frame, [grey, chosen], [chosen], [2])
    factor = mask_export.display_scale(128, 96)
    assert factor == 3 and image.shape == (288, 384, 3)          # enlarged 3x: 480 px on the long side at most
    # the grey candidate, 1 px: its bottom and left edges at 3x its box
    assert tuple(image[40 * 3, 25 * 3]) == tuple(image[25 * 3, 10 * 3]) == (170, 170, 170)
    # the chosen one, 2 px, in object 2's colour: bottom and right edges
    assert tuple(image[60 * 3, 90 * 3]) == tuple(image[40 * 3, 110 * 3]) == mask_export.colour(2)
    assert mask_export.colour(2) != (170, 170, 170)
    for y, x in ((25 * 3, 25 * 3), (40 * 3, 90 * 3), (5, 5), (280, 380)):   # inside the boxes, and far from them
        assert tuple(image[y, x]) == (50, 50, 50)
    drawn = image.reshape(-1, 3)[(image.reshape(-1, 3) != 50).any(1)]
    tones = {tuple(v) for v in drawn}
    assert (170, 170, 170) in tones and mask_export.colour(2) in tones


def test_sam2_normalises_with_transformers_imagenet_mean_and_std():
    """Sam2VideoVideoProcessor and Sam2ImageProcessor normalise with image_utils' IMAGENET_DEFAULT_MEAN/STD."""
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert torch.equal(IMAGENET_MEAN, torch.tensor(IMAGENET_DEFAULT_MEAN))
    assert torch.equal(IMAGENET_STD, torch.tensor(IMAGENET_DEFAULT_STD))


def _lossless(frames: np.ndarray, path: Path, fps: int = 8) -> Path:
    """FFV1 in Matroska: any frame size, the exact pixels (H.264 in yuv420p cannot code an odd size)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def test_an_odd_sized_video_keeps_its_size_in_the_masks_and_its_overlay_is_padded_to_even(client, tmp_path):
    """The rule for odd sizes. H.264 in yuv420p (what every browser plays) codes chroma in 2x2 blocks and crops only
    in steps of 2 pixels, so a 127x95 picture cannot be coded at that size: write_mp4 pads each odd side with one
    repeated edge row/column, and the overlay is 128x96, its top-left 127x95 the picture. The masks (zip, COCO RLE),
    the areas and info["size"] are at the input's exact size."""
    clip = make_video(frames=8, size=(95, 127))
    path = _lossless(clip.frames, tmp_path / "odd.mkv")
    assert np.array_equal(read_video(path)[0], clip.frames)
    overlay, _, archive, rle, _, _, info = client.predict(
        video=handle_file(str(path)), expression="the circle", box_threshold=0.05, api_name="/segment")
    frames, _, codec = read_video(overlay)
    assert codec == "h264" and frames.shape == (8, 96, 128, 3) and info["size"] == [127, 95]
    assert info["overlay_size"] == [128, 96]
    decoded = mask_export.decode_coco_rle(json.loads(open(rle).read()))
    masks = np.stack([decoded[i] for i in info["object_ids"]])
    assert masks.shape[1:] == (8, 95, 127)
    with zipfile.ZipFile(archive) as zipped:
        assert all(Image.open(zipped.open(n)).size == (127, 95) for n in zipped.namelist())
    expected = mask_export.overlay(clip.frames, masks, info["object_ids"])
    padded = np.pad(expected, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")      # the rule, written out
    reference = read_video(write_mp4(padded, tmp_path / "reference.mp4", fps=8))[0]
    assert np.array_equal(frames, reference)             # the overlay of these frames and masks, padded, as H.264
    # and on the decoded overlay itself: the added row and column repeat the edge (neighbouring rows of this textured
    # clip differ by ~12 levels on average; the added one by ~2, H.264's loss)
    assert np.abs(frames[:, 95].astype(int) - frames[:, 94]).mean() < 4
    assert np.abs(frames[:, :, 127].astype(int) - frames[:, :, 126]).mean() < 4


def test_the_key_frame_image_says_when_the_sampled_frames_disagreed():
    frame = np.full((96, 128, 3), 200, np.uint8)
    chosen = [Candidate((10, 30, 40, 60), 0.8, "dog")]
    plain = mask_export.key_frame_boxes(frame, chosen, chosen, [1])
    noted = mask_export.key_frame_boxes(frame, chosen, chosen, [1], note="Frames disagree: see the explanation")
    changed = np.nonzero((noted != plain).any(axis=(1, 2)))[0]
    band = int(changed.max()) + 1                # the rows the note touched: one band across the top
    assert changed.min() == 0 and 14 <= band < noted.shape[0] // 6
    assert noted.shape == plain.shape and noted[:band].mean() < 0.5 * plain[:band].mean()   # dark, written on
    assert np.array_equal(noted[band:], plain[band:])                                     # the rest untouched


def test_the_exports_of_a_long_clip_hold_a_frame_at_a_time_not_the_clip(tmp_path):
    """Overlay MP4 (streamed into the writer), masks zip and COCO RLE of a 240-frame clip with three objects: what
    numpy and Python allocate on top of the clip's frames and masks stays under two frames' worth for the pixel
    exports (and the zip's directory) (the overlay made three whole-clip float32 copies before: ~12x the frames); the COCO JSON holds its
    annotations (a few KB each: one per object per frame), never a copy of the masks."""
    import tracemalloc

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (240, 96, 128, 3), np.uint8)
    masks = np.zeros((3, 240, 96, 128), bool)
    for k in range(3):
        masks[k, :, 10 + 20 * k:40 + 20 * k, 10 + 30 * k:50 + 30 * k] = True

    def peak(export) -> int:
        export(2)                                   # warm-up: first-call buffers (the writer's pipes, zlib)
        tracemalloc.start()
        try:
            export(len(frames))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    pixels = peak(lambda n: (write_mp4(mask_export.overlay_frames(frames[:n], masks[:, :n], [1, 2, 3]),
                                       tmp_path / "overlay.mp4", fps=8),
                             mask_export.masks_zip(masks[:, :n], [1, 2, 3], tmp_path / "masks.zip")))
    members = masks.shape[0] * masks.shape[1]       # the zip's directory keeps an entry (~0.5 KB) per PNG
    assert pixels < 2 * frames[0].nbytes + 1024 * members + 256 * 1024 < frames.nbytes / 6, \
        f"{pixels / 2**20:.2f} MiB for a {frames.nbytes / 2**20:.1f} MiB clip"
    coco = peak(lambda n: mask_export.write_coco_rle(masks[:, :n], [1, 2, 3], "the shapes", tmp_path / "masks.json"))
    assert coco < 2 * frames[0].nbytes + 3 * 240 * 4096 < masks.nbytes / 2
    shown, _, _ = read_video(tmp_path / "overlay.mp4")
    assert shown.shape == frames.shape
    assert np.array_equal(mask_export.overlay(frames[:2], masks[:, :2], [1, 2, 3]),
                          np.stack(list(mask_export.overlay_frames(frames[:2], masks[:, :2], [1, 2, 3]))))


def test_a_frame_whose_words_pick_another_object_than_the_tracked_one_is_named():
    """After tracking, every other frame that agreed on the count is checked: its choice's box must fall on the masks
    tracked from the key frame (IoU >= 0.3). A frame where "the leftmost" is another object is named."""
    from pipelines.segmentation.pipeline import Agreement, identity_flips
    from pipelines.segmentation.relations import Choice

    masks = np.zeros((1, 8, 40, 60), bool)
    masks[0, :, 10:20, 5:15] = True                              # the tracked object stays at the left
    candidates = {0: [Candidate((5, 10, 15, 20), 0.8), Candidate((40, 10, 50, 20), 0.8)],
                  4: [Candidate((5, 10, 15, 20), 0.8), Candidate((40, 10, 50, 20), 0.8)],
                  7: [Candidate((40, 10, 50, 20), 0.8), Candidate((5, 10, 15, 20), 0.8)]}
    same = Agreement(2, [0, 4, 7], {f: Choice((0,) if f != 7 else (1,), "", 0.8) for f in (0, 4, 7)}, [])
    assert identity_flips(same, candidates, {1: masks[0]}, key=0) == ""
    other = Agreement(2, [0, 4, 7], {0: Choice((0,), "", 0.8), 4: Choice((1,), "", 0.8), 7: Choice((0,), "", 0.8)}, [])
    said = identity_flips(other, candidates, {1: masks[0]}, key=0)
    assert said.startswith("On frames 4, 7 the words pick another object than the one tracked from key frame 0")


def test_the_downloads_are_named_after_the_clip_and_the_expression(client, video, tmp_path):
    path = write_mp4(video.frames, tmp_path / "Two Discs.mp4", fps=8)
    overlay, _, archive, rle, *_ = client.predict(video=handle_file(str(path)), expression="the disc on the left!",
                                                  box_threshold=0.05, api_name="/segment")
    names = [Path(p).name for p in (overlay, archive, rle)]
    assert names[0].startswith("two-discs-the-disc-on-the-left-overlay-") and names[0].endswith(".mp4")
    assert names[1].startswith("two-discs-the-disc-on-the-left-masks-") and names[1].endswith(".zip")
    assert names[2].startswith("two-discs-the-disc-on-the-left-coco-rle-") and names[2].endswith(".json")


def test_the_key_frame_labels_the_chosen_boxes_and_the_others_only_while_few():
    """Eighteen score labels in one small frame pile into a cluster: past six candidates only the chosen boxes are
    labelled (on a dark plate each); with three, every box is."""
    rng = np.random.default_rng(0)
    frame = np.full((64, 64, 3), 120, np.uint8)
    boxes = [Candidate(tuple(float(v) for v in (x, y, x + 12, y + 12)), float(rng.uniform(0.3, 1)), "dog")
             for x, y in rng.integers(0, 50, (18, 2))]
    plates = lambda image: int((image.sum(axis=2) == 0).sum())   # noqa: E731  (the label plates are pure black)
    many = plates(mask_export.key_frame_boxes(frame, boxes, boxes[:1], [1]))
    few = plates(mask_export.key_frame_boxes(frame, boxes[:3], boxes[:1], [1]))
    alone = plates(mask_export.key_frame_boxes(frame, boxes[:1], boxes[:1], [1]))
    assert 0 < many < 1.3 * alone and few > 1.8 * alone        # the two others: narrower plates ("0.32")


def test_grounding_runs_at_its_readmes_size_on_a_gpu_and_smaller_on_a_cpu():
    """Grounding DINO's own inference size (800 px short side, 1333 long) on a GPU, 480/853 on a CPU; its README's
    thresholds (box 0.35, text 0.25) are the request's defaults."""
    from types import SimpleNamespace

    from pipelines.segmentation.pipeline import ground

    asked = []

    class Stays:                                   # a tensor stand-in: moved to any device, it stays itself
        def to(self, device):
            return self

    class Processor:
        image_processor = SimpleNamespace(size={"shortest_edge": 800, "longest_edge": 1333})

        def __call__(self, images, text, return_tensors, size):
            asked.append(size)
            return {"input_ids": Stays()}

        def post_process_grounded_object_detection(self, outputs, input_ids, **kwargs):
            return [{"boxes": [], "scores": [], "text_labels": []}]

    class Model:
        def __init__(self, device):
            self.device = SimpleNamespace(type=device)

        def __call__(self, **inputs):
            return None

    for device in ("cuda", "cpu"):
        model = Model(device)
        assert ground(model, Processor(), np.zeros((96, 128, 3), np.uint8), "dog", 0.35, 0.25) == []
    assert asked == [{"shortest_edge": 800, "longest_edge": 1333}, {"shortest_edge": 480, "longest_edge": 853}]
    assert (SegmentationRequest.box_threshold, SegmentationRequest.text_threshold) == (0.35, 0.25)
