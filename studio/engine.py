"""The bridge between Gradio events and the pipelines: one model cache, one output folder, the
UI-facing functions (their parameter names are the API's), errors turned into messages.

Tabs wire these functions to components; they hold no logic of their own.
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import torch

from pipelines import identity as id_
from pipelines.cache import ModelCache
from pipelines.common import MAX_SEED
from pipelines.errors import Cancelled, StudioError
from pipelines.faces import FaceAnalyzer, load_photo
from pipelines.identity import IdentityPipeline, IdentityRequest, IdentityResult, ReferenceFaces
from pipelines.registry import Registry
from pipelines.timelapse import (
    CONTEXT_FRAMES,
    CONTEXT_STRIDE,
    DEFAULT_STYLE,
    TimelapsePipeline,
    TimelapseRequest,
    TimelapseResult,
    parse_keyframes,
)
from pipelines.video import write_mp4
from studio.settings import Settings

try:  # ZeroGPU: attaches a GPU for the duration of a call; a no-op everywhere else.
    import spaces
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    spaces = None


def _gpu_seconds(engine: str, job, *rest) -> int:
    """The GPU time ZeroGPU reserves for a call (shorter reservations queue sooner; longer ones spend users'
    quota). An estimate, not a measurement: ~0.8 s per step per 16-frame window at 512 px, plus loading.
    FreeNoise slides its 16-frame window by 4, so 64 frames are 13 windows."""
    keyframes = getattr(job, "keyframes", None)
    windows = 1 + math.ceil(max(0, job.num_frames - CONTEXT_FRAMES) / CONTEXT_STRIDE) if keyframes else 1
    return int(20 + 0.8 * job.steps * windows)


def gpu(fn):
    return spaces.GPU(duration=_gpu_seconds)(fn) if spaces is not None else fn



def randomize_seed(seed: int, randomize: bool) -> int:
    """The UI's step before a generating call: a fresh seed when asked for, else the seed as it is."""
    return random.randint(0, MAX_SEED) if randomize else seed


class OutputDir:
    """Where generated files go before Gradio copies them to its own cache. Files older than `ttl_s`
    are deleted whenever a new one is made, so they do not pile up over a long-running Space."""

    def __init__(self, root: Path, ttl_s: int):
        self.root, self.ttl_s = Path(root), ttl_s

    def new(self, suffix: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - self.ttl_s
        for old in self.root.iterdir():
            if old.is_file() and old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)
        return self.root / f"{uuid.uuid4().hex}{suffix}"


# ZeroGPU runs a @spaces.GPU function in a forked worker and sends it the arguments by pickling them,
# so a GPU function takes only picklable arguments: engines travel by name and are looked up here, in
# the worker's copy of this process (models are already on cuda there). Off Spaces `gpu` is a no-op.
_ENGINES: dict[str, Engine] = {}
_STOP_FLAGS: dict[str, threading.Event] = {}   # browser session -> "Stop was pressed" for its running call


@dataclass(frozen=True)
class Reporter:
    """Progress for one call (picklable): forwards to gr.Progress, raises Cancelled once Stop was pressed.
    In a ZeroGPU worker the flag is a copy and Stop cannot reach it; Gradio's cancel still ends the call."""

    progress: Any
    session: str | None = None

    def __call__(self, fraction: float, desc: str) -> None:
        flag = _STOP_FLAGS.get(self.session) if self.session else None
        if flag is not None and flag.is_set():
            raise Cancelled("Stopped.")
        self.progress(fraction, desc=desc)


@gpu
def _generate_timelapse(engine: str, job: TimelapseRequest, report: Reporter) -> TimelapseResult:
    return _ENGINES[engine].timelapse_pipeline(job, report)


@gpu
def _generate_identity(engine: str, job: IdentityRequest, faces: ReferenceFaces, report: Reporter) -> IdentityResult:
    return _ENGINES[engine].identity_pipeline(job, report, faces=faces, measure_identity=False)


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache = ModelCache(settings.device, settings.device_budget, settings.ram_budget)
        self.registry = Registry(settings.profile, settings.dtype)
        self.outputs = OutputDir(settings.output_dir, settings.output_ttl_s)
        self.timelapse_pipeline = TimelapsePipeline(self.cache, self.registry)
        self.identity_pipeline = IdentityPipeline(self.cache, self.registry, FaceAnalyzer())
        self.name = f"engine-{uuid.uuid4().hex[:8]}"
        _ENGINES[self.name] = self

    def preload(self) -> None:
        """Load the tabs' default models now (ZeroGPU wants weights on cuda at start-up)."""
        timelapse, identity = self.registry.timelapse(DEFAULT_STYLE), self.registry.identity()
        self.cache.preload(timelapse.tokenizer, timelapse.text_encoder, timelapse.vae, timelapse.unet)
        self.cache.preload(identity.text_encoder, identity.unet, identity.image_encoder, identity.image_processor)

    # ----------------------------------------------------------------- time-lapse
    def timelapse(
        self,
        prompt: str,
        keyframes: str = "",
        negative_prompt: str = TimelapseRequest.negative_prompt,
        style: str = TimelapseRequest.style,
        num_frames: int = TimelapseRequest.num_frames,
        steps: int = TimelapseRequest.steps,
        guidance: float = TimelapseRequest.guidance,
        seed: int = 0,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),
    ) -> tuple[str, str, dict]:
        """Generate a time-lapse. Returns (MP4 path, summary Markdown with any warnings first, info dict)."""
        with user_errors():
            job = TimelapseRequest(
                prompt=prompt, keyframes=parse_keyframes(keyframes), negative_prompt=negative_prompt,
                style=style, num_frames=_whole(num_frames), steps=_whole(steps), guidance=guidance,
                seed=_whole(seed), width=self.settings.resolution, height=self.settings.resolution,
            )
            job.validate()  # before the GPU is asked for
            with self._reporter(request, progress) as report:
                result = _generate_timelapse(self.name, job, report)
            path, info = self._publish(result, style=job.style,
                                       keyframes={str(k): v for k, v in job.stages().items()})
        return path, _summary_markdown(info), info

    # ----------------------------------------------------------------- identity video
    def identity_faces(self, photos: list[str] | None) -> tuple[list[tuple[Any, str]], str]:
        """What the model will see: the aligned face crop of each photo, and notes (problems per photo)."""
        crops, notes = [], []
        for number, photo in enumerate(photos or [], start=1):
            try:
                face, photo_notes = self.identity_pipeline.faces.photo_face(load_photo(photo, number), number)
            except StudioError as error:
                notes.append(f"⚠️ {error}")
                continue
            crops.append((face.crop, f"Photo {number}"))
            notes += [f"ℹ️ {note}" for note in photo_notes]
        if len(photos or []) > id_.MAX_PHOTOS:
            notes.append(f"⚠️ Use at most {id_.MAX_PHOTOS} photos.")
        return crops, "\n\n".join(notes)

    def identity(
        self,
        photos: list[str],
        prompt: str,
        negative_prompt: str = IdentityRequest.negative_prompt,
        identity_strength: float = IdentityRequest.identity_strength,
        num_frames: int = IdentityRequest.num_frames,
        steps: int = IdentityRequest.steps,
        guidance: float = IdentityRequest.guidance,
        seed: int = 0,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),
    ) -> tuple[str, str, Any, dict]:
        """A clip of the person in `photos`. Returns (MP4 path, summary Markdown, similarity plot data, info)."""
        with user_errors():
            job = IdentityRequest(
                photos=tuple(photos or ()), prompt=prompt, negative_prompt=negative_prompt,
                identity_strength=identity_strength, num_frames=_whole(num_frames), steps=_whole(steps),
                guidance=guidance, seed=_whole(seed), width=self.settings.resolution, height=self.settings.resolution,
            )
            job.validate()
            start = time.perf_counter()
            faces = self.identity_pipeline.reference_faces(job.photos)   # on CPU, before the GPU is asked for
            faces_seconds = time.perf_counter() - start
            with self._reporter(request, progress) as report:
                result = _generate_identity(self.name, job, faces, report)
            start = time.perf_counter()
            result.face_similarity = self.identity_pipeline.identity_report(result.frames, faces.embeddings)
            result.timings = {"faces": round(faces_seconds, 3), **result.timings,
                              "identity_report": round(time.perf_counter() - start, 3)}
            missing = sum(s is None for s in result.face_similarity)
            prompt_used, negative_used = IdentityPipeline.prompts(job)
            path, info = self._publish(
                result, photos=len(job.photos), identity_strength=job.identity_strength,
                prompt_used=prompt_used, negative_prompt_used=negative_used,
                face_similarity={"per_frame": result.face_similarity, "mean": result.mean_similarity,
                                 "frames_without_face": missing},
            )
        plot = pd.DataFrame({"frame": range(len(result.face_similarity)),
                             "similarity": [float("nan") if s is None else s for s in result.face_similarity]})
        # No face in any frame: the summary says so; an empty chart would only look broken.
        plot = gr.update(value=plot, visible=result.mean_similarity is not None,
                         x_lim=[0, len(result.face_similarity) - 1])
        return path, _identity_markdown(info), plot, info

    def _publish(self, result, **details) -> tuple[str, dict]:
        """Every generating tab's last step: the MP4, the warnings as toasts, and the info dict the API returns
        (what every clip has, then the tab's `details`)."""
        start = time.perf_counter()
        path = write_mp4(result.frames, self.outputs.new(".mp4"), fps=result.fps)
        result.timings["encode_mp4"] = round(time.perf_counter() - start, 3)
        for warning in result.warnings:
            gr.Warning(warning)
        frames, height, width = result.frames.shape[:3]
        info = {"seed": result.seed, "num_frames": int(frames), "fps": result.fps, "size": [int(width), int(height)],
                **details, "prompt_tokens": result.prompt_tokens, "timings": result.timings,
                "warnings": result.warnings, "profile": self.settings.profile}
        return str(path), info

    # ----------------------------------------------------------------- stopping, progress, errors
    def stop(self, request: gr.Request = None) -> None:
        """Ask the running call of this browser session to stop at its next step."""
        flag = _STOP_FLAGS.get(getattr(request, "session_hash", None))
        if flag is not None:
            flag.set()

    @staticmethod
    @contextmanager
    def _reporter(request: gr.Request | None, progress: gr.Progress):
        """A Reporter for one call; its session's stop flag lives as long as the call."""
        flag, session = threading.Event(), getattr(request, "session_hash", None)
        if session:
            _STOP_FLAGS[session] = flag
        try:
            yield Reporter(progress, session)
        finally:
            if session and _STOP_FLAGS.get(session) is flag:
                del _STOP_FLAGS[session]

    # ----------------------------------------------------------------- system panel
    def system_report(self) -> tuple[str, list[list]]:
        stats = self.cache.stats()
        gib = lambda n: f"{n / 2**30:.2f} GiB" if n is not None else "no limit"  # noqa: E731
        resident = ", ".join(f"{dev}: {gib(n)}" for dev, n in stats["bytes_by_device"].items()) or "nothing loaded"
        summary = (
            f"**Profile** `{self.settings.profile}` · **device** `{stats['device']}` · **dtype** `{self.settings.dtype}`  \n"
            f"**Resident** {resident} · **device budget** {gib(stats['device_budget'])} · "
            f"**RAM budget** {gib(stats['ram_budget'])}  \n"
            f"**Hits** {stats['hits']} · **misses** {stats['misses']} · **loads** {stats['loads']} "
            f"({stats['load_seconds']:.1f} s) · **offloads** {stats['offloads']} · **drops** {stats['drops']} · "
            f"**over budget** {stats['over_budget']}"
        )
        rows = [[c["key"], c["device"], round(c["bytes"] / 2**20, 1), "yes" if c["locked"] else ""]
                for c in stats["components"]]
        return summary, rows


@contextmanager
def user_errors():
    """Turn errors a person can act on into `gr.Error` (shown in the UI, sent to API clients as they are).
    Anything else is a bug and keeps its traceback."""
    try:
        yield
    except Cancelled as exc:
        raise gr.Error("Stopped before the end; nothing was saved.", print_exception=False) from exc
    except StudioError as exc:
        raise gr.Error(str(exc), print_exception=False) from exc
    except torch.OutOfMemoryError as exc:
        raise gr.Error("The GPU ran out of memory: try fewer frames, or a shorter clip with keyframes.") from exc


def _whole(value):
    """Gradio's Number and Slider send floats; a whole float is the int the user meant, anything else is
    left for validation to refuse with a message."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _identity_markdown(info: dict) -> str:
    similarity = info["face_similarity"]
    found = info["num_frames"] - similarity["frames_without_face"]
    identity = (f"**Identity** {similarity['mean']:.2f} mean face similarity over {found} of {info['num_frames']} frames"
                if similarity["mean"] is not None else
                f"**Identity** no face found in any of the {info['num_frames']} frames")
    if similarity["frames_without_face"] and similarity["mean"] is not None:
        identity += f"; {similarity['frames_without_face']} without a detectable face"
    return identity + "\n\n" + _summary_markdown(info)


def _summary_markdown(info: dict) -> str:
    """Warnings first (a person must see them), then one line on what was made and how long it took."""
    lines = [f"⚠️ {w}" for w in info["warnings"]]
    timings = " · ".join(f"{stage} {seconds:.2f} s" for stage, seconds in info["timings"].items())
    lines.append(
        f"**Seed** {info['seed']} · {info['num_frames']} frames at {info['fps']} fps · "
        f"{info['size'][0]}×{info['size'][1]} · {info['prompt_tokens']} prompt tokens  \n{timings}"
    )
    return "\n\n".join(lines)
