"""Start-up time of the studio: seconds from launching `python app.py` to "/" answering HTTP 200.

Each run also checks, through the `/system` API endpoint, that start-up loaded no model (weights load on
the first call, not at launch). Runs --repeats times and reports the median.

    .venv/bin/python bench/startup.py [--profile tiny|real] [--repeats 3]

Last line: `startup_s: <median seconds>` (goal < 10).
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = ["--repeats", "1"]
FIGURES = ("startup_s",)

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import argparse
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from gradio_client import Client

ROOT = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--profile", choices=("tiny", "real"), default="tiny")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server")
args = parser.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def system_report(url: str) -> dict:
    """`/system`'s outputs by the labels the API's own description gives them (view_api), not by position: the
    panel has gained outputs before (the cache keys), and a positional unpacking broke on it."""
    client = Client(url, verbose=False)
    returns = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/system"]["returns"]
    labels = [r["label"] for r in returns]
    missing = {"summary", "components"} - set(labels)
    assert not missing, f"/system's API description names its outputs {labels}, not {sorted(missing)}"
    values = client.predict(api_name="/system")
    return dict(zip(labels, values if len(labels) > 1 else [values], strict=True))


def check_nothing_loaded(url: str) -> str:
    """The System panel's report, via the API: no component resident, no load counted."""
    report = system_report(url)
    summary, table = report["summary"], report["components"]
    rows = table.get("data", []) if isinstance(table, dict) else table
    loads = re.search(r"\*\*loads\*\*\s+(\d+)", summary)
    assert loads is not None, f"/system summary has no load count: {summary!r}"
    assert int(loads.group(1)) == 0 and not rows, f"a model was loaded at start-up:\n{summary}\n{rows}"
    return summary


def launch_once(log) -> float:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, STUDIO_PROFILE=args.profile, STUDIO_PORT=str(port), HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while not answers(url):
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with code {proc.returncode} before serving")
            if time.perf_counter() - start > args.timeout:
                raise TimeoutError(f"app.py did not answer on {url} within {args.timeout:.0f} s")
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        check_nothing_loaded(url)
        return seconds
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


times = []
with tempfile.TemporaryFile("w+") as log:
    for i in range(args.repeats):
        try:
            times.append(launch_once(log))
        except Exception as exc:
            log.seek(0)
            sys.exit(f"FAIL (run {i + 1}): {exc}\n--- app.py output (last 3000 characters):\n{log.read()[-3000:]}")
        print(f"run {i + 1}: {times[-1]:.2f} s to HTTP 200, nothing loaded")

print(f"profile {args.profile}, {args.repeats} runs: min {min(times):.2f} s, max {max(times):.2f} s")
print(f"startup_s: {statistics.median(times):.2f}")
