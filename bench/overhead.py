"""Overhead of the studio's time-lapse call over a bare diffusers AnimateDiffPipeline call.

Both run on the SAME tiny components (one ModelCache), same seed, steps, prompts, guidance and size, and the
studio's call without its safety guard (safety=None; bench/safety.py measures the guard's cost).
First the frames must match exactly (else exit 1); then both are timed, interleaved, and compared by median.

    .venv/bin/python bench/overhead.py [--repeats 7] [--steps 25] [--frames 16] [--threads 1] [--profile]

Last line: `overhead_ratio: <studio median / bare median>` (goal <= 1.05).
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = ["--repeats", "1", "--steps", "1", "--frames", "8", "--threads", "1"]
FIGURES = ("overhead_ratio",)

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _harness as harness
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler

from pipelines.core.cache import ModelCache
from pipelines.core.video import to_uint8
from pipelines.sd15.models import Registry
from pipelines.timelapse.models import timelapse_models
from pipelines.timelapse.pipeline import TimelapsePipeline, TimelapseRequest

args = harness.arguments(__doc__.splitlines()[0], steps=25, frames_help="8 to 16 (longer clips need keyframes)")

# ----------------------------------------------------------------------------- one cache, two callers
cache, registry = ModelCache("cpu"), Registry("tiny")
# safety=None: bare diffusers has no prompt guard, and with it on (the default) the tiny profile flags tokens in
# almost every prompt, so the frames would differ. The guard's own cost is measured by bench/safety.py.
request = TimelapseRequest(prompt="a rose bud opens into a full bloom", num_frames=args.frames, steps=args.steps,
                           seed=args.seed, width=64, height=64, safety=None)
studio = TimelapsePipeline(cache, registry)
models = timelapse_models(registry, request.style)
tok, te, vae, unet = (cache.get(c) for c in (models.tokenizer, models.text_encoder, models.vae, models.unet))
bare_pipe = AnimateDiffPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, motion_adapter=None,
                                scheduler=DDIMScheduler.from_config(models.scheduler_config))
bare_pipe.set_progress_bar_config(disable=True)


def run_studio():
    return studio(request)


def timed_studio():
    start = time.perf_counter()
    result = run_studio()
    return time.perf_counter() - start, result


def run_bare():
    return bare_pipe(
        prompt=request.prompt, negative_prompt=request.negative_prompt, num_frames=request.num_frames,
        height=request.height, width=request.width, num_inference_steps=request.steps,
        guidance_scale=request.guidance, generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
    )


# ----------------------------------------------------------------------------- 1. same frames (also the warm-up)
harness.same_frames_or_exit(run_studio().frames, to_uint8(run_bare().frames[0]))

# ----------------------------------------------------------------------------- 2. time, interleaved
results, bare_s = harness.interleaved(timed_studio, run_bare, args.repeats)
studio_s, stages = [t for t, _ in results], [r.timings for _, r in results]
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
      f"{args.frames} frames x {args.steps} steps at 64x64, {args.repeats} repeats")
ratio = harness.report(studio_s, bare_s)
for stage in stages[0]:
    print(f"  studio {stage:<8}{statistics.median(s[stage] for s in stages):>10.3f}")
if args.profile:
    harness.profile({"studio": run_studio, "bare": run_bare})

print(f"overhead_ratio: {ratio:.3f}")
