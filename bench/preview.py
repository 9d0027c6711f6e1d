"""The live preview's cost: the same time-lapse call with and without a preview, interleaved, by median.

The preview decodes the scheduler's x0 prediction with the tiny decoder (TAESD) after step 1 and then whenever its
running cost stays under 4 % of the time so far (pipelines/common.LivePreview). Both calls must give identical
frames (exit 1 if not): a preview may never change the clip. Tiny profile; `--size` sets the clip's side.

    .venv/bin/python bench/preview.py [--repeats 7] [--steps 25] [--frames 16] [--size 64] [--threads 1]

Last line: `preview_ratio: <with preview median / without median>` (goal <= 1.05).
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = ["--repeats", "1", "--steps", "2", "--frames", "8", "--size", "64", "--threads", "1"]
FIGURES = ("preview_ratio",)

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

import _harness as harness
import numpy as np
import torch

from pipelines.core.cache import ModelCache
from pipelines.sd15.models import Registry
from pipelines.timelapse.pipeline import TimelapsePipeline, TimelapseRequest

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=7)
parser.add_argument("--steps", type=int, default=25)
parser.add_argument("--frames", type=int, default=16)
parser.add_argument("--size", type=int, default=64)
parser.add_argument("--threads", type=int, default=0)
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

pipeline = TimelapsePipeline(ModelCache("cpu"), Registry("tiny"))
request = TimelapseRequest(prompt="a rose bud opens into a full bloom", num_frames=args.frames, steps=args.steps,
                           width=args.size, height=args.size, safety=None)
shown: list[int] = []


def with_preview():
    start = time.perf_counter()
    result = pipeline(request, preview=lambda frames, done: shown.append(done))
    return time.perf_counter() - start, result


def without():
    return pipeline(request)


first, plain = with_preview()[1], without()        # warm-up, and the frames check
if not np.array_equal(first.frames, plain.frames):
    sys.exit("FAIL: the clip with a preview differs from the clip without one")
print(f"frames identical: {plain.frames.shape}; previews in one call: {len(shown)} (after steps {shown})")
shown.clear()
timed, bare = harness.interleaved(with_preview, without, args.repeats)
print(f"previews per call: {len(shown) / args.repeats:.1f}; preview share of denoising: "
      f"{np.median([r.timings['preview'] / r.timings['denoise'] for _, r in timed]):.3f}")
ratio = harness.report([s for s, _ in timed], bare)
print(f"preview_ratio: {ratio:.3f}")
