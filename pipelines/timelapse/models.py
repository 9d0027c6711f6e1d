"""What the time-lapse loads, for each profile: MagicTime's adapters on the shared SD1.5 base (sd15/models.py).

A style's UNet is composed from its 2-D UNet and AnimateDiff v3's motion module, with MagicTime's spatial and temporal
LoRAs merged for good (and Hyper-SD's speed LoRA for the fast mode); its text encoder is the style's CLIP with
MagicTime's text-encoder LoRA. The file layout is reference/timelapse.md's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from pipelines.core.cache import Component
from pipelines.core.errors import WeightsError
from pipelines.core.hub import HubFile, hub_folder
from pipelines.core.tiny import seed_of
from pipelines.sd15 import tiny
from pipelines.sd15.lora import merge_image_lora, merge_lora_
from pipelines.sd15.models import (
    DDIM_CONFIG,
    MAGICTIME,
    STYLES,
    RealLoaders,
    Registry,
    TinyLoaders,
    base_downloads,
    taesd_downloads,
    tuned,
)
from pipelines.sd15.motion_norm import norm_each_frame
from pipelines.sd15.single_file import clip_text_module_name
from pipelines.timelapse import tiny as magictime_tiny
from pipelines.timelapse.convert import (
    SwiftLoraConfig,
    animatediff_module_name,
    motion_adapter_state_dict,
    spatial_lora_deltas,
    swift_lora_deltas,
    temporal_lora_deltas,
    text_encoder_lora_deltas,
)

# ----------------------------------------------------------------- MagicTime's hub layout (reference/timelapse.md)
MOTION_MODULE = "Base_Model/motion_module/motion_module.ckpt"   # AnimateDiff v3
SPATIAL_LORA = "Magic_Weights/magic_adapter_s/magic_adapter_s.ckpt"
TEMPORAL_LORA = "Magic_Weights/magic_adapter_t"
TEXT_ENCODER_LORA = "Magic_Weights/magic_text_encoder"
SWIFT_FILES = ("configuration.json", "default/adapter_config.json", "default/adapter_model.bin")
# AnimateDiff v3's motion adapter, as diffusers names it (guoyww/animatediff-motion-adapter-v1-5-3):
# no mid-block motion module, position encoding length 32.
MOTION_ADAPTER_V3 = dict(
    block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=False,
)

# ----------------------------------------------------------------- the fast mode (reference/performance.md)
# Hyper-SD15's 8-step CFG-preserving LoRA (kohya-style keys on SD1.5's image layers; diffusers' LoRA loader reads
# them). Chosen for the time-lapse over TCD and LCM-LoRA, which also touch the image layers only and stack with
# MagicTime's LoRAs: Hyper-SD keeps classifier-free guidance (5-8) and the negative prompt, which MagicTime's prompts
# and its default negative rely on; TCD (eta 0.3) and LCM-LoRA (CFG ~1.25) all but drop guidance. None of them was
# measured against MagicTime's 25-step clips yet (that needs the real weights on a GPU).
HYPER_SD = "ByteDance/Hyper-SD"
HYPER_SD_LORA = "Hyper-SD15-8steps-CFG-lora.safetensors"
DDIM_TRAILING_CONFIG = {**DDIM_CONFIG, "timestep_spacing": "trailing"}


@dataclass(frozen=True)
class TimelapseModels:
    """Everything one time-lapse call needs, for one style."""

    tokenizer: Component
    text_encoder: Component   # the style's CLIP + MagicTime's text-encoder LoRA
    vae: Component
    unet: Component           # UNetMotionModel: style UNet + v3 motion module + magic spatial & temporal LoRAs
    scheduler_config: dict
    tiny_vae: Component       # TAESD: live previews, and the clip itself in "Fast preview"
    scheduler: str = "DDIMScheduler"


def timelapse_models(registry: Registry, style: str, fast: bool = False) -> TimelapseModels:
    """`fast`: the UNet with Hyper-SD's LoRA merged as well, another cache entry beside the quality one.
    Merged once rather than applied per call: kept as PEFT layers, a rank-64 LoRA on the image layers made a
    full-size SD1.5 UNet forward 1.22x slower (bench/lora_merge.py, 256 px, CPU), on every step; fusing and
    unfusing per call costs a pass over the weights each time and drifts in fp16. The price is a second UNet in
    memory while both modes are in use (1.6 GiB in fp16; the cache's budget decides whether both stay)."""
    if style not in STYLES:
        raise ValueError(f"Unknown style {style!r}; choose one of: {', '.join(STYLES)}")
    checkpoint = STYLES[style]
    load = registry.loaders(RealTimelapseLoaders, TinyTimelapseLoaders)
    adapter = Component(registry.key("motion-adapter", MOTION_MODULE, dtype="float32"), load.motion_adapter)
    parts = ["unet-motion", checkpoint, MOTION_MODULE, f"+{SPATIAL_LORA}x4", f"+{TEMPORAL_LORA}"]
    if fast:
        parts.append(f"+{HYPER_SD}/{HYPER_SD_LORA}")
    return TimelapseModels(
        tokenizer=registry.tokenizer(load),
        text_encoder=Component(registry.key("clip-text", checkpoint, f"+{TEXT_ENCODER_LORA}"),
                               partial(load.text_encoder, checkpoint)),
        vae=registry.vae(load, checkpoint),
        unet=Component(registry.key(*parts),
                       tuned(partial(load.magic_unet, checkpoint, fast=fast), registry.knobs.unet),
                       deps=(registry.unet2d(load, checkpoint), adapter)),
        scheduler_config=DDIM_TRAILING_CONFIG if fast else DDIM_CONFIG,
        tiny_vae=registry.tiny_vae(load),
    )


def timelapse_downloads(fast: bool | None = None, tiny_decoder: bool = True) -> list[HubFile]:
    """The hub files the time-lapse needs in the real profile: for the quality mode (`fast=False`), the fast one
    (`fast=True`), or both (`None`: what `python -m studio download` fetches); TAESD too unless `tiny_decoder=False`.
    Every style's checkpoint is listed (`ensure_available` counts only the one asked for)."""
    files = [MOTION_MODULE, SPATIAL_LORA, *STYLES.values()]
    files += [f"{folder}/{f}" for folder in (TEMPORAL_LORA, TEXT_ENCODER_LORA) for f in SWIFT_FILES]
    needed = base_downloads() + [HubFile(MAGICTIME, f) for f in files]
    if fast is not False:
        needed.append(HubFile(HYPER_SD, HYPER_SD_LORA))
    return needed + (taesd_downloads() if tiny_decoder else [])


def ensure_timelapse_available(registry: Registry, style: str, *, fast: bool = False,
                               tiny_decoder: bool = False) -> None:
    """Before a call loads anything (real profile): fail at once naming every file this style and mode need that is
    neither cached nor downloadable. Only the requested style's checkpoint counts: a user may have fetched one style,
    or the quality mode only. `tiny_decoder`: the call decodes with TAESD (a preview or "Fast preview")."""
    others = {f for name, f in STYLES.items() if name != style}
    needed = timelapse_downloads(fast=fast, tiny_decoder=tiny_decoder)
    registry.ensure_available([f for f in needed if f.filename not in others])


def require_v3_motion(adapter) -> None:
    """MagicTime's temporal adapter was trained on AnimateDiff v3's motion module, which has no mid-block motion
    module. A v2-layout one (AnimateDiff v2, Lightning, AnimateDiff-LCM) has every layer v3 has and one more block,
    so the temporal LoRA merges into it without any error and the clip silently loses MagicTime's motion: refuse."""
    if adapter.config.get("use_motion_mid_block", False):
        raise WeightsError(
            "This motion module has AnimateDiff v2's layout (a motion module in the mid-block), but MagicTime's "
            "temporal adapter belongs to AnimateDiff v3's. It would load without an error and lose MagicTime's "
            "metamorphic motion, so the studio refuses it: the time-lapse keeps MagicTime's own v3 motion module."
        )



def compose_magic_unet(unet2d, adapter, spatial: dict, temporal: dict, speed: dict | None = None):
    """UNetMotionModel from a style UNet and the (v3) motion adapter, then MagicTime's LoRAs merged for good,
    in the original's order (spatial, then temporal), then the fast mode's speed LoRA if given."""
    from diffusers import UNetMotionModel

    require_v3_motion(adapter)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    norm_each_frame(unet)                 # as MagicTime's own motion modules normalise (sd15/motion_norm.py)
    merge_lora_(unet, spatial)
    merge_lora_(unet, temporal)
    if speed is not None:
        merge_image_lora(unet, speed, HYPER_SD_LORA)
    return unet


# ----------------------------------------------------------------- real: MagicTime's own files
class RealTimelapseLoaders(RealLoaders):
    def _swift_folder(self, folder: str):
        return hub_folder(MAGICTIME, [f"{folder}/{f}" for f in SWIFT_FILES])

    def text_encoder(self, checkpoint: str):
        return self.clip_text(checkpoint, lora=text_encoder_lora_deltas(self._swift_folder(TEXT_ENCODER_LORA)))

    def motion_adapter(self):
        from diffusers import MotionAdapter

        original = torch.load(self.magictime_file(MOTION_MODULE), map_location="cpu", weights_only=True)
        adapter = MotionAdapter(**MOTION_ADAPTER_V3)
        adapter.load_state_dict(motion_adapter_state_dict(original), strict=True)
        return adapter.eval()

    def magic_unet(self, checkpoint: str, unet2d, adapter, fast: bool = False):
        from safetensors.torch import load_file

        spatial = torch.load(self.magictime_file(SPATIAL_LORA), map_location="cpu", weights_only=True)
        speed = load_file(HubFile(HYPER_SD, HYPER_SD_LORA).path()) if fast else None
        unet = compose_magic_unet(
            unet2d, adapter, spatial_lora_deltas(spatial), temporal_lora_deltas(self._swift_folder(TEMPORAL_LORA)),
            speed,
        )
        return unet.to(self.dtype).eval()


# ----------------------------------------------------------------- tiny: toy adapters in MagicTime's layouts
class TinyTimelapseLoaders(TinyLoaders):
    def text_encoder(self, checkpoint: str):
        model = tiny.text_encoder(seed_of("clip", checkpoint))
        config, weights = magictime_tiny.text_encoder_lora_files(model, seed_of("text-lora"))
        merge_lora_(model, swift_lora_deltas(SwiftLoraConfig.from_dict(config), weights, rename=clip_text_module_name))
        return model.to(self.dtype).eval()

    def motion_adapter(self):
        return tiny.motion_adapter(seed_of("motion", MOTION_MODULE)).eval()

    def magic_unet(self, checkpoint: str, unet2d, adapter, fast: bool = False):
        from diffusers import UNetMotionModel

        probe = UNetMotionModel.from_unet2d(unet2d, adapter)   # only to lay out the adapters' keys
        spatial = magictime_tiny.spatial_lora_file(probe, seed_of("spatial-lora"))
        config, weights = magictime_tiny.temporal_lora_files(probe, seed_of("temporal-lora"))
        temporal = swift_lora_deltas(SwiftLoraConfig.from_dict(config), weights, rename=animatediff_module_name)
        speed = tiny.kohya_lora_file(unet2d, seed_of("hyper-sd")) if fast else None
        unet = compose_magic_unet(unet2d, adapter, spatial_lora_deltas(spatial), temporal, speed)
        return unet.to(self.dtype).eval()
