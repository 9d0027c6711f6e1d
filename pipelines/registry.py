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
from pipelines.hub import HubFile, ensure_available, hub_folder

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
MOTION_ADAPTER_V2 = "guoyww/animatediff-motion-adapter-v1-5-2"     # AnimateDiff v2, diffusers layout
MOTION_ADAPTER_V2_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
IP_ADAPTER = "h94/IP-Adapter"                                       # OpenCLIP ViT-H/14 image encoder
IMAGE_ENCODER_FILES = ("models/image_encoder/config.json", "models/image_encoder/model.safetensors")
IDENTITY_CHECKPOINT = STYLES["Realistic Vision"]   # ID-Animator's base is the file MagicTime ships: shared

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TimelapseModels:
    """Everything one time-lapse call needs, for one style."""

    tokenizer: Component
    text_encoder: Component   # the style's CLIP + MagicTime's text-encoder LoRA
    vae: Component
    unet: Component           # UNetMotionModel: style UNet + v3 motion module + magic spatial & temporal LoRAs
    scheduler_config: dict


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


class Registry:
    def __init__(self, profile: str = "real", dtype: str = "float32"):
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, not {profile!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, not {dtype!r}")
        self.profile, self.dtype_name, self.dtype = profile, dtype, DTYPES[dtype]

    def _key(self, *parts: str, dtype: str | None = None) -> str:
        return "|".join((self.profile, *parts, dtype or self.dtype_name))

    # ----------------------------------------------------------------- time-lapse
    def timelapse(self, style: str) -> TimelapseModels:
        if style not in STYLES:
            raise ValueError(f"Unknown style {style!r}; choose one of: {', '.join(STYLES)}")
        checkpoint = STYLES[style]
        load = self._loaders()
        adapter = Component(self._key("motion-adapter", MOTION_MODULE, dtype="float32"), load.motion_adapter)
        return TimelapseModels(
            tokenizer=self._tokenizer(load),
            text_encoder=Component(self._key("clip-text", checkpoint, f"+{TEXT_ENCODER_LORA}"),
                                   partial(load.text_encoder, checkpoint)),
            vae=self._vae(load, checkpoint),
            unet=Component(
                self._key("unet-motion", checkpoint, MOTION_MODULE, f"+{SPATIAL_LORA}x4", f"+{TEMPORAL_LORA}"),
                partial(load.magic_unet, checkpoint), deps=(self._unet2d(load, checkpoint), adapter),
            ),
            scheduler_config=DDIM_CONFIG,
        )

    # ----------------------------------------------------------------- identity video
    def identity(self) -> IdentityModels:
        load, checkpoint = self._loaders(), IDENTITY_CHECKPOINT
        image_encoder = Component(self._key("clip-vision", f"{IP_ADAPTER}/models/image_encoder"), load.image_encoder)
        adapter = Component(self._key("motion-adapter", MOTION_ADAPTER_V2, dtype="float32"), load.motion_adapter_v2)
        return IdentityModels(
            tokenizer=self._tokenizer(load),
            text_encoder=Component(self._key("clip-text", checkpoint), partial(load.clip_text, checkpoint)),
            vae=self._vae(load, checkpoint),
            unet=Component(
                self._key("unet-motion", checkpoint, MOTION_ADAPTER_V2, f"+{ID_ANIMATOR}/{ANIMATOR_CKPT}"),
                load.identity_unet, deps=(self._unet2d(load, checkpoint), adapter, image_encoder),
            ),
            image_encoder=image_encoder,
            image_processor=Component(f"{self.profile}|clip-image-processor", load.image_processor),
            scheduler_config=DDIM_CONFIG,
        )

    # ----------------------------------------------------------------- shared by the tabs
    def _loaders(self):
        return _TinyLoaders(self.dtype) if self.profile == "tiny" else _RealLoaders(self.dtype)

    def _tokenizer(self, load) -> Component:
        return Component(f"{self.profile}|tokenizer|{MAGICTIME}/{BASE}", load.tokenizer)

    def _vae(self, load, checkpoint: str) -> Component:
        return Component(self._key("vae", checkpoint), partial(load.vae, checkpoint))

    def _unet2d(self, load, checkpoint: str) -> Component:
        # An ingredient of motion UNets, kept float32: LoRAs merge in float32 and each result is cast once.
        return Component(self._key("unet2d", checkpoint, dtype="float32"), partial(load.unet2d, checkpoint))

    def ensure_available(self, tab: str, style: str | None = None) -> None:
        """Before a call loads anything: in the real profile, fail at once naming *every* file the call needs
        that is neither cached nor downloadable (instead of one file at a time as loading reaches them).
        Only the requested style's checkpoint counts: a user may have fetched one style."""
        if self.profile != "real":
            return
        others = {f for name, f in STYLES.items() if name != style} if tab == "timelapse" else set()
        ensure_available([f for f in self.downloads(tab) if f.filename not in others])

    def downloads(self, tab: str = "timelapse") -> list[HubFile]:
        """Every hub file a tab needs in the real profile (for `python -m studio download`)."""
        base = [HubFile(MAGICTIME, f"{BASE}/{f}") for f in BASE_FILES]
        if tab == "timelapse":
            files = [MOTION_MODULE, SPATIAL_LORA, *STYLES.values()]
            files += [f"{folder}/{f}" for folder in (TEMPORAL_LORA, TEXT_ENCODER_LORA) for f in SWIFT_FILES]
            return base + [HubFile(MAGICTIME, f) for f in files]
        if tab == "identity":
            return base + [
                HubFile(MAGICTIME, IDENTITY_CHECKPOINT), HubFile(ID_ANIMATOR, ANIMATOR_CKPT),
                *(HubFile(MOTION_ADAPTER_V2, f) for f in MOTION_ADAPTER_V2_FILES),
                *(HubFile(IP_ADAPTER, f) for f in IMAGE_ENCODER_FILES),
            ]
        raise ValueError(f"No downloads are defined for tab {tab!r}")


def _compose_magic_unet(unet2d, adapter, spatial: dict, temporal: dict):
    """UNetMotionModel from a style UNet and the motion adapter, then MagicTime's LoRAs merged for good,
    in the original's order (spatial, then temporal)."""
    from diffusers import UNetMotionModel

    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    merge_lora_(unet, spatial)
    merge_lora_(unet, temporal)
    return unet


def _compose_identity_unet(unet2d, adapter, image_encoder, animator: dict, dtype: torch.dtype):
    """UNetMotionModel from the RV UNet and the v2 motion adapter, with ID-Animator's face adapter: image
    projection and face keys/values through diffusers' IP-Adapter loader, the rank-128 LoRA through
    load_lora_adapter on the 2-D cross-attention layers only, then fused (it is never switched off, so
    PEFT's extra matmuls would only cost time), and several photos averaged as the original does."""
    from diffusers import AnimateDiffPipeline, UNetMotionModel

    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
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
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

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

        return self._single_file_part(AutoencoderKL, checkpoint, "vae", self.dtype)

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

    def image_encoder(self):
        from transformers import CLIPVisionModelWithProjection

        folder = hub_folder(IP_ADAPTER, IMAGE_ENCODER_FILES)
        return CLIPVisionModelWithProjection.from_pretrained(folder, dtype=self.dtype).eval()

    def image_processor(self):
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor()   # 224 px, CLIP's mean and std: what the IP-Adapter image encoder saw

    def identity_unet(self, unet2d, adapter, image_encoder):
        animator = torch.load(HubFile(ID_ANIMATOR, ANIMATOR_CKPT).path(), map_location="cpu", weights_only=True)
        return _compose_identity_unet(unet2d, adapter, image_encoder, animator, self.dtype)

    def magic_unet(self, checkpoint: str, unet2d, adapter):
        spatial = torch.load(self._file(SPATIAL_LORA), map_location="cpu", weights_only=True)
        unet = _compose_magic_unet(
            unet2d, adapter, spatial_lora_deltas(spatial), temporal_lora_deltas(self._swift_folder(TEMPORAL_LORA))
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
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def tokenizer(self):
        return tiny.tokenizer()

    def clip_text(self, checkpoint: str):
        return tiny.text_encoder(tiny.seed_of("clip", checkpoint)).to(self.dtype).eval()

    def motion_adapter_v2(self):
        return tiny.motion_adapter(tiny.seed_of("motion", MOTION_ADAPTER_V2)).eval()

    def image_encoder(self):
        return tiny.image_encoder(tiny.seed_of("image-encoder")).to(self.dtype).eval()

    def image_processor(self):
        return tiny.image_processor()

    def identity_unet(self, unet2d, adapter, image_encoder):
        animator = tiny.animator_file(unet2d, tiny.seed_of("animator"))
        return _compose_identity_unet(unet2d, adapter, image_encoder, animator, self.dtype)

    def text_encoder(self, checkpoint: str):
        model = tiny.text_encoder(tiny.seed_of("clip", checkpoint))
        config, weights = tiny.text_encoder_lora_files(model, tiny.seed_of("text-lora"))
        merge_lora_(model, swift_lora_deltas(SwiftLoraConfig.from_dict(config), weights, rename=clip_text_module_name))
        return model.to(self.dtype).eval()

    def vae(self, checkpoint: str):
        return tiny.vae(tiny.seed_of("vae", checkpoint)).to(self.dtype).eval()

    def unet2d(self, checkpoint: str):
        return tiny.unet2d(tiny.seed_of("unet", checkpoint)).eval()

    def motion_adapter(self):
        return tiny.motion_adapter(tiny.seed_of("motion", MOTION_MODULE)).eval()

    def magic_unet(self, checkpoint: str, unet2d, adapter):
        from diffusers import UNetMotionModel

        probe = UNetMotionModel.from_unet2d(unet2d, adapter)   # only to lay out the adapters' keys
        spatial = tiny.spatial_lora_file(probe, tiny.seed_of("spatial-lora"))
        config, weights = tiny.temporal_lora_files(probe, tiny.seed_of("temporal-lora"))
        temporal = swift_lora_deltas(SwiftLoraConfig.from_dict(config), weights, rename=animatediff_module_name)
        return _compose_magic_unet(unet2d, adapter, spatial_lora_deltas(spatial), temporal).to(self.dtype).eval()
