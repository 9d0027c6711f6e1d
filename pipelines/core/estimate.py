"""How long a run will take, said before it starts, from what this machine measured on its earlier runs.

A generating call's time is, to a good approximation, linear in the work it does: denoising costs the same per
frame that goes through the UNet once (16 frames with guidance are 32 frame-passes a step; FreeNoise's overlapping
windows count every window's frames), decoding the same per frame, and the rest (text encoding, the output check, the
MP4) a little per frame. So the studio keeps, per machine and setting (profile, device, dtype, resolution, tab), the
seconds per frame-pass of a step and per decoded frame from the last runs, and multiplies. How many frame-passes a
call makes is each method's own formula (`frame_passes` in pipelines/timelapse/pipeline.py and
pipelines/identity/pipeline.py), which the caller applies and passes in. Loading is left out of
the figure and said apart: it happens once per model, and the cache knows whether it is still to come.

The first run of a tab on a machine has nothing to go on, and says so; it calibrates. The figures are kept in a small
JSON file, so a restarted studio estimates at once.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

SMOOTHING = 0.5           # each run moves the figure half-way: a noisy run cannot swing it far

# ----------------------------------------------------------------- ZeroGPU reservations (studio/engine.py)
# A call reserves GPU time up front (`spaces.GPU(duration=...)`): too short and ZeroGPU may abort it, too long and it
# queues later and spends the visitor's daily quota (2 min anonymous). So each reservation is this device's own
# estimate of the call, times a margin for a slower run, plus the worker's start (the fork, and the preloaded weights
# moved onto the device: ~27 GiB at several GB/s), within a floor and the cap a visitor can be granted.
RESERVATION_MARGIN = 1.5
RESERVATION_OVERHEAD_S = 10
RESERVATION_FLOOR_S = 15
# Before a device has measured a run, the estimate is reference/performance.md's FLOP counts at an assumed effective
# throughput: 40 % (the utilisation its floor figures use) of ~250 dense fp16 TFLOP/s, half an RTX Pro 6000
# Blackwell (ZeroGPU's default `large` size). Replaced by the measured rates after the first run.
PRIOR_TFLOPS = 100.0
UNET_PASS_TFLOP = 0.80 + 0.31      # one frame through the SD1.5 UNet and its motion modules, at 512 x 512
DECODE_FRAME_TFLOP = 2.5           # one frame through SD1.5's VAE decoder, at 512 x 512
# Segmentation has no FLOP figures in the reference: assumed seconds on such a GPU until the first measured run.
PRIOR_GROUND_FRAME_S = 0.15        # Grounding DINO (or a drop-in) on one frame at 480 px
PRIOR_TRACK_FRAME_S = 0.05         # SAM 2.1 propagating one frame at 1024 px
PRIOR_VDIT_FRAME_S = 0.5           # VD-IT: one frame through ModelScope's UNet and the head at 360 px


def prior_seconds(steps: int, passes: int, frames: int, resolution: int) -> float:
    """A generating run's seconds from its FLOPs (see PRIOR_TFLOPS); FLOPs grow with the pixels."""
    tflop = steps * passes * UNET_PASS_TFLOP + frames * DECODE_FRAME_TFLOP
    return tflop * (resolution / 512) ** 2 / PRIOR_TFLOPS


def reservation(seconds: float, cap: int) -> tuple[int, int]:
    """(the duration to reserve, what the call needs) for `seconds` of estimated GPU work: the need is
    ceil(margin x seconds + overhead); the reservation is the need within [floor, cap]. A need over `cap` does not
    fit any reservation a visitor can get."""
    need = math.ceil(RESERVATION_MARGIN * seconds + RESERVATION_OVERHEAD_S)
    return max(RESERVATION_FLOOR_S, min(need, cap)), need


UNIT_RATES = "per_unit"   # the calibration file's entry for per-unit rates (segmentation)


@dataclass
class Rates:
    step_pass_s: float        # seconds per frame-pass of one denoising step
    decode_frame_s: float     # seconds per decoded frame
    other_frame_s: float      # text encoding, output check, MP4, per frame of the clip
    runs: int = 1


class Estimator:
    """Per-setting rates from finished runs; thread-safe; kept in `path` (None: in memory only)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._rates: dict[str, Rates] = {}
        self._unit_rates: dict[str, float] = {}     # seconds per unit of work (a grounded frame, a tracked frame)
        if self.path is not None and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                self._unit_rates = {k: float(v) for k, v in saved.pop(UNIT_RATES, {}).items()}
                self._rates = {k: Rates(**v) for k, v in saved.items()}
            except (ValueError, TypeError, AttributeError):
                self._rates, self._unit_rates = {}, {}   # a damaged file: start over rather than refuse to start

    def rate(self, key: str) -> float | None:
        """Seconds per unit of work for `key` (None before the first run measured it)."""
        with self._lock:
            return self._unit_rates.get(key)

    def record_rate(self, key: str, units: float, seconds: float) -> None:
        """Learn a per-unit rate from a finished run (`units` of work took `seconds`), smoothed as `record` does."""
        if units <= 0:
            return
        measured = seconds / units
        with self._lock:
            old = self._unit_rates.get(key)
            self._unit_rates[key] = measured if old is None else (1 - SMOOTHING) * old + SMOOTHING * measured
            self._save()

    def seconds(self, key: str, steps: int, passes: int, frames: int) -> float | None:
        """The estimate for a run without loading, or None before the first run with this key."""
        with self._lock:
            rates = self._rates.get(key)
        if rates is None:
            return None
        return steps * passes * rates.step_pass_s + frames * (rates.decode_frame_s + rates.other_frame_s)

    def record(self, key: str, steps: int, passes: int, frames: int, timings: dict[str, float]) -> None:
        """Learn from a finished run's timings (the info JSON's breakdown)."""
        denoise = timings.get("denoise", 0.0)
        decode = timings.get("decode", 0.0)
        other = sum(v for k, v in timings.items()
                    if k not in ("load", "denoise", "denoise_per_step", "decode", "faces", "identity_report",
                                 "queue_wait", "preview"))
        measured = Rates(denoise / max(steps * passes, 1), decode / max(frames, 1), other / max(frames, 1))
        with self._lock:
            old = self._rates.get(key)
            if old is not None:
                mix = lambda a, b: (1 - SMOOTHING) * a + SMOOTHING * b  # noqa: E731
                measured = Rates(mix(old.step_pass_s, measured.step_pass_s),
                                 mix(old.decode_frame_s, measured.decode_frame_s),
                                 mix(old.other_frame_s, measured.other_frame_s), old.runs + 1)
            self._rates[key] = measured
            self._save()

    def _save(self) -> None:
        """Write the figures (hold the lock)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps({**{k: asdict(v) for k, v in self._rates.items()},
                                       UNIT_RATES: self._unit_rates}, indent=1))
        scratch.replace(self.path)      # never a half-written file


def say(seconds: float | None, device: str, loading: bool, fast_hint: bool = True) -> str:
    """The line shown next to Generate: "≈ 40 s on this GPU", "≈ 35 min on this CPU — try fewer frames"."""
    where = "this GPU" if device.startswith("cuda") else "this CPU"
    if seconds is None:
        return f"First run on {where}: it measures how fast {where} is, then every run says how long it will take."
    text = f"≈ {seconds:.0f} s" if seconds < 90 else f"≈ {seconds / 60:.0f} min"
    text += f" on {where}"
    if loading:
        text += ", plus loading the models this style and mode need (not in memory yet)"
    if seconds > 300:
        text += " — try Fast mode or fewer frames" if fast_hint else " — try fewer frames"
    return text
