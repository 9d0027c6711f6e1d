"""What every generating pipeline shares: request checks, CLIP's token window, progress, and the
AnimateDiff plumbing (a pipeline per call around cached components, step reports, decoding)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler

from pipelines.errors import InputError
from pipelines.video import to_uint8

MAX_SEED = 2**32 - 1
MAX_STEPS = 100
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 20.0

MAX_TEXT_CHARS = 2000      # any prompt-like text; CLIP reads ~75 tokens (~300 characters) of it anyway
QUOTE_CHARS = 80           # at most this much of a user's text is quoted back in a message

Progress = Callable[[float, str], None]


def noop(fraction: float, desc: str) -> None:
    pass


def check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be a whole number, not {value!r}.")
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low} and {high}, not {value}.")


def check_number(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InputError(f"{name} must be between {low:g} and {high:g}, not {value!r}.")


def check_text(name: str, value, limit: int = MAX_TEXT_CHARS, required: bool = False) -> None:
    """A text input: a string (or nothing, when optional) of at most `limit` characters."""
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise InputError(f"{name} must be text, not {type(value).__name__}.")
    if len(value) > limit:
        raise InputError(f"{name} is {len(value):,} characters long; the studio takes at most {limit:,}.")


def excerpt(text: str, limit: int = QUOTE_CHARS) -> str:
    """`text` as quoted back to a person: whole if short, else its start and how much was left out."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return f"{cut} … ({len(text.split()) - len(cut.split())} more words)"


def check_sampling(steps, guidance, seed, width, height) -> None:
    """The sampler's knobs, the same for every generating tab."""
    check_int("Steps", steps, 1, MAX_STEPS)
    check_number("Guidance", guidance, MIN_GUIDANCE, MAX_GUIDANCE)
    check_int("Seed", seed, 0, MAX_SEED)
    for name, size in (("Width", width), ("Height", height)):
        check_int(name, size, 64, 1024)
        if size % 8:
            raise InputError(f"{name} must be a multiple of 8, not {size}.")


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


def animatediff(vae, text_encoder, tokenizer, unet, scheduler_config: dict) -> AnimateDiffPipeline:
    """A diffusers pipeline around cached components, made for one call: it costs ~1 ms and shares no
    state (scheduler timesteps, FreeNoise settings) between calls. The motion adapter is already in the UNet."""
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               motion_adapter=None, scheduler=DDIMScheduler.from_config(scheduler_config))
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


def step_reporter(progress: Progress, steps: int):
    """diffusers' callback_on_step_end that reports "Denoising step i/n" (and lets a Stop raise from it)."""

    def on_step_end(pipe, step, timestep, tensors):
        progress((step + 1) / steps, f"Denoising step {step + 1}/{steps}")
        return tensors

    return on_step_end


@torch.inference_mode()
def decode_frames(pipe: AnimateDiffPipeline, latents: torch.Tensor, chunk: int) -> np.ndarray:
    """Latents of one clip -> (T, H, W, 3) uint8 frames."""
    video = pipe.decode_latents(latents, decode_chunk_size=chunk)
    return to_uint8(pipe.video_processor.postprocess_video(video=video, output_type="np")[0])
