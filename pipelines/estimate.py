"""How long a run will take, said before it starts, from what this machine measured on its earlier runs.

A generating call's time is, to a good approximation, linear in the work it does: denoising costs the same per
frame that goes through the UNet once (16 frames with guidance are 32 frame-passes a step; FreeNoise's overlapping
windows count every window's frames), decoding the same per frame, and the rest (text encoding, the output check, the
MP4) a little per frame. So the studio keeps, per machine and setting (profile, device, dtype, resolution, tab), the
seconds per frame-pass of a step and per decoded frame from the last runs, and multiplies. Loading is left out of
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

from pipelines.timelapse import CONTEXT_FRAMES, CONTEXT_STRIDE

SMOOTHING = 0.5           # each run moves the figure half-way: a noisy run cannot swing it far


def windows(num_frames: int) -> int:
    """FreeNoise's 16-frame windows, sliding by 4, over a clip (64 frames: 13); one for a clip that fits one."""
    return 1 + math.ceil(max(0, num_frames - CONTEXT_FRAMES) / CONTEXT_STRIDE)


def frame_passes(num_frames: int, guided: bool, windows_sliding: bool) -> int:
    """Frames through the UNet per denoising step: every FreeNoise window's frames, twice with guidance."""
    if windows_sliding and num_frames > CONTEXT_FRAMES:
        frames = windows(num_frames) * CONTEXT_FRAMES
    else:
        frames = num_frames
    return frames * (2 if guided else 1)


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
        if self.path is not None and self.path.is_file():
            try:
                self._rates = {k: Rates(**v) for k, v in json.loads(self.path.read_text()).items()}
            except (ValueError, TypeError):
                self._rates = {}      # a damaged file: start over rather than refuse to start

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
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                scratch = self.path.with_suffix(".tmp")
                scratch.write_text(json.dumps({k: asdict(v) for k, v in self._rates.items()}, indent=1))
                scratch.replace(self.path)      # never a half-written file


def say(seconds: float | None, device: str, loading: bool, fast_hint: bool = True) -> str:
    """The line shown next to Generate: "≈ 40 s on this GPU", "≈ 35 min on this CPU — try fewer frames"."""
    where = "this GPU" if device.startswith("cuda") else "this CPU"
    if seconds is None:
        return f"First run on {where}: it measures how fast {where} is, then every run says how long it will take."
    text = f"≈ {seconds:.0f} s" if seconds < 90 else f"≈ {seconds / 60:.0f} min"
    text += f" on {where}"
    if loading:
        text += ", plus loading the models (first run of this style)"
    if seconds > 300:
        text += " — try Fast mode or fewer frames" if fast_hint else " — try fewer frames"
    return text
