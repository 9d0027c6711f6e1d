"""A tour of every tab and mode, twice: the second tour must load no model (the cache keeps what the tabs share).

Tiny profile, one engine with no memory budget (what fits a GPU with room to spare), each generating tab in each of
its modes and the segmentation tab. Prints the cache's loads after each tour and which keys the second one loaded.

    .venv/bin/python bench/tour.py

Last line: `second_tour_loads: <n>` (goal 0).
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = []
FIGURES = ("second_tour_loads",)

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.engine import Engine
from studio.settings import Settings
from studio.tabs.identity_api import IdentityAPI
from studio.tabs.safety_api import SafetyAPI
from studio.tabs.segmentation_api import SegmentationAPI
from studio.tabs.timelapse_api import TimelapseAPI

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "assets" / "examples" / "astronaut.jpg")
folder = Path(tempfile.mkdtemp(prefix="tour-"))
atexit.register(shutil.rmtree, folder, ignore_errors=True)       # the clips and the calibration file
engine = Engine(Settings(profile="tiny", device="cpu", dtype="float32", resolution=64, output_dir=folder / "out",
                         calibration_path=folder / "calibration.json"))
quiet = dict(progress=lambda *a, **k: None)
timelapse, identity, safety = TimelapseAPI(engine), IdentityAPI(engine), SafetyAPI(engine)
segmentation = SegmentationAPI(engine)


def tour() -> str:
    clip = None
    for mode, steps, guidance in (("quality", 4, 8.5), ("fast", 8, 5.0), ("fast-preview", 8, 5.0)):
        clip, *_ = timelapse.generate("ice melting", num_frames=8, steps=steps, guidance=guidance, mode=mode,
                                      preview=True, **quiet)
    for mode, steps, guidance in (("quality", 4, 8.0), ("fast", 4, 1.0), ("fast", 8, 1.5), ("fast-preview", 4, 1.0)):
        identity.generate([PHOTO], "a man", num_frames=8, steps=steps, guidance=guidance, mode=mode, preview=True,
                          **quiet)
    safety.generate("a cat", num_frames=8, steps=4, **quiet)
    segmentation.segment(clip, "the ice", **quiet)
    return clip


def loaded_keys() -> set[str]:
    return {c["key"] for c in engine.cache.stats()["components"]}


start = time.perf_counter()
tour()
first = engine.cache.stats()["loads"]
print(f"first tour: {first} loads, {len(loaded_keys())} components resident ({time.perf_counter() - start:.1f} s)")
keys = loaded_keys()
start = time.perf_counter()
tour()
second = engine.cache.stats()["loads"] - first
print(f"second tour: {second} loads ({time.perf_counter() - start:.1f} s); new keys: {sorted(loaded_keys() - keys)}")
print(f"second_tour_loads: {second}")
