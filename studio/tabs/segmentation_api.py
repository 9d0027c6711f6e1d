"""The Referring segmentation tab's endpoints: a video + an expression -> the masks through the whole video, the
overlay clip, the key frame with its boxes, the mask files and the explanation; and a refinement with clicks."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from pipelines.core.errors import InputError
from pipelines.core.video import read_clip, write_mp4
from pipelines.segmentation import mask_export
from pipelines.segmentation.models import DEFAULT_GROUNDER, DEFAULT_TRACKER, VDIT_LICENCE
from pipelines.segmentation.pipeline import (
    MAX_FRAMES,
    MAX_PIXELS,
    MAX_SECONDS,
    Click,
    SegmentationRequest,
    SegmentationResult,
)
from studio.engine import VDIT_OFF, Engine, queue_wait_seconds, run_on_gpu, user_errors, whole

MAX_CLICKS = 64


class SegmentationAPI:
    def __init__(self, engine: Engine):
        self.engine = engine

    def segment(
        self,
        video: str,
        expression: str,
        tracker: str = DEFAULT_TRACKER,
        grounder: str = DEFAULT_GROUNDER,
        ground_frames: int = SegmentationRequest.ground_frames,
        reground_every: int = SegmentationRequest.reground_every,
        box_threshold: float = SegmentationRequest.box_threshold,
        backend: str = SegmentationRequest.backend,
        vdit_pass: str = SegmentationRequest.vdit_pass,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008  (Gradio's own idiom)
    ) -> tuple:
        """Segment the object a phrase describes through a whole video (referring video segmentation).

        Say what to follow: "the dog on the left", "every dog except the left one", "the cup next to the laptop".
        The phrase is grounded on a few frames, relations are resolved on the boxes found, and SAM 2 tracks the
        chosen object(s) forward and backward from the frame the sampled frames agree on. Videos up to 300 frames,
        60 s and 1080p. `backend="vdit"`: VD-IT instead of grounding + SAM 2 (tracker, grounder and their settings
        unused), in chunks of 36 frames (`vdit_pass="chunks"`) or the whole video at once (`"whole"`).

        Args:
            video: The video to segment (a URL of an MP4 or another common format). Required.
            expression: What to segment, in words, e.g. "the cat on the left" (at most 200 characters). Required.
            tracker: The SAM 2.1 tracker size: "SAM 2.1 tiny" (default, fastest) up to "SAM 2.1 large".
            grounder: The phrase grounder: "Grounding DINO tiny" (default), "Florence-2 large" or another listed one.
            ground_frames: Frames searched for the object, 1 to 32 (default 8).
            reground_every: Look for objects that enter later every N frames, 0 to 300 (default 0: off).
            box_threshold: The grounder's box score threshold, 0.05 to 0.9 (default 0.35); lower finds more.
            backend: "grounding" (default: grounder + SAM 2) or "vdit" (VD-IT, one object; only where offered).
            vdit_pass: VD-IT only: "chunks" (default, 36-frame chunks) or "whole" (one pass, more memory).

        Returns:
            overlay: URL of an MP4 of the video with the masks drawn over it
            key_frame: Image of the key frame with the candidate boxes (grey) and the chosen object(s)
            masks_zip: URL of a zip with one PNG mask per frame and object
            masks_rle: URL of a COCO run-length-encoded JSON of the masks
            areas: Table of mask area in pixels per frame and object
            explanation: Markdown: which object was chosen and why, the key frame, warnings and timings
            info: JSON with object_ids, chosen boxes and scores, candidates, key_frame, size, fps, timings, warnings
        """
        return self._run(video, expression, tracker, grounder, ground_frames, reground_every, box_threshold, (),
                         None, request, progress, backend, vdit_pass)

    def refine(
        self,
        video: str,
        expression: str,
        clicks: str | list = "[]",
        key_frame: int | None = None,
        tracker: str = DEFAULT_TRACKER,
        grounder: str = DEFAULT_GROUNDER,
        ground_frames: int = SegmentationRequest.ground_frames,
        reground_every: int = SegmentationRequest.reground_every,
        box_threshold: float = SegmentationRequest.box_threshold,
        backend: str = SegmentationRequest.backend,
        vdit_pass: str = SegmentationRequest.vdit_pass,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
    ) -> tuple:
        """Segment a video as `segment` does, refined with clicks that include or exclude points of an object.

        The clicks are kept as SAM 2 conditioning frames. Pass the `key_frame` of an earlier `segment` result to
        keep the same object (leave it empty to ground the phrase again). Grounding backend only (not VD-IT).

        Args:
            video: The video to segment (a URL of an MP4 or another common format). Required.
            expression: What to segment, in words, e.g. "the cat on the left" (at most 200 characters). Required.
            clicks: JSON list of {"frame", "x", "y", "positive", "object_id"} in video pixels, up to 64 (default "[]").
            key_frame: The key frame of the earlier pass (info.key_frame), or empty to ground the expression again.
            tracker: The SAM 2.1 tracker size: "SAM 2.1 tiny" (default, fastest) up to "SAM 2.1 large".
            grounder: The phrase grounder: "Grounding DINO tiny" (default), "Florence-2 large" or another listed one.
            ground_frames: Frames searched for the object, 1 to 32 (default 8).
            reground_every: Look for objects that enter later every N frames, 0 to 300 (default 0: off).
            box_threshold: The grounder's box score threshold, 0.05 to 0.9 (default 0.35); lower finds more.
            backend: "grounding" (default); "vdit" takes no clicks.
            vdit_pass: VD-IT only: "chunks" (default) or "whole".

        Returns:
            overlay: URL of an MP4 of the video with the masks drawn over it
            key_frame: Image of the key frame with the candidate boxes (grey) and the chosen object(s)
            masks_zip: URL of a zip with one PNG mask per frame and object
            masks_rle: URL of a COCO run-length-encoded JSON of the masks
            areas: Table of mask area in pixels per frame and object
            explanation: Markdown: which object was chosen and why, the key frame, the clicks kept, warnings, timings
            info: JSON with object_ids, chosen boxes and scores, candidates, key_frame, clicks, timings, warnings
        """
        with user_errors():
            parsed = parse_clicks(clicks)
        return self._run(video, expression, tracker, grounder, ground_frames, reground_every, box_threshold, parsed,
                         key_frame, request, progress, backend, vdit_pass)

    def _run(self, video, expression, tracker, grounder, ground_frames, reground_every, box_threshold, clicks,
             key_frame, request, progress, backend="grounding", vdit_pass="chunks") -> tuple:
        engine = self.engine
        with user_errors():
            if not video:
                raise InputError("Upload a video (or press “Segment this clip” under a generated one).")
            if backend == "vdit" and not engine.settings.vdit:
                raise InputError(VDIT_OFF)
            start = time.perf_counter()
            source: dict = {}
            frames, fps = read_clip(video, MAX_FRAMES, MAX_SECONDS, MAX_PIXELS, details=source)
            source["read_seconds"] = time.perf_counter() - start
            return self._segment(frames, fps, source, f"{clip_name(video)} {expression}", expression, tracker,
                                 grounder, ground_frames, reground_every, box_threshold, clicks, key_frame, request,
                                 progress, backend, vdit_pass)

    def segment_frames(self, frames, expression: str, name: str = "", fps: float = 24.0,
                       tracker: str = DEFAULT_TRACKER, grounder: str = DEFAULT_GROUNDER, backend: str = "grounding",
                       progress=None) -> tuple:
        """`segment` on decoded frames ((T, H, W, 3) uint8: a dataset's JPEG folder, `python -m studio.batch`),
        with the same request checks, GPU call and outputs; `name` is what the downloads are called after."""
        with user_errors():
            if backend == "vdit" and not self.engine.settings.vdit:
                raise InputError(VDIT_OFF)
            return self._segment(np.asarray(frames), fps, {"read_seconds": 0.0}, name, expression, tracker, grounder,
                                 SegmentationRequest.ground_frames, SegmentationRequest.reground_every,
                                 SegmentationRequest.box_threshold, (), None, None,
                                 progress or (lambda *args, **kwargs: None), backend,
                                 SegmentationRequest.vdit_pass)

    def _segment(self, frames, fps, source, name, expression, tracker, grounder, ground_frames, reground_every,
                 box_threshold, clicks, key_frame, request, progress, backend, vdit_pass) -> tuple:
        engine = self.engine
        with user_errors():
            waited = queue_wait_seconds()
            read_seconds = source.pop("read_seconds")
            job = SegmentationRequest(
                frames=frames, expression=expression, fps=fps, tracker=tracker, grounder=grounder,
                ground_frames=whole(ground_frames), reground_every=whole(reground_every),
                box_threshold=box_threshold, clicks=clicks, key_frame=whole(key_frame) if key_frame not in ("", None)
                else None, backend=backend, vdit_pass=vdit_pass,
            )
            job.validate()
            reserved = engine.reserve("segmentation", job)      # refused here if no reservation can hold it
            with engine.reporter(request, progress) as report:
                result = run_on_gpu(engine.name, "segmentation", job, report)
            engine.learn_segmentation(job, result.timings)
            result.timings = {**({"queue_wait": waited} if waited is not None else {}),
                              "read_video": round(read_seconds, 3), **result.timings}
            if source.get("variable_rate"):
                result.warnings.append(f"The video has a variable frame rate: the overlay shows its {len(frames)} "
                                       f"frames at a constant {fps:.2f} fps, the same {source['duration_s']:.2f} s.")
            outputs = self.publish(job, frames, fps, result, source, name=name)
            outputs[-1]["gpu_reservation_s"] = reserved
        return outputs

    def publish(self, job: SegmentationRequest, frames, fps: float, result: SegmentationResult,
                source: dict | None = None, name: str = "") -> tuple:
        """`name`: what the downloads are called after (the clip and the expression)."""
        engine, timings = self.engine, result.timings
        start = time.perf_counter()
        overlay = write_mp4(mask_export.overlay_frames(frames, result.masks, result.object_ids),
                            engine.outputs.new(".mp4", f"{name} overlay" if name else ""),
                            fps=fps)
        boxes = mask_export.key_frame_boxes(frames[result.key_frame], result.candidates[result.key_frame],
                                            result.chosen, result.object_ids,
                                            note="Frames disagree: see the explanation" if result.disagree else "")
        archive = mask_export.masks_zip(result.masks, result.object_ids,
                                        engine.outputs.new(".zip", f"{name} masks" if name else ""))
        rle = mask_export.write_coco_rle(result.masks, result.object_ids, job.expression,
                                         engine.outputs.new(".json", f"{name} coco rle" if name else ""))
        timings["export"] = round(time.perf_counter() - start, 3)
        areas = result.areas()
        for warning in result.warnings:
            gr.Warning(warning)
        info = {
            "expression": job.expression, "num_frames": len(frames), "fps": fps,
            "size": [int(frames.shape[2]), int(frames.shape[1])], "key_frame": result.key_frame,
            # H.264 in yuv420p codes even sizes only: an odd side gets one repeated edge pixel in the overlay
            "overlay_size": [int(frames.shape[2]) + frames.shape[2] % 2, int(frames.shape[1]) + frames.shape[1] % 2],
            "object_ids": result.object_ids, "reason": result.reason,
            "chosen": [{"object_id": i, "box": [round(v, 1) for v in c.box], "score": round(c.score, 4)}
                       for i, c in zip(result.object_ids, result.chosen, strict=False)],
            "candidates": {str(f): [{"box": [round(v, 1) for v in c.box], "score": round(c.score, 4)} for c in found]
                           for f, found in result.candidates.items()},
            "mask_area": {str(i): a for i, a in zip(result.object_ids, areas, strict=True)},
            "clicks": [vars(c) for c in job.clicks], "backend": result.backend,
            **({"tracker": job.tracker, "grounder": result.grounder or job.grounder} if result.backend == "grounding" else
               {"model": "VD-IT", "vdit_pass": job.vdit_pass, "query_scores": result.scores,
                "licence": VDIT_LICENCE}),
            "timings": timings, "warnings": result.warnings, "profile": engine.settings.profile,
            "frames_disagree": result.disagree, "not_understood": result.not_understood, "source": source or {},
        }
        plot = pd.DataFrame([{"frame": f, "area": area, "object": str(i)}
                             for i, series in zip(result.object_ids, areas, strict=True) for f, area in enumerate(series)])
        return str(overlay), boxes, str(archive), str(rle), plot, explanation_markdown(info), info


def parse_clicks(clicks) -> tuple[Click, ...]:
    """Clicks from the API (a JSON string or a list of dicts), checked field by field."""
    if isinstance(clicks, str):
        try:
            clicks = json.loads(clicks or "[]")
        except json.JSONDecodeError as error:
            raise InputError(f"clicks must be a JSON list of {{frame, x, y, positive, object_id}}: {error.msg}.") from None
    if not isinstance(clicks, list):
        raise InputError("clicks must be a list of {frame, x, y, positive, object_id}.")
    if len(clicks) > MAX_CLICKS:
        raise InputError(f"At most {MAX_CLICKS} clicks, not {len(clicks)}.")
    parsed = []
    for number, click in enumerate(clicks, start=1):
        if not isinstance(click, dict) or not {"frame", "x", "y"} <= set(click):
            raise InputError(f"Click {number} needs frame, x and y (and optionally positive, object_id).")
        try:
            parsed.append(Click(frame=int(click["frame"]), x=float(click["x"]), y=float(click["y"]),
                                positive=bool(click.get("positive", True)), object_id=int(click.get("object_id", 1))))
        except (TypeError, ValueError):
            raise InputError(f"Click {number} has a value that is not a number: {click}.") from None
    return tuple(parsed)


def explanation_markdown(info: dict) -> str:
    objects = len(info["object_ids"])
    lines = [f"**{info['reason']}**"]
    if info.get("not_understood"):
        lines.append(f"❓ {info['not_understood']}")
    if info.get("backend") == "vdit":
        scores = info["query_scores"]
        shown = ", ".join(f"{s:.2f}" for s in scores[:24]) + (" …" if len(scores) > 24 else "")
        lines += [f"VD-IT, {info['num_frames']} frames at {info['fps']:.0f} fps · {info['size'][0]}×{info['size'][1]}"
                  f" · the chosen query's score per frame: {shown}", f"ℹ️ {info['licence']}"]
    else:
        lines.append(f"Key frame {info['key_frame']} · {objects} object{'s' * (objects != 1)} tracked forward and "
                     f"backward over {info['num_frames']} frames at {info['fps']:.0f} fps · "
                     f"{info['size'][0]}×{info['size'][1]}")
    if info["clicks"]:
        lines.append(f"{len(info['clicks'])} refinement click(s) kept as conditioning frames.")
    lines += [f"⚠️ {w}" for w in info["warnings"]]
    lines.append(" · ".join(f"{stage} {seconds:.2f} s" for stage, seconds in info["timings"].items()))
    return "\n\n".join(lines)


def clip_name(video) -> str:
    """What a clip is called in its downloads' names: the uploaded file's name, without the random part the studio's
    own outputs carry (a clip sent from another tab is a 32-hex-digit name, or a name with a 6-digit suffix)."""
    return re.sub(r"(^|-)[0-9a-f]{6}$|^[0-9a-f]{32}$", "", Path(str(video)).stem)


def clicks_markdown(clicks: list[dict[str, Any]]) -> str:
    if not clicks:
        return "No clicks yet: click the frame to add a point."
    # Words, not signs: a leading "+" or "-" is a Markdown list marker, and the fullwidth ones miss from fonts.
    return " · ".join(f"{'include' if c['positive'] else 'exclude'} frame {c['frame']} ({c['x']:.0f}, {c['y']:.0f}) "
                      f"→ object {c['object_id']}" for c in clicks)
