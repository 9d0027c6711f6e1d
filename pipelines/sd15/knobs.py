"""How the SD1.5 family's models are set up on a device: the profile, the dtypes, and the speed knobs
(studio/settings.py reads them from the environment)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

PROFILES = ("real", "tiny")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
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
