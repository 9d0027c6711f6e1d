"""What the SD1.5 family's tabs load in common, for each profile: hub files for `real`, in-memory toy models for `tiny`.

The registry only *describes* components (keys and loader functions); the cache decides when they load and where
they live. Keys say what a component is — source file, dtype, every adapter merged into it — so tabs that need the
same thing share one entry, and a UNet with a LoRA merged in never collides with the plain one.

This file holds what the time-lapse and the identity tab share: the SD1.5 configs and tokenizer, the style
checkpoints MagicTime ships (ID-Animator's base is one of them), their CLIP text encoder, VAE and 2-D UNet, TAESD,
and the sampler the originals use. Each method composes its own components on top, in `pipelines/<method>/models.py`,
with loaders that extend the two here (`RealLoaders`, `TinyLoaders`).
"""

from __future__ import annotations

import functools
from functools import partial
from pathlib import Path

import torch

from pipelines.core.cache import Component
from pipelines.core.errors import WeightsError
from pipelines.core.hub import HubFile, ensure_available, hub_folder
from pipelines.core.tiny import seed_of
from pipelines.sd15 import tiny
from pipelines.sd15.knobs import DTYPES, PROFILES, Knobs
from pipelines.sd15.lora import merge_lora_
from pipelines.sd15.single_file import check_single_file, clip_text_state_dict_from_single_file, header_tensors

# ----------------------------------------------------------------- the SD1.5 base, as MagicTime's repository holds it
MAGICTIME = "BestWishYsh/MagicTime"
BASE = "Base_Model/stable-diffusion-v1-5"
BASE_FILES = (
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "text_encoder/config.json", "unet/config.json", "vae/config.json",
)
# The style checkpoints (single files, LDM layout): the time-lapse's styles; ID-Animator's base is Realistic Vision.
STYLES = {
    "Realistic Vision": "DreamBooth/RealisticVisionV60B1_v51VAE.safetensors",
    "ToonYou": "DreamBooth/ToonYou_beta6.safetensors",
    "RcnzCartoon": "DreamBooth/RcnzCartoon.safetensors",
}
# The original's sampler (AnimateDiff inference config): DDIM, linear betas 0.00085 -> 0.012.
DDIM_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
    steps_offset=1, clip_sample=False, timestep_spacing="leading",
)
# TAESD: a 1.2 M-parameter decoder for SD's latents (the full VAE decoder has 49.5 M): previews and "Fast preview".
TAESD = "madebyollin/taesd"
TAESD_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def tuned(load, tune):
    """A loader whose result goes through one of the Knobs' set-ups (`Knobs.unet`, `Knobs.vae`)."""
    return lambda *deps: tune(load(*deps))


class Registry:
    """The profile, dtypes and knobs every SD1.5 component is made with, and the components the tabs share.
    A method's components: `pipelines.timelapse.models.timelapse_models(registry, ...)`,
    `pipelines.identity.models.identity_models(registry, ...)`."""

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

    def key(self, *parts: str, dtype: str | None = None) -> str:
        return "|".join((self.profile, *parts, dtype or self.dtype_name))

    def loaders(self, real_loaders: type[RealLoaders], tiny_loaders: type[TinyLoaders]):
        """A method's loaders (classes extending the two below) for this profile, made with these dtypes."""
        loaders = tiny_loaders if self.profile == "tiny" else real_loaders
        return loaders(self.dtype, DTYPES[self.vae_dtype_name])

    # ----------------------------------------------------------------- shared by the tabs
    def tokenizer(self, load) -> Component:
        return Component(f"{self.profile}|tokenizer|{MAGICTIME}/{BASE}", load.tokenizer)

    def vae(self, load, checkpoint: str) -> Component:
        return Component(self.key("vae", checkpoint, dtype=self.vae_dtype_name),
                         tuned(partial(load.vae, checkpoint), self.knobs.vae))

    def tiny_vae(self, load) -> Component:
        return Component(self.key("taesd", TAESD, dtype=self.vae_dtype_name), tuned(load.tiny_vae, self.knobs.vae))

    def unet2d(self, load, checkpoint: str) -> Component:
        # An ingredient of motion UNets, kept float32: LoRAs merge in float32 and each result is cast once.
        return Component(self.key("unet2d", checkpoint, dtype="float32"), partial(load.unet2d, checkpoint))

    def ensure_available(self, files: list[HubFile]) -> None:
        """Before a call loads anything: in the real profile, fail at once naming *every* one of `files` that is
        neither cached nor downloadable (instead of one file at a time as loading reaches them)."""
        if self.profile == "real":
            ensure_available(files)


def base_downloads() -> list[HubFile]:
    """The SD1.5 configs and tokenizer: every SD1.5 tab needs them (the style checkpoint supplies every weight)."""
    return [HubFile(MAGICTIME, f"{BASE}/{f}") for f in BASE_FILES]


def taesd_downloads() -> list[HubFile]:
    return [HubFile(TAESD, f) for f in TAESD_FILES]


# ----------------------------------------------------------------- real: the hub's files
class RealLoaders:
    def __init__(self, dtype: torch.dtype, vae_dtype: torch.dtype | None = None):
        self.dtype, self.vae_dtype = dtype, vae_dtype or dtype

    @staticmethod
    def magictime_file(name: str) -> Path:
        return HubFile(MAGICTIME, name).path()

    def base(self) -> Path:
        """The SD1.5 folder (configs + tokenizer only: the style checkpoint supplies every weight)."""
        return hub_folder(MAGICTIME, [f"{BASE}/{f}" for f in BASE_FILES])

    def tokenizer(self):
        from transformers import CLIPTokenizer

        path = self.base() / "tokenizer"
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
        """The style checkpoint's path, once every key in it is accounted for (see sd15/single_file.py)."""
        path = self.magictime_file(checkpoint)
        stat = path.stat()
        _check_single_file_once(str(path), stat.st_size, stat.st_mtime_ns, str(self.base()))
        return path

    def clip_text(self, checkpoint: str, lora: dict | None = None):
        """The style checkpoint's own CLIP text encoder (it replaces SD1.5's), with a LoRA's deltas merged if given."""
        from safetensors import safe_open
        from transformers import CLIPTextConfig, CLIPTextModel

        config = CLIPTextConfig.from_pretrained(self.base() / "text_encoder")
        self._checked(checkpoint)
        with safe_open(self.magictime_file(checkpoint), framework="pt") as f:
            single = {k: f.get_tensor(k) for k in f.keys() if k.startswith("cond_stage_model.")}
        model = CLIPTextModel(config)
        model.load_state_dict(clip_text_state_dict_from_single_file(single), strict=True)
        if lora is not None:
            merge_lora_(model, lora)
        return model.to(self.dtype).eval()

    def _single_file_part(self, cls, checkpoint: str, subfolder: str, dtype: torch.dtype):
        """One model of a single-file SD checkpoint, through diffusers' own converter.

        diffusers (0.42) does not check that the file fits. Keys its converter does not know it drops without
        a word, so every key is accounted for first (`_checked`); a weight missing from the file surfaces as
        torch's "Cannot copy out of meta tensor" naming nothing, so we say which file and part are incomplete.
        """
        path = self._checked(checkpoint)
        try:
            return cls.from_single_file(
                path, config=str(self.base()), subfolder=subfolder, torch_dtype=dtype, local_files_only=True,
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

    def tiny_vae(self):
        from diffusers import AutoencoderTiny

        return AutoencoderTiny.from_pretrained(hub_folder(TAESD, TAESD_FILES), torch_dtype=self.vae_dtype).eval()


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
class TinyLoaders:
    def __init__(self, dtype: torch.dtype, vae_dtype: torch.dtype | None = None):
        self.dtype, self.vae_dtype = dtype, vae_dtype or dtype

    def tokenizer(self):
        return tiny.tokenizer()

    def clip_text(self, checkpoint: str):
        return tiny.text_encoder(seed_of("clip", checkpoint)).to(self.dtype).eval()

    def tiny_vae(self):
        return tiny.tiny_vae(seed_of("taesd")).to(self.vae_dtype).eval()

    def vae(self, checkpoint: str):
        return tiny.vae(seed_of("vae", checkpoint)).to(self.vae_dtype).eval()

    def unet2d(self, checkpoint: str):
        return tiny.unet2d(seed_of("unet", checkpoint)).eval()

