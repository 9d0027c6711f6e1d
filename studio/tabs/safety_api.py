"""The Safe generation tab's endpoint: a prompt, the concepts to suppress and SAFREE's options -> the guarded clip,
the unguarded one for the same seed beside it (when the server allows), and what the guard changed and why."""

from __future__ import annotations

import dataclasses
import time

import gradio as gr

from pipelines.core.errors import InputError
from pipelines.safety.guard import DEFAULT_CATEGORIES, SafetyOptions, parse_concepts
from pipelines.timelapse.pipeline import TimelapseRequest
from studio.engine import Engine, queue_wait_seconds, run_all_on_gpu, safety_line, summary_markdown, user_errors, whole

DEFAULT_FRAMES = 8            # a short clip: the point is the comparison, twice the work when compared
STYLE = "Realistic Vision"


class SafetyAPI:
    def __init__(self, engine: Engine):
        self.engine = engine

    def generate(
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
        steps: int = TimelapseRequest.steps,
        guidance: float = TimelapseRequest.guidance,
        seed: int = 0,
        mode: str = TimelapseRequest.mode,
        beta_tokens: str = SafetyOptions.beta_tokens,
        filter: str = SafetyOptions.filter,  # noqa: A002  (the API's name for the step filter)
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008  (Gradio's own idiom)
    ) -> tuple[str, str | None, list, str, dict]:
        """Returns (guarded MP4, unguarded MP4 or None, the prompt's tokens with their toxicity scores,
        summary Markdown, info)."""
        engine = self.engine
        with user_errors():
            waited = queue_wait_seconds()
            if not isinstance(prompt, str) or not prompt.strip():     # the tab's own words, not the time-lapse's
                raise InputError("Write a prompt to check: the guard shows which of its words it steers away from, "
                                 "e.g. 'a portrait of a woman on the beach'.")
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
            with engine.reporter(request, progress) as report:
                guarded, *others = run_all_on_gpu(engine.name, "timelapse", jobs, report)
            unguarded = others[0] if others else None
            path, info = engine.publish(guarded, queue_wait=waited, style=STYLE, mode=mode)
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
        tokens = token_highlights(info["safety"], job.prompt)
        return path, unguarded_path, tokens, safety_markdown(info), info


def estimate_line(engine: Engine, compare: bool, num_frames, steps, guidance, mode: str = "quality") -> str:
    """The line next to Generate (the guarded clip, and the unguarded one beside it when comparing)."""
    runs = 1 + (bool(compare) and not engine.safety_enforced)
    return engine.estimate("timelapse", whole(steps), whole(num_frames), guidance, False, runs=runs, style=STYLE,
                           mode=mode)[1]


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
        lines.append(f"**Right: unguarded**, same seed · {safety_line(info['unguarded']['safety'])}")
    elif info["compare"].startswith("off: "):
        lines.append(f"**No unguarded clip**: {info['compare'].removeprefix('off: ')}.")
    return "\n\n".join(lines) + "\n\n" + summary_markdown(info)
