"""Quality and fast modes: what each generating tab's "Quality / Fast" choice runs (reference/performance.md).

A mode fixes what a distilled sampler was trained for — its step counts and the guidance it takes — and whether the
clip is decoded by the full VAE or by the tiny one (TAESD). Requests outside that are refused with the mode's numbers,
not quietly changed: a 30-step request in a 4-step mode is a mistake the person should see.
Quality of the fast paths against the baselines (identity similarity, metamorphic motion) needs the real weights on
a GPU and is not measured yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.core.errors import InputError


@dataclass(frozen=True)
class Mode:
    name: str                                   # the API's `mode`
    label: str                                  # the UI's choice
    steps: tuple[int, ...] | None               # the step counts it was distilled for (None: any)
    guidance: tuple[float, float] | None        # the guidance range it takes (None: the sampler's own range)
    default_steps: int
    default_guidance: float
    what: str                                   # one line: what runs
    tiny_decoder: bool = False                  # decode the clip with TAESD (softer, may flicker)
    hint: str = ""                              # the UI's few words, when `what` is too long for it

    @property
    def fast(self) -> bool:
        return self.name != "quality"

    def check(self, steps, guidance) -> None:
        """Refuse steps or guidance this mode was not made for, naming what it takes."""
        if self.steps is not None and steps not in self.steps:
            counts = " or ".join(str(s) for s in self.steps)
            raise InputError(f"{self.label} mode runs {self.what}, made for {counts} steps: set Steps to {counts} "
                             f"(not {steps!r}), or choose Quality mode for any number of steps.")
        if self.guidance is not None and isinstance(guidance, (int, float)):
            low, high = self.guidance
            if not low <= guidance <= high:
                raise InputError(f"{self.label} mode runs {self.what}, which takes guidance {low:g} to {high:g} "
                                 f"(not {guidance:g}); choose Quality mode for more.")


def _modes(quality: Mode, fast: Mode) -> dict[str, Mode]:
    preview = Mode(
        "fast-preview", "Fast preview", fast.steps, fast.guidance, fast.default_steps, fast.default_guidance,
        f"{fast.what}, decoded by the tiny decoder (TAESD: softer and it may flicker)", tiny_decoder=True,
        hint="Fast, decoded by the tiny decoder (softer, may flicker)")
    return {m.name: m for m in (quality, fast, preview)}


IDENTITY_MODES = _modes(
    Mode("quality", "Quality", None, None, 30, 8.0, "ID-Animator's 30-step DDIM with guidance"),
    # Lightning at 4 steps is distilled for CFG 1 (no negative prompt, no blank-face branch); at 8 steps its authors
    # allow a little guidance. Its motion module replaces AnimateDiff v2's, which ID-Animator was trained with.
    Mode("fast", "Fast", (4, 8), (1.0, 2.0), 4, 1.0, "AnimateDiff-Lightning (Euler, trailing timesteps)"),
)
TIMELAPSE_MODES = _modes(
    Mode("quality", "Quality", None, None, 25, 8.5, "MagicTime's 25-step DDIM with guidance"),
    # Hyper-SD15's 8-step CFG-preserving LoRA on the image layers; MagicTime's v3 motion module and its temporal
    # adapter stay as they are. Its authors recommend guidance 5-8, with the negative prompt kept.
    Mode("fast", "Fast", (8,), (1.0, 8.0), 8, 5.0, "Hyper-SD's 8-step LoRA (DDIM, trailing timesteps)"),
)

# Fast paths that look like they should work for the time-lapse and must not: they replace the motion module with a
# v2-layout one, and MagicTime's temporal adapter (trained on v3) loads into that without an error.
REFUSED_TIMELAPSE = {
    name: (f"{label} replaces the motion module with its own AnimateDiff v2-layout one, which drops MagicTime's "
           "temporal adapter (trained on v3): the clip would lose its metamorphosis without any error. "
           "The time-lapse's fast mode is 'fast' (Hyper-SD's LoRA on the image layers keeps MagicTime's motion).")
    for name, label in (("lightning", "AnimateDiff-Lightning"), ("animatelcm", "AnimateLCM"))
}


def refusal(name, refused: dict[str, str] | None) -> str | None:
    """Why the tab refuses the fast path `name`, or None if it does not."""
    return (refused or {}).get(name.strip().lower()) if isinstance(name, str) else None


def mode_named(modes: dict[str, Mode], name, refused: dict[str, str] | None = None) -> Mode:
    """The mode the API's `mode` names; refused names get the reason, unknown ones the choices."""
    if isinstance(name, str) and name.strip().lower() in modes:
        return modes[name.strip().lower()]
    if (why := refusal(name, refused)) is not None:
        raise InputError(why)
    raise InputError(f"mode must be one of {', '.join(repr(m) for m in modes)}, not {name!r}.")


def mode_defaults(modes: dict[str, Mode], name, steps, guidance) -> tuple:
    """Steps and guidance for a request that left them out (None): the named mode's own, as choosing the mode in
    the UI sets them. Given values stay as they are (a fast mode refuses the wrong ones); an unknown mode keeps
    the Nones for validation to refuse with the mode's message."""
    chosen = modes.get(name.strip().lower()) if isinstance(name, str) else None
    if chosen is None:
        return steps, guidance
    return (chosen.default_steps if steps is None else steps,
            chosen.default_guidance if guidance is None else guidance)
