"""Referring segmentation on the tiny profile: SAM 2 propagation both ways, clicks that stick, the grounding and
key-frame choice, the exports, and the endpoint with good and bad input (synthetic videos with exact masks)."""

from __future__ import annotations

import json
import zipfile

import av
import numpy as np
import pytest
import torch
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from pipelines import mask_export
from pipelines.cache import ModelCache
from pipelines.errors import InputError
from pipelines.relations import Candidate, parse_expression
from pipelines.segmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KEEP_NEAR,
    Click,
    SegmentationPipeline,
    SegmentationRequest,
    Tracker,
    key_frame,
    preprocess,
    sample_frames,
)
from pipelines.segmentation_models import SegmentationRegistry
from pipelines.synthetic import make_video
from pipelines.video import read_video, write_mp4

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
    stored = {f: pixels for f, pixels in tracker.session.processed_frames.items() if pixels.numel()}
    assert list(stored) == [0]                                # frames already tracked are let go, but the key frame
    assert stored[0].untyped_storage().nbytes() == stored[0].numel() * stored[0].element_size()   # and it owns only itself
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
    frame, choice = key_frame(query, boxes, 128, 96)
    assert frame == 5 and choice.chosen == (0,) and "frame 5" in choice.reason
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


def test_regrounding_adds_objects_that_enter_late_with_new_ids(pipeline, video, monkeypatch):
    from pipelines import segmentation

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
    assert result.object_ids == [1, 2] and "enter later: id 2 on frame 8" in result.warnings[0]


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
def test_segment_endpoint_gives_an_h264_overlay_and_masks_for_every_frame(client, video, tmp_path):
    path = write_mp4(video.frames, tmp_path / "clip.mp4", fps=8)
    overlay, key_image, archive, rle, plot, explanation, info = client.predict(
        video=handle_file(str(path)), expression="the circle on the left", box_threshold=0.05, api_name="/segment")
    frames, fps, codec = read_video(overlay)
    assert frames.shape == (16, 96, 128, 3) and codec == "h264" and fps == 8
    decoded = mask_export.decode_coco_rle(json.loads(open(rle).read()))
    assert list(decoded) == info["object_ids"] == [1] and decoded[1].shape == (16, 96, 128)
    with zipfile.ZipFile(archive) as zipped:
        pngs = sorted(n for n in zipped.namelist() if n.startswith("1/"))
        assert len(pngs) == 16
        assert np.array_equal(np.asarray(Image.open(zipped.open(pngs[5]))) > 127, decoded[1][5])
    assert info["mask_area"]["1"] == [int(m.sum()) for m in decoded[1]]
    assert "found on frame" in explanation and info["reason"] in explanation
    assert str(info["key_frame"]) in info["candidates"]

    refined = client.predict(video=handle_file(str(path)), expression="the circle on the left",
                             clicks=json.dumps([{"frame": 2, "x": 30, "y": 40, "positive": False}]),
                             key_frame=info["key_frame"], box_threshold=0.05, api_name="/segment_refine")
    assert refined[-1]["clicks"][0]["frame"] == 2 and refined[-1]["key_frame"] == info["key_frame"]


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
    (lambda d: write_mp4(np.zeros((301, 16, 16, 3), np.uint8), d / "long.mp4", fps=30), "the dog", "more than 300 frames"),
], ids=["text-file", "audio-only", "zero-frames", "empty-expression", "overlong-expression", "corrupt", "too-many-frames"])
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, server_outputs, video, tmp_path, make,
                                                                    expression, message):
    write_mp4(video.frames[:8], tmp_path / "clip.mp4", fps=8)
    before = sorted(server_outputs.glob("*")) if server_outputs.exists() else []
    with pytest.raises(AppError, match=message):
        client.predict(video=handle_file(str(make(tmp_path))), expression=expression, api_name="/segment")
    after = sorted(server_outputs.glob("*")) if server_outputs.exists() else []
    assert after == before                                    # nothing written for a refused call
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
    from pipelines.errors import Cancelled

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
