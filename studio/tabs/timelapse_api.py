"""The Time-lapse tab's endpoint: UI values -> TimelapseRequest -> the pipeline on the GPU -> a published clip."""

from __future__ import annotations

import time

import gradio as gr

from pipelines.timelapse import TimelapseRequest, parse_keyframes
from studio.engine import Engine, run_on_gpu, summary_markdown, user_errors, whole


class TimelapseAPI:
    def __init__(self, engine: Engine):
        self.engine = engine

    def generate(
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
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008  (Gradio's own idiom)
    ) -> tuple[str, str, dict]:
        """Generate a time-lapse. Returns (MP4 path, summary Markdown with any warnings first, info dict)."""
        engine = self.engine
        with user_errors():
            job = TimelapseRequest(
                prompt=prompt, keyframes=parse_keyframes(keyframes), negative_prompt=negative_prompt,
                style=style, num_frames=whole(num_frames), steps=whole(steps), guidance=guidance,
                seed=whole(seed), width=engine.settings.resolution, height=engine.settings.resolution,
                safety=engine.safety_options(safety),
            )
            job.validate()  # before the GPU is asked for
            sliding = bool(job.keyframes)
            estimate, _ = engine.estimate("timelapse", job.steps, job.num_frames, job.guidance, sliding,
                                          style=job.style)
            start = time.perf_counter()
            with engine.reporter(request, progress) as report:
                result = run_on_gpu(engine.name, "timelapse", job, report)
            path, info = engine.publish(result, style=job.style,
                                        keyframes={str(k): v for k, v in job.stages().items()})
            engine.learn("timelapse", job.steps, job.num_frames, job.guidance, sliding, result.timings)
            info["estimate_s"], info["actual_s"] = estimate, engine.actual_seconds(start, info)
        return path, summary_markdown(info), info

    def estimate(self, keyframes: str, style: str, num_frames: int, steps: int, guidance: float) -> str:
        """The line next to Generate for these settings (the UI's, not an API endpoint)."""
        return self.engine.estimate("timelapse", whole(steps), whole(num_frames), guidance,
                                    sliding=bool((keyframes or "").strip()), style=style)[1]
