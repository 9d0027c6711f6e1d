"""The Time-lapse tab's endpoint: UI values -> TimelapseRequest -> the pipeline on the GPU -> a published clip."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import closing

import gradio as gr

from pipelines.timelapse.pipeline import FPS, TimelapseRequest, parse_keyframes
from studio.engine import Engine, previews, queue_wait_seconds, summary_markdown, user_errors, whole


class TimelapseAPI:
    def __init__(self, engine: Engine):
        self.engine = engine

    def stream(
        self,
        prompt: str,
        keyframes: str = "",
        negative_prompt: str = TimelapseRequest.negative_prompt,
        style: str = TimelapseRequest.style,
        num_frames: int = TimelapseRequest.num_frames,
        steps: int = TimelapseRequest.steps,
        guidance: float = TimelapseRequest.guidance,
        seed: int = 0,
        safety: bool = True,
        mode: str = TimelapseRequest.mode,
        preview: bool = False,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008  (Gradio's own idiom)
    ) -> Iterator[tuple[str, str, dict]]:
        """Generate a time-lapse: yields (MP4 path, summary Markdown with any warnings first, info dict) once at the
        end; with `preview`, small preview clips (with a one-line summary) while it denoises before that."""
        engine = self.engine
        with user_errors():
            waited = queue_wait_seconds()
            job = TimelapseRequest(
                prompt=prompt, keyframes=parse_keyframes(keyframes), negative_prompt=negative_prompt,
                style=style, num_frames=whole(num_frames), steps=whole(steps), guidance=guidance,
                seed=whole(seed), width=engine.settings.resolution, height=engine.settings.resolution,
                safety=engine.safety_options(safety), mode=mode,
            )
            job.validate()  # before the GPU is asked for
            sliding, mode = bool(job.keyframes), job.run_mode.name
            estimate, _ = engine.estimate("timelapse", job.steps, job.num_frames, job.guidance, sliding,
                                          style=job.style, mode=mode)
            reserved = engine.reserve("timelapse", job)         # refused here if no reservation can hold it
            start = time.perf_counter()
            with engine.reporter(request, progress) as report, \
                    closing(engine.call("timelapse", job, report, preview, FPS)) as calls:
                result = yield from previews(calls, job.steps, outputs=3)
            path, info = engine.publish(result, style=job.style, mode=mode, queue_wait=waited,
                                        keyframes={str(k): v for k, v in job.stages().items()})
            engine.learn("timelapse", job.steps, job.num_frames, job.guidance, sliding, result.timings, mode)
            info["estimate_s"], info["actual_s"] = estimate, engine.actual_seconds(start, info)
            info["gpu_reservation_s"] = reserved
        yield path, summary_markdown(info), info

    def generate(self, *args, **kwargs) -> tuple[str, str, dict]:
        """`stream` to its end: (MP4 path, summary Markdown, info dict)."""
        return deque(self.stream(*args, **kwargs), maxlen=1)[0]

    def estimate(self, keyframes: str, style: str, num_frames: int, steps: int, guidance: float,
                 mode: str = "quality") -> str:
        """The line next to Generate for these settings (the UI's, not an API endpoint)."""
        return self.engine.estimate("timelapse", whole(steps), whole(num_frames), guidance,
                                    sliding=bool((keyframes or "").strip()), style=style, mode=mode)[1]
