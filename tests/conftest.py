"""Shared fixtures: offline environment, a tiny-profile engine, and one real server for API/browser tests."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

# Before anything imports huggingface_hub or gradio: no hub (an unreachable hub hangs instead of failing),
# no analytics, and every file Gradio writes under one temporary folder.
_TMP = Path(tempfile.mkdtemp(prefix="studio-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["GRADIO_TEMP_DIR"] = str(_TMP / "gradio")
os.environ["GRADIO_EXAMPLES_CACHE"] = str(_TMP / "examples")

import pytest  # noqa: E402

from studio.settings import Settings  # noqa: E402

ROOT = Path(__file__).parents[1]


def tiny_settings(output_dir: Path, **overrides) -> Settings:
    overrides.setdefault("calibration_path", output_dir.parent / f"{output_dir.name}-calibration.json")
    return Settings(**{"profile": "tiny", "device": "cpu", "dtype": "float32", "resolution": 64,
                       "output_dir": output_dir, **overrides})


@pytest.fixture(scope="session")
def server_outputs() -> Path:
    return _TMP / "outputs"


@contextmanager
def launched(settings: Settings):
    """The studio with `settings`, launched for real on a free port; yields (engine, url), closes within 20 s."""
    from studio.demo import build_demo, launch_kwargs
    from studio.engine import Engine

    engine = Engine(settings)
    demo = build_demo(engine)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                            quiet=True, **launch_kwargs(engine.settings))
    try:
        yield engine, url
    finally:
        # Bounded teardown: closing must not hang the suite.
        closer = threading.Thread(target=demo.close, daemon=True)
        closer.start()
        closer.join(timeout=20)


@pytest.fixture(scope="session")
def server(server_outputs):
    """The studio in the tiny profile, launched for real on a free port. Yields (engine, url)."""
    with launched(tiny_settings(server_outputs)) as running:
        yield running


@pytest.fixture(scope="session")
def client(server):
    from gradio_client import Client

    _, url = server
    return Client(url, verbose=False, download_files=str(_TMP / "client"))
