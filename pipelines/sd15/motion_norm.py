"""Motion modules normalise each frame on its own, as the weights were trained.

The authors' temporal transformer folds the frames into the batch before its GroupNorm, so the statistics are per
frame: MagicTime `utils/unet_blocks.py:605,610` and ID-Animator `animatediff/models/motion_module.py:139,144`
(`rearrange(h, "b c f h w -> (b f) c h w")`, then `self.norm(h)`). diffusers 0.42.1's `AnimateDiffTransformer3D`
(`models/unets/unet_motion_model.py:182-185`) applies the same GroupNorm to `(B, C, F, H, W)`: statistics over all
frames at once. Measured on small UNets with the same weights, the composed diffusers UNet differed from the authors'
by 9.5-16.5 %, and by 2.5e-6-5.4e-6 with the norm per frame; on one real-width motion block, 36 % of its output for
frames whose brightness and contrast drift, which a metamorphic time-lapse does by design.

So after a motion UNet is composed, each motion module's norm is switched to `PerFrameGroupNorm`: the same
`nn.GroupNorm` parameters, the same state-dict keys, only its `forward` folds the frames first. It sits inside each
motion module, before the transformer blocks, so FreeNoise (which swaps those blocks), SAFREE's hooks, previews and
the cache keys are untouched.

AnimateDiff-Lightning (the identity tab's Fast mode) keeps diffusers' norm: ByteDance distilled it from AnimateDiff v2
and documents it for diffusers and ComfyUI, but neither its model card nor its report says which implementation the
distillation ran, so the studio cannot establish which statistics its weights were trained with.
"""

from __future__ import annotations

import torch
from torch import nn


class PerFrameGroupNorm(nn.GroupNorm):
    """GroupNorm over (C, H, W) of each frame of a (B, C, F, H, W) tensor; a 4-D input is normalised as usual."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            return super().forward(x)
        batch, channels, frames, height, width = x.shape
        folded = x.transpose(1, 2).reshape(batch * frames, channels, height, width)
        return super().forward(folded).reshape(batch, frames, channels, height, width).transpose(1, 2)


def norm_each_frame(unet: nn.Module) -> int:
    """Switch every motion module's GroupNorm in `unet` to per-frame statistics; returns how many were switched."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    switched = 0
    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D) and type(module.norm) is nn.GroupNorm:
            module.norm.__class__ = PerFrameGroupNorm
            switched += 1
    return switched
