"""`python -m studio.evaluate segmentation`: J&F of referring-segmentation masks.

    python -m studio.evaluate segmentation --pred DIR --gt DIR [--out scores.csv]
    python -m studio.evaluate segmentation --data DIR --out DIR [--profile tiny|real]

J&F, DAVIS's region (J) and boundary (F) scores of referring-segmentation masks, per video and their mean
(`pipelines.segmentation.metrics`); the last line printed is `J&F: <value>`. See `segmentation` below for the layouts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from studio.evaluate.common import DataError

# ----------------------------------------------------------------------------- segmentation: J&F (DAVIS)
SCORE_COLUMNS = ("video", "frames", "J", "F", "J&F")


def read_mask(path: Path) -> tuple[np.ndarray, bool]:
    """(H, W) values of a mask PNG, and whether they are object ids: a palette PNG's indices are (DAVIS's layout);
    any other PNG (0/255 grey, RGB) is a foreground mask, returned as 0/1 (any non-zero value is foreground)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode == "P":
            return np.array(image), True
        values = np.array(image) if image.mode in ("1", "L", "I", "I;16") else np.array(image.convert("RGB"))
    return (values.any(axis=-1) if values.ndim == 3 else values != 0).astype(np.uint8), False


MATCHES = ("ids", "hungarian")


def score_video(name: str, pred_dir: Path, gt_dir: Path, match: str = "ids") -> list[dict]:
    """One row per object of a video: {video, frames, J, F, JF}, after DAVIS's evaluation (davis2017/davis.py,
    evaluation.py, metrics.py):

    - DAVIS's void label 255 is no object: its pixels are masked out of J and F (`void_pixels`), in every mode;
    - objects are those of the first annotated frame (DAVIS: ids 1 .. the largest id on frame 0), object-wise (rows
      "video/id") when the ground truth is palette PNGs with two or more of them and every predicted frame present
      is a palette PNG too; otherwise one row, foreground (any non-zero, non-void value) against foreground;
    - `match`: "ids", a predicted object is the ground-truth object of the same id (DAVIS semi-supervised); or
      "hungarian", each ground-truth object gets the predicted object that maximises the sum of J&F over the
      assignment (scipy's linear_sum_assignment, as DAVIS's unsupervised task and ReferFormer's Ref-DAVIS evaluation
      do); a ground-truth object left without one scores against an empty mask.
    A predicted frame that is missing counts as an empty mask.
    """
    from pipelines.segmentation.metrics import VOID_LABEL, video_scores

    if match not in MATCHES:
        raise DataError(f"--match must be one of {', '.join(MATCHES)}, not {match!r}.")
    gt, pred = [], []
    for path in sorted(gt_dir.glob("*.png")):
        gt.append(read_mask(path))
        guess = pred_dir / path.name
        pred.append(read_mask(guess) if guess.is_file() else (np.zeros_like(gt[-1][0]), True))
        if pred[-1][0].shape != gt[-1][0].shape:
            (h, w), (gh, gw) = pred[-1][0].shape, gt[-1][0].shape
            raise DataError(f"{guess} is {w}x{h} pixels, its ground truth {gw}x{gh}: predict at the annotation's size.")
    voids = [(values == VOID_LABEL) if palette else np.zeros(values.shape, bool) for values, palette in gt]
    annotated = [values[(values != 0) & (values != VOID_LABEL)] for values, _ in gt]
    first = next((a for a in annotated if a.size), np.zeros(0, np.uint8))
    ids = list(range(1, int(first.max()) + 1)) if first.size else []
    objectwise = all(palette for _, palette in gt + pred) and len(ids) >= 2
    objects = [(f"{name}/{i}", i) for i in ids] if objectwise else [(name, None)]

    def masks(frames, i):
        return [(values != 0) & (values != VOID_LABEL) if i is None else values == i for values, _ in frames]

    if objectwise and match == "hungarian":
        from scipy.optimize import linear_sum_assignment

        predicted = sorted(set().union(*(np.unique(v[(v != 0) & (v != VOID_LABEL)]).tolist() for v, _ in pred)))
        table = {(g, q): video_scores(masks(pred, q), masks(gt, g), void_frames=voids) for g in ids for q in predicted}
        chosen = {}
        if predicted:
            rows, cols = linear_sum_assignment(-np.array([[table[g, q]["JF"] for q in predicted] for g in ids]))
            chosen = {ids[r]: predicted[c] for r, c in zip(rows, cols, strict=True)}
        empty = [np.zeros(v.shape, bool) for v, _ in gt]
        scored = {g: table[g, chosen[g]] if g in chosen else video_scores(empty, masks(gt, g), void_frames=voids)
                  for g in ids}
    else:
        scored = {i: video_scores(masks(pred, i), masks(gt, i), void_frames=voids) for _, i in objects}
    return [{"video": label, "frames": len(gt), "J": scored[i]["J"], "F": scored[i]["F"], "JF": scored[i]["JF"]}
            for label, i in objects]


def score_segmentation(pred: Path, gt: Path, videos: list[str] | None = None, match: str = "ids") -> list[dict]:
    """Rows of `score_video` for every video folder of `gt` holding PNGs (or only `videos`), in name order."""
    if not gt.is_dir():
        raise DataError(f"ground truth folder {gt} does not exist: give DAVIS's layout, <video>/<frame>.png.")
    if not pred.is_dir():
        raise DataError(f"prediction folder {pred} does not exist: give DAVIS's layout, <video>/<frame>.png.")
    found = sorted(d.name for d in gt.iterdir() if d.is_dir() and any(d.glob("*.png")))
    if videos is not None:
        missing = sorted(set(videos) - set(found))
        if missing:
            raise DataError(f"{gt} has no masks for {', '.join(missing)}.")
        found = sorted(videos)
    if not found:
        raise DataError(f"{gt} holds no videos: expected <video>/<frame>.png folders.")
    extra = sorted(d.name for d in pred.iterdir() if d.is_dir() and d.name not in found)
    if extra:
        print(f"note: not in the ground truth, not scored: {', '.join(extra)}", file=sys.stderr)
    return [row for video in found for row in score_video(video, pred / video, gt / video, match)]


def segmentation_table(rows: list[dict]) -> tuple[str, dict]:
    """The table (a row per video or object, then the mean over them, DAVIS's way) and the mean row."""
    j, f = float(np.mean([r["J"] for r in rows])), float(np.mean([r["F"] for r in rows]))
    mean = {"video": "mean", "frames": sum(r["frames"] for r in rows), "J": j, "F": f, "JF": (j + f) / 2}
    width = max(len(r["video"]) for r in [*rows, mean])
    lines = [f"{'video':<{width}}  {'frames':>6}  {'J':>6}  {'F':>6}  {'J&F':>6}"]
    lines += [f"{r['video']:<{width}}  {r['frames']:>6}  {r['J']:6.3f}  {r['F']:6.3f}  {r['JF']:6.3f}"
              for r in [*rows, mean]]
    return "\n".join(lines), mean


def write_scores(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(SCORE_COLUMNS)
        writer.writerows([r["video"], r["frames"], f"{r['J']:.6f}", f"{r['F']:.6f}", f"{r['JF']:.6f}"] for r in rows)


def davis_palette() -> list[int]:
    """DAVIS's (PASCAL VOC's) colour map: id 0 black, 1 dark red, 2 green, ... as 768 RGB values."""
    palette = []
    for i in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((i >> (3 * bit + channel)) & 1) << (7 - bit)
        palette += rgb
    return palette


@dataclass(frozen=True)
class Expression:
    key: str                         # its id within the video: meta_expressions.json's key, or its list index
    text: str
    object_id: int                   # the ground-truth object (palette index) it names


@dataclass(frozen=True)
class VideoItem:
    name: str
    frames: tuple[Path, ...]         # JPEGImages/<video>/<frame>.jpg, in order
    expressions: tuple[Expression, ...]


@dataclass(frozen=True)
class Dataset:
    videos: tuple[VideoItem, ...]
    per_expression: bool             # meta_expressions.json: each expression scored on its own object


META_EXAMPLE = ('{"videos": {"<video>": {"expressions": {"0": {"exp": "the dog on the left", "obj_id": "1"}}, '
                '"frames": ["00000", ...]}}}')


def meta_expressions_path(data: Path) -> Path | None:
    """DIR/meta_expressions.json, or ReferFormer's place for it beside the split: DIR/../meta_expressions/<split>/."""
    beside = data.parent / "meta_expressions" / data.name / "meta_expressions.json"
    for path in (data / "meta_expressions.json", beside):
        if path.is_file():
            return path
    return None


def _object_id(value, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 255:
        raise DataError(f"{where}: obj_id {value!r} is not an object id (a palette index from 1 to 255).")
    return int(text)


def _read_meta(path: Path, images: Path) -> list[VideoItem]:
    meta = json.loads(path.read_text(encoding="utf-8"))
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict) or not videos:
        raise DataError(f"{path} must hold {META_EXAMPLE}.")
    items = []
    for name, video in videos.items():
        where = f"{path}, video {name!r}"
        expressions = video.get("expressions") if isinstance(video, dict) else None
        if not isinstance(expressions, dict) or not expressions or not all(
                isinstance(e, dict) and isinstance(e.get("exp"), str) and "obj_id" in e for e in expressions.values()):
            raise DataError(f"{where}: each video needs \"expressions\": {{id: {{\"exp\": text, \"obj_id\": id}}}}.")
        names = video.get("frames")
        if names is None:                            # not in the file: every frame of the folder
            frames = tuple(sorted((images / name).glob("*.jpg")))
        elif isinstance(names, list) and all(isinstance(n, str) for n in names):
            frames = tuple(images / name / f"{n}.jpg" for n in names)
        else:
            raise DataError(f"{where}: \"frames\" must be a list of frame names, e.g. [\"00000\", \"00005\"].")
        missing = [p for p in frames if not p.is_file()]
        if not frames or missing:
            raise DataError(f"{where}: {missing[0] if missing else images / name} "
                            f"{'does not exist' if missing else 'holds no .jpg frames'}.")
        items.append(VideoItem(name, frames, tuple(
            Expression(str(key), e["exp"], _object_id(e["obj_id"], f"{where}, expression {key}"))
            for key, e in expressions.items())))
    return items


def read_dataset(data: Path) -> Dataset:
    """A Ref-YouTube-VOS / Ref-DAVIS folder as ReferFormer converts them (meta_expressions.json; an expression names
    its obj_id) or the simpler expressions.json ({video: [expression, ...]}, expression i naming object i + 1)."""
    images, annotations = data / "JPEGImages", data / "Annotations"
    meta, simple = meta_expressions_path(data), data / "expressions.json"
    for needed in (images, annotations):
        if not needed.is_dir():
            raise DataError(f"{needed} does not exist: --data needs JPEGImages/<video>/<frame>.jpg, "
                            "Annotations/<video>/<frame>.png and meta_expressions.json (or expressions.json).")
    if meta is not None:
        return Dataset(tuple(_read_meta(meta, images)), per_expression=True)
    if not simple.is_file():
        raise DataError(f"{data} has neither meta_expressions.json (here or in ../meta_expressions/{data.name}/: "
                        f"{META_EXAMPLE}) nor expressions.json ({{\"video\": [\"the dog on the left\", ...]}}).")
    expressions = json.loads(simple.read_text(encoding="utf-8"))
    if not isinstance(expressions, dict) or not expressions or not all(
            isinstance(v, list) and v and all(isinstance(e, str) and e.strip() for e in v)
            for v in expressions.values()):
        raise DataError(f"{simple} must map each video to a non-empty list of expressions: "
                        '{"video": ["the dog on the left", ...]}.')
    items = []
    for name, texts in expressions.items():
        frames = tuple(sorted((images / name).glob("*.jpg")))
        if not frames:
            raise DataError(f"{images / name} holds no .jpg frames.")
        items.append(VideoItem(name, frames, tuple(Expression(str(i), t, i + 1) for i, t in enumerate(texts))))
    return Dataset(tuple(items), per_expression=False)


def write_png(path: Path, values: np.ndarray, palette: list[int] | None) -> None:
    """A palette PNG of object ids (DAVIS's layout), or with no palette a 0/255 grey PNG (Ref-YouTube-VOS's)."""
    from PIL import Image

    if palette is None:
        Image.fromarray(values.astype(bool).astype(np.uint8) * 255).save(path)
        return
    image = Image.frombytes("P", values.shape[::-1], values.astype(np.uint8).tobytes())
    image.putpalette(palette)
    image.save(path)


def predict_segmentation(dataset: Dataset, out: Path, profile: str) -> list[dict]:
    """Segment every video by each of its expressions and write the masks; return the failed expressions.

    meta_expressions.json: each expression's mask on its own, out/<video>/<expression id>/<frame>.png, 0/255 grey
    (the layout Ref-YouTube-VOS's server takes). expressions.json: one palette PNG per frame, out/<video>/<frame>.png,
    expression i's mask written with id i + 1 (a later expression wins where two overlap).

    An expression the segmenter refuses (an InputError: nothing found, too long, too many frames, ...) gets empty
    masks, a line on stderr, and a row in the returned list {video, expression, text, error}; the run goes on.
    """
    from PIL import Image

    from pipelines.core.errors import InputError
    from pipelines.segmentation.pipeline import segment_frames

    palette, failures = davis_palette(), []
    for video in tqdm(dataset.videos, desc="videos", unit="video"):
        frames = np.stack([np.array(Image.open(p).convert("RGB")) for p in video.frames])
        labels = np.zeros(frames.shape[:3], np.uint8)
        for expression in video.expressions:
            try:
                masks = np.asarray(segment_frames(frames, expression.text, profile)).astype(bool)
            except InputError as error:
                failures.append({"video": video.name, "expression": expression.key, "text": expression.text,
                                 "error": str(error)})
                tqdm.write(f"failed: video {video.name}, expression {expression.key} ({expression.text[:80]!r}): "
                           f"{error}", file=sys.stderr)
                masks = np.zeros(frames.shape[:3], bool)
            if masks.shape != frames.shape[:3]:
                raise ValueError(f"segment_frames gave masks of shape {masks.shape} for frames {frames.shape}")
            if dataset.per_expression:
                folder = out / video.name / expression.key
                folder.mkdir(parents=True, exist_ok=True)
                for path, mask in zip(video.frames, masks, strict=True):
                    write_png(folder / f"{path.stem}.png", mask, None)
            else:
                labels[masks] = expression.object_id
        if not dataset.per_expression:
            (out / video.name).mkdir(parents=True, exist_ok=True)
            for path, label in zip(video.frames, labels, strict=True):
                write_png(out / video.name / f"{path.stem}.png", label, palette)
    return failures


def score_expressions(dataset: Dataset, gt: Path, out: Path) -> list[dict]:
    """One row "video/expression id" per expression: its mask (any non-zero) against its obj_id's ground truth
    (palette index == obj_id; a non-palette annotation is one object, foreground where non-zero), over the frames
    that have an annotation. Ref-YouTube-VOS's protocol; for Ref-DAVIS it equals DAVIS's object-wise mean over the
    annotators except where two objects' predictions overlap (DAVIS keeps one of them)."""
    from pipelines.segmentation.metrics import video_scores

    rows = []
    for video in dataset.videos:
        annotated = [(p.stem, gt / video.name / f"{p.stem}.png") for p in video.frames]
        annotated = [(stem, path) for stem, path in annotated if path.is_file()]
        if not annotated:
            raise DataError(f"{gt / video.name} has no annotation for any frame of {video.name}.")
        truth = [read_mask(path) for _, path in annotated]
        for expression in video.expressions:
            gt_masks = [values == expression.object_id if palette else values != 0 for values, palette in truth]
            pred_masks = []
            for (stem, _), gt_mask in zip(annotated, gt_masks, strict=True):
                guess = out / video.name / expression.key / f"{stem}.png"
                mask = read_mask(guess)[0] != 0 if guess.is_file() else np.zeros_like(gt_mask)
                if mask.shape != gt_mask.shape:
                    (h, w), (gh, gw) = mask.shape, gt_mask.shape
                    raise DataError(f"{guess} is {w}x{h} pixels, its annotation {gw}x{gh}: the frames and the "
                                    "annotations must have one size.")
                pred_masks.append(mask)
            scores = video_scores(pred_masks, gt_masks)
            rows.append({"video": f"{video.name}/{expression.key}", "frames": len(annotated),
                         "J": scores["J"], "F": scores["F"], "JF": scores["JF"]})
    return rows


def write_failures(path: Path, failures: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=("video", "expression", "text", "error"))
        writer.writeheader()
        writer.writerows(failures)


def evaluate_run(run: Path) -> int:
    """J&F of a batch run over a dataset split: each expression's masks (run/masks/<video>/<expression id>/) against
    its object's annotation, as `score_expressions`; a refused expression has no masks and scores as empty ones."""
    from dataclasses import replace

    from studio.evaluate.report import Plot, Report, Table, read_run, run_line, write_report

    meta, rows = read_run(run, "segmentation")
    if not all("dataset" in r["input"] for r in rows):
        raise DataError(f"{run} segmented clips without ground truth (a CSV of video, expression): J&F needs a "
                        "Ref-DAVIS / Ref-YouTube-VOS split (JPEGImages/, Annotations/, meta_expressions.json) "
                        "as --prompts of the batch run.")
    data = Path(meta["prompts"])
    asked = {(r["input"]["video"], r["input"]["expression_id"]) for r in rows}
    videos = []
    for video in read_dataset(data).videos:
        kept = tuple(e for e in video.expressions if (video.name, e.key) in asked)
        if kept:
            videos.append(replace(video, expressions=kept))
    dataset = Dataset(tuple(videos), per_expression=True)
    scored = score_expressions(dataset, data / "Annotations", run / "masks")
    table, mean = segmentation_table(scored)
    print(table)

    def bars(figure):
        ax = figure.add_subplot()
        names = [r["video"] for r in scored]
        ax.barh(names, [r["JF"] for r in scored], color="#7c3aed")
        ax.axvline(mean["JF"], color="#111827", linewidth=1, linestyle="--", label=f"mean {mean['JF']:.3f}")
        ax.set_xlim(0, 1)
        ax.set_xlabel("J&F")
        ax.invert_yaxis()
        ax.legend(fontsize=8)

    tables = [Table("J&F per video and expression", ["video/expression", "frames", "J", "F", "J&F"],
                    [[r["video"], r["frames"], r["J"], r["F"], r["JF"]] for r in [*scored, mean]],
                    note="The mean row averages the expressions, DAVIS's way.")]
    report = Report(
        "Segmentation evaluation: J&F (DAVIS)", profile=meta["profile"],
        intro=[run_line(run, meta, rows, "expressions")],
        tables=tables, plots=[Plot("jf-per-video", "J&F per video and expression", bars,
                                   size=(6.4, max(2.4, 0.3 * len(scored) + 1)))],
        notes=["J = region similarity (IoU), F = boundary F-measure, as DAVIS's evaluation code computes them "
               "(pipelines/segmentation/metrics.py); J&F = (J + F) / 2, over the annotated frames."])
    write_report(run, report, ["video", "frames", "J", "F", "JF"], [*scored, mean], rows, {"J&F": mean["JF"]})
    return 0


def run_evaluation(args: argparse.Namespace) -> int:
    """Score predicted masks against DAVIS-layout ground truth (--pred, --gt), or segment then score (--data)."""
    failures = None
    if args.run:
        return evaluate_run(Path(args.run))
    if args.data:
        if not args.out or args.gt:
            raise DataError("--data needs --out, the folder for the predicted masks and scores.csv, and no --gt: "
                            "the ground truth is DIR/Annotations.")
        data, out = Path(args.data), Path(args.out)
        dataset = read_dataset(data)              # the layout is checked before any model loads
        failures = predict_segmentation(dataset, out, args.profile)
        write_failures(out / "failures.csv", failures)
        if dataset.per_expression:
            rows = score_expressions(dataset, data / "Annotations", out)
        else:
            rows = score_segmentation(out, data / "Annotations", [v.name for v in dataset.videos], args.match)
        csv_path = out / "scores.csv"
    else:
        if not args.gt:
            raise DataError("--pred needs --gt, the ground-truth folder in the same layout.")
        rows = score_segmentation(Path(args.pred), Path(args.gt), match=args.match)
        csv_path = args.out and Path(args.out)
    table, mean = segmentation_table(rows)
    if csv_path:
        write_scores(csv_path, [*rows, mean])
    print(table)
    if failures is not None:
        total = sum(len(v.expressions) for v in dataset.videos)
        print(f"failed expressions: {len(failures)} of {total}"
              + (f" (empty masks; listed in {out / 'failures.csv'})" if failures else ""))
    print(f"J&F: {mean['JF']:.3f}")
    return 0


def add_parser(commands) -> None:
    """This evaluation's subcommand and its flags, on the CLI's subparsers (studio/evaluate/cli.py)."""
    score = commands.add_parser(
        "segmentation", help="J&F (DAVIS) of predicted masks against ground truth, or of the segmenter on a dataset",
        description="Score DAVIS-layout masks (<video>/<frame>.png; palette PNGs are object ids, other PNGs "
                    "foreground where non-zero) with --pred and --gt, writing --out as a CSV if given; or, with "
                    "--data DIR (DIR/JPEGImages/<video>/<frame>.jpg, DIR/Annotations/<video>/<frame>.png palette "
                    "PNGs, and Ref-YouTube-VOS's / ReferFormer's meta_expressions.json in DIR or "
                    "DIR/../meta_expressions/<DIR name>/, each expression naming its obj_id; or DIR/expressions.json "
                    "{video: [expression, ...]}, expression i naming object i + 1), run the segmenter, write its "
                    "masks under --out and score them (--out/scores.csv). An expression the segmenter refuses gets "
                    "empty masks, a line on stderr and a row in --out/failures.csv; the run goes on.")
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", help="folder of predicted masks, <video>/<frame>.png")
    source.add_argument("--run", help="a finished `python -m studio.batch segmentation` run of a Ref-DAVIS / "
                                      "Ref-YouTube-VOS split: J&F per expression, its scores.csv and report.html")
    source.add_argument("--data", help="a Ref-YouTube-VOS / Ref-DAVIS split folder: JPEGImages/, Annotations/, "
                                       "meta_expressions.json (or expressions.json)")
    score.add_argument("--gt", help="folder of ground-truth masks, <video>/<frame>.png (with --pred)")
    score.add_argument("--out", help="with --pred: a CSV file for the scores; with --data: the output folder")
    score.add_argument("--match", choices=MATCHES, default="ids",
                       help="how predicted objects meet ground-truth ones: by id (DAVIS semi-supervised), or "
                            "'hungarian', the assignment that maximises J&F (DAVIS unsupervised; ReferFormer's "
                            "Ref-DAVIS evaluation)")
    score.add_argument("--profile", choices=("tiny", "real"), default=os.environ.get("STUDIO_PROFILE", "real"))
    score.set_defaults(handler=run_evaluation)
