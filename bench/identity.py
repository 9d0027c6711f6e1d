"""Overhead of the studio's identity call over a bare diffusers AnimateDiffPipeline + IP-Adapter call.

Both run on the SAME tiny components (one ModelCache: tokenizer, text encoder, VAE, the identity UNet with
ID-Animator's face adapter loaded and its LoRA fused, the image encoder and the registry's image processor),
same final prompt (the studio's quality suffix included), negative prompt, guidance, steps, seed, size and
IP-Adapter scale; the studio's call runs without its safety guard (safety=None; bench/safety.py measures the
guard's cost). The bare call gets the aligned 224x224 face crop as `ip_adapter_image` and encodes it itself
(diffusers' IP-Adapter-Plus path: hidden_states[-2], an all-zero image for the unconditional branch); the
studio call gets the same precomputed faces (`faces=`) and encodes them with its own `_face_embeds`.

Face preprocessing (detection + alignment) is timed on its own and excluded from both sides; so is the
studio's identity report (dlib on every generated frame), which runs inside the studio call: it is timed
exactly (the instance's method is wrapped here, the pipeline code is unchanged), subtracted from the studio's
time, and reported as its own figure.

First the frames must match exactly (else exit 1); then both are timed, interleaved, and compared by median.

    .venv/bin/python bench/identity.py [--repeats 7] [--steps 30] [--frames 16] [--threads 1] [--profile]

Last line: `identity_overhead_ratio: <studio median / bare median>` (goal <= 1.05).
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = ["--repeats", "1", "--steps", "1", "--frames", "8", "--threads", "1"]
FIGURES = ("identity_overhead_ratio",)

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
from skimage import data

from pipelines.core.cache import ModelCache
from pipelines.core.video import to_uint8
from pipelines.identity.models import identity_models
from pipelines.identity.pipeline import IdentityPipeline, IdentityRequest
from pipelines.sd15.models import Registry

args = harness.arguments(__doc__.splitlines()[0], steps=30, frames_help="8 to 16")

# ----------------------------------------------------------------------------- one cache, two callers
cache, registry = ModelCache("cpu"), Registry("tiny")
photo = data.astronaut()
# safety=None: bare diffusers has no prompt guard, and with it on (the default) the tiny profile flags tokens in
# almost every prompt, so the frames would differ. The guard's own cost is measured by bench/safety.py.
request = IdentityRequest(photos=(photo,), prompt="a woman smiling in a sunny garden", num_frames=args.frames,
                          steps=args.steps, seed=args.seed, width=64, height=64, safety=None)
request.validate()
studio = IdentityPipeline(cache, registry)

# Face preprocessing, excluded from both sides: the first call also loads dlib's models.
face_s = []
for _ in range(3):
    start = time.perf_counter()
    faces = studio.reference_faces(request.photos)
    face_s.append(time.perf_counter() - start)
crop = faces.crops[0]   # (224, 224, 3) uint8 aligned crop: what both sides encode

# The identity report runs inside the studio call; time it exactly so it can be taken out.
report_s: list[float] = []
_identity_report = studio.identity_report


def timed_identity_report(frames, references):
    start = time.perf_counter()
    try:
        return _identity_report(frames, references)
    finally:
        report_s.append(time.perf_counter() - start)


studio.identity_report = timed_identity_report

models = identity_models(registry)
tok, te, vae, unet, image_encoder, processor = (cache.get(c) for c in (
    models.tokenizer, models.text_encoder, models.vae, models.unet, models.image_encoder, models.image_processor))
bare_pipe = AnimateDiffPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, motion_adapter=None,
                                scheduler=DDIMScheduler.from_config(models.scheduler_config),
                                feature_extractor=processor, image_encoder=image_encoder)
bare_pipe.set_progress_bar_config(disable=True)
bare_pipe.set_ip_adapter_scale(float(request.identity_strength))   # the studio sets the same value per call
prompt, negative = IdentityPipeline.prompts(request)                 # the studio's final prompts (suffixes)


def run_studio():
    """The studio's call; returns (result, seconds without the identity report, identity report seconds)."""
    before = len(report_s)
    start = time.perf_counter()
    result = studio(request, faces=faces)
    total = time.perf_counter() - start
    report = report_s[before] if len(report_s) > before else 0.0
    return result, total - report, report


def run_bare():
    return bare_pipe(
        prompt=prompt, negative_prompt=negative, num_frames=request.num_frames,
        height=request.height, width=request.width, num_inference_steps=request.steps,
        guidance_scale=request.guidance, ip_adapter_image=crop,
        generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np",
    )


# ----------------------------------------------------------------------------- 1. same frames (also the warm-up)
harness.same_frames_or_exit(run_studio()[0].frames, to_uint8(run_bare().frames[0]))

# ----------------------------------------------------------------------------- 2. time, interleaved
results, bare_s = harness.interleaved(run_studio, run_bare, args.repeats)
studio_s, reports, stages = [r[1] for r in results], [r[2] for r in results], [r[0].timings for r in results]
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
      f"{args.frames} frames x {args.steps} steps at 64x64, 1 photo, {args.repeats} repeats")
ratio = harness.report(studio_s, bare_s)
for stage in stages[0]:
    if stage != "identity_report":
        print(f"  studio {stage:<16}{statistics.median(s[stage] for s in stages):>10.3f}")
print("excluded from both sides (median s):")
print(f"  faces: detect + align 1 photo {statistics.median(face_s[1:]):>8.3f}   (first call, loading dlib: "
      f"{face_s[0]:.3f})")
print(f"  studio identity_report        {statistics.median(reports):>8.3f}   (dlib on {args.frames} frames)")
if args.profile:
    harness.profile({"studio": run_studio, "bare": run_bare}, top=25)

print(f"identity_overhead_ratio: {ratio:.3f}")
