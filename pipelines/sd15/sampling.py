"""The AnimateDiff plumbing the SD1.5 tabs share: CLIP's token window, classifier-free guidance's rule, a pipeline per
call around cached components, step reports, live previews and decoding."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from pipelines.core.checks import Progress, excerpt
from pipelines.core.logs import hide_known_fallback_warnings
from pipelines.core.video import to_uint8

hide_known_fallback_warnings()      # diffusers' pipeline import says two harmless lines without torchvision

import diffusers  # noqa: E402  (after the filter: importing it is what says them)
from diffusers import AnimateDiffPipeline  # noqa: E402

Preview = Callable[[np.ndarray, int], None]     # (frames (T, H, W, 3) uint8, steps done): a glimpse of the clip


def uses_cfg(guidance: float) -> bool:
    """Whether a call runs classifier-free guidance: diffusers' own rule (`do_classifier_free_guidance` is
    `guidance_scale > 1`). Anything that builds both branches itself (face embeds) must follow it."""
    return guidance > 1


def clip_overflow(tokenizer, text: str) -> tuple[int, str]:
    """(number of tokens, the words past CLIP's window that the encoder never sees).

    Reported in whole words as the user wrote them; a word cut in two by the window counts as dropped.
    """
    count = lambda words: len(tokenizer(" ".join(words), add_special_tokens=False).input_ids)  # noqa: E731
    words = text.split()
    total, room = count(words), tokenizer.model_max_length - 2   # start and end markers take two places
    if total <= room:
        return total, ""
    low, high = 0, len(words)            # the longest prefix of words that fits: binary search
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if count(words[:middle]) <= room else (low, middle - 1)
    return total, " ".join(words[low:])


def prompt_warnings(tokenizer, texts: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """Token counts per named text, and a warning naming the dropped words of each text CLIP cuts short."""
    counts, warnings = {}, []
    for name, text in texts.items():
        counts[name], dropped = clip_overflow(tokenizer, text)
        if dropped:
            warnings.append(
                f"{name} is {counts[name]} tokens long; CLIP reads only the first {tokenizer.model_max_length - 2}, "
                f"so these words were dropped: “{excerpt(dropped)}”"
            )
    return counts, warnings


def animatediff(vae, text_encoder, tokenizer, unet, scheduler_config: dict,
                scheduler: str = "DDIMScheduler") -> AnimateDiffPipeline:
    """A diffusers pipeline around cached components, made for one call: it costs ~1 ms and shares no
    state (scheduler timesteps, FreeNoise settings) between calls. The motion adapter is already in the UNet.
    `scheduler`: the diffusers scheduler class's name (the registry's, per mode)."""
    scheduler_class = getattr(diffusers, scheduler)
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=None, scheduler=scheduler_class.from_config(scheduler_config))
    pipe.set_progress_bar_config(disable=True)   # steps are reported through `progress` instead
    return pipe


@contextmanager
def timed_sampling(pipe: AnimateDiffPipeline, timings: dict[str, float], steps: int) -> Iterator[None]:
    """Split one diffusers call's time into text encoding and denoising (total and per step) in `timings`.
    Wraps the pipeline's `encode_prompt` (the pipeline is made for this call), so install it before anything else
    that wraps it: the safety guard's projection then counts as denoising, and FreeNoise's per-stage encodings
    add up as text encoding."""
    original, spent = pipe.encode_prompt, [0.0]

    def encode_prompt(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    pipe.encode_prompt = encode_prompt
    start = time.perf_counter()
    try:
        yield
    finally:
        pipe.encode_prompt = original
    total = time.perf_counter() - start
    timings["text_encoding"] = spent[0]
    timings["denoise"] = total - spent[0]
    timings["denoise_per_step"] = (total - spent[0]) / steps


def step_reporter(progress: Progress, steps: int, preview: LivePreview | None = None):
    """diffusers' callback_on_step_end that reports "Denoising step i/n" (and lets a Stop raise from it), and
    hands the live preview its chance after each step."""

    def on_step_end(pipe, step, timestep, tensors):
        progress((step + 1) / steps, f"Denoising step {step + 1}/{steps}")
        if preview is not None:
            preview.after_step(step + 1, steps)
        return tensors

    return on_step_end


class LivePreview:
    """While a call denoises: the clip as it would look now, decoded by the tiny decoder at half size, for `show`.

    What is decoded is the scheduler's prediction of the clean latents at that step (its `pred_original_sample`),
    caught on the way out of `scheduler.step`: the latents the step callback sees are still noisy and would show
    noise for most of the run. A preview comes after the first step (something to see within a second on a GPU),
    then whenever its cost keeps the previews' total under `budget` of the time so far (4 %: the issue's 5 % bound
    with room for the consumer), and never after the last step (the final decode follows)."""

    def __init__(self, pipe: AnimateDiffPipeline, tiny_vae, show: Preview, budget: float = 0.04):
        self.tiny_vae, self.show, self.budget = tiny_vae, show, budget
        self.latest: torch.Tensor | None = None
        self.spent = self.cost = 0.0
        self.shown = 0
        self.start = time.perf_counter()
        step = pipe.scheduler.step          # the scheduler is this call's own (see `animatediff`)

        def caught(*args, **kwargs):
            out = step(*args, **kwargs)
            self.latest = getattr(out, "pred_original_sample", None)
            return out

        pipe.scheduler.step = caught

    def after_step(self, done: int, steps: int) -> None:
        if self.latest is None or done >= steps:
            return
        elapsed = time.perf_counter() - self.start
        if self.shown and self.spent + self.cost > self.budget * elapsed:
            return
        start = time.perf_counter()
        frames = decode_with(self.tiny_vae, self.latest, chunk=self.latest.shape[2])
        self.show(frames[:, ::2, ::2], done)
        self.cost = time.perf_counter() - start
        self.spent += self.cost
        self.shown += 1


@torch.inference_mode()
def decode_with(vae, latents: torch.Tensor, chunk: int) -> np.ndarray:
    """Latents of one clip (1, C, T, h, w) -> (T, H, W, 3) uint8 frames through `vae` (the full VAE or TAESD):
    AnimateDiffPipeline.decode_latents' and its video processor's maths (times 1 / the VAE's scaling factor, decode
    `chunk` frames at a time, map [-1, 1] to [0, 1]; equal to them bit for bit, tests/test_fast_modes.py) without a
    pipeline around the decoder."""
    b, c, f, h, w = latents.shape
    x = (1 / vae.config.scaling_factor * latents).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    x = x.to(device=vae.device, dtype=vae.dtype)
    video = torch.cat([vae.decode(x[i:i + chunk]).sample for i in range(0, len(x), chunk)]).float()
    video = (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return to_uint8(video)


def decode_frames(pipe: AnimateDiffPipeline, latents: torch.Tensor, chunk: int, vae=None) -> np.ndarray:
    """Latents of one clip -> (T, H, W, 3) uint8 frames: through the pipeline's VAE, or `vae` (the tiny decoder
    of "Fast preview") when given. decode_with casts the latents to the decoder's dtype (the VAE may keep another
    than the UNet that made them: fp32 beside bf16 on a CPU)."""
    return decode_with(pipe.vae if vae is None else vae, latents, chunk)
