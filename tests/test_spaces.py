"""Hugging Face Spaces (ZeroGPU), reproduced here: the card the Hub checks, a hub file with two sources, GPU
reservations from the calibrated estimate, the budget from the real device, fork-safe locks, and a start-up that
preloads every model a visible choice can reach, so that no GPU call loads anything."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipelines.core import estimate as estimates
from pipelines.core.cache import Component, ModelCache
from pipelines.identity.models import identity_models
from pipelines.timelapse.models import timelapse_models
from tests.conftest import ROOT, tiny_settings

# The colours and the ZeroGPU Python versions of the Spaces configuration reference / spaces-zerogpu.md.
CARD_COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
ZEROGPU_PYTHONS = ("3.10.13", "3.12.12")
ZEROGPU_TORCH = ("2.8.0", "2.9.1", "2.10.0", "2.11.0", "2.12.1", "2.13.0")   # hub-docs PR #2763, 2026-09-04


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "README.md must open with the Space's YAML front matter"
    return yaml.safe_load(text.split("---\n")[1])


def pinned(name: str) -> str:
    match = re.search(rf"^{name}(?:\[[\w,-]+\])?==([\w.]+)\s*(#.*)?$", (ROOT / "requirements.txt").read_text(), re.M)
    assert match, f"requirements.txt pins no single {name} version"
    return match.group(1)


# ----------------------------------------------------------------- the card
def test_the_card_passes_the_hubs_checks_that_can_be_made_offline():
    from huggingface_hub import SpaceHardware

    card = front_matter()
    assert len(card["short_description"]) <= 60, "the Hub refuses a short_description over 60 characters"
    assert card["sdk"] == "gradio"
    assert card["sdk_version"] == pinned("gradio"), "the Space must run the Gradio the tests ran"
    assert (ROOT / card["app_file"]).is_file()
    assert any(v.startswith(str(card["python_version"])) for v in ZEROGPU_PYTHONS)
    assert {card["colorFrom"], card["colorTo"]} <= CARD_COLOURS
    assert card["suggested_hardware"] in {h.value for h in SpaceHardware}
    assert re.fullmatch(r"\d+[smh]", card["startup_duration_timeout"])
    for entry in card["preload_from_hub"]:
        parts = entry.split(" ")
        assert len(parts) in (2, 3), f"not 'repo file1,file2[ sha]': {entry[:80]}"
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", parts[0]), parts[0]
        assert all(name and " " not in name for name in parts[1].split(",")), entry[:80]
        assert len(parts) == 2 or re.fullmatch(r"[0-9a-f]{40}", parts[2])


def test_spaces_gets_a_torch_zerogpu_lists_and_the_one_ci_tests():
    import torch

    assert pinned("torch") in ZEROGPU_TORCH
    assert torch.__version__.split("+")[0] == pinned("torch")
    assert "2.8-2.11" not in (ROOT / "requirements.txt").read_text() + (ROOT / "README.md").read_text()


# ----------------------------------------------------------------- a hub file with two sources
@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """hf_hub_download against a fake hub: `holds` maps (repo_type, repo_id) to the files it has; anything else is
    a 404 (RemoteEntryNotFoundError, as huggingface_hub raises it); every request is recorded."""
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    import pipelines.core.hub as hub
    from tests.test_real_loading import write_complete

    holds: dict[tuple[str, str], set[str]] = {}
    asked: list[tuple[str, str, str, bool]] = []
    cache: dict[tuple[str, str, str], Path] = {}

    def download(repo_id, filename, repo_type="model", local_files_only=False, force_download=False, **_):
        asked.append((repo_type, repo_id, filename, local_files_only))
        if (repo_type, repo_id, filename) in cache and not force_download:
            return str(cache[(repo_type, repo_id, filename)])
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        if filename not in holds.get((repo_type, repo_id), set()):
            response = httpx2.Response(404, request=httpx2.Request("GET", f"https://hub/{repo_id}/{filename}"))
            raise RemoteEntryNotFoundError("404 Client Error: Entry Not Found", response=response)
        path = tmp_path / repo_type / repo_id / filename
        write_complete(path)
        cache[(repo_type, repo_id, filename)] = path
        return str(path)

    monkeypatch.setattr(hub, "hf_hub_download", download)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0: True)
    monkeypatch.setattr(hub, "_SERVED", {})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return SimpleNamespace(holds=holds, asked=asked)


def test_animator_ckpt_comes_from_the_space_when_the_model_repository_does_not_hold_it(fake_hub, tmp_path):
    from pipelines.core.hub import served_from
    from pipelines.identity.models import ANIMATOR_FILE
    from studio.engine import Engine
    from studio.tabs import system

    fake_hub.holds[("space", "ID-Animator/ID-Animator")] = {"animator.ckpt"}
    path = ANIMATOR_FILE.path()
    assert path == tmp_path / "space" / "ID-Animator/ID-Animator" / "animator.ckpt"
    downloads = [(t, r) for t, r, _, local in fake_hub.asked if not local]
    assert downloads == [("model", "ID-Animator/ID-Animator"), ("space", "ID-Animator/ID-Animator")]
    assert served_from(ANIMATOR_FILE) == "spaces/ID-Animator/ID-Animator"
    from studio.settings import Settings

    engine = Engine(Settings(profile="real", output_dir=tmp_path / "out", calibration_path=tmp_path / "c.json"))
    summary = system.report(engine)[0]
    assert "**Hub sources** animator.ckpt from spaces/ID-Animator/ID-Animator" in summary


def test_the_model_repository_is_asked_first_and_serves_when_it_has_the_file(fake_hub, tmp_path):
    from pipelines.core.hub import served_from
    from pipelines.identity.models import ANIMATOR_FILE

    fake_hub.holds[("model", "ID-Animator/ID-Animator")] = {"animator.ckpt"}
    fake_hub.holds[("space", "ID-Animator/ID-Animator")] = {"animator.ckpt"}
    assert ANIMATOR_FILE.path().parts[-4] == "model"
    assert served_from(ANIMATOR_FILE) == "ID-Animator/ID-Animator"
    assert [t for t, *_, local in fake_hub.asked if not local] == ["model"]


def test_a_failed_transfer_is_not_a_reason_to_ask_the_next_source(fake_hub, monkeypatch):
    import pipelines.core.hub as hub
    from pipelines.core.errors import WeightsError
    from pipelines.identity.models import ANIMATOR_FILE

    real = hub.hf_hub_download

    def reset(repo_id, filename, repo_type="model", local_files_only=False, **kwargs):
        if not local_files_only:
            raise ConnectionResetError("Connection reset by peer")
        return real(repo_id, filename, repo_type=repo_type, local_files_only=True, **kwargs)

    monkeypatch.setattr(hub, "hf_hub_download", reset)
    with pytest.raises(WeightsError, match=r"Downloading animator.ckpt from ID-Animator/ID-Animator failed "
                                           r"\(ConnectionResetError"):
        ANIMATOR_FILE.path()


def test_no_source_holding_the_file_is_said_with_every_source(fake_hub):
    from pipelines.core.errors import WeightsError
    from pipelines.identity.models import ANIMATOR_FILE

    with pytest.raises(WeightsError, match="ID-Animator/ID-Animator, spaces/ID-Animator/ID-Animator answered"):
        ANIMATOR_FILE.path()


def test_the_download_command_and_the_missing_weights_message_name_both_sources(fake_hub, monkeypatch, capsys):
    import pipelines.core.hub as hub
    from pipelines.identity.models import ANIMATOR_FILE
    from studio.__main__ import download

    for file in (f for f in __import__("studio.__main__", fromlist=["tab_files"]).tab_files(["identity"])):
        kind = "space" if file.fallbacks else "model"
        fake_hub.holds.setdefault((kind, file.repo_id), set()).add(file.filename)
    assert download(["identity"]) == 0
    out = capsys.readouterr().out
    assert "ID-Animator/ID-Animator: animator.ckpt (else spaces/ID-Animator/ID-Animator)" in out
    assert "  from spaces/ID-Animator/ID-Animator" in out

    monkeypatch.setattr(hub, "_offline", lambda: True)
    missing = hub.MissingWeightsError([ANIMATOR_FILE], "offline mode is on")
    assert "animator.ckpt, or from spaces/ID-Animator/ID-Animator" in str(missing)


def test_a_blob_pruned_after_packing_reads_as_missing_from_the_hub_cache(tmp_path, monkeypatch):
    """What ZeroGPU does after packing (ZEROGPU_MMAP_AUTOPRUNE_PATTERN): the blob goes, the snapshot's link stays.
    huggingface_hub then calls the file missing, which is why a call first asks the model cache (next test)."""
    from huggingface_hub import constants

    from pipelines.core.hub import HubFile

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "b1").write_bytes(b"x")
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / "model.safetensors").symlink_to(repo / "blobs" / "b1")
    assert HubFile("org/model", "model.safetensors").cached() is not None
    (repo / "blobs" / "b1").unlink()
    assert HubFile("org/model", "model.safetensors").cached() is None


def test_a_preloaded_model_is_not_declared_missing_once_its_files_are_gone(tmp_path, monkeypatch):
    from pipelines.core.hub import MissingWeightsError
    from studio.engine import Engine
    from studio.tabs.timelapse_api import TimelapseAPI

    def pruned(*args, **kwargs):
        raise MissingWeightsError([], "the blobs were pruned")

    preloaded = Engine(tiny_settings(tmp_path / "a", zerogpu=True, vdit=False))
    preloaded.preload()
    monkeypatch.setattr(preloaded.registry, "ensure_available", pruned)
    _, _, info = TimelapseAPI(preloaded).generate("ice melting", num_frames=8, steps=2)
    assert info["num_frames"] == 8
    cold = Engine(tiny_settings(tmp_path / "b"))
    monkeypatch.setattr(cold.registry, "ensure_available", pruned)
    with pytest.raises(Exception, match="the blobs were pruned"):
        TimelapseAPI(cold).generate("ice melting", num_frames=8, steps=2)


# ----------------------------------------------------------------- reservations
def write_rates(path: Path, step_pass_s: float, decode_frame_s: float, other_frame_s: float, engine) -> None:
    keys = {engine._rates_key(tab, mode) for tab, modes in (("timelapse", "TIMELAPSE_MODES"),
                                                            ("identity", "IDENTITY_MODES"))
            for mode in getattr(__import__("pipelines.sd15.modes", fromlist=[modes]), modes).values()}
    rates = {k: {"step_pass_s": step_pass_s, "decode_frame_s": decode_frame_s, "other_frame_s": other_frame_s,
                 "runs": 1} for k in keys}
    rates["per_unit"] = {engine._unit_key("ground-frame"): 0.2, engine._unit_key("track-frame"): 0.03}
    path.write_text(json.dumps(rates))


def expected(seconds: float, cap: int = 80) -> int:
    """The stated rule, written out: ceil(1.5 x seconds + 10) within [15, cap]."""
    need = -(-(1.5 * seconds + 10) // 1)
    return int(max(15, min(need, cap)))


@pytest.fixture
def calibrated(tmp_path):
    from studio.engine import Engine

    settings = tiny_settings(tmp_path / "out", zerogpu=True, vdit=False)
    write_rates(settings.calibration_path, 0.004, 0.05, 0.01, Engine(settings))
    return Engine(settings)


def test_each_tabs_default_reserves_what_its_calibrated_rates_give(calibrated):
    from pipelines.identity.pipeline import IdentityRequest
    from pipelines.timelapse.pipeline import TimelapseRequest

    engine = calibrated
    timelapse = TimelapseRequest(prompt="ice melting", width=64, height=64)              # 16 frames, 25 steps, CFG
    identity = IdentityRequest(photos=("a.jpg",), prompt="a man", width=64, height=64)    # 16 frames, 30 steps, CFG
    assert engine.gpu_reservation("timelapse", [timelapse]) == expected(25 * 32 * 0.004 + 16 * 0.06) == 17
    assert engine.gpu_reservation("identity", [identity]) == expected(30 * 32 * 0.004 + 16 * 0.06) == 18
    lightning = IdentityRequest(photos=("a.jpg",), prompt="a man", width=64, height=64, mode="fast", steps=4,
                                guidance=1.0)
    assert engine.gpu_reservation("identity", [lightning]) == 15             # 4 x 16 x 0.004 + 0.96 s: the floor


def test_the_longest_time_lapse_is_refused_before_the_gpu_is_asked_with_the_way_out(calibrated, monkeypatch):
    import studio.engine as engine_module
    from pipelines.core.errors import InputError
    from pipelines.timelapse.pipeline import TimelapseRequest
    from studio.tabs.timelapse_api import TimelapseAPI

    stages = {0: "a bud", 63: "a rose"}
    longest = TimelapseRequest(prompt="a rose", keyframes=stages, num_frames=64, steps=100, width=64, height=64)
    work = 100 * (13 * 16 * 2) * 0.004 + 64 * 0.06                       # 13 FreeNoise windows, CFG
    assert calibrated.gpu_reservation("timelapse", [longest]) == expected(work) == 80
    with pytest.raises(InputError, match=rf"about {int(expected(work, cap=10**6))} s of GPU .* more than the 80 s a "
                                         r"visitor can reserve on this Space\. Try Fast mode or fewer frames\."):
        calibrated.reserve("timelapse", longest)
    monkeypatch.setattr(engine_module, "_run", lambda *a, **k: pytest.fail("the GPU was asked for"))
    with pytest.raises(Exception, match="more than the 80 s"):
        TimelapseAPI(calibrated).generate("a rose", keyframes="0: a bud\n63: a rose", num_frames=64, steps=100)


def test_off_spaces_the_same_figure_is_reported_and_nothing_is_refused(tmp_path):
    from pipelines.timelapse.pipeline import TimelapseRequest
    from studio.engine import Engine

    settings = tiny_settings(tmp_path / "out")
    engine = Engine(settings)
    long = TimelapseRequest(prompt="a rose", keyframes={0: "a", 63: "b"}, num_frames=64, steps=100, width=64, height=64)
    flops = (100 * 13 * 16 * 2 * 1.11 + 64 * 2.5) * (64 / 512) ** 2       # TFLOP at 64 px, 13 windows, CFG
    assert engine.reserve("timelapse", long) == expected(flops / 100) == 21
    before = TimelapseRequest(prompt="a rose", width=64, height=64)
    prior = estimates.prior_seconds(25, 32, 16, 64)                  # no run measured yet: the FLOP-based prior
    assert engine.gpu_reservation("timelapse", [before]) == expected(prior) == 15


def test_the_prior_is_the_references_flop_count_at_the_stated_throughput():
    """reference/performance.md: 25 steps with CFG, 16 frames at 512 px, is about 928 TFLOP."""
    assert estimates.prior_seconds(25, 32, 16, 512) == pytest.approx(928 / 100, rel=0.01)


def test_segmentation_reserves_from_its_measured_per_frame_rates(calibrated):
    import numpy as np

    from pipelines.segmentation.pipeline import SegmentationRequest

    job = SegmentationRequest(frames=np.zeros((100, 8, 8, 3), np.uint8), expression="the dog", fps=10)
    assert calibrated.gpu_reservation("segmentation", [job]) == expected(8 * 0.2 + 100 * 0.03) == 17
    calibrated.learn_segmentation(job, {"grounding": 8 * 0.4, "propagation": 100 * 0.05})
    assert calibrated.gpu_seconds("segmentation", job) == pytest.approx(8 * 0.3 + 100 * 0.04)
    refinement = dataclasses.replace(job, key_frame=3)               # grounds its key frame only
    assert calibrated.gpu_seconds("segmentation", refinement) == pytest.approx(1 * 0.3 + 100 * 0.04)
    # Re-grounding every 10 frames: 10 more grounded frames, and a second tracking pass for a newcomer.
    regrounding = dataclasses.replace(job, reground_every=10)
    assert calibrated.gpu_seconds("segmentation", regrounding) == pytest.approx(18 * 0.3 + 2 * 100 * 0.04)
    vdit = dataclasses.replace(job, backend="vdit")                   # nothing measured yet: 0.5 s a frame assumed
    assert calibrated.gpu_seconds("segmentation", vdit) == pytest.approx(100 * estimates.PRIOR_VDIT_FRAME_S)
    calibrated.learn_segmentation(vdit, {"vdit": 100 * 0.2})
    assert calibrated.gpu_seconds("segmentation", vdit) == pytest.approx(100 * 0.2)


def test_reattention_reserves_for_its_third_unet_branch(calibrated):
    from pipelines.safety.guard import SafetyOptions
    from pipelines.timelapse.pipeline import TimelapseRequest

    plain = TimelapseRequest(prompt="a cat", num_frames=16, steps=25, width=64, height=64, safety=SafetyOptions())
    attended = dataclasses.replace(plain, safety=SafetyOptions(reattention=True))
    decode = 16 * 0.06
    assert calibrated.gpu_seconds("timelapse", plain) == pytest.approx(25 * 32 * 0.004 + decode)
    assert calibrated.gpu_seconds("timelapse", attended) == pytest.approx(25 * 48 * 0.004 + decode)


def test_the_safe_comparison_is_one_gpu_call_reserving_both_clips(tmp_path, monkeypatch):
    import studio.engine as engine_module
    from studio.engine import Engine
    from studio.tabs.safety_api import SafetyAPI

    settings = tiny_settings(tmp_path / "out", zerogpu=True, vdit=False)
    write_rates(settings.calibration_path, 0.004, 0.05, 0.01, Engine(settings))
    engine = Engine(settings)
    calls = []
    monkeypatch.setattr(engine_module, "run_on_gpu", lambda *a, **k: pytest.fail("a second GPU call"))
    original = engine_module.run_all_on_gpu
    monkeypatch.setattr(engine_module, "run_all_on_gpu",
                        lambda *args: calls.append(engine_module._reserve_all(*args)) or original(*args))
    *_, info = SafetyAPI(engine).generate("a photo of a cat", num_frames=8, steps=2)
    one = 2 * 16 * 0.004 + 8 * 0.06
    assert len(calls) == 1 and info["unguarded"]
    assert calls[0] == info["gpu_reservation_s"] == expected(2 * one)


def test_the_estimate_line_says_the_reservation_on_spaces(calibrated):
    _, line = calibrated.estimate("timelapse", 25, 16, 8.5, False)
    assert line.endswith("· ≈ 17 s of GPU")
    _, line = calibrated.estimate("timelapse", 100, 64, 8.5, True)
    assert "over the 80 s a visitor can reserve here: try Fast mode or fewer frames" in line


# ----------------------------------------------------------------- the real device, fork safety
def test_the_budget_comes_from_the_real_device_inside_the_gpu_worker(tmp_path, monkeypatch):
    import torch

    from studio.engine import Engine

    engine = Engine(tiny_settings(tmp_path / "out", zerogpu=True, device="cuda"))
    assert engine.cache.device_budget is None              # the main process: an emulated GPU, no budget from it
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=48 * 2**30))
    monkeypatch.setattr(os, "getpid", lambda: 4242)          # the forked worker
    engine.size_for_device()
    assert engine.cache.device_budget == 40 * 2**30
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: pytest.fail("asked again in one worker"))
    engine.size_for_device()


def test_every_gpu_call_sizes_the_cache_for_its_device_before_it_runs(tmp_path, monkeypatch):
    from pipelines.timelapse.pipeline import TimelapseRequest
    from studio.engine import Engine, Reporter, run_on_gpu

    engine = Engine(tiny_settings(tmp_path / "out"))
    order = []
    monkeypatch.setattr(engine, "size_for_device", lambda: order.append("sized"))
    real = engine.pipelines["timelapse"]
    monkeypatch.setitem(engine.pipelines, "timelapse", lambda *a, **k: order.append("ran") or real(*a, **k))
    run_on_gpu(engine.name, "timelapse", TimelapseRequest(prompt="ice", num_frames=8, steps=1, width=64, height=64),
               Reporter(lambda *a, **k: None))
    assert order == ["sized", "ran"]


def test_settings_on_zerogpu_preload_hide_vdit_and_take_no_budget_from_the_emulated_gpu(monkeypatch):
    from studio.settings import Settings

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setenv("STUDIO_DEVICE", "cuda")
    settings = Settings.from_env()
    assert settings.zerogpu and settings.preload and not settings.vdit and settings.device_budget is None
    monkeypatch.setenv("STUDIO_VDIT", "1")
    assert Settings.from_env().vdit


def test_a_fork_while_another_thread_holds_the_cache_can_still_use_it():
    """ZeroGPU forks its GPU worker from a Gradio thread while other threads may be inside the cache: the child must
    not inherit a held lock (it would wait for ever)."""
    cache = ModelCache("cpu")
    part = Component("part", lambda: object())
    cache.get(part)
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with cache._lock, cache.use(part):
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert inside.wait(5)
    pid = os.fork()
    if pid == 0:                                            # the child: a GPU worker
        signal.alarm(5)
        try:
            with cache.use(part) as (obj,):
                os._exit(0 if obj is not None else 2)
        except BaseException:
            os._exit(3)
    try:
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on a lock held at the fork")
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        leave.set()
        holder.join(5)


# ----------------------------------------------------------------- start-up: everything reachable, preloaded
def reachable_keys(engine) -> set[str]:
    """What the UI's choices can reach, enumerated from the choices themselves (not from Engine.reachable)."""
    from pipelines.sd15.models import STYLES
    from pipelines.sd15.modes import IDENTITY_MODES, TIMELAPSE_MODES
    from pipelines.segmentation.models import GROUNDERS, TRACKERS

    keys = set()
    for style in STYLES:
        for mode in TIMELAPSE_MODES.values():
            m = timelapse_models(engine.registry, style, fast=mode.fast)
            keys |= {m.tokenizer.key, m.text_encoder.key, m.vae.key, m.unet.key, m.tiny_vae.key}
    for mode in IDENTITY_MODES.values():
        for steps in mode.steps if mode.fast else (None,):
            m = identity_models(engine.registry, steps)
            keys |= {c.key for c in (m.tokenizer, m.text_encoder, m.vae, m.unet, m.image_encoder, m.image_processor)}
    registry = engine.pipelines["segmentation"].registry
    for grounder in GROUNDERS:
        for tracker in TRACKERS:
            m = registry.models(grounder, tracker)
            keys |= {m.grounder.key, m.grounder_processor.key, m.tracker.key}
    return keys


def test_every_tab_mode_style_and_example_runs_with_nothing_loaded_inside_the_gpu_call(tmp_path, monkeypatch):
    import studio.engine as engine_module
    from pipelines.core.video import write_mp4
    from pipelines.sd15.models import STYLES
    from pipelines.sd15.modes import IDENTITY_MODES, TIMELAPSE_MODES
    from pipelines.segmentation.models import EXPRESSION_GROUNDERS, GROUNDERS, TRACKERS
    from pipelines.segmentation.synthetic import make_video
    from studio.engine import Engine
    from studio.tabs import identity, timelapse
    from studio.tabs.identity_api import IdentityAPI
    from studio.tabs.safety_api import SafetyAPI
    from studio.tabs.segmentation_api import SegmentationAPI
    from studio.tabs.timelapse_api import TimelapseAPI

    engine = Engine(tiny_settings(tmp_path / "out", zerogpu=True, vdit=False))
    engine.preload()
    held = {c["key"] for c in engine.cache.stats()["components"]}
    assert reachable_keys(engine) <= held
    assert not any("|unet2d|" in k or "|motion-adapter|" in k for k in held), "build inputs kept after preload"

    misses = []
    original = engine_module._run

    def counted(*args, **kwargs):
        before = engine.cache.stats()["misses"]
        try:
            return original(*args, **kwargs)
        finally:
            misses.append((args[1], engine.cache.stats()["misses"] - before))

    monkeypatch.setattr(engine_module, "_run", counted)
    t, i = TimelapseAPI(engine), IdentityAPI(engine)
    photo = str(ROOT / "assets" / "examples" / "astronaut.jpg")
    for style in STYLES:
        for name, mode in TIMELAPSE_MODES.items():
            t.generate("ice melting", style=style, num_frames=8, steps=mode.default_steps, mode=name,
                       guidance=mode.default_guidance, preview=style == "ToonYou")
    for example in timelapse.EXAMPLES:
        t.generate(example["prompt"], example["keyframes"], style=example["style"], num_frames=example["num_frames"],
                   steps=2)
    for name, mode in IDENTITY_MODES.items():
        for steps in mode.steps if mode.fast else (2,):
            i.generate([photo], "a man", num_frames=8, steps=steps, mode=name,
                       guidance=mode.default_guidance)
    for prompt_text, _ in identity.EXAMPLES:
        i.generate([photo], prompt_text, num_frames=8, steps=2)
    for name, mode in TIMELAPSE_MODES.items():
        SafetyAPI(engine).generate("a cat", num_frames=8, steps=mode.default_steps, mode=name,
                                   guidance=mode.default_guidance)
    clip = str(write_mp4(make_video(frames=8, size=(64, 64)).frames, tmp_path / "clip.mp4", fps=8))
    s = SegmentationAPI(engine)
    for grounder in GROUNDERS:
        if grounder in EXPRESSION_GROUNDERS:     # the tiny Florence-2 (random) boxes nothing: it still ran, loaded
            with pytest.raises(Exception, match="No “block” found"):
                s.segment(clip, "the block", grounder=grounder, box_threshold=0.01)
        else:
            s.segment(clip, "the block", grounder=grounder, box_threshold=0.01)
    for tracker in TRACKERS:
        s.segment(clip, "the block", tracker=tracker, box_threshold=0.01)
    assert len(misses) >= 25
    assert [m for m in misses if m[1]] == [], "a GPU call loaded models"


def test_under_spaces_zerogpu_everything_reachable_is_preloaded_and_each_click_reserves_its_estimate(tmp_path):
    """The start-up and the first clicks through the `spaces` package's own ZeroGPU code path, as far as a CPU goes
    (tests/zerogpu_startup.py says what it stubs): spaces packs what the studio placed on its emulated `cuda`; each
    click reaches spaces' request for a GPU with the duration the endpoint computed, loading nothing on the way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUDIO_", "SPACES_", "ZEROGPU_"))}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "zerogpu_startup.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["cuda_available_in_main"] and result["settings"] == {"device": "cuda", "vdit": False,
                                                                        "preload": True}
    assert set(result["reachable"]) <= set(result["held"])
    assert result["devices"] == ["cuda"] and result["packed_files"] >= 1 and result["device_budget"] is None
    calls = result["calls"]
    for name, call in calls.items():
        assert call["misses"] == 0, f"{name} loaded a model outside the preload"
        if name != "too_long":
            assert call["outcome"] == "scheduled" and call["durations"] == call["reservations"], (name, call)
    prior = estimates.prior_seconds(25, 32, 16, 512)             # nothing measured yet: the FLOP-based prior
    assert calls["timelapse"]["durations"] == [expected(prior)] == [24]
    assert calls["safe_compare"]["durations"] == [expected(2 * estimates.prior_seconds(25, 16, 8, 512))]
    assert calls["too_long"]["durations"] == [] and "more than the 80 s a visitor can reserve" in \
        calls["too_long"]["outcome"]


def test_the_preload_rss_bench_projects_the_whole_preload_without_building_it():
    from tests.bench_smoke import smoke

    done = smoke("preload_rss.py")      # the suite's one smoke run of it: --groups 0
    assert done.args == ["--groups", "0"] and done.returncode == 0, done.stderr[-2000:]
    figures = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line and line[0] != "#")
    held = float(figures["whole_preload_held_gib"].split()[0])
    assert 20 < held < 42, "the ZeroGPU preload must stay under spaces' xlarge_threshold (42 GiB)"
    assert figures["groups_built"] == "0"


def test_every_generating_and_segmenting_call_reports_the_reservation_it_asks_for(calibrated, tmp_path):
    import numpy as np

    from pipelines.core.video import read_clip, write_mp4
    from pipelines.identity.pipeline import IdentityRequest
    from pipelines.segmentation.pipeline import SegmentationRequest
    from pipelines.segmentation.synthetic import make_video
    from pipelines.timelapse.pipeline import TimelapseRequest
    from studio.tabs.identity_api import IdentityAPI
    from studio.tabs.segmentation_api import SegmentationAPI
    from studio.tabs.timelapse_api import TimelapseAPI

    engine, photo = calibrated, str(ROOT / "assets" / "examples" / "astronaut.jpg")
    *_, info = TimelapseAPI(engine).generate("ice melting", num_frames=8, steps=2)
    assert info["gpu_reservation_s"] == engine.gpu_reservation(
        "timelapse", [TimelapseRequest(prompt="ice melting", num_frames=8, steps=2, width=64, height=64)])
    *_, info = IdentityAPI(engine).generate([photo], "a man", num_frames=8, steps=2)
    assert info["gpu_reservation_s"] == engine.gpu_reservation(
        "identity", [IdentityRequest(photos=(photo,), prompt="a man", num_frames=8, steps=2, width=64, height=64)])
    clip = str(write_mp4(make_video(frames=8, size=(64, 64)).frames, tmp_path / "clip.mp4", fps=8))
    frames, fps = read_clip(clip, 300, 60, 1920 * 1080)
    job = SegmentationRequest(frames=np.asarray(frames), expression="the block", fps=fps, box_threshold=0.01)
    expected_s = engine.gpu_reservation("segmentation", [job])        # before this run refines the rates
    *_, info = SegmentationAPI(engine).segment(clip, "the block", box_threshold=0.01)
    assert info["gpu_reservation_s"] == expected_s
