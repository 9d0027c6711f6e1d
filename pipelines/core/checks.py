"""The request checks every pipeline shares: numbers in range, texts of bounded length, a user's text quoted back
short, and the progress callback's shape."""

from __future__ import annotations

from collections.abc import Callable

from pipelines.core.errors import InputError

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
