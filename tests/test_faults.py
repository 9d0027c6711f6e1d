"""Faults inside a call on every tab: out of memory (freed and retried once, or a clear message), Stop mid-run
(every lock released, the next call runs), one session's Stop never reaching another session's call, and
concurrent API clients getting exactly what sequential runs give."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file

from pipelines.core.video import read_video, write_mp4
from pipelines.segmentation.synthetic import make_video
from studio.engine import STOPPED, Engine
from studio.tabs.identity_api import IdentityAPI
from studio.tabs.safety_api import SafetyAPI
from studio.tabs.segmentation_api import SegmentationAPI
from studio.tabs.timelapse_api import TimelapseAPI
from tests.conftest import ROOT, launched, tiny_settings

PHOTO = str(ROOT / "assets" / "examples" / "astronaut.jpg")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return str(write_mp4(make_video(frames=8, size=(64, 64)).frames, tmp_path_factory.mktemp("clip") / "c.mp4", fps=8))


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Engine(tiny_settings(tmp_path_factory.mktemp("faults")))


def calls(engine: Engine, clip: str) -> dict:
    """Every generating or segmenting endpoint's function, with small good arguments."""
    return {
        "timelapse": lambda **kw: TimelapseAPI(engine).generate("ice melting", num_frames=8, steps=3, seed=1, **kw),
        "identity": lambda **kw: IdentityAPI(engine).generate([PHOTO], "a person", num_frames=8, steps=3, seed=1,
                                                              **kw),
        "safe_generate": lambda **kw: SafetyAPI(engine).generate("a cat", num_frames=8, steps=3, seed=1,
                                                                 compare=False, **kw),
        "segment": lambda **kw: SegmentationAPI(engine).segment(clip, "the block", **kw),
    }


TABS = ["timelapse", "identity", "safe_generate", "segment"]


def _quiet(*args, **kwargs):
    pass


def _unlocked(engine: Engine) -> bool:
    return not any(c["locked"] for c in engine.cache.stats()["components"])


# ----------------------------------------------------------------------------- out of memory
class _FailingProgress:
    """A progress callback that raises `error` on its `at`-th report, `times` times in all: an out-of-memory
    error in the middle of a call, while its models are locked."""

    def __init__(self, error: BaseException, times: int, at: int = 2):
        self.error, self.times, self.at, self.count = error, times, at, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        if self.times and self.count % self.at == 0:
            self.times -= 1
            raise self.error


OOM_ERRORS = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
              RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")]


@pytest.mark.parametrize("error", OOM_ERRORS, ids=["cuda", "cpu"])
@pytest.mark.parametrize("tab", TABS)
def test_out_of_memory_once_frees_the_cache_and_the_retry_gives_the_result(engine, clip, tab, error):
    run = calls(engine, clip)[tab]
    expected = run(progress=_quiet)
    other = "segment" if tab != "segment" else "timelapse"
    calls(engine, clip)[other](progress=_quiet)        # another tab's models resident: what the retry frees
    before = engine.cache.stats()
    result = run(progress=_FailingProgress(error, times=1))
    after = engine.cache.stats()
    assert after["oom_frees"] == before["oom_frees"] + 1
    assert after["drops"] > before["drops"]            # CPU-only: freeing drops the unlocked components
    assert np.array_equal(read_video(result[0])[0], read_video(expected[0])[0])
    assert _unlocked(engine)


@pytest.mark.parametrize("tab", TABS)
def test_out_of_memory_twice_is_a_clear_message_and_the_next_call_runs(engine, clip, tab):
    run = calls(engine, clip)[tab]
    with pytest.raises(gr.Error, match="ran out of memory, even after freeing every model this call does not use"):
        run(progress=_FailingProgress(OOM_ERRORS[0], times=2))
    assert _unlocked(engine)
    assert run(progress=_quiet)[0].endswith(".mp4")


def test_an_error_that_is_not_out_of_memory_is_not_retried(engine, clip):
    before = engine.cache.stats()["oom_frees"]
    with pytest.raises(RuntimeError, match="shape mismatch"):
        calls(engine, clip)["timelapse"](progress=_FailingProgress(RuntimeError("shape mismatch"), times=1))
    assert engine.cache.stats()["oom_frees"] == before
    assert _unlocked(engine)


# ----------------------------------------------------------------------------- Stop, per session
class _StopsItself:
    """Progress that presses its own session's Stop on the `at`-th report: deterministic, no timing."""

    def __init__(self, engine: Engine, request, at: int = 2):
        self.engine, self.request, self.at, self.count = engine, request, at, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        if self.count == self.at:
            self.engine.stop(self.request)


@pytest.mark.filterwarnings("ignore::UserWarning")       # gr.Info outside a request warns
@pytest.mark.parametrize("tab", TABS)
def test_stop_mid_run_releases_every_lock_and_the_next_call_runs(engine, clip, tab):
    run, request = calls(engine, clip)[tab], SimpleNamespace(session_hash=f"stopper-{tab}")
    with pytest.raises(gr.Error, match=STOPPED):
        run(request=request, progress=_StopsItself(engine, request))
    assert _unlocked(engine)
    assert run(request=request, progress=_quiet)[0].endswith(".mp4")   # same session, new call: not stopped


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_one_sessions_stop_never_stops_another_sessions_call(engine, clip):
    """Session A segments and waits at its first progress report; session B generates a time-lapse and presses
    Stop *for A* in the middle of its own run. A stops; B finishes."""
    a, b = SimpleNamespace(session_hash="session-a"), SimpleNamespace(session_hash="session-b")
    a_waiting, b_pressed = threading.Event(), threading.Event()

    def a_progress(*args, **kwargs):
        if not a_waiting.is_set():
            a_waiting.set()
            assert b_pressed.wait(60)

    def b_progress(*args, **kwargs):
        if not b_pressed.is_set() and a_waiting.wait(60):
            engine.stop(a)
            b_pressed.set()

    runs = calls(engine, clip)
    with ThreadPoolExecutor(2) as pool:
        a_call = pool.submit(runs["segment"], request=a, progress=a_progress)
        b_call = pool.submit(runs["timelapse"], request=b, progress=b_progress)
        assert b_call.result(timeout=120)[0].endswith(".mp4")
        with pytest.raises(gr.Error, match=STOPPED):
            a_call.result(timeout=120)
    assert b_pressed.is_set() and _unlocked(engine)


# ----------------------------------------------------------------------------- concurrent clients, over HTTP
API_CALLS = {
    "/timelapse": lambda seed, clip: dict(prompt="ice melting", num_frames=8, steps=3, seed=seed),
    "/identity": lambda seed, clip: dict(photos=[handle_file(PHOTO)], prompt="a person", num_frames=8, steps=3,
                                         seed=seed),
    "/safe_generate": lambda seed, clip: dict(prompt="a cat", num_frames=8, steps=3, seed=seed, compare=False),
    "/segment": lambda seed, clip: dict(video=handle_file(clip), expression="the block" if seed % 2 else "blocks"),
}


def test_concurrent_clients_on_every_tab_get_what_sequential_runs_give(server, clip, tmp_path):
    """Eight requests (four tabs × two seeds) made one after another, then all at once from eight clients
    (eight sessions): every result is the same frames. A state that leaked from one request into the next
    (adapter scales, FreeNoise, the guard's hooks, a SAM 2 session) would change some of them."""
    engine, url = server
    jobs = [(name, seed) for name in API_CALLS for seed in (1, 2)]

    def run(job, folder):
        name, seed = job
        client = Client(url, verbose=False, download_files=str(folder))
        return read_video(client.predict(**API_CALLS[name](seed, clip), api_name=name)[0])[0]

    sequential = [run(job, tmp_path / "seq") for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda ij: run(ij[1], tmp_path / f"c{ij[0]}"), enumerate(jobs)))
    for job, first, second in zip(jobs, sequential, together, strict=True):
        assert np.array_equal(first, second), f"{job}: frames differ when run concurrently"
    assert not np.array_equal(sequential[0], sequential[1])       # the seeds matter: the test can fail
    assert _unlocked(engine)


# ----------------------------------------------------------------------------- a full queue, an oversized upload
@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """A studio whose queue holds one waiting call and whose uploads stop at 1 MB."""
    with launched(tiny_settings(tmp_path_factory.mktemp("small"), queue_size=1, max_upload_mb=1)) as running:
        yield running


def test_a_full_queue_answers_busy_at_once_and_the_studio_serves_after(small_server, monkeypatch, tmp_path):
    from gradio_client.utils import QueueError

    import pipelines.timelapse.pipeline

    engine, url = small_server
    real = pipelines.timelapse.pipeline.step_reporter
    started = threading.Event()

    def slow(progress, steps, preview=None):     # each step 0.2 s: the first call holds the GPU queue ~2 s
        report = real(progress, steps, preview)

        def on_step_end(*args):
            started.set()
            threading.Event().wait(0.2)
            return report(*args)
        return on_step_end

    monkeypatch.setattr(pipelines.timelapse.pipeline, "step_reporter", slow)
    clients = [Client(url, verbose=False, download_files=str(tmp_path / str(i))) for i in range(3)]
    running = clients[0].submit(prompt="ice", num_frames=8, steps=10, api_name="/timelapse")
    assert started.wait(60)
    waiting = clients[1].submit(prompt="ice", num_frames=8, steps=1, api_name="/timelapse")
    threading.Event().wait(0.5)                  # let it reach the queue
    with pytest.raises(QueueError, match="Queue is full"):
        clients[2].predict(prompt="ice", num_frames=8, steps=1, api_name="/timelapse")
    assert running.result(timeout=120)[0].endswith(".mp4")
    assert waiting.result(timeout=120)[0].endswith(".mp4")
    monkeypatch.setattr(pipelines.timelapse.pipeline, "step_reporter", real)
    assert clients[2].predict(prompt="ice", num_frames=8, steps=1, api_name="/timelapse")[0].endswith(".mp4")


def test_an_upload_over_the_cap_is_refused_before_it_is_stored(small_server, tmp_path):
    engine, url = small_server
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (2 * 2**20))
    client = Client(url, verbose=False, download_files=str(tmp_path / "dl"))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):   # gradio_client checks
        client.predict(video=handle_file(str(big)), expression="x", api_name="/segment")
    # ... and the server, for a client that does not check
    uploads = Path(os.environ["GRADIO_TEMP_DIR"])
    before = {p for p in uploads.rglob("*") if p.is_file()}
    with big.open("rb") as f:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.mp4", f)}, timeout=30)
    assert response.status_code in (400, 413) and "maximum allowed size" in response.text, response.text
    assert {p for p in uploads.rglob("*") if p.is_file() and p.stat().st_size >= 2**20} - before == set()
    assert client.predict(api_name="/system") is not None
