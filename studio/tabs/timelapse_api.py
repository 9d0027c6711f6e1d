"""The Time-lapse tab's endpoint: UI values -> TimelapseRequest -> the pipeline on the GPU -> a published clip."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import closing

import gradio as gr

from pipelines.sd15.modes import TIMELAPSE_MODES, mode_defaults
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
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        safety: bool = True,
        mode: str = TimelapseRequest.mode,
        preview: bool = False,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008  (Gradio's own idiom)
    ) -> Iterator[tuple[str, str, dict]]:
        """Generate a metamorphic time-lapse video (MagicTime) from a text prompt.

        A short clip of something that changes over time (a seed growing into a flower, ice melting, a city being
        built), 8 fps, at the server's resolution (512x512 on the real profile). Keyframes steer its stages and let
        it run past 16 frames. Calls wait in one GPU queue; a run takes seconds to minutes. It yields the result once
        at the end; with `preview`, small preview clips (each with a one-line summary) while it denoises before that.

        Args:
            prompt: What changes over time, e.g. "time-lapse of ice melting on a window sill". Required.
            keyframes: Optional stages, one per line as "frame: description"; frame 0 defaults to the prompt.
            negative_prompt: What the clip should avoid. Default "worst quality, low quality, letterboxed".
            style: The base model's look: "Realistic Vision" (default), "ToonYou" or "RcnzCartoon".
            num_frames: Frames, 8 to 64 (default 16, 2 s at 8 fps); more than 16 needs keyframes.
            steps: Denoising steps, 1 to 100; empty for the mode's own (quality 25, fast exactly 8).
            guidance: Classifier-free guidance, 1 to 20; empty for the mode's own (quality 8.5, fast 5, range 1-8).
            seed: Random seed, 0 to 4294967295 (default 0); the same seed and settings give the same clip.
            safety: SAFREE prompt guard on (default true); every frame is checked by an NSFW classifier either way.
            mode: "quality" (default, 25-step DDIM), "fast" (Hyper-SD, 8 steps) or "fast-preview" (fast, tiny VAE).
            preview: Stream small preview clips while denoising; leave false (tools get only the final result).

        Returns:
            video: URL of the H.264 MP4
            summary: Markdown with warnings first, then seed, frames, size, safety and timings
            info: JSON with seed, num_frames, fps, size, steps, guidance, keyframes, safety, timings and warnings
        """
        engine = self.engine
        with user_errors():
            waited = queue_wait_seconds()
            steps, guidance = mode_defaults(TIMELAPSE_MODES, mode, steps, guidance)
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
            path, info = engine.publish(result, style=job.style, mode=mode, steps=job.steps, guidance=job.guidance,
                                        queue_wait=waited,
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
