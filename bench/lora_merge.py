"""A speed LoRA merged into the UNet once (a second cache entry) or kept as PEFT layers and applied on every call.

Full-size SD1.5 image UNet (UNet2DConditionModel, random weights, built from its config in code) with a rank-64 LoRA
on every attention projection and feed-forward layer (Hyper-SD15's targets, kohya keys), one forward at a small
latent (`--latent 32`: 256 px) with a batch of 2 (guidance): merged (fuse_lora) against unmerged (PEFT's extra
matmuls), interleaved, by median. Also prints the merge's one-off cost and the bytes a second UNet costs.

    .venv/bin/python bench/lora_merge.py [--repeats 5] [--latent 32] [--rank 64] [--threads 2] [--smoke]

Last line: `unmerged_vs_merged_ratio: <unmerged median / merged median>`.
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = ["--smoke", "--repeats", "1", "--latent", "8", "--rank", "4", "--threads", "1"]
FIGURES = ("unmerged_vs_merged_ratio",)

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers import UNet2DConditionModel

from pipelines.sd15.lora import merge_image_lora

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--latent", type=int, default=32)
parser.add_argument("--rank", type=int, default=64)
parser.add_argument("--threads", type=int, default=0)
parser.add_argument("--smoke", action="store_true", help="a two-block UNet of width 32 instead of SD1.5's (the suite's "
                    "smoke run: the same code path in seconds; its figures mean nothing)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

# SD1.5's unet/config.json (runwayml/stable-diffusion-v1-5), the values that differ from diffusers' defaults.
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SMOKE_UNET = dict(sample_size=8, cross_attention_dim=32, attention_head_dim=2, block_out_channels=(32, 64),
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1)
config = SMOKE_UNET if args.smoke else SD15_UNET
torch.manual_seed(0)
base = UNet2DConditionModel(**config).eval()
g = torch.Generator().manual_seed(1)
speed = {}
for name, module in base.named_modules():
    if isinstance(module, torch.nn.Linear) and ".transformer_blocks." in name and (
            name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or name.endswith(("to_out.0", "ff.net.2"))):
        key = "lora_unet_" + name.replace(".", "_")
        speed[f"{key}.lora_down.weight"] = torch.randn(args.rank, module.in_features, generator=g) * 0.01
        speed[f"{key}.lora_up.weight"] = torch.randn(module.out_features, args.rank, generator=g) * 0.01
        speed[f"{key}.alpha"] = torch.tensor(float(args.rank))
print(f"LoRA: {sum(k.endswith('.alpha') for k in speed)} layers, rank {args.rank}")



merged = copy.deepcopy(base)
start = time.perf_counter()
merge_image_lora(merged, speed, "speed-lora")
print(f"merge (load + fuse, once): {time.perf_counter() - start:.2f} s")

from diffusers import AnimateDiffPipeline  # noqa: E402

unmerged = copy.deepcopy(base)                  # the same LoRA as PEFT layers, left unfused
converted, alphas = AnimateDiffPipeline.lora_state_dict(dict(speed))
AnimateDiffPipeline.load_lora_into_unet(converted, alphas, unmerged, adapter_name="speed")
weights = sum(p.numel() * p.element_size() for p in base.parameters())
print(f"a second UNet costs {weights / 2**20:.0f} MiB fp32 ({weights / 2**21:.0f} MiB fp16)")

x = torch.randn(2, 4, args.latent, args.latent)
text = torch.randn(2, 77, config["cross_attention_dim"])
t = torch.tensor([500, 500])


def forward(unet):
    start = time.perf_counter()
    with torch.inference_mode():
        unet(x, t, encoder_hidden_states=text)
    return time.perf_counter() - start


forward(merged), forward(unmerged)         # warm-up
times = {"merged": [], "unmerged": []}
for i in range(args.repeats):
    for name in (("merged", "unmerged") if i % 2 else ("unmerged", "merged")):
        times[name].append(forward(merged if name == "merged" else unmerged))
for name, xs in times.items():
    print(f"{name:<10} median {statistics.median(xs):.3f} s  min {min(xs):.3f}  max {max(xs):.3f}")
print(f"unmerged_vs_merged_ratio: {statistics.median(times['unmerged']) / statistics.median(times['merged']):.3f}")
