"""Full-size speed figures for the fast paths: the real architectures with random weights, built in code.

No hub and no files: SD1.5's UNet, VAE and CLIP text encoder, AnimateDiff's motion adapter in its v3 layout
(MagicTime's time-lapse) and its v2 layout (the identity tab, AnimateDiff-Lightning), TAESD, and SAM 2.1
hiera-tiny are built from the configs below, as the hub's config.json files describe them. Random weights cost
what trained ones cost, so the times are the real ones; the pictures are noise (quality is measured elsewhere).

Figures, one `name: value` line each (seconds, MiB or frames/s; lines starting with '#' are comments):
  timelapse_25step_cfg       MagicTime: v3 motion UNet, DDIM 25 steps, guidance 8.5 (CFG: batch 2)
  timelapse_fast_8step_cfg   the time-lapse fast mode: DDIM "trailing", 8 steps with CFG (Hyper-SD's 8-step CFG
                             LoRA is merged into the image layers, so it costs nothing at run time)
  identity_30step_cfg        the identity tab: v2 motion UNet (mid-block motion module), DDIM 30 steps, CFG 8
  identity_lightning_4step   AnimateDiff-Lightning: v2 layout, Euler "trailing" with linear betas, 4 steps, CFG 1
  decode_full_vae / decode_tiny   SD1.5's AutoencoderKL / TAESD decoding the clip's frames
  sam2_propagation           SAM 2.1 hiera-tiny tracking one box prompt over a video, at its own 1024 px square
Each generation figure is one AnimateDiffPipeline call with output_type="latent" (the two text-encoder passes
included, tokenization skipped: prompt_embeds are passed); decoding is its own figure. Beside each figure:
`<figure>_floor_s` (the 40 %-utilisation floor from reference/performance.md's FLOP counts), `<figure>_peak_mib`
(cuda: torch.cuda.max_memory_allocated, weights included) or `<figure>_peak_rss_growth_mib` (cpu: how far the
process's peak RSS rose above its RSS at the start of the figure, resource.getrusage after resetting the peak)
and `<figure>_steps`. Ratios at the end, with the issue's goals: lightning_vs_30step_ratio <= 0.12,
timelapse_fast_vs_25step_ratio <= 0.4, tiny_vs_full_decode_ratio <= 0.1.

`--knobs` runs everything a second time with the GPU knobs (figures suffixed `_knobs`): fp16 weights (bf16 on
cpu), channels-last UNet/VAE, SDPA attention (diffusers' default AttnProcessor2_0; the plain runs use the classic
AttnProcessor), VAE slicing + tiling for the full decode, and with `--compile` the UNet under torch.compile.

    .venv/bin/python bench/gpu.py --size smoke --device cpu      # seconds: a scaled-down architecture (the test)
    .venv/bin/python bench/gpu.py --size reduced --threads 2     # cpu default: full size at 128 px, 16 frames
    .venv/bin/python bench/gpu.py --full --knobs [--compile]     # cuda default: 512 px, 16 frames, real steps
    options: --only timelapse,timelapse_fast,identity,lightning,decode,sam2  --peak-tflops 989  --steps-scale
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = ["--size", "smoke", "--device", "cpu", "--threads", "1"]
FIGURES = ("timelapse_25step_cfg_s", "identity_lightning_4step_s", "decode_full_vae_s", "sam2_propagation_fps", "lightning_vs_30step_ratio", "timelapse_fast_vs_25step_ratio", "tiny_vs_full_decode_ratio")

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import ctypes
import gc
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    AutoencoderTiny,
    DDIMScheduler,
    EulerDiscreteScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel
from transformers.utils import logging as transformers_logging

from pipelines.sd15.models import DDIM_CONFIG
from pipelines.timelapse.models import MOTION_ADAPTER_V3

# ============================================================================ configuration
# SD1.5's unet/config.json (stable-diffusion-v1-5, the base MagicTime and ID-Animator ship).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, center_input_sample=False, mid_block_scale_factor=1,
)
# SD1.5's vae/config.json.
SD15_VAE = dict(
    sample_size=512, in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, act_fn="silu",
)
# SD1.5's text_encoder/config.json (CLIP ViT-L/14's text tower).
SD15_CLIP_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
# AnimateDiff v2 (guoyww/animatediff-motion-adapter-v1-5-2, Lightning's layout) is MotionAdapter()'s defaults:
# the same as v3 (MOTION_ADAPTER_V3, pipelines/timelapse/models.py) plus a motion module in the mid-block.
MOTION_ADAPTER_V2 = dict(MOTION_ADAPTER_V3, use_motion_mid_block=True)
# TAESD (madebyollin/taesd) is AutoencoderTiny()'s defaults: 64 channels, decoder blocks (3, 3, 3, 1).
TAESD: dict = {}
# SAM 2.1 hiera-tiny (facebook/sam2.1-hiera-tiny's config.json; transformers' Sam2*Config defaults are documented
# as that checkpoint, and these are them, written out): Hiera stages [1, 2, 7, 2] at 96 channels, global attention
# in blocks 5, 7, 9; a 256-wide FPN neck, memory attention of 4 layers, 7 memory frames, a 1024 px square.
SAM21_HIERA_TINY = dict(
    backbone=dict(hidden_size=96, num_attention_heads=1, image_size=[1024, 1024], blocks_per_stage=[1, 2, 7, 2],
                  embed_dim_per_stage=[96, 192, 384, 768], num_attention_heads_per_stage=[1, 2, 4, 8],
                  window_size_per_stage=[8, 4, 14, 7], global_attention_blocks=[5, 7, 9],
                  window_positional_embedding_background_size=[7, 7]),
    vision=dict(backbone_channel_list=[768, 384, 192, 96], backbone_feature_sizes=[[256, 256], [128, 128], [64, 64]],
                fpn_hidden_size=256),
    video=dict(image_size=1024, num_maskmem=7,
               prompt_encoder_config=dict(hidden_size=256, image_size=1024, patch_size=16),
               mask_decoder_config=dict(hidden_size=256, mlp_dim=2048, num_attention_heads=8, iou_head_hidden_dim=256),
               memory_attention_hidden_size=256, memory_attention_num_layers=4,
               memory_attention_feed_forward_hidden_size=2048, memory_attention_rope_feat_sizes=[64, 64],
               memory_encoder_hidden_size=256, memory_encoder_output_channels=64, mask_downsampler_embed_dim=256,
               memory_fuser_embed_dim=256, memory_fuser_intermediate_dim=1024),
)

# The smoke size: the same classes and block layout, channels / 8, one layer per block (a seconds-long run that
# exercises every code path). SAM 2 there is the studio's own tiny tracker (pipelines/segmentation/models.py).
SMOKE = dict(
    unet=dict(block_out_channels=(40, 80, 160, 160), layers_per_block=1, norm_num_groups=8, cross_attention_dim=96),
    vae=dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8),
    clip=dict(hidden_size=96, intermediate_size=384, num_hidden_layers=1, num_attention_heads=4, projection_dim=96),
    motion=dict(block_out_channels=(40, 80, 160, 160), motion_layers_per_block=1, motion_norm_num_groups=8),
    taesd=dict(encoder_block_out_channels=(16,) * 4, decoder_block_out_channels=(16,) * 4,
               num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)),
)

# FLOPs (reference/performance.md, 512 px, per frame): SD1.5 UNet 0.80 TFLOP an image-forward, the motion modules
# +0.31 (the v2 mid-block module adds a little more, ignored), VAE decode 2.5 TFLOP. They scale with the pixel count.
# The text encoder (~0.007 TFLOP a pass) is left out; TAESD has no figure there, so decode_tiny has no floor.
UNET_TFLOP, MOTION_TFLOP, VAE_DECODE_TFLOP = 0.80, 0.31, 2.5
UTILISATION = 0.40
FACE_TOKENS = 16   # ID-Animator's face adapter adds 16 tokens to every cross-attention (reference/identity.md)


@dataclass(frozen=True)
class Size:
    pixels: int            # square clip side
    frames: int
    smoke: bool            # the scaled-down architecture
    sam2_frames: int       # frames SAM 2 propagates over (always at its own image_size)
    video: tuple           # (height, width) of the video SAM 2 tracks: resized to its square in preprocessing


SIZES = {
    "smoke": Size(64, 8, True, 4, (96, 128)),
    "reduced": Size(128, 16, False, 16, (480, 640)),
    "full": Size(512, 16, False, 64, (480, 640)),
}
BENCHMARKS = ("timelapse", "timelapse_fast", "identity", "lightning", "decode", "sam2")
RATIOS = (  # name, numerator, denominator, the goal
    ("lightning_vs_30step_ratio", "identity_lightning_4step", "identity_30step_cfg", 0.12),
    ("timelapse_fast_vs_25step_ratio", "timelapse_fast_8step_cfg", "timelapse_25step_cfg", 0.4),
    ("tiny_vs_full_decode_ratio", "decode_tiny", "decode_full_vae", 0.1),
)


# ============================================================================ one run of the figures
@dataclass
class Run:
    device: torch.device
    size: Size
    steps_scale: float
    peak_tflops: float
    knobs: bool = False
    compile: bool = False
    figures: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)   # built once per run (plain or knobs), freed in between

    @property
    def tag(self) -> str:
        return "_knobs" if self.knobs else ""

    @property
    def dtype(self) -> torch.dtype:
        if not self.knobs:
            return torch.float32
        return torch.float16 if self.device.type == "cuda" else torch.bfloat16

    def steps(self, real: int) -> int:
        return max(1, round(real * self.steps_scale))

    def emit(self, name: str, value: float) -> None:
        self.figures[name] = value
        print(f"{name}: {value:.6g}", flush=True)

    def floor(self, name: str, tflop_at_512: float) -> None:
        """The 40 %-utilisation floor: this many TFLOP (at 512 px, scaled to the run's size) at 40 % of the peak."""
        if not self.knobs:   # the same work with or without the knobs: printed once
            tflop = tflop_at_512 * (self.size.pixels / 512) ** 2
            self.emit(f"{name}_floor_s", tflop / (UTILISATION * self.peak_tflops))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Peak:
    """Peak memory of what runs inside: cuda's allocator peak, or on cpu the rise of the process's peak RSS above
    its RSS at the start: glibc first hands its free memory back (malloc_trim), so that memory the warm-up freed
    counts again when reused, then writing 5 to /proc/self/clear_refs resets the kernel's high-water mark to the
    current RSS, which getrusage reports."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):   # not glibc
                pass
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:   # the peak then only shows when it passes every earlier one
                pass
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.start) / 1024

    def suffix(self) -> str:
        return "_peak_mib" if self.device.type == "cuda" else "_peak_rss_growth_mib"


def measure(run: Run, name: str, call, warm_up=None) -> float:
    """Seconds of one `call()` after `warm_up()` (if given), synchronised; prints `<name>_s` and its peak memory."""
    if warm_up is not None:
        warm_up()
        sync(run.device)
    with Peak(run.device) as peak:
        sync(run.device)
        start = time.perf_counter()
        call()
        sync(run.device)
        seconds = time.perf_counter() - start
    run.emit(f"{name}{run.tag}_s", seconds)
    run.emit(f"{name}{run.tag}{peak.suffix()}", peak.mib)
    return seconds


# ============================================================================ building the models
def seeded(seed: int, device: torch.device, build):
    """Random weights, the same for a seed, made directly on the device (fast on a GPU)."""
    torch.manual_seed(seed)
    with torch.device(device):
        return build()


def smoke(run: Run, part: str, config: dict) -> dict:
    return {**config, **SMOKE[part]} if run.size.smoke else dict(config)


def text_encoder(run: Run) -> CLIPTextModel:
    if "text_encoder" not in run.models:
        config = CLIPTextConfig(**smoke(run, "clip", SD15_CLIP_TEXT))
        model = seeded(1, run.device, lambda: CLIPTextModel(config))
        run.models["text_encoder"] = model.to(run.dtype).eval()
    return run.models["text_encoder"]


def vae(run: Run) -> AutoencoderKL:
    if "vae" not in run.models:
        model = seeded(2, run.device, lambda: AutoencoderKL(**smoke(run, "vae", SD15_VAE))).to(run.dtype).eval()
        model.set_attn_processor(AttnProcessor2_0() if run.knobs else AttnProcessor())
        if run.knobs:
            model.to(memory_format=torch.channels_last)
        run.models["vae"] = model
    return run.models["vae"]


def taesd(run: Run) -> AutoencoderTiny:
    if "taesd" not in run.models:
        model = seeded(3, run.device, lambda: AutoencoderTiny(**smoke(run, "taesd", TAESD))).to(run.dtype).eval()
        if run.knobs:
            model.to(memory_format=torch.channels_last)
        run.models["taesd"] = model
    return run.models["taesd"]


def motion_unet(run: Run, layout: str) -> UNetMotionModel:
    """SD1.5's UNet with the motion adapter in its v3 or v2 layout, composed as the studio does (from_unet2d).
    One motion UNet is held at a time (two full-size ones are 2 x 5 GiB in fp32)."""
    key = f"unet_{layout}"
    if key not in run.models:
        for other in [k for k in run.models if k.startswith("unet_")]:
            del run.models[other]
        free(run.device)
        adapter_config = smoke(run, "motion", MOTION_ADAPTER_V3 if layout == "v3" else MOTION_ADAPTER_V2)
        unet2d = seeded(4, run.device, lambda: UNet2DConditionModel(**smoke(run, "unet", SD15_UNET)))
        adapter = seeded(5 if layout == "v3" else 6, run.device, lambda: MotionAdapter(**adapter_config))
        with torch.device(run.device):
            unet = UNetMotionModel.from_unet2d(unet2d, adapter)
        del unet2d, adapter
        unet = unet.to(run.dtype).eval()
        unet.set_attn_processor(AttnProcessor2_0() if run.knobs else AttnProcessor())
        if run.knobs:
            unet.to(memory_format=torch.channels_last)
            if run.compile:
                unet.compile()
        run.models[key] = unet
    return run.models[key]


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ============================================================================ the benchmarks
def ddim(**changes) -> DDIMScheduler:
    return DDIMScheduler(**{**DDIM_CONFIG, **changes})


def lightning_euler() -> EulerDiscreteScheduler:
    # AnimateDiff-Lightning's model card: Euler, timestep_spacing="trailing", beta_schedule="linear".
    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=DDIM_CONFIG["beta_start"],
                                  beta_end=DDIM_CONFIG["beta_end"], beta_schedule="linear",
                                  timestep_spacing="trailing", steps_offset=1)


def generation(run: Run, name: str, layout: str, real_steps: int, guidance: float, scheduler,
               extra_tokens: int = 0) -> None:
    """One AnimateDiffPipeline call, latents out: the text-encoder passes (prompt, and the negative one with CFG)
    and every denoising step. `extra_tokens` are appended to the text tokens: the identity tab's face tokens."""
    steps, cfg = run.steps(real_steps), guidance > 1
    unet, encoder = motion_unet(run, layout), text_encoder(run)
    pipe = AnimateDiffPipeline(vae=vae(run), text_encoder=encoder, tokenizer=None, unet=unet, motion_adapter=None,
                               scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, encoder.config.vocab_size, (1, 77), generator=g).to(run.device) for _ in range(2)]
    face = torch.randn(1, extra_tokens, encoder.config.hidden_size, generator=g).to(run.device, run.dtype)

    @torch.inference_mode()
    def call(steps: int = steps):
        embeds = [torch.cat([encoder(i)[0], face], dim=1) for i in ids[: 1 + cfg]]
        pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1] if cfg else None,
             num_frames=run.size.frames, height=run.size.pixels, width=run.size.pixels, num_inference_steps=steps,
             guidance_scale=guidance, generator=torch.Generator().manual_seed(0), output_type="latent")

    # The warm-up runs 2 steps: the same shapes, so every kernel (and a compiled graph) is warm, at a fraction of
    # the device time. On cpu the full-size runs take minutes each and skip it (main() says so).
    warm = run.device.type == "cuda" or run.size.smoke
    run.emit(f"{name}{run.tag}_steps", steps)
    measure(run, name, call, warm_up=(lambda: call(min(steps, 2))) if warm else None)
    run.floor(name, steps * (2 if cfg else 1) * run.size.frames * (UNET_TFLOP + MOTION_TFLOP))


def timelapse(run: Run) -> None:
    """MagicTime as the studio runs it: v3 motion module, DDIM 25 steps, guidance 8.5 (pipelines/timelapse/pipeline.py)."""
    generation(run, "timelapse_25step_cfg", "v3", 25, 8.5, ddim())


def timelapse_fast(run: Run) -> None:
    """The time-lapse fast mode: Hyper-SD15's 8-step CFG LoRA (merged into the image layers, so the UNet is the
    same) with DDIM "trailing", 8 steps, CFG kept (its card: 5-8)."""
    generation(run, "timelapse_fast_8step_cfg", "v3", 8, 6.0, ddim(timestep_spacing="trailing"))


def identity(run: Run) -> None:
    """The identity tab: v2 motion module, DDIM 30 steps, guidance 8 (pipelines/identity/pipeline.py). ID-Animator's face
    adapter is left out: its 16 face tokens are appended to the 77 text tokens instead, the same attention work
    without its own key/value projections (small next to the UNet)."""
    generation(run, "identity_30step_cfg", "v2", 30, 8.0, ddim(), extra_tokens=FACE_TOKENS)


def lightning(run: Run) -> None:
    """AnimateDiff-Lightning 4-step on the identity tab: a v2-layout motion module, Euler trailing, no CFG (so one
    text pass, batch 1 and no zero-image face branch)."""
    generation(run, "identity_lightning_4step", "v2", 4, 1.0, lightning_euler(), extra_tokens=FACE_TOKENS)


def decode(run: Run) -> None:
    """The clip's frames from latents: SD1.5's VAE (with the knobs: sliced one frame at a time, and tiled, which
    only splits latents larger than its 512 px sample_size) against TAESD."""
    side = run.size.pixels // 8
    latents = torch.randn(run.size.frames, 4, side, side, generator=torch.Generator().manual_seed(0))
    latents = latents.to(run.device, run.dtype)
    full, tiny = vae(run), taesd(run)
    if run.knobs:
        full.enable_slicing()
        full.enable_tiling()
        latents = latents.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def full_decode():
        return full.decode(latents / full.config.scaling_factor).sample

    @torch.inference_mode()
    def tiny_decode():
        return tiny.decode(latents / tiny.config.scaling_factor).sample

    measure(run, "decode_full_vae", full_decode, warm_up=full_decode)
    run.floor("decode_full_vae", run.size.frames * VAE_DECODE_TFLOP)
    measure(run, "decode_tiny", tiny_decode, warm_up=tiny_decode)
    if run.knobs:
        full.disable_slicing()
        full.disable_tiling()


def sam2_model(run: Run):
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoModel, Sam2VisionConfig

    if run.size.smoke:
        from pipelines.core.cache import ModelCache
        from pipelines.segmentation.models import SegmentationRegistry

        model = ModelCache("cpu").get(SegmentationRegistry("tiny").models().tracker)
    else:
        c = SAM21_HIERA_TINY
        vision = Sam2VisionConfig(backbone_config=Sam2HieraDetConfig(**c["backbone"]), **c["vision"])
        config = Sam2VideoConfig(vision_config=vision, **c["video"])
        model = seeded(7, run.device, lambda: Sam2VideoModel(config))
    # transformers' default attention is SDPA; the plain runs use its eager attention, as the UNets use the classic
    # AttnProcessor.
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("sdpa" if run.knobs else "eager")
    return model.to(run.device, run.dtype).eval()


def sam2(run: Run) -> None:
    """SAM 2 tracking as the studio calls it (pipelines/segmentation/pipeline.py's Tracker): preprocessing to the model's
    square, one box prompt on the middle frame, propagation forward then backward over the whole video."""
    from pipelines.segmentation.pipeline import Tracker
    from pipelines.segmentation.synthetic import make_video

    model = sam2_model(run)
    count = run.size.sam2_frames

    def video(frames: int):
        clip = make_video(frames, run.size.video, seed=0)
        key = frames // 2
        ys, xs = np.nonzero(clip.masks["target"][key])
        height, width = run.size.video
        box = ((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if len(xs)
               else (width / 4, height / 4, 3 * width / 4, 3 * height / 4))
        return clip.frames, key, box

    def track(frames, key, box):
        Tracker(model, frames).run({1: (key, box)}, (), key)

    short, long = video(4), video(count)
    seconds = measure(run, "sam2_propagation", lambda: track(*long), warm_up=lambda: track(*short))
    run.emit(f"sam2_propagation{run.tag}_frames", count)
    run.emit(f"sam2_propagation{run.tag}_fps", count / seconds)


RUNNERS = dict(timelapse=timelapse, timelapse_fast=timelapse_fast, identity=identity, lightning=lightning,
               decode=decode, sam2=sam2)


# ============================================================================ main
def ratios(figures: dict, tag: str) -> None:
    for name, numerator, denominator, goal in RATIOS:
        top, bottom = figures.get(f"{numerator}{tag}_s"), figures.get(f"{denominator}{tag}_s")
        if top is not None and bottom:
            value = float(f"{top:.6g}") / float(f"{bottom:.6g}")   # the quotient of the printed figures
            print(f"{name.removesuffix('_ratio')}{tag}_ratio: {value:.6g}")
            print(f"# {name}{' (knobs)' if tag else ''}: goal <= {goal}: {'met' if value <= goal else 'NOT met'}")


def cpu_bf16_supported() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and (check() if check is not None else False))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=SIZES, default=None,
                        help="smoke | reduced (the cpu default) | full (the cuda default)")
    parser.add_argument("--full", action="store_true", help="the same as --size full")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}")
    parser.add_argument("--knobs", action="store_true", help="also run every figure with the GPU knobs")
    parser.add_argument("--compile", action="store_true", help="with --knobs: the UNet under torch.compile")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the device's dense fp16/bf16 peak (default: H100 SXM, 989; the H200 has the same)")
    parser.add_argument("--steps-scale", type=float, default=None,
                        help="multiply the step counts (smoke only; default there 0.08: 2, 1, 2, 1 steps)")
    parser.add_argument("--sam2-frames", type=int, default=None,
                        help="frames SAM 2 tracks, at least 4 (default: 4 smoke, 16 reduced, 64 full)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.full:
        args.size = "full"
    args.size = args.size or ("full" if args.device.startswith("cuda") else "reduced")
    if args.steps_scale is not None and args.size != "smoke":
        parser.error("--steps-scale is for --size smoke only: the reduced and full sizes run the real step counts")
    if args.sam2_frames is not None and args.sam2_frames < 4:
        parser.error("--sam2-frames must be at least 4 (the synthetic video's minimum)")
    if args.compile and not args.knobs:
        parser.error("--compile is one of the knobs: add --knobs")
    args.only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(args.only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")
    return args


def main() -> None:
    args = arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)      # random weights can drift into denormals, which are very slow on cpu
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    device = torch.device(args.device)
    size = SIZES[args.size]
    if args.sam2_frames:
        size = Size(size.pixels, size.frames, size.smoke, args.sam2_frames, size.video)
    print(f"# device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, size {args.size}: {size.pixels} px, "
          f"{size.frames} frames, {'scaled-down' if size.smoke else 'full-size'} architectures, random weights")
    print(f"# floors: 40 % of {args.peak_tflops:g} TFLOP/s; benchmarks: {', '.join(args.only)}")
    if device.type == "cpu":
        print(f"cpu_bf16_supported: {int(cpu_bf16_supported())}")
        if not size.smoke and {"timelapse", "timelapse_fast", "identity", "lightning"} & set(args.only):
            print("# warm-up skipped for the generation runs on cpu at this size (minutes each): their first step "
                  "includes one-off costs")
    figures: dict = {}
    for knobs in (False, True) if args.knobs else (False,):
        if knobs:
            knob_dtype = "fp16" if device.type == "cuda" else "bf16"
            print(f"# knobs: {knob_dtype} weights, channels-last, SDPA, VAE slicing + tiling"
                  f"{', torch.compile(UNet)' if args.compile else ''}")
        run = Run(device, size, args.steps_scale or (0.08 if size.smoke else 1.0), args.peak_tflops,
                  knobs=knobs, compile=args.compile and knobs, figures=figures)
        for name in args.only:
            RUNNERS[name](run)
        run.models.clear()
        free(device)
    if size.smoke:
        print("# smoke: scaled-down models and 1-2 steps; the ratios and goals mean something at reduced and full")
    ratios(figures, "")
    if args.knobs:
        ratios(figures, "_knobs")
        for name in sorted(k for k in figures if k.endswith("_knobs_s")):
            plain = figures.get(name.removesuffix("_knobs_s") + "_s")
            if plain:
                print(f"{name.removesuffix('_knobs_s')}_knobs_speedup: {plain / figures[name]:.6g}")


if __name__ == "__main__":
    main()
