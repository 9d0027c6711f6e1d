"""Overhead of the studio's time-lapse call over a bare diffusers AnimateDiffPipeline call.

Both run on the SAME tiny components (one ModelCache), same seed, steps, prompts, guidance and size.
First the frames must match exactly (else exit 1); then both are timed, interleaved, and compared by median.

    .venv/bin/python bench/overhead.py [--repeats 7] [--steps 25] [--frames 16] [--threads 1] [--profile]

Last line: `overhead_ratio: <studio median / bare median>` (goal <= 1.05).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler

from pipelines.cache import ModelCache
from pipelines.registry import Registry
from pipelines.timelapse import TimelapsePipeline, TimelapseRequest
from pipelines.video import to_uint8

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=7, help="timed calls of each, after one warm-up each")
parser.add_argument("--steps", type=int, default=25)
parser.add_argument("--frames", type=int, default=16, help="8 to 16 (longer clips need keyframes)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default). On a busy "
                    "machine use 1: torch's thread pool stalls badly when other processes share the cores")
parser.add_argument("--profile", action="store_true", help="also cProfile one call of each and print the top")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

# ----------------------------------------------------------------------------- one cache, two callers
cache, registry = ModelCache("cpu"), Registry("tiny")
request = TimelapseRequest(prompt="a rose bud opens into a full bloom", num_frames=args.frames, steps=args.steps,
                           seed=args.seed, width=64, height=64)
studio = TimelapsePipeline(cache, registry)
models = registry.timelapse(request.style)
tok, te, vae, unet = (cache.get(c) for c in (models.tokenizer, models.text_encoder, models.vae, models.unet))
bare_pipe = AnimateDiffPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, motion_adapter=None,
                                scheduler=DDIMScheduler.from_config(models.scheduler_config))
bare_pipe.set_progress_bar_config(disable=True)


def run_studio():
    return studio(request)


def run_bare():
    return bare_pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_frames=request.num_frames,
        height=request.height, width=request.width, num_inference_steps=request.steps,
        guidance_scale=request.guidance, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ----------------------------------------------------------------------------- 1. same frames (also the warm-up)
ours, theirs = run_studio(), to_uint8(run_bare().frames[0])
if ours.frames.shape != theirs.shape or not np.array_equal(ours.frames, theirs):
    diff = np.abs(ours.frames.astype(int) - theirs.astype(int)).max() if ours.frames.shape == theirs.shape else "n/a"
    sys.exit(f"FAIL: studio frames {ours.frames.shape} differ from bare diffusers {theirs.shape} (max |diff| {diff})")
print(f"frames identical: {ours.frames.shape} {ours.frames.dtype}")

# ----------------------------------------------------------------------------- 2. time, interleaved
studio_s, bare_s, stages = [], [], []
for i in range(args.repeats):
    if i % 2:  # alternate who goes first, so neither always runs on a warmer (or busier) machine
        bare_s.append(timed(run_bare)[0])
    t, result = timed(run_studio)
    studio_s.append(t)
    stages.append(result.timings)
    if not i % 2:
        bare_s.append(timed(run_bare)[0])

studio_med, bare_med = statistics.median(studio_s), statistics.median(bare_s)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
      f"{args.frames} frames x {args.steps} steps at 64x64, {args.repeats} repeats")
print(f"{'call':<10}{'median s':>10}{'min s':>10}{'max s':>10}")
for name, xs in (("studio", studio_s), ("bare", bare_s)):
    print(f"{name:<10}{statistics.median(xs):>10.3f}{min(xs):>10.3f}{max(xs):>10.3f}")
for stage in stages[0]:
    print(f"  studio {stage:<8}{statistics.median(s[stage] for s in stages):>10.3f}")
if max(studio_s + bare_s) > 1.5 * min(studio_s + bare_s):
    print("warning: timings vary by more than 1.5x (a busy machine?); try --threads 1 or more --repeats")

if args.profile:
    for name, fn in (("studio", run_studio), ("bare", run_bare)):
        profiler = cProfile.Profile()
        profiler.runcall(fn)
        print(f"\n--- cProfile: {name} (cumulative, top 15)")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(15)

print(f"overhead_ratio: {studio_med / bare_med:.3f}")
