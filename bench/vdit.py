"""VD-IT's cost: seconds per frame and peak memory of one clip through pipelines/vdit.segment_clip.

`--size tiny`: the tiny profile's models (seconds; the test runs it). `--size reduced` / `--size full`: the released
architectures with random weights, built from the configs below (ModelScope's UNet3D and VAE, its 1024-wide CLIP text
encoder, laion's CLIP ViT-H/14, RoBERTa-base, VD-IT's head at its defaults), at a short side of 128 px (reduced) or the
paper's 360 (full). The floor beside the figure is reference/vdit.md's FLOP count (per frame at 368x640: VAE encoder
1.00 T, UNet 1.18 T, CLIP-H 0.34 T; the head is small), scaled by pixels (CLIP-H always sees 224 px), at 40 % of
`--peak-tflops`.

    .venv/bin/python bench/vdit.py --size tiny                   # seconds
    .venv/bin/python bench/vdit.py --size reduced --frames 4     # CPU: full-size models, 128 px short side
    .venv/bin/python bench/vdit.py --size full --frames 36       # a GPU: the paper's size and chunk

Last line: `vdit_s_per_frame: <value>`.
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = ["--size", "tiny", "--frames", "2", "--threads", "1"]
FIGURES = ("vdit_s_per_clip", "vdit_floor_s_per_frame", "vdit_s_per_frame")

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from pipelines.sd15 import tiny
from pipelines.segmentation.vdit import model as vdit
from pipelines.segmentation.vdit import tiny as vdit_tiny

# reference/vdit.md section 7, per frame at 368 x 640 (TFLOP)
FLOP_VAE, FLOP_UNET, FLOP_CLIP = 1.00, 1.18, 0.34
PAPER_PIXELS = 368 * 640


def full_size_models(short_side: int, dtype: torch.dtype) -> vdit.VDITModels:
    """The released architectures, random weights (configs as the hub's config.json files give them)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import (
        CLIPImageProcessorPil,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        RobertaConfig,
        RobertaModel,
    )

    torch.manual_seed(0)
    # ali-vilab/text-to-video-ms-1.7b unet/config.json: attention_head_dim 64, cross_attention_dim 1024
    unet = UNet3DConditionModel(attention_head_dim=64, cross_attention_dim=1024)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    # its text_encoder/config.json: OpenCLIP ViT-H's text tower, 23 layers
    text = CLIPTextModel(CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                        num_hidden_layers=23, projection_dim=1024, hidden_act="gelu"))
    # laion/CLIP-ViT-H-14-laion2B-s32B-b79K vision tower
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=16,
                                              num_hidden_layers=32, patch_size=14, image_size=224, hidden_act="gelu"))
    roberta = RobertaModel(RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                                         pad_token_id=1))
    models = [m.to(dtype).eval() for m in (unet, vae, text, vision, roberta)]
    return vdit.VDITModels(
        unet=models[0], vae=models[1], text_encoder=models[2], tokenizer=tiny.tokenizer(), vision=models[3],
        vision_processor=CLIPImageProcessorPil(), roberta=models[4], roberta_tokenizer=vdit_tiny.roberta_tokenizer(),
        trained=vdit.VDIT().eval(), short_side=short_side)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "reduced", "full"), default="tiny")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    if args.size == "tiny":
        models = vdit_tiny.vdit_models()
    else:
        models = full_size_models(128 if args.size == "reduced" else vdit.SHORT_SIDE, dtype)
    for name in ("unet", "vae", "text_encoder", "vision", "roberta"):
        getattr(models, name).to(device)
    models.trained.to(device)                # the head stays fp32, as the original keeps deformable sampling
    print(f"# {args.size}: models built in {time.perf_counter() - start:.1f} s on {device}")
    height, width = (360, 640) if args.size != "tiny" else (72, 128)
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, height, width, 3), dtype=np.uint8)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = vdit.segment_clip(models, frames, "the dog on the left", generator=torch.Generator().manual_seed(0))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    per_frame = seconds / args.frames
    h, w = vdit.resized_size(height, width, models.short_side)
    scale = h * w / PAPER_PIXELS
    floor = (FLOP_VAE * scale + FLOP_UNET * scale + FLOP_CLIP) / (0.4 * args.peak_tflops)
    print(f"vdit_masks_shape: {tuple(result.masks.shape)}")
    print(f"vdit_frame_size: {h}x{w}")
    print(f"vdit_s_per_clip: {seconds:.4f}")
    if device.type == "cuda":
        print(f"vdit_peak_mib: {torch.cuda.max_memory_allocated() / 2**20:.1f}")
    else:
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(f"vdit_peak_rss_growth_mib: {grown / 1024:.1f}")
    print(f"vdit_floor_s_per_frame: {floor:.6f}")
    print(f"vdit_s_per_frame: {per_frame:.4f}")


if __name__ == "__main__":
    main()
