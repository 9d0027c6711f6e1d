"""Small helpers every pipeline shares: request checks, CLIP's token window, the progress callback type."""

from __future__ import annotations

from collections.abc import Callable

from pipelines.errors import InputError

MAX_SEED = 2**32 - 1
MAX_STEPS = 100
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 20.0

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


def check_sampling(steps, guidance, seed, width, height) -> None:
    """The sampler's knobs, the same for every generating tab."""
    check_int("Steps", steps, 1, MAX_STEPS)
    check_number("Guidance", guidance, MIN_GUIDANCE, MAX_GUIDANCE)
    check_int("Seed", seed, 0, MAX_SEED)
    for name, size in (("Width", width), ("Height", height)):
        check_int(name, size, 64, 1024)
        if size % 8:
            raise InputError(f"{name} must be a multiple of 8, not {size}.")


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
