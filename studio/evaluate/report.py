"""What the `--run DIR` evaluations share: reading a finished `python -m studio.batch` run, and writing its report.

Every evaluation of a run writes, into the run's folder, `scores.csv` (a row per item), `report.md` and
`report.html` (the same tables, the plots embedded as PNGs so that the page travels as one file) and
`plots/<name>.png` beside them (the Markdown links those).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from studio.evaluate.common import DataError

# The batch tab each evaluation reads (the Safe generation tab is `safe` in studio.batch, `safety` here).
TAB_OF = {"identity": "identity", "timelapse": "timelapse", "safety": "safe", "segmentation": "segmentation"}
TINY_WARNING = "Tiny profile: random weights, the numbers are noise (they show the report works, nothing else)."


def read_run(run: Path, evaluation: str) -> tuple[dict, list[dict]]:
    """(run.json, the manifest rows) of a finished batch run of the tab `evaluation` scores."""
    from studio.batch import RUN_FILE, read_manifest

    meta_path = run / RUN_FILE
    if not meta_path.is_file():
        raise DataError(f"{run} is not a batch run (no {RUN_FILE}): make one with "
                        f"`python -m studio.batch {TAB_OF[evaluation]} --prompts FILE --out {run}`.")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("tab") != TAB_OF[evaluation]:
        other = next((e for e, t in TAB_OF.items() if t == meta.get("tab")), meta.get("tab"))
        raise DataError(f"{run} is a {meta.get('tab')} run: evaluate it with `python -m studio.evaluate {other} "
                        f"--run {run}`.")
    rows = sorted(read_manifest(run).values(), key=lambda r: (r["index"], r["seed"] if r["seed"] is not None else -1))
    if not rows:
        raise DataError(f"{run} has no finished items yet (manifest.jsonl is empty or missing).")
    return meta, rows


def clip_frames(run: Path, relative: str):
    """The frames of one of the run's clips, (T, H, W, 3) uint8, as a player shows them."""
    from pipelines.core.video import read_clip

    return read_clip(run / relative, max_frames=10_000, max_seconds=3600, max_pixels=4096 * 4096)[0]


@dataclass
class Table:
    heading: str
    columns: list[str]
    rows: list[list]
    note: str = ""


@dataclass
class Plot:
    name: str                                # plots/<name>.png
    title: str
    draw: Callable                           # draw(figure): fills a matplotlib Figure
    size: tuple[float, float] = (6.4, 3.6)


@dataclass
class Report:
    title: str
    intro: list[str]
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: str = "real"


def describe_options(options: dict) -> str:
    """A run's options as a sentence: "mode quality, num_frames 8, steps 2" (an option left to the default: out)."""
    def said(value) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        return ", ".join(map(str, value)) if isinstance(value, list) else str(value)

    return ", ".join(f"{k} {said(v)}" for k, v in options.items() if v is not None and v != "") or "the defaults"


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"      # NaN: nothing to score
    return "–" if value is None else str(value)


def _code(text: str) -> str:
    """Markdown's `code` spans as HTML's <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _png(plot: Plot) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    figure = Figure(figsize=plot.size, layout="constrained")
    plot.draw(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def write_scores(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})


def run_line(run: Path, meta: dict, rows: list[dict], noun: str = "items") -> str:
    """The report's first line: which run, of what, how."""
    return (f"Run `{run}`: {len(rows)} {noun} from `{meta['prompts']}`, profile `{meta['profile']}`, "
            f"options: {describe_options(meta['options'])}.")


def write_report(run: Path, report: Report, columns: list[str], scores: list[dict], rows: list[dict],
                 figures: dict[str, float]) -> str:
    """scores.csv, plots/*.png, report.md and report.html in `run` (the refused items of `rows` as a last table),
    then print the `figures` as `name: value` lines and where the report is; returns the Markdown."""
    refused = refused_table(rows)
    if refused:
        report.tables.append(refused)
    write_scores(run / "scores.csv", columns, scores)
    (run / "plots").mkdir(exist_ok=True)
    images = {}
    for plot in report.plots:
        images[plot.name] = _png(plot)
        (run / "plots" / f"{plot.name}.png").write_bytes(images[plot.name])
    warning = [f"> **Warning: {TINY_WARNING}**", ""] if report.profile == "tiny" else []
    md = [f"# {report.title}", "", *warning, *report.intro, ""]
    for table in report.tables:
        md += [f"## {table.heading}", "", "| " + " | ".join(table.columns) + " |",
               "|" + "---|" * len(table.columns)]
        md += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
        md += ["", table.note, ""] if table.note else [""]
    for plot in report.plots:
        md += [f"## {plot.title}", "", f"![{plot.title}](plots/{plot.name}.png)", ""]
    if report.notes:
        md += ["## How these were computed", "", *[f"- {n}" for n in report.notes], ""]
    text = "\n".join(md)
    (run / "report.md").write_text(text, encoding="utf-8")

    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(report.title)}</title><style>"
             "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1f2937}"
             "table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #d1d5db;padding:.25rem .6rem;"
             "text-align:right}th{background:#f3f4f6}td:first-child,th:first-child,td.t{text-align:left}"
             ".warning{background:#fef3c7;border-left:4px solid #d97706;padding:.5rem 1rem}img{max-width:100%}"
             ".note{color:#4b5563;font-size:.9em}</style></head><body>", f"<h1>{e(report.title)}</h1>"]
    if report.profile == "tiny":
        parts.append(f"<p class='warning'><strong>Warning:</strong> {e(TINY_WARNING)}</p>")
    parts += [f"<p>{_code(e(line))}</p>" for line in report.intro if line]
    for table in report.tables:
        parts.append(f"<h2>{e(table.heading)}</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in table.columns)
                     + "</tr>" + "".join("<tr>" + "".join(f"<td{' class=t' if isinstance(v, str) else ''}>{e(_cell(v))}</td>"
                                                           for v in row) + "</tr>"
                                         for row in table.rows) + "</table>")
        if table.note:
            parts.append(f"<p class='note'>{e(table.note)}</p>")
    for plot in report.plots:
        data = base64.b64encode(images[plot.name]).decode("ascii")
        parts.append(f"<h2>{e(plot.title)}</h2><img alt='{e(plot.title)}' src='data:image/png;base64,{data}'>")
    if report.notes:
        parts.append("<h2>How these were computed</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in report.notes)
                     + "</ul>")
    parts.append("</body></html>")
    (run / "report.html").write_text("\n".join(parts), encoding="utf-8")
    for name, value in figures.items():
        print(f"{name}: {value:.3f}")
    print(f"report: {run / 'report.html'}")
    return text


def refused_table(rows: list[dict]) -> Table | None:
    """The items the studio refused, with the message the page would have shown."""
    refused = [r for r in rows if r["status"] == "refused"]
    if not refused:
        return None
    return Table(f"Refused items ({len(refused)} of {len(rows)})", ["row", "seed", "message"],
                 [[r["index"], r["seed"], r["refusal"]] for r in refused])


def short(text: str, limit: int = 48) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
