"""Command line: `python -m studio [serve]` starts the studio; `python -m studio download [--tab T]` pre-fetches weights."""

from __future__ import annotations

import argparse
import logging
import os
import sys

TABS = ("timelapse", "identity", "segmentation", "vdit", "evaluation")
# What `download` fetches without --tab: every tab's defaults. VD-IT (the segmentation tab's second backend, ~10 GB,
# its backbone CC-BY-NC-4.0) only when asked for with --tab vdit; the evaluations' CLIP ViT-L/14 (python -m
# studio.evaluate, not the studio) with --tab evaluation.
DEFAULT_TABS = ("timelapse", "identity", "segmentation")


def serve() -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from studio.memory import limit_malloc_arenas

    limit_malloc_arenas()
    from studio.demo import build_demo, launch_kwargs
    from studio.engine import Engine
    from studio.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    # Cached examples are noise in the tiny profile: keep each profile's cache apart.
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", os.path.join(".gradio", "cached_examples", settings.profile))
    engine = Engine(settings)
    if settings.preload:
        engine.preload()
    demo = build_demo(engine)
    demo.launch(
        server_name=settings.host, server_port=settings.port, **launch_kwargs(settings)
    )


def tab_files(tabs: list[str]) -> list:
    """Every hub file the tabs' defaults need, each once (the two generating tabs share Realistic Vision)."""
    from pipelines.identity.models import identity_downloads
    from pipelines.segmentation.models import SegmentationRegistry
    from pipelines.timelapse.models import timelapse_downloads

    # The segmentation tab's defaults (other grounders and tracker sizes download when first chosen).
    def files_of(tab: str) -> list:
        if tab == "segmentation":
            return SegmentationRegistry("real").default_downloads()
        if tab == "vdit":
            return SegmentationRegistry.vdit_downloads()
        if tab == "evaluation":
            from pipelines.core.hub import HubFile
            from studio.evaluate.clip import CLIP_L, CLIP_L_FILES

            return [HubFile(CLIP_L, name) for name in CLIP_L_FILES]
        return {"timelapse": timelapse_downloads, "identity": identity_downloads}[tab]()

    files = [f for tab in tabs for f in files_of(tab)]
    return list(dict.fromkeys(files))


def sizes(tabs: list[str]) -> int:
    """Print each file's size as the hub lists it, and the sum: what a first download costs."""
    from huggingface_hub import HfApi

    files, total = tab_files(tabs), 0
    for repo in dict.fromkeys(f.repo_id for f in files):
        names = [f.filename for f in files if f.repo_id == repo]
        try:
            listed = {entry.path: entry.size for entry in HfApi().get_paths_info(repo, names)}
        except Exception as error:
            print(f"The hub did not answer for {repo} ({type(error).__name__}): sizes need internet access.",
                  file=sys.stderr)
            return 1
        for name in names:
            total += listed.get(name) or 0
            print(f"{(listed.get(name) or 0) / 1e9:8.3f} GB  {repo}: {name}")
    print(f"{total / 1e9:8.3f} GB  in all, {len(files)} files")
    return 0


def download(tabs: list[str]) -> int:
    """Fetch every hub file the tabs need into the Hugging Face cache (tqdm progress per file).
    Files already cached are not fetched again, so this also checks that a copied cache is complete."""
    from pipelines.core.errors import WeightsError
    from pipelines.core.hub import IncompleteWeightsError, served_from

    files = tab_files(tabs)
    for number, file in enumerate(files, start=1):
        print(f"[{number}/{len(files)}] {file.describe()}", flush=True)
        try:
            try:
                file.path()
            except IncompleteWeightsError as error:
                print(f"  {error}\n  Fetching it again.", flush=True)
                file.path(force=True)
        except WeightsError as error:       # missing and out of reach, a failed download, still incomplete
            print(error, file=sys.stderr)
            return 1
        if file.fallbacks:
            print(f"  from {served_from(file)}", flush=True)
    print(f"All {len(files)} files are in the Hugging Face cache.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="start the studio (the default)")
    fetch = commands.add_parser("download", help="pre-fetch model weights for the real profile")
    fetch.add_argument("--tab", choices=TABS, action="append", help="only this tab's weights (repeatable)")
    fetch.add_argument("--sizes", action="store_true", help="list each file's size and the sum; download nothing")
    args = parser.parse_args(argv)
    if args.command == "download":
        return (sizes if args.sizes else download)(args.tab or list(DEFAULT_TABS))
    serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
