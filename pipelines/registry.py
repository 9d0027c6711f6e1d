"""What to load for each profile: hub files for `real`, in-memory toy models for `tiny`.

The registry only *describes* components (keys and loader functions); the cache decides when they
load and where they live. Keys say what a component is — source file, dtype, every adapter merged
into it — so tabs that need the same thing share one entry, and a UNet with a LoRA merged in never
collides with the plain one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from pipelines import tiny
from pipelines.cache import Component
from pipelines.convert.id_animator import IDENTITY_ADAPTER_NAME, load_face_adapter, use_identity_mixing
from pipelines.convert.lora import merge_lora_
from pipelines.convert.magictime import (
    SwiftLoraConfig,
    animatediff_module_name,
    clip_text_module_name,
    clip_text_state_dict_from_single_file,
    motion_adapter_state_dict,
    spatial_lora_deltas,
    swift_lora_deltas,
    temporal_lora_deltas,
    text_encoder_lora_deltas,
)
from pipelines.convert.single_file import check_single_file, header_tensors
from pipelines.errors import WeightsError
from pipelines.hub import SPACE, HubFile, ensure_available, hub_folder
from pipelines.motion_norm import norm_each_frame

PROFILES = ("real", "tiny")

# ----------------------------------------------------------------- MagicTime's hub layout (reference/timelapse.md)
MAGICTIME = "BestWishYsh/MagicTime"
BASE = "Base_Model/stable-diffusion-v1-5"
BASE_FILES = (
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "text_encoder/config.json", "unet/config.json", "vae/config.json",
)
MOTION_MODULE = "Base_Model/motion_module/motion_module.ckpt"   # AnimateDiff v3
SPATIAL_LORA = "Magic_Weights/magic_adapter_s/magic_adapter_s.ckpt"
TEMPORAL_LORA = "Magic_Weights/magic_adapter_t"
TEXT_ENCODER_LORA = "Magic_Weights/magic_text_encoder"
SWIFT_FILES = ("configuration.json", "default/adapter_config.json", "default/adapter_model.bin")
STYLES = {
    "Realistic Vision": "DreamBooth/RealisticVisionV60B1_v51VAE.safetensors",
    "ToonYou": "DreamBooth/ToonYou_beta6.safetensors",
    "RcnzCartoon": "DreamBooth/RcnzCartoon.safetensors",
}
# AnimateDiff v3's motion adapter, as diffusers names it (guoyww/animatediff-motion-adapter-v1-5-3):
# no mid-block motion module, position encoding length 32.
MOTION_ADAPTER_V3 = dict(
    block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=8, motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=False,
)
# The original's sampler (AnimateDiff inference config): DDIM, linear betas 0.00085 -> 0.012.
DDIM_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
    steps_offset=1, clip_sample=False, timestep_spacing="leading",
)

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

# ----------------------------------------------------------------- fast modes (reference/performance.md)
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
# Hyper-SD15's 8-step CFG-preserving LoRA (kohya-style keys on SD1.5's image layers; diffusers' LoRA loader reads
# them). Chosen for the time-lapse over TCD and LCM-LoRA, which also touch the image layers only and stack with
# MagicTime's LoRAs: Hyper-SD keeps classifier-free guidance (5-8) and the negative prompt, which MagicTime's prompts
# and its default negative rely on; TCD (eta 0.3) and LCM-LoRA (CFG ~1.25) all but drop guidance. None of them was
# measured against MagicTime's 25-step clips yet (that needs the real weights on a GPU).
HYPER_SD = "ByteDance/Hyper-SD"
HYPER_SD_LORA = "Hyper-SD15-8steps-CFG-lora.safetensors"
DDIM_TRAILING_CONFIG = {**DDIM_CONFIG, "timestep_spacing": "trailing"}
# TAESD: a 1.2 M-parameter decoder for SD's latents (the full VAE decoder has 49.5 M): previews and "Fast preview".
TAESD = "madebyollin/taesd"
TAESD_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def lightning_file(steps: int) -> str:
    return f"animatediff_lightning_{steps}step_diffusers.safetensors"


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


COMPILE_MODES = ("off", "torch")


@dataclass(frozen=True)
class Knobs:
    """How the UNets and VAEs are set up for speed (studio/settings.py reads them from the environment).

    Attention is diffusers' default everywhere, PyTorch's scaled_dot_product_attention (AttnProcessor2_0 and its
    IP-Adapter twin): flash / memory-efficient kernels on a GPU, nothing to switch on. The VAE decodes 16 frames at a
    time whatever the clip's length (decode_chunk_size), which bounds its memory for 64-frame clips already; tiling
    is for resolutions past 512 px, where one frame's activations grow with the square of the side."""

    channels_last: bool = False       # UNet and VAE weights in NHWC: faster convolutions on tensor cores
    compile: str = "off"              # "torch": torch.compile the UNets (compiles on each tab's first call)
    vae_tiling: bool = False          # decode each frame in overlapping tiles (bounded memory at any size)

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, not {self.compile!r}")

    def unet(self, model):
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile == "torch":
            model.compile(fullgraph=False, dynamic=False)   # in place: the cache keeps one object per key
        return model

    def vae(self, model):
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.vae_tiling and hasattr(model, "enable_tiling"):
            model.enable_tiling()
        return model


def _tuned(load, tune):
    return lambda *deps: tune(load(*deps))


class Registry:
    def __init__(self, profile: str = "real", dtype: str = "float32", knobs: Knobs | None = None,
                 vae_dtype: str | None = None):
        """`vae_dtype`: the decoders' own dtype when it differs from everything else's (bf16 on a CPU: see
        studio/settings.py)."""
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, not {profile!r}")
        for value in (dtype, vae_dtype or dtype):
            if value not in DTYPES:
                raise ValueError(f"dtype must be one of {tuple(DTYPES)}, not {value!r}")
        self.profile, self.dtype_name, self.dtype = profile, dtype, DTYPES[dtype]
        self.vae_dtype_name = vae_dtype or dtype
        self.knobs = knobs or Knobs()

    def _key(self, *parts: str, dtype: str | None = None) -> str:
        return "|".join((self.profile, *parts, dtype or self.dtype_name))

    # ----------------------------------------------------------------- time-lapse
    def timelapse(self, style: str, fast: bool = False) -> TimelapseModels:
        """`fast`: the UNet with Hyper-SD's LoRA merged as well, another cache entry beside the quality one.
        Merged once rather than applied per call: kept as PEFT layers, a rank-64 LoRA on the image layers made a
        full-size SD1.5 UNet forward 1.22x slower (bench/lora_merge.py, 256 px, CPU), on every step; fusing and
        unfusing per call costs a pass over the weights each time and drifts in fp16. The price is a second UNet in
        memory while both modes are in use (1.6 GiB in fp16; the cache's budget decides whether both stay)."""
        if style not in STYLES:
            raise ValueError(f"Unknown style {style!r}; choose one of: {', '.join(STYLES)}")
        checkpoint = STYLES[style]
        load = self._loaders()
        adapter = Component(self._key("motion-adapter", MOTION_MODULE, dtype="float32"), load.motion_adapter)
        parts = ["unet-motion", checkpoint, MOTION_MODULE, f"+{SPATIAL_LORA}x4", f"+{TEMPORAL_LORA}"]
        if fast:
            parts.append(f"+{HYPER_SD}/{HYPER_SD_LORA}")
        return TimelapseModels(
            tokenizer=self._tokenizer(load),
            text_encoder=Component(self._key("clip-text", checkpoint, f"+{TEXT_ENCODER_LORA}"),
                                   partial(load.text_encoder, checkpoint)),
            vae=self._vae(load, checkpoint),
            unet=Component(self._key(*parts), _tuned(partial(load.magic_unet, checkpoint, fast=fast), self.knobs.unet),
                           deps=(self._unet2d(load, checkpoint), adapter)),
            scheduler_config=DDIM_TRAILING_CONFIG if fast else DDIM_CONFIG,
            tiny_vae=self._tiny_vae(load),
        )

    # ----------------------------------------------------------------- identity video
    def identity(self, lightning_steps: int | None = None) -> IdentityModels:
        """`lightning_steps` (4 or 8): the fast mode, AnimateDiff-Lightning's motion adapter for that many steps in
        place of AnimateDiff v2's, with the same face adapter; its own cache entries, sharing the rest."""
        load, checkpoint = self._loaders(), IDENTITY_CHECKPOINT
        image_encoder = Component(self._key("clip-vision", f"{IP_ADAPTER}/models/image_encoder"), load.image_encoder)
        if lightning_steps is None:
            motion = MOTION_ADAPTER_V2
            adapter = Component(self._key("motion-adapter", motion, dtype="float32"), load.motion_adapter_v2)
        elif lightning_steps in LIGHTNING_STEPS:
            motion = f"{LIGHTNING}/{lightning_file(lightning_steps)}"
            adapter = Component(self._key("motion-adapter", motion, dtype="float32"),
                                partial(load.motion_adapter_lightning, lightning_steps))
        else:
            raise ValueError(f"AnimateDiff-Lightning has motion adapters for {LIGHTNING_STEPS} steps, "
                             f"not {lightning_steps!r}")
        return IdentityModels(
            tokenizer=self._tokenizer(load),
            text_encoder=Component(self._key("clip-text", checkpoint), partial(load.clip_text, checkpoint)),
            vae=self._vae(load, checkpoint),
            unet=Component(
                self._key("unet-motion", checkpoint, motion, f"+{ID_ANIMATOR}/{ANIMATOR_CKPT}"),
                _tuned(partial(load.identity_unet, per_frame_norm=lightning_steps is None), self.knobs.unet),
                deps=(self._unet2d(load, checkpoint), adapter, image_encoder),
            ),
            image_encoder=image_encoder,
            image_processor=Component(f"{self.profile}|clip-image-processor", load.image_processor),
            scheduler_config=DDIM_CONFIG if lightning_steps is None else EULER_TRAILING_CONFIG,
            scheduler="DDIMScheduler" if lightning_steps is None else "EulerDiscreteScheduler",
            tiny_vae=self._tiny_vae(load),
        )

    # ----------------------------------------------------------------- shared by the tabs
    def _loaders(self):
        loaders = _TinyLoaders if self.profile == "tiny" else _RealLoaders
        return loaders(self.dtype, DTYPES[self.vae_dtype_name])

    def _tokenizer(self, load) -> Component:
        return Component(f"{self.profile}|tokenizer|{MAGICTIME}/{BASE}", load.tokenizer)

    def _vae(self, load, checkpoint: str) -> Component:
        return Component(self._key("vae", checkpoint, dtype=self.vae_dtype_name),
                         _tuned(partial(load.vae, checkpoint), self.knobs.vae))

    def _tiny_vae(self, load) -> Component:
        return Component(self._key("taesd", TAESD, dtype=self.vae_dtype_name), _tuned(load.tiny_vae, self.knobs.vae))

    def _unet2d(self, load, checkpoint: str) -> Component:
        # An ingredient of motion UNets, kept float32: LoRAs merge in float32 and each result is cast once.
        return Component(self._key("unet2d", checkpoint, dtype="float32"), partial(load.unet2d, checkpoint))

    def ensure_available(self, tab: str, style: str | None = None, *, fast: bool = False, steps: int | None = None,
                         tiny_decoder: bool = False) -> None:
        """Before a call loads anything: in the real profile, fail at once naming *every* file the call needs
        that is neither cached nor downloadable (instead of one file at a time as loading reaches them).
        Only the requested style's checkpoint and mode's files count: a user may have fetched one style, or
        the quality mode only. `tiny_decoder`: the call decodes with TAESD (a preview or "Fast preview")."""
        if self.profile != "real":
            return
        others = {f for name, f in STYLES.items() if name != style} if tab == "timelapse" else set()
        files = self.downloads(tab, fast=fast, steps=steps, tiny_decoder=tiny_decoder)
        ensure_available([f for f in files if f.filename not in others])

    def downloads(self, tab: str = "timelapse", fast: bool | None = None, steps: int | None = None,
                  tiny_decoder: bool = True) -> list[HubFile]:
        """The hub files a tab needs in the real profile: for the quality mode (`fast=False`), the fast one
        (`fast=True`; the identity tab's for `steps` steps, or both of Lightning's), or both (`None`: what
        `python -m studio download` fetches); TAESD too unless `tiny_decoder=False`."""
        base = [HubFile(MAGICTIME, f"{BASE}/{f}") for f in BASE_FILES]
        if tab == "timelapse":
            files = [MOTION_MODULE, SPATIAL_LORA, *STYLES.values()]
            files += [f"{folder}/{f}" for folder in (TEMPORAL_LORA, TEXT_ENCODER_LORA) for f in SWIFT_FILES]
            needed = base + [HubFile(MAGICTIME, f) for f in files]
            if fast is not False:
                needed.append(HubFile(HYPER_SD, HYPER_SD_LORA))
        elif tab == "identity":
            needed = base + [
                HubFile(MAGICTIME, IDENTITY_CHECKPOINT), ANIMATOR_FILE,
                *(HubFile(IP_ADAPTER, f) for f in IMAGE_ENCODER_FILES),
            ]
            if fast is not True:
                needed += [HubFile(MOTION_ADAPTER_V2, f) for f in MOTION_ADAPTER_V2_FILES]
            if fast is not False:
                counts = LIGHTNING_STEPS if steps is None else (steps,)
                needed += [HubFile(LIGHTNING, lightning_file(n)) for n in counts]
        else:
            raise ValueError(f"No downloads are defined for tab {tab!r}")
        if tiny_decoder:
            needed += [HubFile(TAESD, f) for f in TAESD_FILES]
        return needed


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


def _merge_image_lora(unet, state_dict: dict, name: str) -> None:
    """A LoRA for SD1.5's image layers (Hyper-SD's), through diffusers' loader (it reads kohya and diffusers key
    styles), fused for good. Every layer it names must exist and none may be a motion layer: a LoRA that finds no
    target would otherwise load as nothing, with a warning in a log."""
    from diffusers import AnimateDiffPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft

    converted, alphas = AnimateDiffPipeline.lora_state_dict(dict(state_dict))   # class methods: no pipeline needed
    other = sorted({k.split(".", 1)[0] for k in converted if not k.startswith("unet.")})
    if other:
        raise WeightsError(f"{name} has weights for {', '.join(other)}, not only the UNet: not a UNet speed LoRA.")
    peft_keys = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()})
    targets = {k.split(".lora_")[0] for k in peft_keys if ".lora_" in k}
    AnimateDiffPipeline.load_lora_into_unet(converted, alphas, unet, adapter_name="speed")
    placed = {n for n, m in unet.named_modules() if hasattr(m, "lora_A") and "speed" in m.lora_A}
    if placed != targets or any(".motion_modules." in n for n in placed):
        missing = sorted(targets - placed)[:5]
        raise WeightsError(f"{name} does not fit this UNet: {len(targets - placed)} of its {len(targets)} layers "
                           f"have no place here (e.g. {', '.join(missing) or 'motion layers'}).")
    unet.fuse_lora(adapter_names=["speed"], lora_scale=1.0)
    unet.unload_lora()


def _compose_magic_unet(unet2d, adapter, spatial: dict, temporal: dict, speed: dict | None = None):
    """UNetMotionModel from a style UNet and the (v3) motion adapter, then MagicTime's LoRAs merged for good,
    in the original's order (spatial, then temporal), then the fast mode's speed LoRA if given."""
    from diffusers import UNetMotionModel

    require_v3_motion(adapter)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    norm_each_frame(unet)                 # as MagicTime's own motion modules normalise (pipelines/motion_norm.py)
    merge_lora_(unet, spatial)
    merge_lora_(unet, temporal)
    if speed is not None:
        _merge_image_lora(unet, speed, HYPER_SD_LORA)
    return unet


def _compose_identity_unet(unet2d, adapter, image_encoder, animator: dict, dtype: torch.dtype,
                           per_frame_norm: bool = True):
    """UNetMotionModel from the RV UNet and the v2 motion adapter, with ID-Animator's face adapter: image
    projection and face keys/values through diffusers' IP-Adapter loader, the rank-128 LoRA through
    load_lora_adapter on the 2-D cross-attention layers only, then fused (it is never switched off, so
    PEFT's extra matmuls would only cost time), and several photos averaged as the original does.
    `per_frame_norm`: the motion modules normalise each frame as ID-Animator's do (not for Lightning's: see
    pipelines/motion_norm.py)."""
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


# ----------------------------------------------------------------- real: MagicTime's own files
class _RealLoaders:
    def __init__(self, dtype: torch.dtype, vae_dtype: torch.dtype | None = None):
        self.dtype, self.vae_dtype = dtype, vae_dtype or dtype

    @staticmethod
    def _file(name: str) -> Path:
        return HubFile(MAGICTIME, name).path()

    def _base(self) -> Path:
        """The SD1.5 folder (configs + tokenizer only: the style checkpoint supplies every weight)."""
        return hub_folder(MAGICTIME, [f"{BASE}/{f}" for f in BASE_FILES])

    def _swift_folder(self, folder: str) -> Path:
        return hub_folder(MAGICTIME, [f"{folder}/{f}" for f in SWIFT_FILES])

    def tokenizer(self):
        from transformers import CLIPTokenizer

        path = self._base() / "tokenizer"
        tok = CLIPTokenizer.from_pretrained(path)
        # transformers can "load" a tokenizer that holds only its special tokens instead of failing; every
        # prompt would then encode to nothing and the clip would be noise that looks like a result.
        if len(tok) <= len(set(tok.all_special_tokens)):
            raise WeightsError(
                f"The tokenizer in {path} loaded empty ({len(tok)} tokens): its files are missing or incomplete. "
                "Download the weights again with .venv/bin/python -m studio download."
            )
        return tok

    def _checked(self, checkpoint: str) -> Path:
        """The style checkpoint's path, once every key in it is accounted for (see convert/single_file.py)."""
        path = self._file(checkpoint)
        stat = path.stat()
        _check_single_file_once(str(path), stat.st_size, stat.st_mtime_ns, str(self._base()))
        return path

    def clip_text(self, checkpoint: str, lora: bool = False):
        """The style checkpoint's own CLIP text encoder (it replaces SD1.5's), with MagicTime's LoRA if asked."""
        from safetensors import safe_open
        from transformers import CLIPTextConfig, CLIPTextModel

        config = CLIPTextConfig.from_pretrained(self._base() / "text_encoder")
        self._checked(checkpoint)
        with safe_open(self._file(checkpoint), framework="pt") as f:
            single = {k: f.get_tensor(k) for k in f.keys() if k.startswith("cond_stage_model.")}
        model = CLIPTextModel(config)
        model.load_state_dict(clip_text_state_dict_from_single_file(single), strict=True)
        if lora:
            merge_lora_(model, text_encoder_lora_deltas(self._swift_folder(TEXT_ENCODER_LORA)))
        return model.to(self.dtype).eval()

    def text_encoder(self, checkpoint: str):
        return self.clip_text(checkpoint, lora=True)

    def _single_file_part(self, cls, checkpoint: str, subfolder: str, dtype: torch.dtype):
        """One model of a single-file SD checkpoint, through diffusers' own converter.

        diffusers (0.42) does not check that the file fits. Keys its converter does not know it drops without
        a word, so every key is accounted for first (`_checked`); a weight missing from the file surfaces as
        torch's "Cannot copy out of meta tensor" naming nothing, so we say which file and part are incomplete.
        """
        path = self._checked(checkpoint)
        try:
            return cls.from_single_file(
                path, config=str(self._base()), subfolder=subfolder, torch_dtype=dtype, local_files_only=True,
            ).eval()
        except NotImplementedError as exc:
            if "meta tensor" not in str(exc):
                raise
            raise WeightsError(
                f"{path.name} is incomplete: its {subfolder} part lacks weights that "
                f"{cls.__name__} needs. Download it again with .venv/bin/python -m studio download."
            ) from exc

    def vae(self, checkpoint: str):
        from diffusers import AutoencoderKL

        return self._single_file_part(AutoencoderKL, checkpoint, "vae", self.vae_dtype)

    def unet2d(self, checkpoint: str):
        from diffusers import UNet2DConditionModel

        return self._single_file_part(UNet2DConditionModel, checkpoint, "unet", torch.float32)

    def motion_adapter(self):
        from diffusers import MotionAdapter

        original = torch.load(self._file(MOTION_MODULE), map_location="cpu", weights_only=True)
        adapter = MotionAdapter(**MOTION_ADAPTER_V3)
        adapter.load_state_dict(motion_adapter_state_dict(original), strict=True)
        return adapter.eval()

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

    def tiny_vae(self):
        from diffusers import AutoencoderTiny

        return AutoencoderTiny.from_pretrained(hub_folder(TAESD, TAESD_FILES), torch_dtype=self.vae_dtype).eval()

    def image_encoder(self):
        from transformers import CLIPVisionModelWithProjection

        folder = hub_folder(IP_ADAPTER, IMAGE_ENCODER_FILES)
        return CLIPVisionModelWithProjection.from_pretrained(folder, dtype=self.dtype).eval()

    def image_processor(self):
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor()   # 224 px, CLIP's mean and std: what the IP-Adapter image encoder saw

    def identity_unet(self, unet2d, adapter, image_encoder, per_frame_norm: bool = True):
        animator = torch.load(ANIMATOR_FILE.path(), map_location="cpu", weights_only=True)
        return _compose_identity_unet(unet2d, adapter, image_encoder, animator, self.dtype, per_frame_norm)

    def magic_unet(self, checkpoint: str, unet2d, adapter, fast: bool = False):
        from safetensors.torch import load_file

        spatial = torch.load(self._file(SPATIAL_LORA), map_location="cpu", weights_only=True)
        speed = load_file(HubFile(HYPER_SD, HYPER_SD_LORA).path()) if fast else None
        unet = _compose_magic_unet(
            unet2d, adapter, spatial_lora_deltas(spatial), temporal_lora_deltas(self._swift_folder(TEMPORAL_LORA)),
            speed,
        )
        return unet.to(self.dtype).eval()


@functools.lru_cache(maxsize=16)
def _check_single_file_once(path: str, size: int, mtime_ns: int, base: str) -> None:
    """check_single_file on the file's header, once per file version (its three parts load separately)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    check_single_file(
        header_tensors(path), UNet2DConditionModel.load_config(base, subfolder="unet"),
        AutoencoderKL.load_config(base, subfolder="vae"), CLIPTextConfig.from_pretrained(Path(base) / "text_encoder"),
        name=Path(path).name,
    )


# ----------------------------------------------------------------- tiny: toy models, same code paths
class _TinyLoaders:
    def __init__(self, dtype: torch.dtype, vae_dtype: torch.dtype | None = None):
        self.dtype, self.vae_dtype = dtype, vae_dtype or dtype

    def tokenizer(self):
        return tiny.tokenizer()

    def clip_text(self, checkpoint: str):
        return tiny.text_encoder(tiny.seed_of("clip", checkpoint)).to(self.dtype).eval()

    def motion_adapter_v2(self):
        return tiny.motion_adapter(tiny.seed_of("motion", MOTION_ADAPTER_V2)).eval()

    def motion_adapter_lightning(self, steps: int):
        return tiny.motion_adapter(tiny.seed_of("motion", LIGHTNING, str(steps)), mid_block=True).eval()

    def tiny_vae(self):
        return tiny.tiny_vae(tiny.seed_of("taesd")).to(self.vae_dtype).eval()

    def image_encoder(self):
        return tiny.image_encoder(tiny.seed_of("image-encoder")).to(self.dtype).eval()

    def image_processor(self):
        return tiny.image_processor()

    def identity_unet(self, unet2d, adapter, image_encoder, per_frame_norm: bool = True):
        animator = tiny.animator_file(unet2d, tiny.seed_of("animator"))
        return _compose_identity_unet(unet2d, adapter, image_encoder, animator, self.dtype, per_frame_norm)

    def text_encoder(self, checkpoint: str):
        model = tiny.text_encoder(tiny.seed_of("clip", checkpoint))
        config, weights = tiny.text_encoder_lora_files(model, tiny.seed_of("text-lora"))
        merge_lora_(model, swift_lora_deltas(SwiftLoraConfig.from_dict(config), weights, rename=clip_text_module_name))
        return model.to(self.dtype).eval()

    def vae(self, checkpoint: str):
        return tiny.vae(tiny.seed_of("vae", checkpoint)).to(self.vae_dtype).eval()

    def unet2d(self, checkpoint: str):
        return tiny.unet2d(tiny.seed_of("unet", checkpoint)).eval()

    def motion_adapter(self):
        return tiny.motion_adapter(tiny.seed_of("motion", MOTION_MODULE)).eval()

    def magic_unet(self, checkpoint: str, unet2d, adapter, fast: bool = False):
        from diffusers import UNetMotionModel

        probe = UNetMotionModel.from_unet2d(unet2d, adapter)   # only to lay out the adapters' keys
        spatial = tiny.spatial_lora_file(probe, tiny.seed_of("spatial-lora"))
        config, weights = tiny.temporal_lora_files(probe, tiny.seed_of("temporal-lora"))
        temporal = swift_lora_deltas(SwiftLoraConfig.from_dict(config), weights, rename=animatediff_module_name)
        speed = tiny.kohya_lora_file(unet2d, tiny.seed_of("hyper-sd")) if fast else None
        unet = _compose_magic_unet(unet2d, adapter, spatial_lora_deltas(spatial), temporal, speed)
        return unet.to(self.dtype).eval()
