"""Cost of `python -m studio.batch` over a plain loop, and what a second process buys (tiny profile, CPU).

1. In one process: N time-lapse items through `studio.batch` (the tab's endpoint function per item: request checks,
   guard, output check, MP4, manifest row) against the same items through the pipeline in a plain loop doing the
   same work (TimelapsePipeline with the guard on, the output check, the MP4). Both build their models from
   scratch each repeat; the MP4s must be byte-identical (else exit 1). Interleaved repeats, medians.
2. The same batch as a subprocess: one process (`python -m studio.batch`) against two
   (`accelerate launch --multi_gpu --num_processes 2 -m studio.batch`, gloo on CPU), wall time from launch to exit.

    .venv/bin/python bench/batch.py [--items 8] [--steps 4] [--frames 8] [--repeats 3] [--threads 0]

Lines: `batch_overhead_ratio: <batch median / plain median>` (goal <= 1.05), `two_process_ratio: <two processes'
wall / one's>` (below 1 is a gain; on this machine's 2 cores each process gets one thread) and `cores: <n>`.
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = ["--items", "2", "--steps", "1", "--frames", "8", "--repeats", "1"]
FIGURES = ("batch_overhead_ratio", "two_process_ratio", "cores")

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

PROMPTS = ["a seed grows into a sunflower", "ice melting on a window sill", "a rose bud opens into a full bloom",
           "clouds moving over a mountain", "a candle burning down", "bread rising in an oven",
           "snow melting in spring", "a city being built"]

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--items", type=int, default=8)
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--frames", type=int, default=8)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads in part 1 (0: torch's default)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

scratch = Path(tempfile.mkdtemp(prefix="bench-batch-"))
prompts = scratch / "prompts.txt"
prompts.write_text("\n".join((PROMPTS * (args.items // len(PROMPTS) + 1))[:args.items]) + "\n")
lines = [line for line in prompts.read_text().splitlines() if line]
batch_args = ["timelapse", "--prompts", str(prompts), "--profile", "tiny", "--frames", str(args.frames),
              "--steps", str(args.steps)]


def run_batch(out: Path) -> float:
    from studio import batch

    start = time.perf_counter()
    if batch.main([*batch_args, "--out", str(out)]) != 0:
        sys.exit("FAIL: studio.batch exited non-zero")
    return time.perf_counter() - start


def run_plain(out: Path) -> float:
    from pipelines.core.cache import ModelCache
    from pipelines.core.video import write_mp4
    from pipelines.safety.guard import SafetyGuard, SafetyOptions
    from pipelines.safety.output_check import FrameChecker
    from pipelines.sd15.models import Registry
    from pipelines.timelapse.pipeline import TimelapsePipeline, TimelapseRequest

    start = time.perf_counter()
    pipeline, checker = TimelapsePipeline(ModelCache("cpu"), Registry("tiny"), SafetyGuard()), FrameChecker()
    out.mkdir(parents=True)
    for index, prompt in enumerate(lines):
        result = pipeline(TimelapseRequest(prompt=prompt, num_frames=args.frames, steps=args.steps, seed=0, width=64,
                                           height=64, safety=SafetyOptions()))
        checker.check(result.frames)
        write_mp4(result.frames, out / f"{index:05d}.mp4", fps=result.fps)
    return time.perf_counter() - start


def digests(folder: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.mp4"))]


try:
    batch_s, plain_s = [], []
    run_batch(scratch / "warm-batch")              # warm-ups: imports, the output check's ONNX session
    run_plain(scratch / "warm-plain")
    if digests(scratch / "warm-batch") != digests(scratch / "warm-plain"):
        sys.exit("FAIL: the batch's MP4s differ from the plain loop's")
    print(f"outputs identical: {len(lines)} MP4s")
    for i in range(args.repeats):
        order = (run_batch, run_plain) if i % 2 == 0 else (run_plain, run_batch)
        for fn in order:
            seconds = fn(scratch / f"{fn.__name__}-{i}")
            (batch_s if fn is run_batch else plain_s).append(seconds)
    print(f"{'run':<8}{'median s':>10}{'min s':>10}{'max s':>10}")
    for name, xs in (("batch", batch_s), ("plain", plain_s)):
        print(f"{name:<8}{statistics.median(xs):>10.3f}{min(xs):>10.3f}{max(xs):>10.3f}")

    # torchrun (under accelerate launch) leaves an empty torchelastic_* log folder in TMPDIR: keep it in ours.
    (scratch / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch / "tmp")}
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    commands = {
        1: [sys.executable, "-m", "studio.batch"],
        2: [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "studio.batch"],
    }
    walls = {}
    for processes, command in commands.items():
        start = time.perf_counter()
        done = subprocess.run([*command, *batch_args, "--out", str(scratch / f"processes-{processes}")], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=900, check=False)
        walls[processes] = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"FAIL: {processes} process(es) exited {done.returncode}:\n{done.stderr[-2000:]}")
        print(f"{processes} process{'es' if processes > 1 else ''}: {walls[processes]:.2f} s wall")
    print(f"batch_overhead_ratio: {statistics.median(batch_s) / statistics.median(plain_s):.3f}")
    print(f"two_process_ratio: {walls[2] / walls[1]:.3f}")
    print(f"cores: {os.cpu_count()}")
finally:
    shutil.rmtree(scratch, ignore_errors=True)
