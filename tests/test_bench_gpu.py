"""bench/gpu.py at its smoke size: it runs offline on the cpu and prints every figure, floor and ratio it promises."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.bench_smoke import smoke

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
GENERATIONS = ("timelapse_25step_cfg", "timelapse_fast_8step_cfg", "identity_30step_cfg", "identity_lightning_4step")
RATIOS = {   # ratio: (numerator figure, denominator figure)
    "lightning_vs_30step_ratio": ("identity_lightning_4step_s", "identity_30step_cfg_s"),
    "timelapse_fast_vs_25step_ratio": ("timelapse_fast_8step_cfg_s", "timelapse_25step_cfg_s"),
    "tiny_vs_full_decode_ratio": ("decode_tiny_s", "decode_full_vae_s"),
}
EXPECTED = (
    [f"{g}_{kind}" for g in GENERATIONS for kind in ("s", "floor_s", "steps", "peak_rss_growth_mib")]
    + ["decode_full_vae_s", "decode_full_vae_floor_s", "decode_full_vae_peak_rss_growth_mib",
       "decode_tiny_s", "decode_tiny_peak_rss_growth_mib",
       "sam2_propagation_s", "sam2_propagation_fps", "sam2_propagation_frames", "sam2_propagation_peak_rss_growth_mib",
       "cpu_bf16_supported"]
    + list(RATIOS)
)


def smoke_run(*options: str) -> subprocess.CompletedProcess:
    # One thread: on a shared 2-core machine torch's default pool can stall for seconds per call.
    result = subprocess.run(
        [sys.executable, "bench/gpu.py", "--size", "smoke", "--device", "cpu", "--threads", "1", *options],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_smoke_run_prints_every_figure():
    result = smoke("gpu.py")            # the suite's one smoke run of it (SMOKE_ARGS in bench/gpu.py)
    assert result.args[:2] == ["--size", "smoke"] and result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
    figures = {}
    for name in EXPECTED:
        found = [line for line in lines if re.fullmatch(rf"{re.escape(name)}: {NUMBER}", line)]
        assert len(found) == 1, f"{name}: expected one `{name}: <number>` line, got {found}\n{result.stdout}"
        figures[name] = float(found[0].split(": ", 1)[1])
    assert not [line for line in lines if line.split(":")[0].endswith("_knobs_s")], "knob figures without --knobs"

    for name in (f"{g}_floor_s" for g in [*GENERATIONS, "decode_full_vae"]):
        assert figures[name] > 0, name
    for name in (f"{g}_s" for g in [*GENERATIONS, "decode_full_vae", "decode_tiny", "sam2_propagation"]):
        assert figures[name] > 0, name
    assert math.isclose(figures["sam2_propagation_fps"],
                        figures["sam2_propagation_frames"] / figures["sam2_propagation_s"], rel_tol=1e-3)
    for ratio, (top, bottom) in RATIOS.items():
        assert math.isclose(figures[ratio], figures[top] / figures[bottom], rel_tol=1e-4), ratio
    # The floors follow the FLOP counts: CFG doubles the batch, and each step costs the same.
    assert math.isclose(figures["identity_30step_cfg_floor_s"] / figures["identity_lightning_4step_floor_s"],
                        2 * figures["identity_30step_cfg_steps"] / figures["identity_lightning_4step_steps"],
                        rel_tol=1e-4)


def test_knobs_run_each_figure_twice():
    """--knobs (bf16, channels-last, SDPA, VAE slicing + tiling on cpu) on two of the benchmarks: every figure
    plain and `_knobs`, the ratio for both, and a speed-up that is the quotient of the two."""
    result = smoke_run("--knobs", "--only", "lightning,identity")
    figures = dict(line.split(": ", 1) for line in result.stdout.splitlines() if line and not line.startswith("#"))
    figures = {name: float(value) for name, value in figures.items()}
    for base in ("identity_30step_cfg", "identity_lightning_4step"):
        assert figures[f"{base}_s"] > 0 and figures[f"{base}_knobs_s"] > 0
        assert f"{base}_knobs_floor_s" not in figures   # the same work: one floor
        assert math.isclose(figures[f"{base}_knobs_speedup"], figures[f"{base}_s"] / figures[f"{base}_knobs_s"],
                            rel_tol=1e-4)
    assert math.isclose(figures["lightning_vs_30step_knobs_ratio"],
                        figures["identity_lightning_4step_knobs_s"] / figures["identity_30step_cfg_knobs_s"],
                        rel_tol=1e-4)
    assert "decode_full_vae_s" not in figures and "timelapse_fast_vs_25step_ratio" not in figures   # --only
