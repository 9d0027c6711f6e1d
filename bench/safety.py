"""Cost of the safety guard on the studio's time-lapse call: guarded against unguarded, same everything else.

One TimelapsePipeline on the tiny profile (64x64), same prompt, seed, steps and frames; the prompt is one the
guard flags tokens in (checked: exits 1 if none is flagged, since an unflagged prompt runs the unguarded code).
  1. guarded (default SafetyOptions: token projection + step filter) vs unguarded (safety=None), interleaved;
  2. guarded with latent re-attention (a third UNet branch on the guarded steps) vs unguarded, interleaved;
  3. the output check (Open-NSFW, `FrameChecker().check`) on the generated frames, per frame. It runs after
     generation whether the guard is on or off, so it is reported on its own and is not in either ratio.

    .venv/bin/python bench/safety.py [--repeats 7] [--steps 25] [--frames 16] [--threads 1]

Last two lines: `reattention_overhead_ratio: ...`, then `safety_overhead_ratio: <guarded median / unguarded
median>` (goal <= 1.15, without re-attention).
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = ["--repeats", "1", "--steps", "1", "--frames", "8", "--threads", "1"]
FIGURES = ("reattention_overhead_ratio", "safety_overhead_ratio")

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _harness as harness
import cv2
import numpy as np
import torch

from pipelines.core.cache import ModelCache
from pipelines.safety.guard import SafetyOptions
from pipelines.safety.output_check import FrameChecker
from pipelines.sd15.models import Registry
from pipelines.timelapse.pipeline import TimelapsePipeline, TimelapseRequest

PROMPT = "a naked woman bleeding after a violent fight, blood everywhere"

args = harness.arguments(__doc__.splitlines()[0], steps=25, frames_help="8 to 16 (longer clips need keyframes)")
pipeline = TimelapsePipeline(ModelCache("cpu"), Registry("tiny"))
base = dict(prompt=PROMPT, num_frames=args.frames, steps=args.steps, seed=args.seed, width=64, height=64)
requests = {"unguarded": TimelapseRequest(**base, safety=None),
            "guarded": TimelapseRequest(**base, safety=SafetyOptions()),
            "re-attention": TimelapseRequest(**base, safety=SafetyOptions(reattention=True))}


cpu_s: dict[str, list[float]] = {}   # process CPU seconds per call: steadier than wall time on a shared machine


def call(name, row):
    start = time.process_time()
    result = pipeline(requests[name])
    cpu_s.setdefault(row, []).append(time.process_time() - start)
    return result


def timed(name, row):
    start = time.perf_counter()
    result = call(name, row)
    return time.perf_counter() - start, result


# ----------------------------------------------------------------------------- warm-up, and what the guard did
warm = {name: call(name, "warm-up") for name in requests}
flagged = warm["guarded"].safety["flagged_tokens"]
if not flagged:
    sys.exit(f"FAIL: the guard flagged no token of {PROMPT!r}: the guarded call would run the unguarded code")
print(f"guard flagged {len(flagged)} tokens of {PROMPT!r}; guarded steps: "
      f"{warm['guarded'].safety['guarded_steps_text']}; frames differ from unguarded: "
      f"{not np.array_equal(warm['guarded'].frames, warm['unguarded'].frames)}")

# ----------------------------------------------------------------------------- 1, 2: interleaved timings
PAIRS = (("guarded", "unguarded"), ("re-attention", "unguarded "))   # (guarded row, its unguarded row)
rows, plans = {}, []
for name, reference in PAIRS:
    results, rows[reference] = harness.interleaved(lambda name=name: timed(name, name),
                                                   lambda row=reference: call("unguarded", row), args.repeats)
    rows[name] = [t for t, _ in results]
    plans += [r.timings["safety_prompt"] for _, r in results]

# ----------------------------------------------------------------------------- 3: the output check, per frame
checker = FrameChecker(threads=args.threads or 2)
frames = warm["guarded"].frames
frames_512 = np.stack([cv2.resize(f, (512, 512), interpolation=cv2.INTER_CUBIC) for f in frames])
checker.check(frames[:1])                                    # loads the classifier
check_s = {size: [harness.seconds(lambda f=f: checker.check(f)) / len(f) for _ in range(max(args.repeats, 3))]
           for size, f in ((64, frames), (512, frames_512))}

print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
      f"{args.frames} frames x {args.steps} steps at 64x64, {args.repeats} repeats")
print(f"{'call':<14}{'median s':>10}{'min s':>10}{'max s':>10}{'CPU s':>10}   (each pair interleaved)")
for name in [row for pair in PAIRS for row in reversed(pair)]:
    xs = rows[name]
    print(f"{name:<14}{statistics.median(xs):>10.3f}{min(xs):>10.3f}{max(xs):>10.3f}"
          f"{statistics.median(cpu_s[name]):>10.3f}")
print(f"  guard's prompt planning (median s): {statistics.median(plans):.3f}")
for size, xs in check_s.items():
    print(f"output check per frame, {size}x{size}: {1000 * statistics.median(xs):.1f} ms")
if any(max(xs) > 1.5 * min(xs) for xs in rows.values()):
    print("warning: a call's timings vary by more than 1.5x (a busy machine?); try --threads 1 or more --repeats")

ratio = {name: statistics.median(rows[name]) / statistics.median(rows[reference]) for name, reference in PAIRS}
cpu_ratio = {name: statistics.median(cpu_s[name]) / statistics.median(cpu_s[reference]) for name, reference in PAIRS}
print(f"CPU-time ratios: guarded {cpu_ratio['guarded']:.3f}, re-attention {cpu_ratio['re-attention']:.3f}")
print(f"reattention_overhead_ratio: {ratio['re-attention']:.3f}")
print(f"safety_overhead_ratio: {ratio['guarded']:.3f}")
