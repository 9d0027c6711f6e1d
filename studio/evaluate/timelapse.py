"""`python -m studio.evaluate timelapse --run DIR`: text alignment and change over time of a Time-lapse batch run.

    python -m studio.batch timelapse --prompts ../shared/data/chronomagic-bench-150.csv --out runs/tl
    python -m studio.evaluate timelapse --run runs/tl

Three scores per clip, all in the space of CLIP ViT-L/14 (`openai/clip-vit-large-patch14`, the CLIP whose text
tower is SD1.5's text encoder; `studio/evaluate/clip.py`, on the GPU when there is one):

- CLIP score: per frame 100 · max(cos(image, prompt), 0), the mean over the frames (text-video alignment);
- metamorphic amplitude A = 1 − cos(mean of the first k frame embeddings, mean of the last k), k = max(1, round(N/8)):
  how far the end of the clip drifts from its start (0 for a still clip);
- temporal coherence C = the mean cosine of consecutive frames' embeddings (1 for identical frames).

These are proxies, **not** ChronoMagic-Bench's MTScore (InternVideo2 retrieval against time-lapse captions) or
CHScore (CoTracker point tracks): comparable between runs of this studio, not with the benchmark's leaderboard.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from studio.evaluate.report import (
    Plot,
    Report,
    Table,
    clip_frames,
    read_run,
    run_line,
    short,
    write_report,
)

COLUMNS = ["index", "seed", "prompt", "category", "frames", "clip_score", "amplitude", "coherence"]


def score_clip(scorer, frames, prompt: str) -> dict:
    """CLIP score, amplitude and coherence of one clip (see the module's docstring for the formulas)."""
    from studio.evaluate.clip import amplitude, coherence

    embeddings = scorer.image_embeddings(frames)
    return {"frames": len(frames), "clip_score": scorer.clip_score(frames, prompt),
            "amplitude": amplitude(embeddings), "coherence": coherence(embeddings)}


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def run_evaluation(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from studio.evaluate.clip import CLIP_L, scorer

    run = Path(args.run)
    meta, rows = read_run(run, "timelapse")
    done = [r for r in rows if r["status"] == "done"]
    device = "cuda" if torch.cuda.is_available() and meta["profile"] != "tiny" else "cpu"
    model = scorer(meta["profile"], device)
    scores = []
    for row in tqdm(done, desc="clips", unit="clip"):
        scores.append({"index": row["index"], "seed": row["seed"], "prompt": row["input"]["prompt"],
                       "category": row["input"].get("category", ""),
                       **score_clip(model, clip_frames(run, row["outputs"]["video"]), row["input"]["prompt"])})
    groups: dict[str, list[dict]] = {}
    for item in scores:
        groups.setdefault(item["category"] or "all", []).append(item)
    if list(groups) != ["all"]:
        groups = {**dict(sorted(groups.items())), "overall": scores}
    summary = [[name, len(group), _mean([s["clip_score"] for s in group]), _mean([s["amplitude"] for s in group]),
                _mean([s["coherence"] for s in group])] for name, group in groups.items()]

    def scatter(figure):
        ax = figure.add_subplot()
        for name, group in groups.items():
            if name != "overall":
                ax.scatter([s["amplitude"] for s in group], [s["coherence"] for s in group], label=name, s=24)
        ax.set_xlabel("metamorphic amplitude A (0 = still)")
        ax.set_ylabel("temporal coherence C")
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend(fontsize=7)

    def clip_bars(figure):
        ax = figure.add_subplot()
        ax.bar([f"#{s['index']}/s{s['seed']}" for s in scores], [s["clip_score"] for s in scores], color="#0d9488")
        ax.set_ylabel("CLIP score (0–100)")
        ax.tick_params(axis="x", rotation=60, labelsize=7)

    tables = [Table("Summary", ["category", "clips", "CLIP score", "amplitude A", "coherence C"], summary),
              Table("Per clip", ["row", "seed", "prompt", "CLIP score", "A", "C"],
                    [[s["index"], s["seed"], short(s["prompt"]), s["clip_score"], s["amplitude"], s["coherence"]]
                     for s in scores])]
    report = Report(
        "Time-lapse evaluation: text alignment, amplitude and coherence", profile=meta["profile"],
        intro=[run_line(run, meta, rows),
               f"Scored in the image space of {CLIP_L} (tiny profile: a random tiny CLIP of the same class). "
               "Amplitude and coherence are proxies in CLIP space, not ChronoMagic-Bench's MTScore or CHScore."],
        tables=tables,
        plots=[Plot("amplitude-coherence", "Amplitude against coherence, one point per clip", scatter),
               Plot("clip-score", "CLIP score per clip", clip_bars)],
        notes=["CLIP score = mean over frames of 100 · max(cos(E_img(frame), E_txt(prompt)), 0); the prompt is cut "
               "at CLIP's 77 tokens, as the generator's text encoder cuts it.",
               "A = 1 − cos(mean(ê_1..ê_k), mean(ê_N−k+1..ê_N)), ê the L2-normalised frame embeddings, "
               "k = max(1, round(N/8)).",
               "C = mean over i of cos(ê_i, ê_i+1)."])
    overall = summary[-1]
    write_report(run, report, COLUMNS, scores, rows,
                 {"CLIP score": overall[2], "amplitude": overall[3], "coherence": overall[4]})
    return 0


def add_parser(commands) -> None:
    """This evaluation's subcommand and its flags, on the CLI's subparsers (studio/evaluate/cli.py)."""
    sub = commands.add_parser("timelapse", help="CLIP score, amplitude and coherence over a Time-lapse batch run")
    sub.add_argument("--run", required=True, help="a finished `python -m studio.batch timelapse` folder")
    sub.set_defaults(handler=run_evaluation)
