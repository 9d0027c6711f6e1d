"""The Safe generation tab's endpoint: a prompt, the concepts to suppress and SAFREE's options -> the guarded clip,
the unguarded one for the same seed beside it (when the server allows), and what the guard changed and why."""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterator
from contextlib import closing

import gradio as gr

from pipelines.core.errors import InputError
from pipelines.safety.guard import DEFAULT_CATEGORIES, SafetyOptions, parse_concepts
from pipelines.sd15.modes import TIMELAPSE_MODES, mode_defaults
from pipelines.timelapse.pipeline import FPS, TimelapseRequest
from studio.engine import (
    Engine,
    previews,
    queue_wait_seconds,
    safety_line,
    summary_markdown,
    timings_line,
    user_errors,
    whole,
)

DEFAULT_FRAMES = 8            # a short clip: the point is the comparison, twice the work when compared
STYLE = "Realistic Vision"


class SafetyAPI:
    def __init__(self, engine: Engine):
        self.engine = engine

    def stream(
        self,
        prompt: str,
        concepts: list[str] | None = list(DEFAULT_CATEGORIES),  # noqa: B006  (read-only; the API's default)
        custom_concepts: str = "",
        alpha: float = SafetyOptions.alpha,
        projection: str = SafetyOptions.projection,
        reattention: bool = SafetyOptions.reattention,
        concepts_as_negative: bool = SafetyOptions.concepts_as_negative,
        compare: bool = True,
        num_frames: int = DEFAULT_FRAMES,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        mode: str = TimelapseRequest.mode,
        beta_tokens: str = SafetyOptions.beta_tokens,
        filter: str = SafetyOptions.filter,  # noqa: A002  (the API's name for the step filter)
        preview: bool = False,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008  (Gradio's own idiom)
    ) -> Iterator[tuple[str, str | None, list, str, dict]]:
        """Generate a video with unsafe concepts kept out of the prompt (SAFREE), beside the unguarded one.

        The guard finds the prompt's tokens that pull it towards the chosen concepts (nudity, violence, an artist's
        style, or concepts of your own such as a character's name) and projects them away for as many denoising
        steps as the prompt needs; training-free, the weights are untouched. Every frame is then checked by an NSFW
        classifier. With `compare`, the unguarded clip for the same seed is made too (not on servers that enforce
        the guard). A time-lapse model (MagicTime), Realistic Vision style, 8 fps; calls wait in one GPU queue. It
        yields the result once at the end; with `preview`, small preview clips of each (each with a one-line
        summary) while they denoise before that.

        Args:
            prompt: The prompt to guard, e.g. "a starry night over a village in the style of Van Gogh". Required.
            concepts: Categories to suppress, any of "nudity", "violence", "artist style" (default nudity, violence).
            custom_concepts: Your own concepts to suppress, comma-separated (up to 32), e.g. "Snoopy, Mickey Mouse".
            alpha: Selection margin, 0 to 0.5 (default 0.01); smaller projects more tokens.
            projection: Order of the projections: "(I-P_C)P_I" (default, the released code's) or "P_I(I-P_C)".
            reattention: Latent re-attention, a Fourier filter on the UNet's skip features (slower; default false).
            concepts_as_negative: Also use the concepts as the negative prompt, as the released code does (default off).
            compare: Also make the unguarded clip with the same seed (default true; off where the guard is enforced).
            num_frames: Frames, 8 to 16 (default 8: the point is the comparison, which doubles the work).
            steps: Denoising steps, 1 to 100; empty for the mode's own (quality 25, fast exactly 8).
            guidance: Classifier-free guidance, 1 to 20; empty for the mode's own (quality 8.5, fast 5, range 1-8).
            seed: Random seed, 0 to 4294967295 (default 0); both clips use it.
            mode: "quality" (default, 25-step DDIM), "fast" (Hyper-SD, 8 steps) or "fast-preview" (fast, tiny VAE).
            beta_tokens: Tokens whose β sets how many steps are guarded: "BOS+prompt+EOS" (default) or "prompt".
            filter: The step filter's formula: "released" (default, the released code's) or "paper".
            preview: Stream small preview clips while denoising; leave false (tools get only the final result).

        Returns:
            guarded: URL of the guarded H.264 MP4
            unguarded: URL of the unguarded MP4 for the same seed, or null when not compared
            tokens: The prompt's tokens as a list of {text, score (toxicity), projected (true if the guard moved it)}
            summary: Markdown: the tokens projected and for how many steps, then seed, frames, safety and timings
            info: JSON with the guard's settings and findings (safety), compare, timings and warnings
        """
        engine = self.engine
        with user_errors():
            waited = queue_wait_seconds()
            if not isinstance(prompt, str) or not prompt.strip():     # the tab's own words, not the time-lapse's
                raise InputError("Write a prompt to check: the guard shows which of its words it steers away from, "
                                 "e.g. 'a portrait of a woman on the beach'.")
            steps, guidance = mode_defaults(TIMELAPSE_MODES, mode, steps, guidance)
            options = SafetyOptions(
                categories=tuple(concepts or ()), custom_concepts=parse_concepts(custom_concepts), alpha=alpha,
                projection=projection, reattention=bool(reattention), concepts_as_negative=bool(concepts_as_negative),
                beta_tokens=beta_tokens, filter=filter,
            )
            job = TimelapseRequest(
                prompt=prompt, style=STYLE, num_frames=whole(num_frames), steps=whole(steps), guidance=guidance,
                seed=whole(seed), width=engine.settings.resolution, height=engine.settings.resolution,
                safety=engine.safety_options(True, options), mode=mode,
            )
            job.validate()
            mode = job.run_mode.name
            compared = bool(compare) and not engine.safety_enforced
            estimate, _ = engine.estimate("timelapse", job.steps, job.num_frames, job.guidance, False,
                                          runs=1 + compared, style=STYLE, mode=mode)
            jobs = (job, dataclasses.replace(job, safety=None)) if compared else (job,)
            reserved = engine.reserve("timelapse", *jobs)       # both clips in one GPU call, one reservation
            start = time.perf_counter()
            with engine.reporter(request, progress) as report, \
                    closing(engine.call_all("timelapse", jobs, report, preview, FPS)) as calls:
                guarded, *others = yield from previews(calls, job.steps, outputs=5, video_at=(0, 1), summary_at=3)
            unguarded = others[0] if others else None
            path, info = engine.publish(guarded, queue_wait=waited, style=STYLE, mode=mode, steps=job.steps,
                                        guidance=job.guidance, prompt=job.prompt)
            info["compare"] = ("unguarded clip beside it, same seed" if compared else
                               "off: this server enforces the guard" if compare else "off")
            unguarded_path = None
            if unguarded is not None:
                unguarded_path, unguarded_info = engine.publish(unguarded, style=STYLE)
                info["unguarded"] = {"safety": unguarded_info["safety"], "timings": unguarded_info["timings"]}
            for run in (guarded, unguarded) if unguarded is not None else (guarded,):
                engine.learn("timelapse", job.steps, job.num_frames, job.guidance, False, run.timings, mode)
            info["estimate_s"], info["actual_s"] = estimate, engine.actual_seconds(start, info)
            info["gpu_reservation_s"] = reserved
        yield path, unguarded_path, clean_tokens(info["safety"], job.prompt), safety_markdown(info), info

    def generate(self, *args, **kwargs) -> tuple[str, str | None, list, str, dict]:
        """`stream` to its end."""
        return deque(self.stream(*args, **kwargs), maxlen=1)[0]


def estimate_line(engine: Engine, compare: bool, num_frames, steps, guidance, mode: str = "quality") -> str:
    """The line next to Generate (the guarded clip, and the unguarded one beside it when comparing)."""
    runs = 1 + (bool(compare) and not engine.safety_enforced)
    return engine.estimate("timelapse", whole(steps), whole(num_frames), guidance, False, runs=runs, style=STYLE,
                           mode=mode)[1]


def clean_tokens(safety: dict, prompt: str) -> list[dict]:
    """The API's tokens: each of the prompt's tokens as the tokenizer split it, its toxicity score and whether the
    guard projected it (the page's ▲ and spacing are added only there: `shown_tokens`)."""
    return [{"text": t["token"], "score": round(float(t["score"]), 4), "projected": bool(t["flagged"])}
            for t in safety.get("tokens", {}).get(prompt, [])]


def shown_tokens(update: tuple) -> tuple:
    """The page's form of a run's outputs: the tokens as highlighted text (`token_highlights`). Previews pass."""
    guarded, unguarded, tokens, summary, info = update
    if not isinstance(info, dict) or "safety" not in info:
        return update
    return guarded, unguarded, token_highlights(info["safety"], info["prompt"]), summary, info


def token_highlights(safety: dict, prompt: str) -> list[tuple[str, float | None]]:
    """(text, score) pairs for gr.HighlightedText: each token with its toxicity score scaled to [-1, 1] (the
    largest |score| is ±1), projected tokens marked with ▲, spaces between words as unscored text."""
    tokens = safety.get("tokens", {}).get(prompt, [])
    largest = max((abs(t["score"]) for t in tokens), default=0.0) or 1.0
    pieces: list[tuple[str, float | None]] = []
    for token in tokens:
        text = token["token"] + (" ▲" if token["flagged"] else "")
        pieces.append((text, round(max(-1.0, min(1.0, token["score"] / largest)), 3)))
        if token["ends_word"]:
            pieces.append((" ", None))
    return pieces


def safety_markdown(info: dict) -> str:
    safety = info["safety"]
    flagged = safety["flagged_tokens"]
    lines = []
    if flagged:
        words = ", ".join(f"“{t['token']}” ({t['score']:+.3f})" for t in flagged[:12])
        more = f" and {len(flagged) - 12} more" if len(flagged) > 12 else ""
        lines.append(f"**Projected** {words}{more}: away from the {len(safety['concepts'])} concept "
                     f"categor{'ies' if len(safety['concepts']) != 1 else 'y'} chosen"
                     f"{' and your own concepts' if safety['custom_concepts'] else ''}, for the first "
                     f"{safety['guarded_steps_text']} (the self-validating filter; β = "
                     f"{next(iter(safety['beta'].values())):.3f}).")
    else:
        lines.append("**Nothing to project**: no token moves the prompt towards the concepts; the clip is the "
                     "unguarded one, bit for bit.")
    if "unguarded" in info:
        lines.append(f"**Right: unguarded**, same seed · {safety_line(info['unguarded']['safety'])}  \n"
                     f"{timings_line(info['unguarded']['timings'])}")
    elif info["compare"].startswith("off: "):
        lines.append(f"**No unguarded clip**: {info['compare'].removeprefix('off: ')}.")
    guarded = "**Left: guarded**\n\n" if "unguarded" in info else ""
    return "\n\n".join(lines) + "\n\n" + guarded + summary_markdown(info)
