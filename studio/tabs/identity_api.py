"""The Identity video tab's endpoints: the face preview, and UI values -> IdentityRequest -> the pipeline on the
GPU -> a published clip with its identity report."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import gradio as gr
import pandas as pd

from pipelines.core.errors import InputError, StudioError
from pipelines.identity import pipeline as id_
from pipelines.identity.faces import load_photo
from pipelines.identity.pipeline import IdentityPipeline, IdentityRequest
from pipelines.identity.tiny import random_similarity
from pipelines.safety import output_check
from pipelines.sd15.modes import IDENTITY_MODES, mode_defaults
from studio.engine import Engine, previews, queue_wait_seconds, summary_markdown, user_errors, whole


def check_photos(engine: Engine, photos) -> list[str]:
    """Reference photos through the output check before any GPU work: refused in enforced mode, a warning
    otherwise. Returns the warnings."""
    checker = engine.checker
    frames = [load_photo(photo, number) for number, photo in enumerate(photos, start=1)]
    scores = [checker.check(frame).scores[0] for frame in frames]
    flagged = [(number, score) for number, score in enumerate(scores, start=1) if score >= checker.threshold]
    named = ", ".join(f"photo {number} ({score:.2f})" for number, score in flagged)
    if flagged and engine.safety_enforced:
        raise InputError(f"The output check ({output_check.MODEL_NAME}) scores {named} as explicit; this server "
                         "enforces the safety guard and does not use such photos.")
    return [f"The output check scores {named} as explicit (threshold {checker.threshold})."] if flagged else []


class IdentityAPI:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.pipeline: IdentityPipeline = engine.pipelines["identity"]

    def faces(self, photos: list[str] | None) -> tuple[list[tuple[Any, str]], str]:
        """Check reference photos for the identity tool: the aligned face crop the model will use from each photo.

        Cheap (CPU, no generation): use it before `identity` to see whether each photo has one usable face.

        Args:
            photos: 1 to 4 photos (image URLs) of the same person, each with one clearly visible face.

        Returns:
            crops: A gallery of the aligned face crop of each photo, captioned "Photo N"
            notes: Markdown per photo: no face found, face too small, several faces (the largest is used); or empty
        """
        crops, notes = [], []
        for number, photo in enumerate(photos or [], start=1):
            try:
                face, photo_notes = self.pipeline.faces.photo_face(load_photo(photo, number), number)
            except StudioError as error:
                notes.append(f"⚠️ {error}")
                continue
            crops.append((face.crop, f"Photo {number}"))
            notes += [f"ℹ️ {note}" for note in photo_notes]
        if len(photos or []) > id_.MAX_PHOTOS:
            notes.append(f"⚠️ Use at most {id_.MAX_PHOTOS} photos.")
        return crops, "\n\n".join(notes)

    def stream(
        self,
        photos: list[str],
        prompt: str,
        negative_prompt: str = IdentityRequest.negative_prompt,
        identity_strength: float = IdentityRequest.identity_strength,
        num_frames: int = IdentityRequest.num_frames,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        safety: bool = True,
        mode: str = IdentityRequest.mode,
        preview: bool = False,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008  (Gradio's own idiom)
    ) -> Iterator[tuple[str, str, Any, dict]]:
        """Generate a video of a given person (ID-Animator) from 1 to 4 photos of their face and a scene prompt.

        The clip keeps the person's identity (AnimateDiff v2 with a face adapter; several photos are averaged into
        one identity), up to 16 frames at 8 fps at the server's resolution, with a per-frame face similarity to the
        reference. Calls wait in one GPU queue; a run takes seconds to minutes. It yields the result once at the end;
        with `preview`, small preview clips (each with a one-line summary) while it denoises before that.

        Args:
            photos: 1 to 4 photos (image URLs) of one person, each with one clearly visible face. Required.
            prompt: The scene, e.g. "a woman walking on a beach at sunset" ("8k uhd, high quality..." is appended).
            negative_prompt: What to avoid. Default: ID-Animator's own list ("long shots, full body" is appended).
            identity_strength: How strongly the face adapter steers the clip, 0 to 1.5 (default 0.8).
            num_frames: Frames, 8 to 16 (default 16, 2 s at 8 fps).
            steps: Denoising steps, 1 to 100; empty for the mode's own (quality 30, fast 4 or 8).
            guidance: Classifier-free guidance, 1 to 20; empty for the mode's own (quality 8, fast 1, range 1-2).
            seed: Random seed, 0 to 4294967295 (default 0); the same seed and settings give the same clip.
            safety: SAFREE prompt guard on (default true); photos and frames are checked by an NSFW classifier anyway.
            mode: "quality" (default, 30-step DDIM), "fast" (AnimateDiff-Lightning) or "fast-preview" (fast, tiny VAE).
            preview: Stream small preview clips while denoising; leave false (tools get only the final result).

        Returns:
            video: URL of the H.264 MP4
            summary: Markdown: mean face similarity to the photos, then seed, frames, size, safety and timings
            similarity: Table of frame and face similarity (0 to 1; NaN where no face was found)
            info: JSON with the settings, face_similarity (per_frame, mean), safety, timings and warnings
        """
        engine = self.engine
        with user_errors():
            waited = queue_wait_seconds()
            steps, guidance = mode_defaults(IDENTITY_MODES, mode, steps, guidance)
            job = IdentityRequest(
                photos=tuple(photos or ()), prompt=prompt, negative_prompt=negative_prompt,
                identity_strength=identity_strength, num_frames=whole(num_frames), steps=whole(steps),
                guidance=guidance, seed=whole(seed), width=engine.settings.resolution,
                height=engine.settings.resolution, safety=engine.safety_options(safety), mode=mode,
            )
            job.validate()
            mode = job.run_mode.name
            start = time.perf_counter()
            faces = self.pipeline.reference_faces(job.photos)   # on CPU, before the GPU is asked for
            faces_seconds = time.perf_counter() - start
            start = time.perf_counter()
            photo_warnings = check_photos(engine, job.photos)
            photos_seconds = time.perf_counter() - start
            estimate, _ = engine.estimate("identity", job.steps, job.num_frames, job.guidance, sliding=False,
                                          mode=mode)
            reserved = engine.reserve("identity", job)          # refused here if no reservation can hold it
            run_start = time.perf_counter()
            with engine.reporter(request, progress) as report, closing(engine.call(
                    "identity", job, report, preview, id_.FPS, dict(faces=faces, measure_identity=False))) as calls:
                result = yield from previews(calls, job.steps, outputs=4)
            start = time.perf_counter()
            # The tiny profile's noise has no face for the detector: random scores stand in (the summary says so).
            result.face_similarity = (random_similarity(result.frames) if engine.settings.profile == "tiny" else
                                      self.pipeline.identity_report(result.frames, faces.embeddings))
            result.warnings = photo_warnings + result.warnings
            result.timings = {"faces": round(faces_seconds, 3), "safety_photos": round(photos_seconds, 3),
                              **result.timings,
                              "identity_report": round(time.perf_counter() - start, 3)}
            missing = sum(s is None for s in result.face_similarity)
            prompt_used, negative_used = IdentityPipeline.prompts(job)
            path, info = engine.publish(
                result, queue_wait=waited, mode=mode, steps=job.steps, guidance=job.guidance, photos=len(job.photos), identity_strength=job.identity_strength,
                prompt_used=prompt_used, negative_prompt_used=negative_used,
                face_similarity={"per_frame": result.face_similarity, "mean": result.mean_similarity,
                                 "frames_without_face": missing,
                                 "random": engine.settings.profile == "tiny"},
            )
            engine.learn("identity", job.steps, job.num_frames, job.guidance, False, result.timings, mode)
            info["estimate_s"], info["actual_s"] = estimate, engine.actual_seconds(run_start, info)
            info["gpu_reservation_s"] = reserved
        # A plain table, as /segment's plot (frames without a face are NaN); the page shapes it (`shown_plot`).
        plot = pd.DataFrame({"frame": range(len(result.face_similarity)),
                             "similarity": [float("nan") if s is None else s for s in result.face_similarity]})
        yield path, identity_markdown(info), plot, info

    def generate(self, *args, **kwargs) -> tuple[str, str, Any, dict]:
        """`stream` to its end: (MP4 path, summary Markdown, similarity plot data, info)."""
        return deque(self.stream(*args, **kwargs), maxlen=1)[0]


def shown_plot(update: tuple) -> tuple:
    """The page's form of a run's outputs: the similarity plot drawn over the clip's frames, and hidden when no
    frame has a face (the summary says so; an empty chart would only look broken). Previews pass as they are."""
    path, summary, plot, info = update
    if not isinstance(plot, pd.DataFrame):
        return update
    plot = gr.update(value=plot, visible=bool(plot["similarity"].notna().any()), x_lim=[0, max(len(plot) - 1, 1)])
    return path, summary, plot, info


def estimate_line(engine: Engine, num_frames, steps, guidance, mode: str = "quality") -> str:
    """The line next to Generate for these settings (the UI's, not an API endpoint)."""
    return engine.estimate("identity", whole(steps), whole(num_frames), guidance, sliding=False, mode=mode)[1]


def identity_markdown(info: dict) -> str:
    similarity = info["face_similarity"]
    found = info["num_frames"] - similarity["frames_without_face"]
    identity = (f"**Identity** {similarity['mean']:.2f} mean face similarity over {found} of "
                f"{info['num_frames']} frames" + (" (random: tiny profile, no face is detected in its noise)"
                                                  if similarity.get("random") else "")
                if similarity["mean"] is not None else
                f"**Identity** no face found in any of the {info['num_frames']} frames")
    if similarity["frames_without_face"] and similarity["mean"] is not None:
        identity += f"; {similarity['frames_without_face']} without a detectable face"
    return identity + "\n\n" + summary_markdown(info)
