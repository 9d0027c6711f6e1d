"""What the identity tab loads, for each profile: ID-Animator's face adapter on the shared SD1.5 base
(pipelines/sd15/models.py), with AnimateDiff v2's motion module, or AnimateDiff-Lightning's for the fast mode.

The UNet is Realistic Vision's (the checkpoint MagicTime ships: shared with the time-lapse through sd15/), composed
with the motion module and the face adapter (reference/identity.md); the face encoder is IP-Adapter's OpenCLIP ViT-H/14.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from pipelines.core.cache import Component
from pipelines.core.errors import WeightsError
from pipelines.core.hub import SPACE, HubFile, hub_folder
from pipelines.core.tiny import seed_of
from pipelines.identity import tiny as animator_tiny
from pipelines.identity.convert import IDENTITY_ADAPTER_NAME, load_face_adapter, use_identity_mixing
from pipelines.sd15 import tiny
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

# ----------------------------------------------------------------- ID-Animator's files (reference/identity.md)
ID_ANIMATOR = "ID-Animator/ID-Animator"
ANIMATOR_CKPT = "animator.ckpt"
# ID-Animator's own instructions download every file from its Space (animator.ckpt at the root); nothing public shows
# the model repository of the same name holding it. So the model repository is asked first, then the Space.
ANIMATOR_FILE = HubFile(ID_ANIMATOR, ANIMATOR_CKPT, fallbacks=((ID_ANIMATOR, SPACE),))
MOTION_ADAPTER_V2 = "guoyww/animatediff-motion-adapter-v1-5-2"     # AnimateDiff v2, diffusers layout
MOTION_ADAPTER_V2_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
IP_ADAPTER = "h94/IP-Adapter"                                       # OpenCLIP ViT-H/14 image encoder
IMAGE_ENCODER_FILES = ("models/image_encoder/config.json", "models/image_encoder/model.safetensors")
IDENTITY_CHECKPOINT = STYLES["Realistic Vision"]   # ID-Animator's base is the file MagicTime ships: shared


# ----------------------------------------------------------------- the fast mode (reference/performance.md)
# AnimateDiff-Lightning: motion adapters distilled from AnimateDiff v2's, in diffusers' MotionAdapter keys, one file
# per step count. The files carry no config: the layout is diffusers' MotionAdapter defaults (v2: a mid-block motion
# module), written out here so that a file that does not fit fails loudly.
LIGHTNING = "ByteDance/AnimateDiff-Lightning"
LIGHTNING_STEPS = (4, 8)
MOTION_ADAPTER_V2_LAYOUT = dict(
    block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=True,
)
# Its sampler, as its model card gives it: Euler with trailing timesteps and linear betas.
EULER_TRAILING_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
    timestep_spacing="trailing",
)


def lightning_file(steps: int) -> str:
    return f"animatediff_lightning_{steps}step_diffusers.safetensors"


@dataclass(frozen=True)
class IdentityModels:
    """Everything one identity call needs."""

    tokenizer: Component
    text_encoder: Component     # Realistic Vision's own CLIP
    vae: Component              # shared with the time-lapse tab's Realistic Vision style
    unet: Component             # UNetMotionModel: RV UNet + v2 motion module + ID-Animator face adapter (LoRA fused)
    image_encoder: Component    # OpenCLIP ViT-H/14 (CLIPVisionModelWithProjection)
    image_processor: Component
    scheduler_config: dict
    tiny_vae: Component
    scheduler: str = "DDIMScheduler"


def identity_models(registry: Registry, lightning_steps: int | None = None) -> IdentityModels:
    """`lightning_steps` (4 or 8): the fast mode, AnimateDiff-Lightning's motion adapter for that many steps in
    place of AnimateDiff v2's, with the same face adapter; its own cache entries, sharing the rest."""
    load, checkpoint = registry.loaders(RealIdentityLoaders, TinyIdentityLoaders), IDENTITY_CHECKPOINT
    image_encoder = Component(registry.key("clip-vision", f"{IP_ADAPTER}/models/image_encoder"), load.image_encoder)
    if lightning_steps is None:
        motion = MOTION_ADAPTER_V2
        adapter = Component(registry.key("motion-adapter", motion, dtype="float32"), load.motion_adapter_v2)
    elif lightning_steps in LIGHTNING_STEPS:
        motion = f"{LIGHTNING}/{lightning_file(lightning_steps)}"
        adapter = Component(registry.key("motion-adapter", motion, dtype="float32"),
                            partial(load.motion_adapter_lightning, lightning_steps))
    else:
        raise ValueError(f"AnimateDiff-Lightning has motion adapters for {LIGHTNING_STEPS} steps, "
                         f"not {lightning_steps!r}")
    return IdentityModels(
        tokenizer=registry.tokenizer(load),
        text_encoder=Component(registry.key("clip-text", checkpoint), partial(load.clip_text, checkpoint)),
        vae=registry.vae(load, checkpoint),
        unet=Component(
            registry.key("unet-motion", checkpoint, motion, f"+{ID_ANIMATOR}/{ANIMATOR_CKPT}"),
            tuned(partial(load.identity_unet, per_frame_norm=lightning_steps is None), registry.knobs.unet),
            deps=(registry.unet2d(load, checkpoint), adapter, image_encoder),
        ),
        image_encoder=image_encoder,
        image_processor=Component(f"{registry.profile}|clip-image-processor", load.image_processor),
        scheduler_config=DDIM_CONFIG if lightning_steps is None else EULER_TRAILING_CONFIG,
        scheduler="DDIMScheduler" if lightning_steps is None else "EulerDiscreteScheduler",
        tiny_vae=registry.tiny_vae(load),
    )


def identity_downloads(fast: bool | None = None, steps: int | None = None, tiny_decoder: bool = True) -> list[HubFile]:
    """The hub files the identity tab needs in the real profile: for the quality mode (`fast=False`), the fast one
    (`fast=True`, for `steps` steps, or both of Lightning's), or both (`None`: what `python -m studio download`
    fetches); TAESD too unless `tiny_decoder=False`."""
    needed = base_downloads() + [
        HubFile(MAGICTIME, IDENTITY_CHECKPOINT), ANIMATOR_FILE, *(HubFile(IP_ADAPTER, f) for f in IMAGE_ENCODER_FILES),
    ]
    if fast is not True:
        needed += [HubFile(MOTION_ADAPTER_V2, f) for f in MOTION_ADAPTER_V2_FILES]
    if fast is not False:
        counts = LIGHTNING_STEPS if steps is None else (steps,)
        needed += [HubFile(LIGHTNING, lightning_file(n)) for n in counts]
    return needed + (taesd_downloads() if tiny_decoder else [])


def ensure_identity_available(registry: Registry, *, fast: bool = False, steps: int | None = None,
                     tiny_decoder: bool = False) -> None:
    """Before a call loads anything (real profile): fail at once naming every file this mode needs that is neither
    cached nor downloadable. `tiny_decoder`: the call decodes with TAESD (a preview or "Fast preview")."""
    registry.ensure_available(identity_downloads(fast=fast, steps=steps, tiny_decoder=tiny_decoder))


def compose_identity_unet(unet2d, adapter, image_encoder, animator: dict, dtype: torch.dtype,
                           per_frame_norm: bool = True):
    """UNetMotionModel from the RV UNet and the v2 motion adapter, with ID-Animator's face adapter: image
    projection and face keys/values through diffusers' IP-Adapter loader, the rank-128 LoRA through
    load_lora_adapter on the 2-D cross-attention layers only, then fused (it is never switched off, so
    PEFT's extra matmuls would only cost time), and several photos averaged as the original does.
    `per_frame_norm`: the motion modules normalise each frame as ID-Animator's do (not for Lightning's: see
    pipelines/sd15/motion_norm.py)."""
    from diffusers import AnimateDiffPipeline, UNetMotionModel

    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    if per_frame_norm:
        norm_each_frame(unet)
    # The loaders are pipeline methods: a throwaway pipeline around the UNet gives them a home.
    host = AnimateDiffPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, motion_adapter=None,
                               scheduler=None, image_encoder=image_encoder)
    load_face_adapter(host, animator, unet2d)
    unet.fuse_lora(adapter_names=[IDENTITY_ADAPTER_NAME])
    unet.unload_lora()
    use_identity_mixing(unet)
    return unet.to(dtype).eval()


# ----------------------------------------------------------------- real: the hub's files
class RealIdentityLoaders(RealLoaders):
    def motion_adapter_v2(self):
        from diffusers import MotionAdapter

        folder = hub_folder(MOTION_ADAPTER_V2, MOTION_ADAPTER_V2_FILES)
        return MotionAdapter.from_pretrained(folder, torch_dtype=torch.float32).eval()

    def motion_adapter_lightning(self, steps: int):
        from diffusers import MotionAdapter
        from safetensors.torch import load_file

        path = HubFile(LIGHTNING, lightning_file(steps)).path()
        adapter = MotionAdapter(**MOTION_ADAPTER_V2_LAYOUT)
        try:
            adapter.load_state_dict(load_file(path), strict=True)
        except RuntimeError as exc:        # torch lists every missing and unexpected key
            raise WeightsError(f"{path.name} is not an AnimateDiff-Lightning motion adapter in diffusers' layout "
                               f"(v2, with a mid-block): {str(exc)[:300]}") from exc
        return adapter.eval()

    def image_encoder(self):
        from transformers import CLIPVisionModelWithProjection

        folder = hub_folder(IP_ADAPTER, IMAGE_ENCODER_FILES)
        return CLIPVisionModelWithProjection.from_pretrained(folder, dtype=self.dtype).eval()

    def image_processor(self):
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil()   # 224 px, CLIP's mean and std: what the IP-Adapter image encoder saw

    def identity_unet(self, unet2d, adapter, image_encoder, per_frame_norm: bool = True):
        animator = torch.load(ANIMATOR_FILE.path(), map_location="cpu", weights_only=True)
        return compose_identity_unet(unet2d, adapter, image_encoder, animator, self.dtype, per_frame_norm)


# ----------------------------------------------------------------- tiny: a toy face adapter in ID-Animator's layout
class TinyIdentityLoaders(TinyLoaders):
    def motion_adapter_v2(self):
        return tiny.motion_adapter(seed_of("motion", MOTION_ADAPTER_V2)).eval()

    def motion_adapter_lightning(self, steps: int):
        return tiny.motion_adapter(seed_of("motion", LIGHTNING, str(steps)), mid_block=True).eval()

    def image_encoder(self):
        return tiny.image_encoder(seed_of("image-encoder")).to(self.dtype).eval()

    def image_processor(self):
        return tiny.image_processor()

    def identity_unet(self, unet2d, adapter, image_encoder, per_frame_norm: bool = True):
        animator = animator_tiny.animator_file(unet2d, seed_of("animator"))
        return compose_identity_unet(unet2d, adapter, image_encoder, animator, self.dtype, per_frame_norm)
