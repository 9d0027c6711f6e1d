"""Metamorphic time-lapse (MagicTime): AnimateDiff v3 + MagicTime's adapters, with keyframed stages.

diffusers' AnimateDiffPipeline does the sampling; this file composes the cached components, checks the
request before any model work, times each stage and reports what the text encoder dropped.
Keyframes ("0: a closed bud", "24: a rose in full bloom") and clips past 16 frames go through
diffusers' FreeNoise: sliding 16-frame context windows with per-frame prompt interpolation.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
from diffusers import AnimateDiffPipeline

from pipelines.core.cache import ModelCache
from pipelines.core.checks import MAX_TEXT_CHARS, Progress, check_int, check_sampling, check_text, excerpt, noop
from pipelines.core.errors import InputError
from pipelines.safety.guard import SafetyGuard, SafetyOptions, with_concepts
from pipelines.sd15.models import STYLES, Registry
from pipelines.sd15.modes import REFUSED_TIMELAPSE, TIMELAPSE_MODES, Mode, mode_named
from pipelines.sd15.sampling import (
    LivePreview,
    Preview,
    animatediff,
    decode_frames,
    prompt_warnings,
    step_reporter,
    timed_sampling,
)
from pipelines.timelapse.models import ensure_timelapse_available, timelapse_models

DEFAULT_NEGATIVE = "worst quality, low quality, letterboxed"
DEFAULT_STYLE = "Realistic Vision"
FPS = 8
CONTEXT_FRAMES = 16      # what the motion module was trained on; it breaks beyond this without FreeNoise
CONTEXT_STRIDE = 4
MIN_FRAMES, MAX_FRAMES = 8, 64

_KEYFRAME_LINE = re.compile(r"^\s*(\d+)\s*[:=]\s*(.*?)\s*$")


# ----------------------------------------------------------------- the work a call does (the time estimate's input)
def windows(num_frames: int) -> int:
    """FreeNoise's 16-frame windows, sliding by 4, over a clip (64 frames: 13); one for a clip that fits one."""
    return 1 + math.ceil(max(0, num_frames - CONTEXT_FRAMES) / CONTEXT_STRIDE)


def frame_passes(num_frames: int, guided: bool, windows_sliding: bool) -> int:
    """Frames through the UNet per denoising step: every FreeNoise window's frames, twice with guidance
    (pipelines/core/estimate.py multiplies them by this device's seconds per frame-pass)."""
    if windows_sliding and num_frames > CONTEXT_FRAMES:
        frames = windows(num_frames) * CONTEXT_FRAMES
    else:
        frames = num_frames
    return frames * (2 if guided else 1)


def parse_keyframes(text: str) -> dict[int, str]:
    """'0: a closed rose bud' / '24: a rose in full bloom' (one stage per line) -> {0: ..., 24: ...}."""
    check_text("The keyframes", text, 4 * MAX_TEXT_CHARS)
    stages: dict[int, str] = {}
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        match = _KEYFRAME_LINE.match(line)
        if not match:
            raise InputError(
                f"Keyframe line {number} (“{excerpt(line.strip())}”) does not parse: write one stage per line as "
                "“frame: description”, for example “0: a closed rose bud”."
            )
        frame, description = int(match.group(1)), match.group(2)
        if not description:
            raise InputError(f"Keyframe line {number} has no description after '{frame}:'.")
        if frame in stages:
            raise InputError(f"Keyframe line {number} repeats frame {frame}: give each frame one stage.")
        stages[frame] = description
    return dict(sorted(stages.items()))


@dataclass(frozen=True)
class TimelapseRequest:
    prompt: str
    keyframes: dict[int, str] = field(default_factory=dict)   # frame -> stage; frame 0 defaults to `prompt`
    negative_prompt: str = DEFAULT_NEGATIVE
    style: str = DEFAULT_STYLE
    num_frames: int = 16
    steps: int = 25
    guidance: float = 8.5
    seed: int = 0
    width: int = 512
    height: int = 512
    safety: SafetyOptions | None = SafetyOptions()   # None: no prompt guard (the output check still runs)
    mode: str = "quality"         # pipelines/sd15/modes.py: "quality", "fast" (Hyper-SD, 8 steps), "fast-preview"

    @property
    def run_mode(self) -> Mode:
        return mode_named(TIMELAPSE_MODES, self.mode, REFUSED_TIMELAPSE)

    def validate(self) -> None:
        """Every check a request can fail, with a message a person can act on. No model work happens here."""
        if self.safety is not None:
            self.safety.validate()
        self.run_mode.check(self.steps, self.guidance)
        check_text("The prompt", self.prompt)
        check_text("The negative prompt", self.negative_prompt)
        for frame, stage in self.keyframes.items():
            check_text(f"Keyframe {frame}", stage)
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("Write a prompt: describe what changes over time, e.g. 'a seed grows into a sunflower'.")
        if self.style not in STYLES:
            raise InputError(f"Unknown style {self.style!r}; choose one of: {', '.join(STYLES)}.")
        check_int("Frames", self.num_frames, MIN_FRAMES, MAX_FRAMES)
        if self.num_frames > CONTEXT_FRAMES and not self.keyframes:
            raise InputError(
                f"More than {CONTEXT_FRAMES} frames needs keyframes: the motion model breaks beyond "
                f"{CONTEXT_FRAMES} frames unless stages guide it. Add keyframes or use {CONTEXT_FRAMES} frames."
            )
        check_sampling(self.steps, self.guidance, self.seed, self.width, self.height)
        for frame, stage in self.keyframes.items():
            if not 0 <= frame < self.num_frames:
                raise InputError(
                    f"Keyframe {frame} is past the last frame ({self.num_frames - 1}): the clip has "
                    f"{self.num_frames} frames, numbered 0 to {self.num_frames - 1}."
                )
            if not stage.strip():
                raise InputError(f"Keyframe {frame} has no description.")

    def stages(self) -> dict[int, str]:
        """The per-frame prompts FreeNoise gets: the keyframes, with the main prompt as frame 0 by default."""
        return {0: self.prompt.strip(), **self.keyframes} if self.keyframes else {}


@dataclass
class TimelapseResult:
    frames: np.ndarray            # (T, H, W, 3) uint8
    seed: int
    fps: int
    timings: dict[str, float]     # seconds: load, text_encoding, denoise (total and per step), decode, ...
    prompt_tokens: int            # tokens of the main prompt, without start/end markers
    warnings: list[str]           # e.g. the words CLIP dropped past its 77-token window
    safety: dict = field(default_factory=lambda: {"enabled": False})   # what the guard flagged and did
    mode: str = "quality"


def _disable_free_noise(pipe: AnimateDiffPipeline) -> None:
    """`pipe.disable_free_noise()` without its crash: diffusers 0.42 lists `mid_block` unconditionally there
    and fails on UNets without a motion mid-block, which AnimateDiff v3 (MagicTime's) is. Same steps otherwise."""
    if hasattr(pipe.unet.mid_block, "motion_modules"):
        pipe.disable_free_noise()
        return
    pipe._free_noise_context_length = None
    for block in [*pipe.unet.down_blocks, *pipe.unet.up_blocks]:
        pipe._disable_free_noise_in_block(block)


class TimelapsePipeline:
    def __init__(self, cache: ModelCache, registry: Registry, guard: SafetyGuard | None = None):
        self.cache, self.registry, self.guard = cache, registry, guard or SafetyGuard()

    def __call__(self, request: TimelapseRequest, progress: Progress = noop,
                 preview: Preview | None = None) -> TimelapseResult:
        """`preview`: called with a glimpse of the clip every few steps (pipelines/common.LivePreview)."""
        request.validate()
        mode = request.run_mode
        tiny_decoder = mode.tiny_decoder or preview is not None
        models = timelapse_models(self.registry, request.style, fast=mode.fast)
        needed = [models.tokenizer, models.text_encoder, models.vae, models.unet,
                  *([models.tiny_vae] if tiny_decoder else [])]
        if not self.cache.holds(*needed):
            ensure_timelapse_available(self.registry, request.style, fast=mode.fast, tiny_decoder=tiny_decoder)
        timings: dict[str, float] = {}

        progress(0.0, "Loading models")
        start = time.perf_counter()
        with self.cache.use(*needed) as (tok, te, vae, unet, *tiny):
            timings["load"] = time.perf_counter() - start
            texts = {"The prompt": request.prompt, "The negative prompt": request.negative_prompt or ""}
            texts.update({f"Keyframe {frame}": stage for frame, stage in request.keyframes.items()})
            counts, warnings = prompt_warnings(tok, texts)
            pipe = animatediff(vae, te, tok, unet, models.scheduler_config, models.scheduler)
            live = LivePreview(pipe, tiny[0], preview) if preview is not None else None

            stages = request.stages()
            plan = None
            if request.safety is not None:
                start = time.perf_counter()
                plan = self.guard.plan(tok, te, list(stages.values()) or [request.prompt], request.safety,
                                       request.steps)
                timings["safety_prompt"] = time.perf_counter() - start
            negative = with_concepts(request.negative_prompt, request.safety)
            if stages:
                # enable_free_noise reads one number from the motion adapter's config; the adapter itself is
                # already merged into the UNet, so hand it that number instead of keeping a second copy on the GPU.
                pipe.motion_adapter = SimpleNamespace(config=SimpleNamespace(
                    motion_max_seq_length=unet.config.motion_max_seq_length))
                # FreeNoise replaces the motion module's transformer blocks in place: undo it whatever happens.
                pipe.enable_free_noise(context_length=min(CONTEXT_FRAMES, request.num_frames),
                                       context_stride=CONTEXT_STRIDE)
            try:
                with timed_sampling(pipe, timings, request.steps), self.guard.applied(pipe, plan):
                    latents = pipe(
                        prompt=stages or request.prompt,
                        negative_prompt=negative or None,
                        num_frames=request.num_frames,
                        height=request.height,
                        width=request.width,
                        num_inference_steps=request.steps,
                        guidance_scale=request.guidance,
                        generator=torch.Generator("cpu").manual_seed(request.seed),
                        output_type="latent",
                        callback_on_step_end=step_reporter(progress, request.steps, live),
                    ).frames
            finally:
                if stages:
                    _disable_free_noise(pipe)
            if live is not None:
                timings["preview"] = live.spent

            progress(1.0, "Decoding frames")
            start = time.perf_counter()
            frames = decode_frames(pipe, latents, chunk=CONTEXT_FRAMES, vae=tiny[0] if mode.tiny_decoder else None)
            timings["decode"] = time.perf_counter() - start

        return TimelapseResult(
            frames=frames, seed=request.seed, fps=FPS, prompt_tokens=counts["The prompt"],
            timings={k: round(v, 3) for k, v in timings.items()}, warnings=warnings,
            safety=plan.report() if plan is not None else {"enabled": False}, mode=mode.name,
        )



