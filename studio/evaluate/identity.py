"""`python -m studio.evaluate identity --run DIR`: how well the identity holds over a batch run of the Identity tab.

    python -m studio.batch identity --prompts people.csv --out runs/id --seeds 3
    python -m studio.evaluate identity --run runs/id

Per frame, the similarity of the largest face to the reference identity (the mean dlib descriptor of the item's
photos) as the studio measures it for every clip: max(0, 1 − L2 distance) of dlib's 128-d face descriptors
(`pipelines.identity.faces.face_similarity`; same person ≈ 0.8, different ≈ 0.2–0.3). It is **not** the papers'
FaceSim-Arc (ArcFace cosine; ID-Animator's and ConsisID's tables): compare runs with each other, not with papers.
Scores: per item the mean over the frames with a face, its spread, and the share of frames where a face was found;
per prompt the distribution over its seeds' frames (the box plot); overall the mean over every frame with a face.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from studio.evaluate.report import Plot, Report, Table, read_run, run_line, short, write_report

COLUMNS = ["index", "seed", "prompt", "photos", "frames", "frames_with_face", "face_share", "mean_similarity",
           "min_similarity", "max_similarity"]


def item_scores(row: dict) -> dict:
    """One scores.csv row from a manifest row's per-frame similarities (None where no face was found)."""
    per_frame = row["info"]["face_similarity"]["per_frame"]
    found = [s for s in per_frame if s is not None]
    nan = float("nan")
    return {"index": row["index"], "seed": row["seed"], "prompt": row["input"]["prompt"],
            "photos": len(row["input"]["photos"]), "frames": len(per_frame), "frames_with_face": len(found),
            "face_share": len(found) / len(per_frame) if per_frame else nan,
            "mean_similarity": statistics.fmean(found) if found else nan,
            "min_similarity": min(found, default=nan), "max_similarity": max(found, default=nan), "_found": found}


def run_evaluation(args: argparse.Namespace) -> int:
    run = Path(args.run)
    meta, rows = read_run(run, "identity")
    done = [r for r in rows if r["status"] == "done"]
    scores = [item_scores(r) for r in done]
    every = [s for item in scores for s in item["_found"]]
    frames = sum(s["frames"] for s in scores)
    by_prompt: dict[int, list[float]] = {}
    for item in scores:
        by_prompt.setdefault(item["index"], []).extend(item["_found"])
    random = any(r["info"]["face_similarity"].get("random") for r in done)

    def box(figure):
        ax = figure.add_subplot()
        labels = [f"#{i}" for i in by_prompt]
        ax.boxplot([v if v else [float("nan")] for v in by_prompt.values()], tick_labels=labels)
        ax.set_xlabel("prompt (row of the prompt set)")
        ax.set_ylabel("face similarity (dlib, 0–1)")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)

    def share(figure):
        ax = figure.add_subplot()
        ax.bar([f"#{s['index']}/s{s['seed']}" for s in scores], [s["face_share"] for s in scores], color="#4f46e5")
        ax.set_ylabel("share of frames with a face")
        ax.set_ylim(0, 1.05)
        ax.tick_params(axis="x", rotation=60, labelsize=7)

    overall = [["all", len(done), frames, len(every), len(every) / frames if frames else float("nan"),
                statistics.fmean(every) if every else float("nan"),
                statistics.pstdev(every) if len(every) > 1 else float("nan")]]
    tables = [Table("Overall", ["items", "clips", "frames", "frames with a face", "share with a face",
                                "mean similarity", "std"], overall),
              Table("Per item", ["row", "seed", "prompt", "frames with a face", "mean similarity", "min", "max"],
                    [[s["index"], s["seed"], short(s["prompt"]), f"{s['frames_with_face']}/{s['frames']}",
                      s["mean_similarity"], s["min_similarity"], s["max_similarity"]] for s in scores])]
    report = Report(
        "Identity evaluation: face similarity to the reference", profile=meta["profile"],
        intro=[run_line(run, meta, rows),
               "Face similarity is the studio's own dlib measure, max(0, 1 − L2) of 128-d descriptors: not the "
               "papers' ArcFace FaceSim, so compare runs with each other, not with published numbers."
               + (" On the tiny profile the per-frame similarities are random stand-ins (its noise has no face)."
                  if random else "")],
        tables=tables,
        plots=[Plot("similarity-per-prompt", "Face similarity per prompt (every frame with a face, all seeds)", box),
               Plot("face-share", "Share of frames with a face found, per clip", share)],
        notes=["similarity(frame) = max(0, 1 − ‖d(frame) − mean(d(photos))‖₂), d = dlib's 128-d face descriptor of "
               "the largest face; a frame without a face has none and counts against the share with a face.",
               "mean similarity: over frames with a face; share with a face = frames with a face / frames."])
    write_report(run, report, COLUMNS, scores, rows,
                 {"face similarity": overall[0][5], "share with a face": overall[0][4]})
    return 0


def add_parser(commands) -> None:
    """This evaluation's subcommand and its flags, on the CLI's subparsers (studio/evaluate/cli.py)."""
    sub = commands.add_parser("identity", help="face similarity to the reference over a batch run of the Identity tab")
    sub.add_argument("--run", required=True, help="a finished `python -m studio.batch identity` folder")
    sub.set_defaults(handler=run_evaluation)
