"""The time estimate shown before every run: this machine's measured rates times the work the settings ask for."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipelines.core.estimate import Estimator, Rates, say
from pipelines.identity import pipeline as identity_pipeline
from pipelines.timelapse import pipeline as timelapse_pipeline
from pipelines.timelapse.pipeline import frame_passes
from studio.engine import Engine
from studio.tabs.timelapse_api import TimelapseAPI
from tests.conftest import tiny_settings


@pytest.mark.parametrize("frames, guided, sliding, passes", [
    (16, True, False, 32), (16, False, False, 16), (8, True, True, 16),
    (24, True, True, 3 * 16 * 2),      # FreeNoise: windows at 0, 4, 8 (16 frames each), with guidance
    (64, False, True, 13 * 16),        # the README's 13 windows for 64 frames
])
def test_frame_passes_count_every_window_and_guidance(frames, guided, sliding, passes):
    assert frame_passes(frames, guided, sliding) == passes


def test_the_engine_estimates_each_tab_with_its_methods_own_formula(tmp_path):
    """The estimator knows no method: the engine passes in each method's frame-passes. The identity tab's clip is one
    window of the motion module (no FreeNoise, whatever `sliding` says); the time-lapse's 24 frames are 3 windows."""
    from studio import engine as engine_module

    assert engine_module.FRAME_PASSES == {"timelapse": timelapse_pipeline.frame_passes,
                                          "identity": identity_pipeline.frame_passes}
    assert identity_pipeline.frame_passes(16, True, True) == 32 and identity_pipeline.frame_passes(12, False) == 12
    engine = Engine(tiny_settings(tmp_path / "out"))
    for tab in ("timelapse", "identity"):          # 10 steps x 32 frame-passes in 3.2 s: 0.01 s a frame-pass
        engine.learn(tab, 10, 16, 7.5, False, {"denoise": 3.2, "decode": 0.0})
    assert engine.estimate("identity", 10, 16, 7.5, sliding=True)[0] == pytest.approx(3.2)
    assert engine.estimate("timelapse", 10, 16, 7.5, sliding=True)[0] == pytest.approx(3.2)      # one window
    assert engine.estimate("timelapse", 10, 24, 7.5, sliding=True)[0] == pytest.approx(9.6)      # three windows
    assert engine.estimate("timelapse", 10, 16, 1.0, sliding=False)[0] == pytest.approx(1.6)     # no guidance


def test_an_estimate_is_the_measured_rates_times_the_work():
    estimator = Estimator()
    assert estimator.seconds("k", 25, 32, 16) is None                 # nothing measured yet
    estimator.record("k", 25, 32, 16, {"load": 9.0, "denoise": 8.0, "decode": 1.6, "encode_mp4": 0.16,
                                       "safety_check": 0.16, "denoise_per_step": 0.32})
    assert estimator.seconds("k", 25, 32, 16) == pytest.approx(8.0 + 1.6 + 0.32)      # the same run, load apart
    # twice the steps and frames: denoising x4, decode and the rest x2
    assert estimator.seconds("k", 50, 64, 32) == pytest.approx(4 * 8.0 + 2 * (1.6 + 0.32))
    estimator.record("k", 25, 32, 16, {"denoise": 16.0, "decode": 1.6})                # a slower run: half-way
    assert estimator._rates["k"].step_pass_s == pytest.approx((8.0 + 16.0) / 2 / (25 * 32))
    assert estimator._rates["k"].runs == 2


def test_rates_survive_a_restart_and_a_damaged_file_is_ignored(tmp_path):
    path = tmp_path / "calibration.json"
    Estimator(path).record("k", 10, 16, 16, {"denoise": 1.6, "decode": 0.16})
    assert Estimator(path).seconds("k", 10, 16, 16) == pytest.approx(1.76)
    assert json.loads(path.read_text())["k"]["runs"] == 1 and not path.with_suffix(".tmp").exists()
    path.write_text("{half a file")
    assert Estimator(path).seconds("k", 10, 16, 16) is None


@pytest.mark.parametrize("seconds, device, loading, expected", [
    (None, "cpu", True, "First run on this CPU: it measures how fast this CPU is"),
    (40.2, "cuda", False, "≈ 40 s on this GPU"),
    (2100, "cpu", False, "≈ 35 min on this CPU — try Fast mode or fewer frames"),
    (12, "cpu", True, "≈ 12 s on this CPU, plus loading the models"),
])
def test_the_line_says_how_long_and_where(seconds, device, loading, expected):
    assert say(seconds, device, loading).startswith(expected)


def test_a_long_fast_run_does_not_suggest_fast_mode():
    assert say(2100, "cpu", False, fast_hint=False) == "≈ 35 min on this CPU — try fewer frames"


def test_the_time_lapse_tab_estimates_after_its_first_run_and_reports_estimate_and_actual(tmp_path):
    engine = Engine(tiny_settings(tmp_path / "out"))
    api = TimelapseAPI(engine)
    assert api.estimate("", "Realistic Vision", 8, 3, 8.5).startswith("First run on this CPU")
    *_, first = api.generate("ice melting", num_frames=8, steps=3, seed=1, progress=lambda *a, **k: None)
    assert first["estimate_s"] is None and first["actual_s"] > 0
    line = api.estimate("", "Realistic Vision", 8, 3, 8.5)
    assert line.startswith("≈ ") and "on this CPU" in line and "loading" not in line      # models now resident
    expected, _ = engine.estimate("timelapse", 6, 8, 8.5, sliding=False)
    *_, second = api.generate("ice melting", num_frames=8, steps=6, seed=1, progress=lambda *a, **k: None)
    assert second["estimate_s"] == pytest.approx(expected)
    assert 0 < second["estimate_s"] < 10 * second["actual_s"]
    assert "ToonYou" not in line and "loading" in api.estimate("", "ToonYou", 8, 3, 8.5)  # another style: not loaded
    assert engine.estimate("timelapse", "abc", 8, 8.5, False) == (None, "")              # mid-edit values: nothing


def test_rates_are_kept_per_machine_setting(tmp_path):
    engine = Engine(tiny_settings(tmp_path / "out"))
    engine.learn("timelapse", 2, 8, 8.5, False, {"denoise": 1.0, "decode": 0.1})
    assert engine.estimate("identity", 2, 8, 8.5, False)[0] is None
    assert engine.estimate("timelapse", 2, 8, 8.5, False)[0] == pytest.approx(1.1)
    other = Engine(dataclasses.replace(tiny_settings(tmp_path / "out"), resolution=128))
    assert other.estimate("timelapse", 2, 8, 8.5, False)[0] is None                # another size: measured anew
    assert isinstance(engine.estimator._rates[engine._rates_key("timelapse")], Rates)


def test_the_duration_zerogpu_calls_with_is_the_engines_reservation(tmp_path):
    """spaces.GPU calls `duration` with the GPU function's own arguments: each GPU function's is the engine's
    reservation for its requests (the formula itself: tests/test_spaces.py)."""
    from pipelines.timelapse.pipeline import TimelapseRequest
    from studio.engine import _reserve, _reserve_all

    engine = Engine(tiny_settings(tmp_path / "out"))
    long = TimelapseRequest(prompt="a", keyframes={0: "a", 63: "b"}, num_frames=64, steps=100, width=64, height=64)
    short = TimelapseRequest(prompt="a", num_frames=8, steps=2, width=64, height=64)
    assert _reserve(engine.name, "timelapse", long, None) == engine.gpu_reservation("timelapse", [long]) > 15
    assert _reserve_all(engine.name, "timelapse", (long, long), None) == engine.gpu_reservation("timelapse",
                                                                                                [long, long])
    assert _reserve_all(engine.name, "timelapse", (long, long), None) > _reserve(engine.name, "timelapse", long, None)
    assert _reserve(engine.name, "timelapse", short, None) == 15


def test_the_tiny_decoders_runs_do_not_move_the_full_decoders_estimate(tmp_path):
    engine = Engine(tiny_settings(tmp_path / "out"))
    engine.learn("timelapse", 8, 8, 5.0, False, {"denoise": 1.0, "decode": 8.0}, mode="fast-preview")
    assert engine.estimate("timelapse", 8, 8, 5.0, False, mode="fast")[0] is None          # the full VAE's rate
    assert engine.estimate("timelapse", 8, 8, 5.0, False, mode="fast-preview")[0] == pytest.approx(9.0)
    engine.learn("timelapse", 8, 8, 5.0, False, {"denoise": 1.0, "decode": 0.8}, mode="fast")
    assert engine.estimate("timelapse", 25, 8, 8.5, False, mode="quality")[0] == pytest.approx(1.0 * 25 / 8 + 0.8)


def test_segmentation_rates_are_kept_across_restarts_beside_the_generating_ones(tmp_path):
    from pipelines.core.estimate import Estimator

    path = tmp_path / "calibration.json"
    first = Estimator(path)
    first.record("k", 2, 8, 8, {"denoise": 1.6, "decode": 0.8})
    first.record_rate("ground", 4, 2.0)
    first.record_rate("ground", 4, 4.0)                    # smoothed half-way: 0.5 then 0.75 s a unit
    again = Estimator(path)
    assert again.rate("ground") == pytest.approx(0.75) and again.seconds("k", 2, 8, 8) == pytest.approx(2.4)
    assert again.rate("track") is None
