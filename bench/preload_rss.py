"""Peak RSS of the ZeroGPU preload (every model a visible choice can reach), with full-size random weights.

On ZeroGPU the main process keeps every tensor it placed on the emulated `cuda` in its own RAM until `launch()`,
where spaces packs them to disk: the preload's peak RSS is what the Space's RAM must hold. This builds the preload
through the studio's own composition code (`Engine.preload`: the cache, the registry's keys, the LoRA merges, the
face adapter, the order and the build-input discards) with the real architectures of bench/gpu.py (SD1.5's UNet,
VAE and CLIP text encoder, AnimateDiff's v3 and v2 motion adapters, OpenCLIP ViT-H/14) and random weights; the
adapters' files (MagicTime's LoRAs, Hyper-SD's, ID-Animator's face adapter) are random too, in their real layouts,
from pipelines/sd15/tiny.py's writers at full width. No files and no hub: what is measured is composition and holding,
not reading files (mmap'd safetensors add page cache, not anonymous RSS).

    .venv/bin/python bench/preload_rss.py                 # as many groups as fit this machine, then the projection
    .venv/bin/python bench/preload_rss.py --groups 3      # the first 3 groups only (identity's three modes)

Prints one `name: value` line per figure: per group its held GiB and the peak RSS reached while building it, then
`measured_peak_rss_gib`, and `projected_peak_rss_gib` for the whole preload: what the groups not built here hold
(their components' exact sizes, from the same architectures on the meta device) plus the largest build transient
measured here. Segmentation's models (~2.6 GiB) are counted by size only.
"""

from __future__ import annotations

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = ["--groups", "0"]
FIGURES = ("whole_preload_held_gib", "start_rss_gib", "groups_built", "projected_peak_rss_gib")

import argparse
import ctypes
import gc
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu as architectures  # noqa: E402  (bench/gpu.py: the full-size configs)
import torch  # noqa: E402

from pipelines.identity import models as identity_models_module
from pipelines.identity import tiny as animator_tiny
from pipelines.sd15 import tiny
from pipelines.timelapse import models as timelapse_models_module
from pipelines.timelapse import tiny as magictime_tiny

GIB = 2**30
VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
             image_size=224, projection_dim=1024, hidden_act="gelu")
# Segmentation's models at their real sizes (parameters): Grounding DINO tiny and its two drop-ins, Florence-2 base and
# large (0.23 B and 0.77 B, their model card; all float32), the four SAM 2.1 trackers (the studio's dtype).
SEGMENTATION_PARAMS = {"grounders": 3 * 172e6 + 0.23e9 + 0.77e9, "trackers": (38.9e6 + 46e6 + 80.8e6 + 224.4e6)}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """glibc hands free memory back, then the kernel's high-water mark is reset to the current RSS."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class FullBase:
    """The tiny profile's loaders (the same composition code) with full-size architectures and random weights."""

    def clip_text(self, checkpoint: str):
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(**architectures.SD15_CLIP_TEXT)).to(self.dtype).eval()

    def vae(self, checkpoint: str):
        from diffusers import AutoencoderKL

        return AutoencoderKL(**architectures.SD15_VAE).to(self.vae_dtype).eval()

    def unet2d(self, checkpoint: str):
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**architectures.SD15_UNET).eval()


class FullTimelapseLoaders(FullBase, timelapse_models_module.TinyTimelapseLoaders):
    def text_encoder(self, checkpoint: str):
        from transformers import CLIPTextConfig, CLIPTextModel

        from pipelines.sd15.lora import merge_lora_
        from pipelines.sd15.single_file import clip_text_module_name
        from pipelines.timelapse.convert import SwiftLoraConfig, swift_lora_deltas

        model = CLIPTextModel(CLIPTextConfig(**architectures.SD15_CLIP_TEXT))
        config, weights = magictime_tiny.text_encoder_lora_files(model, 1)
        merge_lora_(model, swift_lora_deltas(SwiftLoraConfig.from_dict(config), weights, rename=clip_text_module_name))
        return model.to(self.dtype).eval()

    def motion_adapter(self):
        from diffusers import MotionAdapter

        return MotionAdapter(**timelapse_models_module.MOTION_ADAPTER_V3).eval()


class FullIdentityLoaders(FullBase, identity_models_module.TinyIdentityLoaders):
    def motion_adapter_v2(self):
        from diffusers import MotionAdapter

        return MotionAdapter(**identity_models_module.MOTION_ADAPTER_V2_LAYOUT).eval()

    def motion_adapter_lightning(self, steps: int):
        return self.motion_adapter_v2()

    def image_encoder(self):
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        return CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H)).to(self.dtype).eval()


def full_size_engine():
    from studio.engine import Engine
    from studio.settings import Settings

    # ID-Animator's face adapter at its real widths: 16 face tokens from ViT-H's 1280-wide tokens into SD1.5's 768.
    tiny.IMAGE_ENCODER_WIDTH, animator_tiny.RESAMPLER_QUERIES, tiny.CROSS_ATTENTION_DIM = 1280, 16, 768
    # the tiny profile's keys and code paths, full-size models
    timelapse_models_module.TinyTimelapseLoaders = FullTimelapseLoaders
    identity_models_module.TinyIdentityLoaders = FullIdentityLoaders
    settings = Settings(profile="tiny", device="cpu", dtype="float16", vae_dtype="float16", zerogpu=True, vdit=False,
                        output_dir=Path("/tmp/preload-rss"), calibration_path=Path("/tmp/preload-rss/c.json"))
    return Engine(settings)


def meta_sizes():
    """Bytes of each kind of component as the engine keeps it (fp16 results; float32 build inputs), from the same
    architectures on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, AutoencoderTiny, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with init_empty_weights():
        unet = count(UNet2DConditionModel(**architectures.SD15_UNET))
        v3, v2 = (count(MotionAdapter(**layout)) for layout in (timelapse_models_module.MOTION_ADAPTER_V3,
                                                                identity_models_module.MOTION_ADAPTER_V2_LAYOUT))
        kinds = {"clip-text": 2 * count(CLIPTextModel(CLIPTextConfig(**architectures.SD15_CLIP_TEXT))),
                 "vae": 2 * count(AutoencoderKL(**architectures.SD15_VAE)), "taesd": 2 * count(AutoencoderTiny()),
                 "clip-vision": 2 * count(CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H))),
                 "unet2d": 4 * unet}

    def size(key: str) -> int:
        kind = key.split("|")[1]
        if kind == "unet-motion":
            return 2 * (unet + (v3 if "motion_module.ckpt" in key else v2))
        if kind == "motion-adapter":
            return 4 * (v3 if "motion_module.ckpt" in key else v2)
        return kinds.get(kind, 0)
    return size


def simulate(groups, size, transient: int) -> tuple[list[int], list[int]]:
    """Engine.preload's holdings after each group (results kept, build inputs kept until their last consumer) and
    the peak while building it (what was held before + the inputs it loads + one build's transient)."""
    from studio.engine import _build_inputs

    inputs = [{d.key for c in g for d in _build_inputs(c)} for g in groups]
    kept = {c.key for g in groups for c in g}
    held: set[str] = set()
    after, peaks = [], []
    for number, group in enumerate(groups):
        held |= inputs[number] | {c.key for c in group}
        peaks.append(sum(map(size, held)) + transient)
        later = set().union(*inputs[number + 1:])
        held -= {k for k in inputs[number] if k not in later and k not in kept}
        after.append(sum(map(size, held)))
    return after, peaks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=None, help="build only the first N groups")
    parser.add_argument("--ram-gib", type=float, default=None,
                        help="stop before a group that would pass this much RSS (default: 85 %% of this machine)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ram = (args.ram_gib or 0.85 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB) * GIB
    engine = full_size_engine()
    groups = engine.reachable()
    sd_groups = [g for g in groups if any("|unet-motion|" in c.key for c in g)]
    print(f"# {len(groups)} groups in the ZeroGPU preload, {len(sd_groups)} of them SD-family (built here)")
    size = meta_sizes()
    segmentation = int(SEGMENTATION_PARAMS["grounders"] * 4 + SEGMENTATION_PARAMS["trackers"] * 2)
    finals = sum(size(k) for k in {c.key for g in sd_groups for c in g})
    print(f"whole_preload_held_gib: {(finals + segmentation) / GIB:.2f}  # the results, what reaches the GPU")
    predicted_after, _ = simulate(sd_groups, size, 0)

    # The preload's own loop (Engine.preload), one group at a time, measuring around each.
    from studio.engine import _build_inputs

    inputs = [{d.key: d for c in g for d in _build_inputs(c)} for g in sd_groups]
    kept = {c.key for g in groups for c in g}
    base = rss()
    print(f"start_rss_gib: {base / GIB:.2f}")
    measured_peak, transient, built = base, 0, 0
    limit = args.groups if args.groups is not None else len(sd_groups)
    for number, group in enumerate(sd_groups[:limit]):
        _, peaks = simulate(sd_groups, size, max(transient, 5 * GIB))
        if base + peaks[number] > ram:
            print(f"# stopping before group {number + 1}: it would pass {ram / GIB:.1f} GiB of RSS on this machine")
            break
        reset_peak()
        start = time.perf_counter()
        engine.cache.preload(*group)
        later = {key for needed in inputs[number + 1:] for key in needed}
        for key, component in inputs[number].items():
            if key not in later and key not in kept:
                engine.cache.discard(component)
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        group_peak, after = peak(), rss()
        measured_peak = max(measured_peak, group_peak)
        transient = max(transient, group_peak - after)
        built += 1
        parts = next(c.key for c in group if "|unet-motion|" in c.key).split("|")[2:-1]
        name = " ".join(p.rsplit("/", 1)[-1] for p in parts)
        predicted = (base + predicted_after[number]) / GIB
        print(f"group_{number + 1}_s: {time.perf_counter() - start:.1f}  # {name}")
        print(f"group_{number + 1}_rss_gib: {after / GIB:.2f}  # predicted {predicted:.2f}")
        print(f"group_{number + 1}_peak_rss_gib: {group_peak / GIB:.2f}")
    print(f"groups_built: {built}")
    print(f"measured_peak_rss_gib: {measured_peak / GIB:.2f}")
    print(f"largest_build_transient_gib: {transient / GIB:.2f}")
    after, peaks = simulate(sd_groups, size, transient)
    print(f"projected_peak_rss_gib: {(base + max(peaks[-1], after[-1] + segmentation)) / GIB:.2f}"
          f"  # the last SD group: {(base + peaks[-1]) / GIB:.2f}; at launch, everything: "
          f"{(base + after[-1] + segmentation) / GIB:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
