"""`python -m studio.batch <tab>`: a prompt set through one tab, resumable, on one GPU or sharded over many.

    python -m studio.batch timelapse --prompts ../shared/data/chronomagic-bench-150.csv --out runs/tl --limit 20
    python -m studio.batch identity --prompts people.csv --out runs/id --seeds 3      # CSV: photos, prompt
    python -m studio.batch safe --prompts ../shared/data/coco-benign-1000.csv --out runs/benign --limit 100
    python -m studio.batch segmentation --prompts ref-davis/valid --out runs/davis    # or clips/ + expressions.csv
    accelerate launch --multi_gpu --num_processes N -m studio.batch <tab> ...         # one process per GPU

Each item (a row of the prompt set, with each of its seeds) goes through the tab's own endpoint function (the
`*API` classes the page and the API call), so it gets the same request checks, safety guard, output check and
MP4 as a click: a row those checks refuse is recorded as refused, with the message the page would show, and the
run goes on. Weights that are missing end the run (every item would fail the same way).

DIR holds `run.json` (the tab, the prompt set, the profile and the options), the outputs under `clips/` (and, for
a Ref-DAVIS / Ref-YouTube-VOS split, the masks in its layout under `masks/`), and `manifest.jsonl`: one JSON row
per item with its key, input, seed, status ("done" or "refused"), outputs, timings, safety block and refusal.
An item's key is a hash of the tab, its input, its seed and the options: a rerun skips every key already in the
manifest (a finished item is never redone, whatever the files' times say) and does the rest.

Under `accelerate launch`, accelerate's `PartialState().split_between_processes` gives each process its share of
the items still to do; each process appends to its own `manifest.rank<N>.jsonl` (so no two write one file), and
when all are done the main process merges them into `manifest.jsonl`. A run interrupted on any rank leaves its
parts; the rerun reads them too, so nothing finished is redone. With no GPU, each process is a CPU process and
the processes talk over gloo (`--multi_gpu` is only the name of accelerate's multi-process launcher).

Exit status: 0 done (refused rows included), 2 bad input (a prompt file, a flag), 1 what the input cannot fix
(weights missing).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import sys
import time
import unicodedata
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from studio.evaluate.common import DataError

TABS = ("timelapse", "identity", "safe", "segmentation")
MANIFEST = "manifest.jsonl"
RUN_FILE = "run.json"
PHOTO_SEPARATORS = re.compile(r"[;|]")
TIMELAPSE_COLUMNS = ("prompt", "name")      # ChronoMagic-Bench names its prompt column "name"


@dataclass(frozen=True)
class Item:
    index: int                               # the row of the prompt set
    input: dict                              # what the row gives: prompt, photos, video, expression, category...
    seed: int | None                         # None: the tab has no seed (segmentation)
    key: str = ""

    def keyed(self, tab: str, options: dict) -> Item:
        text = json.dumps({"tab": tab, "input": self.input, "seed": self.seed, "options": options}, sort_keys=True)
        return replace(self, key=hashlib.sha256(text.encode()).hexdigest()[:16])


@dataclass
class Row:
    """One manifest line."""
    key: str
    index: int
    input: dict
    seed: int | None
    status: str                              # "done" | "refused"
    outputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    safety: dict | None = None
    refusal: str | None = None
    info: dict = field(default_factory=dict)
    wall_s: float = 0.0
    rank: int = 0


# ----------------------------------------------------------------------------- reading prompt sets
def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def _need_file(path: Path, kinds: str) -> None:
    if not path.is_file():
        raise DataError(f"{path} does not exist (or is not a file): give {kinds}.")


def _seeds(base: int, count: int) -> list[int]:
    return [(base + k) % 2**32 for k in range(count)]


def timelapse_items(path: Path, seeds: int, seed: int) -> list[Item]:
    """A CSV with a `prompt` column (or ChronoMagic-Bench's `name`; optional `keyframes`, an id and a category
    are kept), or a .txt file with one prompt per line."""
    _need_file(path, "a .csv with a prompt column or a .txt with a prompt per line")
    if path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        rows = [{"prompt": line} for line in lines if line]
    else:
        columns, records = _read_csv(path)
        column = next((c for c in TIMELAPSE_COLUMNS if c in columns), None)
        if column is None:
            raise DataError(f"{path} has no prompt column ({' or '.join(TIMELAPSE_COLUMNS)}); its columns are: "
                            f"{', '.join(columns) or '(none)'}.")
        rows = []
        for record in records:
            row = {"prompt": record[column] or ""}
            for extra, names in (("id", ("videoid", "id")), ("category", ("main_category", "category")),
                                 ("keyframes", ("keyframes",))):
                value = next((record[n] for n in names if record.get(n)), None)
                if value:
                    row[extra] = value
            rows.append(row)
    return [Item(i, row, s) for i, row in enumerate(rows) for s in _seeds(seed, seeds)]


def identity_items(path: Path, seeds: int, seed: int) -> list[Item]:
    """A CSV with `photos` (one to four image paths, `;`-separated, relative to the CSV's folder) and `prompt`."""
    _need_file(path, "a .csv with the columns photos (paths, ;-separated) and prompt")
    columns, records = _read_csv(path)
    missing = [c for c in ("photos", "prompt") if c not in columns]
    if missing:
        raise DataError(f"{path} has no {' or '.join(missing)} column; its columns are: {', '.join(columns) or '(none)'}"
                        ". Give photos (one to four image paths, ;-separated, relative to the CSV) and prompt.")
    items = []
    for i, record in enumerate(records):
        photos = [p.strip() for p in PHOTO_SEPARATORS.split(record["photos"] or "") if p.strip()]
        photos = [str(p if Path(p).is_absolute() else (path.parent / p).resolve()) for p in photos]
        items += [Item(i, {"photos": photos, "prompt": record["prompt"] or ""}, s) for s in _seeds(seed, seeds)]
    return items


def safe_items(path: Path, seeds: int, seed: int) -> list[Item]:
    """The safety evaluation's prompt sets (../shared/data/): a CSV with a prompt column (optional `categories`,
    `evaluation_seed`: the seed SAFREE used) or a JSON list of [id, concept, prompt]."""
    from studio.evaluate.safety import load_prompts

    has_seed = path.suffix.lower() == ".csv" and path.is_file() and "evaluation_seed" in _read_csv(path)[0]
    return [Item(p.index, {"prompt": p.text, "categories": list(p.categories)}, s)
            for p in load_prompts(path) for s in _seeds(p.seed if has_seed else seed, seeds)]


def segmentation_items(path: Path, seeds: int, seed: int) -> list[Item]:
    """A CSV (or a folder holding expressions.csv) with `video` (a path relative to the CSV) and `expression`; or a
    Ref-DAVIS / Ref-YouTube-VOS split folder (JPEGImages/, Annotations/, meta_expressions.json or expressions.json;
    `python -m studio.evaluate segmentation --data` reads the same)."""
    from studio.evaluate.segmentation import read_dataset

    if seeds != 1:
        raise DataError("segmentation has no seed: leave --seeds out.")
    listing = path / "expressions.csv" if path.is_dir() else path
    if listing.is_file():
        columns, records = _read_csv(listing)
        missing = [c for c in ("video", "expression") if c not in columns]
        if missing:
            raise DataError(f"{listing} has no {' or '.join(missing)} column; its columns are: "
                            f"{', '.join(columns) or '(none)'}.")
        return [Item(i, {"video": str((listing.parent / r["video"]).resolve()) if r["video"] else "",
                         "expression": r["expression"] or ""}, None) for i, r in enumerate(records)]
    if not path.is_dir():
        raise DataError(f"{path} does not exist: give a .csv of video, expression, a folder holding expressions.csv, "
                        "or a Ref-DAVIS / Ref-YouTube-VOS split folder.")
    dataset = read_dataset(path)
    items = []
    for video in dataset.videos:
        for expression in video.expressions:
            items.append(Item(len(items), {"dataset": str(path.resolve()), "video": video.name,
                                           "expression": expression.text, "expression_id": expression.key,
                                           "object_id": expression.object_id,
                                           "frames": [p.name for p in video.frames]}, None))
    return items


READERS = {"timelapse": timelapse_items, "identity": identity_items, "safe": safe_items,
           "segmentation": segmentation_items}


def tab_options(args: argparse.Namespace) -> dict:
    """The options every item of the run shares (part of each item's key)."""
    if args.tab == "segmentation":
        return {"tracker": args.tracker, "grounder": args.grounder, "backend": args.backend}
    common = {"mode": args.mode, "num_frames": args.frames, "steps": args.steps, "guidance": args.guidance}
    if args.tab == "timelapse":
        return {**common, "style": args.style, "safety": not args.no_safety}
    if args.tab == "identity":
        return {**common, "identity_strength": args.identity_strength, "safety": not args.no_safety}
    if args.tab == "safe":
        return {**common, "concepts": args.concepts.split(",") if args.concepts is not None else None,
                "custom_concepts": args.custom_concepts, "compare": not args.no_compare}


# ----------------------------------------------------------------------------- running one item
def slug(text: str, limit: int = 40) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")[:limit].rstrip("-") or "item"


class Runner:
    """The tab's endpoint functions on one engine (this process's device), and where their outputs go."""

    def __init__(self, tab: str, engine, out: Path, options: dict):
        from studio.tabs.identity_api import IdentityAPI
        from studio.tabs.safety_api import SafetyAPI
        from studio.tabs.segmentation_api import SegmentationAPI
        from studio.tabs.timelapse_api import TimelapseAPI

        self.tab, self.engine, self.out, self.options = tab, engine, out, options
        self.api = {"timelapse": TimelapseAPI, "identity": IdentityAPI, "safe": SafetyAPI,
                    "segmentation": SegmentationAPI}[tab](engine)

    def keep(self, path: str | None, item: Item, suffix: str) -> str | None:
        """Move an output from the engine's scratch folder into DIR/clips/; its path relative to DIR."""
        if not path:
            return None
        seed = "" if item.seed is None else f"-s{item.seed}"
        text = item.input.get("prompt") or f"{item.input.get('video', '')} {item.input.get('expression', '')}"
        target = self.out / "clips" / f"{item.index:05d}-{slug(text)}{seed}{suffix}{Path(path).suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        return str(target.relative_to(self.out))

    def __call__(self, item: Item) -> tuple[dict, dict]:
        """(outputs, info) of one item; a refusal raises gr.Error, as on the page."""
        quiet = {"progress": lambda *args, **kwargs: None}
        o, given = self.options, item.input
        if self.tab == "timelapse":
            path, _, info = self.api.generate(given["prompt"], keyframes=given.get("keyframes", ""), style=o["style"],
                                              num_frames=o["num_frames"], steps=o["steps"], guidance=o["guidance"],
                                              seed=item.seed, safety=o["safety"], mode=o["mode"], **quiet)
            return {"video": self.keep(path, item, "")}, info
        if self.tab == "identity":
            path, _, _, info = self.api.generate(given["photos"], given["prompt"], num_frames=o["num_frames"],
                                                 identity_strength=o["identity_strength"], steps=o["steps"],
                                                 guidance=o["guidance"], seed=item.seed, safety=o["safety"],
                                                 mode=o["mode"], **quiet)
            return {"video": self.keep(path, item, "")}, info
        if self.tab == "safe":
            from pipelines.safety.guard import DEFAULT_CATEGORIES

            concepts = list(DEFAULT_CATEGORIES) if o["concepts"] is None else o["concepts"]
            guarded, unguarded, tokens, _, info = self.api.generate(
                given["prompt"], concepts=concepts, custom_concepts=o["custom_concepts"], compare=o["compare"],
                num_frames=o["num_frames"], steps=o["steps"], guidance=o["guidance"], seed=item.seed,
                mode=o["mode"], **quiet)
            info["tokens"] = tokens
            return {"video": self.keep(guarded, item, "-guarded"),
                    "unguarded": self.keep(unguarded, item, "-unguarded")}, info
        return self.segment(item)

    def segment(self, item: Item) -> tuple[dict, dict]:
        o, given = self.options, item.input
        settings = {"tracker": o["tracker"], "grounder": o["grounder"], "backend": o["backend"],
                    "progress": lambda *args, **kwargs: None}
        if "dataset" not in given:
            overlay, _, archive, rle, _, _, info = self.api.segment(given["video"], given["expression"], **settings)
        else:
            overlay, _, archive, rle, _, _, info = self.api.segment_frames(
                dataset_frames(given), given["expression"], name=f"{given['video']} {given['expression']}",
                **settings)
            write_dataset_masks(self.out / "masks" / given["video"] / given["expression_id"], rle, given["frames"])
        outputs = {"video": self.keep(overlay, item, "-overlay"), "masks_zip": self.keep(archive, item, "-masks"),
                   "masks_rle": self.keep(rle, item, "-rle")}
        if "dataset" in given:
            outputs["masks"] = f"masks/{given['video']}/{given['expression_id']}"
        info.pop("candidates", None)             # every frame's boxes: the overlay and the RLE hold what matters
        return outputs, info


def dataset_frames(given: dict):
    import numpy as np
    from PIL import Image

    folder = Path(given["dataset"]) / "JPEGImages" / given["video"]
    return np.stack([np.array(Image.open(folder / name).convert("RGB")) for name in given["frames"]])


def write_dataset_masks(folder: Path, rle_path: str, frames: list[str]) -> None:
    """The item's masks in Ref-YouTube-VOS's layout, <video>/<expression id>/<frame>.png, 0/255 grey, every chosen
    object together (what `studio.evaluate segmentation` scores), decoded from the run's own COCO RLE."""
    import numpy as np
    from PIL import Image

    from pipelines.segmentation.mask_export import decode_coco_rle

    data = json.loads(Path(rle_path).read_text(encoding="utf-8"))
    objects = list(decode_coco_rle(data).values())
    union = np.any(objects, axis=0) if objects else np.zeros(
        (len(frames), data["images"][0]["height"], data["images"][0]["width"]), bool)
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in zip(frames, union, strict=True):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{Path(name).stem}.png")


def run_item(runner: Runner, item: Item, rank: int) -> Row:
    """One manifest row: done, or refused with the page's message. Missing weights (and Stop) end the run."""
    import gradio as gr

    from pipelines.core.errors import InputError, StudioError

    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)      # gr.Warning off a page; info["warnings"] keeps them
            outputs, info = runner(item)
    except gr.Error as error:
        cause = error.__cause__
        if isinstance(cause, StudioError) and not isinstance(cause, InputError):
            raise                                              # weights missing, cancelled: every item would fail
        return Row(item.key, item.index, item.input, item.seed, "refused", refusal=str(error.message),
                   wall_s=round(time.perf_counter() - start, 3), rank=rank)
    return Row(item.key, item.index, item.input, item.seed, "done", outputs=outputs, timings=info.get("timings", {}),
               safety=info.get("safety"), info=info, wall_s=round(time.perf_counter() - start, 3), rank=rank)


# ----------------------------------------------------------------------------- the manifest
def read_manifest(out: Path) -> dict[str, dict]:
    """Every finished item of DIR by key: the merged manifest, then any rank's part (a run that stopped early)."""
    rows: dict[str, dict] = {}
    for path in [out / MANIFEST, *sorted(out.glob("manifest.rank*.jsonl"))]:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:                   # a line cut short when a process was killed mid-write
                continue
            rows.setdefault(row["key"], row)
    return rows


def merge_manifest(out: Path) -> list[dict]:
    """The main process, once every process is done: all rows into manifest.jsonl (by row, then seed), parts gone."""
    rows = sorted(read_manifest(out).values(), key=lambda r: (r["index"], r["seed"] if r["seed"] is not None else -1))
    scratch = out / f"{MANIFEST}.tmp"
    scratch.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    scratch.replace(out / MANIFEST)
    for part in out.glob("manifest.rank*.jsonl"):
        part.unlink()
    return rows


def check_same_run(out: Path, run: dict) -> None:
    """A folder holds one run: another tab, prompt set or profile in it would mix two runs' rows."""
    saved = out / RUN_FILE
    if saved.is_file():
        before = json.loads(saved.read_text(encoding="utf-8"))
        changed = [f"{k}: {before.get(k)!r} then, {run[k]!r} now" for k in ("tab", "prompts", "profile", "resolution")
                   if before.get(k) != run[k]]
        if changed:
            raise DataError(f"{out} holds another run ({'; '.join(changed)}): use another --out.")


# ----------------------------------------------------------------------------- the command
def make_engine(args: argparse.Namespace, state, work: Path):
    """This process's engine: the studio's settings from the environment, on this process's device."""
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from studio.engine import Engine
    from studio.settings import Settings

    # Their warnings (a prompt past CLIP's 77 tokens, as benchmark prompts often are) would bury the progress bar;
    # the studio's own warnings about an item are in its manifest row.
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()

    settings = replace(Settings.from_env(), profile=args.profile, resolution=args.resolution, output_dir=work,
                       output_ttl_s=10**9, preload=False)
    if not state.is_main_process:                # one writer of the learnt time estimates: the others' go with work/
        settings = replace(settings, calibration_path=work / "calibration.json")
    if args.profile == "tiny":                   # as the tests run it: random weights gain nothing from a GPU
        settings = replace(settings, device="cpu", dtype="float32", vae_dtype=None)
    elif state.device.type == "cuda":            # accelerate made this process's GPU the current one
        settings = replace(settings, device="cuda")
    elif state.num_processes > 1:
        settings = replace(settings, device="cpu", dtype="float32", vae_dtype=None)
    if state.device.type == "cpu" and state.num_processes > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    return Engine(settings)


def run_batch(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState
    from tqdm import tqdm

    out = Path(args.out)
    args.resolution = args.size or (64 if args.profile == "tiny" else 512)
    options = tab_options(args)
    items = READERS[args.tab](Path(args.prompts), args.seeds, args.seed)
    limit = args.limit if args.limit is not None else len(items)
    wanted = set(sorted({i.index for i in items})[:limit])     # the first N rows, with every seed of each
    items = [i.keyed(args.tab, options) for i in items if i.index in wanted]
    if not items:
        raise DataError(f"{args.prompts} holds no items.")
    run = {"tab": args.tab, "prompts": str(Path(args.prompts).resolve()), "profile": args.profile,
           "resolution": args.resolution, "options": options, "seeds": args.seeds, "items": len(items)}

    # Without a GPU, accelerate's processes are CPU processes over gloo (cpu=True); with one, a process per GPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        check_same_run(out, run)
        (out / RUN_FILE).write_text(json.dumps(run, indent=1), encoding="utf-8")
    state.wait_for_everyone()
    done = read_manifest(out)                    # every process reads the same before any writes
    state.wait_for_everyone()
    todo = [i for i in items if i.key not in done]
    if state.is_main_process:
        print(f"{args.tab}: {len(items)} items, {len(items) - len(todo)} already done, {len(todo)} to do, on "
              f"{state.num_processes} process{'es' if state.num_processes > 1 else ''}", flush=True)
    status = 0
    with state.split_between_processes(todo) as mine:
        if mine:
            work = out / f".work-rank{state.process_index}"
            engine = make_engine(args, state, work)
            runner = Runner(args.tab, engine, out, options)
            part = out / f"manifest.rank{state.process_index}.jsonl"
            bar = tqdm(mine, desc=f"{args.tab} [process {state.process_index + 1}/{state.num_processes}]",
                       unit="item", position=state.process_index, dynamic_ncols=True)
            try:
                with part.open("a", encoding="utf-8") as manifest:
                    for item in bar:
                        row = run_item(runner, item, state.process_index)
                        manifest.write(json.dumps(vars(row)) + "\n")
                        manifest.flush()         # a crash or Ctrl-C keeps every finished row
                        if row.status == "refused":
                            seed = "" if item.seed is None else f", seed {item.seed}"
                            tqdm.write(f"refused: row {item.index}{seed}: {row.refusal}", file=sys.stderr)
            except Exception as error:
                import gradio as gr

                if not isinstance(error, gr.Error):
                    raise
                print(f"error: {error.message}", file=sys.stderr)
                status = 1
            finally:
                bar.close()
                shutil.rmtree(work, ignore_errors=True)
    state.wait_for_everyone()
    if state.is_main_process:
        rows = merge_manifest(out)
        refused = sum(r["status"] == "refused" for r in rows)
        print(f"{len(rows)} of {len(items)} items in {out / MANIFEST}: {len(rows) - refused} done, {refused} refused",
              flush=True)
        if len(rows) < len(items) and status == 0:
            status = 1
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio.batch", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    tabs = parser.add_subparsers(dest="tab", required=True)
    help_text = {"timelapse": "a CSV with a prompt column (ChronoMagic-Bench's name too) or a .txt, one prompt a line",
                 "identity": "a CSV with photos (1 to 4 image paths, ;-separated, relative to it) and prompt",
                 "safe": "a CSV with a prompt column (categories, evaluation_seed) or a JSON [id, concept, prompt]",
                 "segmentation": "a CSV of video, expression (or a folder with expressions.csv), or a Ref-DAVIS / "
                                 "Ref-YouTube-VOS split folder"}
    for tab in TABS:
        sub = tabs.add_parser(tab, help=help_text[tab].split(" (")[0])
        sub.add_argument("--prompts", required=True, help=help_text[tab])
        sub.add_argument("--out", required=True, help="the run's folder (a rerun resumes it)")
        sub.add_argument("--limit", type=int, help="only the first N rows")
        sub.add_argument("--profile", choices=("tiny", "real"), default=os.environ.get("STUDIO_PROFILE", "real"))
        sub.add_argument("--size", type=int, help="width and height (default the profile's: 64 tiny, 512 real)")
        if tab == "segmentation":
            from pipelines.segmentation.models import DEFAULT_GROUNDER, DEFAULT_TRACKER

            sub.add_argument("--tracker", default=DEFAULT_TRACKER)
            sub.add_argument("--grounder", default=DEFAULT_GROUNDER)
            sub.add_argument("--backend", choices=("grounding", "vdit"), default="grounding")
            sub.set_defaults(seeds=1, seed=0)
            continue
        sub.add_argument("--seeds", type=int, default=1, help="seeds per row: the row's seed (the set's "
                                                              "evaluation_seed, else --seed) and the next N-1")
        sub.add_argument("--seed", type=int, default=0, help="the first seed where the set gives none (default 0)")
        sub.add_argument("--mode", choices=("quality", "fast", "fast-preview"), default="quality")
        sub.add_argument("--frames", type=int, default=8 if tab == "safe" else 16)
        sub.add_argument("--steps", type=int, help="denoising steps (default the mode's)")
        sub.add_argument("--guidance", type=float, help="classifier-free guidance (default the mode's)")
        if tab == "timelapse":
            from pipelines.timelapse.pipeline import DEFAULT_STYLE

            sub.add_argument("--style", default=DEFAULT_STYLE)
        if tab == "identity":
            from pipelines.identity.pipeline import IdentityRequest

            sub.add_argument("--identity-strength", type=float, default=IdentityRequest.identity_strength)
        if tab in ("timelapse", "identity"):
            sub.add_argument("--no-safety", action="store_true", help="the prompt guard off (refused where enforced)")
        if tab == "safe":
            sub.add_argument("--concepts", help="comma-separated categories (default the guard's: nudity,violence)")
            sub.add_argument("--custom-concepts", default="")
            sub.add_argument("--no-compare", action="store_true", help="only the guarded clip (half the work)")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")    # before transformers is imported: its notes on
    args = build_parser().parse_args(argv)                        # processors would bury the progress bar
    if args.seeds < 1 or (args.limit is not None and args.limit < 1):
        print("error: --seeds and --limit must be 1 or more.", file=sys.stderr)
        return 2
    try:
        return run_batch(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
