"""The benches' smoke runs, shared by the tests that read them (test_benches.py runs every one; test_bench_gpu.py,
test_spaces.py and test_vdit.py check more of what theirs print): each script runs once per session.

A bench script declares its own smoke run as two module-level literals, read here without running it:

    SMOKE_ARGS = ["--repeats", "1", ...]     # the smallest settings it accepts
    FIGURES = ("overhead_ratio",)            # the `name: value` lines it must print, each with a number

Files in bench/ whose names start with "_" are helpers the benches import (bench/_harness.py), not benches.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TIMEOUT_S = 300
# Two at a time on two cores: most of a smoke run is imports and one-thread work (each bench gets --threads 1
# where it has the flag), so the module takes about half as long; the figures are not checked, only printed.
WORKERS = 2


def scripts() -> list[Path]:
    """Every bench script in bench/, walked rather than listed: a new one is in without anyone adding it."""
    return sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def declared(path: Path) -> dict:
    """The script's module-level SMOKE_ARGS and FIGURES literals (missing ones absent from the dict)."""
    found = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("SMOKE_ARGS", "FIGURES"):
            found[node.targets[0].id] = ast.literal_eval(node.value)
    return found


@dataclass
class SmokeRun:
    script: str
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    temp_left: list[str]          # what the run left in its own TMPDIR


def _run(path: Path) -> SmokeRun:
    args = declared(path)["SMOKE_ARGS"]
    temp = Path(tempfile.mkdtemp(prefix=f"smoke-{path.stem}-"))
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(temp)}
        try:
            done = subprocess.run([sys.executable, str(path), *args], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=TIMEOUT_S)
            code, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as timeout:
            code, out, err = -1, timeout.stdout or "", f"{timeout.stderr or ''}\ntimed out after {TIMEOUT_S} s"
            out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
        left = sorted(str(p.relative_to(temp)) for p in temp.rglob("*") if not _shared(p.relative_to(temp)))
        return SmokeRun(path.name, args, code, out, err, left)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _shared(path: Path) -> bool:
    """One file or folder per user that a library keeps in TMPDIR and rewrites, not one per run: torch's compile
    cache (torchinductor_<user>/) and onnxruntime's session id file (.ses, one line: a time and a UUID)."""
    return path.parts[0].startswith("torchinductor_") or path.parts == (".ses",)


_pool: ThreadPoolExecutor | None = None
_runs: dict[str, Future] = {}
_lock = threading.Lock()


def start(names: list[str]) -> None:
    """Start the smoke runs of these scripts (bench file names) in the background, two at a time."""
    global _pool
    with _lock:
        _pool = _pool or ThreadPoolExecutor(WORKERS, thread_name_prefix="bench-smoke")
        for name in names:
            if name not in _runs:
                _runs[name] = _pool.submit(_run, BENCH / name)


def smoke(name: str) -> SmokeRun:
    """The smoke run of bench/<name> (started now if it was not already), once per session."""
    start([name])
    return _runs[name].result()
