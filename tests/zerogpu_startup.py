"""The studio's start-up and first clicks under the `spaces` package's own ZeroGPU code path, on this CPU machine.

Run by tests/test_spaces.py in a subprocess (spaces patches torch for the whole process): `python
tests/zerogpu_startup.py OUT` writes OUT/result.json. What it has to stub, and nothing more:
- the CPU build of torch has no CUDA: `torch.version.cuda` and `torch._C._cuda_init` are given values spaces reads,
  and `torch.cuda._is_in_bad_fork` a picklable stand-in (spaces checks it in a forked process);
- the ZeroGPU device API is not here: `client.startup_report` does nothing, and `client.schedule` (the request for
  a GPU, made by spaces' wrapper with the duration it computed from the studio's callable) records that duration and
  stops the call there, since no GPU worker can start on this machine;
- `launch` itself: spaces' launch hook runs (it packs every tensor placed on the emulated `cuda` to disk, as on a
  Space), then the server's own launch is replaced by a function that records what the cache holds.
"""

import json
import os
import sys
from pathlib import Path

OUT = Path(sys.argv[1])
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.update(SPACES_ZERO_GPU="true", SPACES_ZERO_DEVICE_API_URL="http://127.0.0.1:9", STUDIO_PROFILE="tiny",
                  ZEROGPU_OFFLOAD_DIR=str(OUT / "packed"), STUDIO_OUTPUT_DIR=str(OUT / "outputs"),
                  STUDIO_CALIBRATION=str(OUT / "calibration.json"), HF_HUB_OFFLINE="1",
                  GRADIO_EXAMPLES_CACHE=str(OUT / "examples"), GRADIO_TEMP_DIR=str(OUT / "gradio"),
                  STUDIO_RESOLUTION="512")      # the real size, so reservations are the real ones (nothing runs)

import torch  # noqa: E402

torch.version.cuda = "13.0"
if not hasattr(torch._C, "_cuda_init"):
    def _no_cuda():
        raise RuntimeError("this torch build has no CUDA")
    torch._C._cuda_init = _no_cuda


def _is_in_bad_fork():
    return False


_is_in_bad_fork.__module__, _is_in_bad_fork.__qualname__ = "torch.cuda", "_is_in_bad_fork"
torch.cuda._is_in_bad_fork = _is_in_bad_fork

import spaces  # noqa: E402,F401  (ZeroGPU: patches torch, hooks launch)
import spaces.zero.gradio as zero_gradio  # noqa: E402
from spaces.zero import client  # noqa: E402


class Scheduled(Exception):
    """The GPU was asked for: as far as a call can go without one."""


scheduled: list[float] = []


def schedule(task_id, request=None, duration=None, gpu_size=None, **_):
    scheduled.append(duration.total_seconds())
    raise Scheduled()


client.startup_report = lambda: None
client.schedule = schedule
result: dict = {"cuda_available_in_main": torch.cuda.is_available()}


def launch(self, *args, **kwargs):
    import studio.engine as engine_module

    engine = next(iter(engine_module._ENGINES.values()))
    stats = engine.cache.stats()
    result.update(misses_at_launch=stats["misses"], held=[c["key"] for c in stats["components"]],
                  devices=sorted({c["device"] for c in stats["components"] if c["bytes"]}),
                  packed_files=len(list((OUT / "packed").iterdir())) if (OUT / "packed").is_dir() else 0,
                  device_budget=stats["device_budget"], settings={"device": engine.settings.device,
                                                                   "vdit": engine.settings.vdit,
                                                                   "preload": engine.settings.preload})
    result["engine"] = engine.name


zero_gradio._orig_launch = launch

from studio.__main__ import serve  # noqa: E402

serve()

import studio.engine as engine_module  # noqa: E402
from studio.tabs.identity_api import IdentityAPI  # noqa: E402
from studio.tabs.safety_api import SafetyAPI  # noqa: E402
from studio.tabs.segmentation_api import SegmentationAPI  # noqa: E402
from studio.tabs.timelapse_api import TimelapseAPI  # noqa: E402
from tests.test_spaces import reachable_keys  # noqa: E402

engine = engine_module._ENGINES[result["engine"]]
result["reachable"] = sorted(reachable_keys(engine))
reserved: list[int] = []
original_reserve = engine.reserve
engine.reserve = lambda *a: reserved.append(original_reserve(*a)) or reserved[-1]

from pipelines.core.video import write_mp4
from pipelines.segmentation.synthetic import make_video

photo = str(ROOT / "assets" / "examples" / "astronaut.jpg")
clip = str(write_mp4(make_video(frames=8, size=(64, 64)).frames, OUT / "clip.mp4", fps=8))
calls = {
    "timelapse": lambda: TimelapseAPI(engine).generate("ice melting", num_frames=16),
    "timelapse_preview": lambda: TimelapseAPI(engine).generate("ice melting", style="ToonYou", preview=True),
    "timelapse_fast": lambda: TimelapseAPI(engine).generate("ice melting", mode="fast", steps=8, guidance=5),
    "identity": lambda: IdentityAPI(engine).generate([photo], "a man surfing"),
    "identity_lightning": lambda: IdentityAPI(engine).generate([photo], "a man", mode="fast", steps=4, guidance=1),
    "safe_compare": lambda: SafetyAPI(engine).generate("a cat"),
    "segment": lambda: SegmentationAPI(engine).segment(clip, "the block", tracker="SAM 2.1 large"),
    "too_long": lambda: TimelapseAPI(engine).generate("a rose", keyframes="0: a bud\n63: a rose", num_frames=64,
                                                      steps=100),
}
result["calls"] = {}
for name, call in calls.items():
    misses, asked, computed = engine.cache.stats()["misses"], len(scheduled), len(reserved)
    try:
        call()
        outcome = "returned"
    except Scheduled:
        outcome = "scheduled"
    except Exception as error:          # noqa: BLE001 - reported to the test
        outcome = f"{type(error).__name__}: {error}"
    result["calls"][name] = {"outcome": outcome, "misses": engine.cache.stats()["misses"] - misses,
                             "durations": scheduled[asked:], "reservations": reserved[computed:]}

(OUT / "result.json").write_text(json.dumps(result, indent=1))
