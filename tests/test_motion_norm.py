"""Motion modules normalise each frame on its own, as the authors' temporal transformers do (MagicTime
utils/unet_blocks.py:605,610; ID-Animator animatediff/models/motion_module.py:139,144), not over all frames at once
(diffusers' AnimateDiffTransformer3D): checked against a reference written from the authors' definition, on frames
whose brightness and contrast drift, and on whole composed UNets."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pipelines.core.cache import ModelCache
from pipelines.identity.models import identity_models
from pipelines.sd15.models import Registry
from pipelines.sd15.motion_norm import PerFrameGroupNorm, norm_each_frame
from pipelines.timelapse.models import timelapse_models


@pytest.fixture(scope="module")
def composed():
    cache, registry = ModelCache("cpu"), Registry("tiny")
    return {
        "magictime": cache.get(timelapse_models(registry, "Realistic Vision").unet),
        "magictime-fast": cache.get(timelapse_models(registry, "ToonYou", fast=True).unet),
        "id-animator": cache.get(identity_models(registry).unet),
        "lightning": cache.get(identity_models(registry, 4).unet),
    }


def drifting(frames: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """(frames, C, H, W): independent noise whose mean goes 0 -> 1 and whose std goes 1 -> 1.5 over the clip."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, frames)[:, None, None, None]
    return torch.randn(frames, channels, size, size, generator=g) * (1 + 0.5 * t) + t


def fold_frames_in_motion_norms(unet):
    """A diffusers motion UNet made to normalise as the authors' temporal transformers do, by hand (not through
    pipelines/motion_norm): each motion module's GroupNorm gets a forward that folds the frames into the batch. For the
    tests that compare the studio's composition with one built independently."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D):
            def forward(x, norm=module.norm):
                b, c, f, h, w = x.shape
                y = F.group_norm(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w), norm.num_groups, norm.weight,
                                 norm.bias, norm.eps)
                return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
            module.norm.forward = forward
    return unet


def authors_motion_block(module, x: torch.Tensor, frames: int) -> torch.Tensor:
    """The authors' temporal transformer on x ((b f), c, h, w): GroupNorm with the frames in the batch, so each frame
    has its own statistics; then the input projection, the transformer blocks over the frame axis, the output
    projection, and the residual."""
    bf, c, h, w = x.shape
    b = bf // frames
    norm = module.norm
    y = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)            # per frame
    y = y.reshape(b, frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, frames, c)
    y = module.proj_in(y)
    for block in module.transformer_blocks:
        y = block(y)
    y = module.proj_out(y)
    y = y.reshape(b, h, w, frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
    return y + x


@pytest.mark.parametrize("name", ["magictime", "magictime-fast", "id-animator"])
def test_each_motion_block_matches_the_authors_per_frame_definition_on_drifting_frames(composed, name):
    module = composed[name].down_blocks[0].motion_modules[0]
    x = drifting(16, module.norm.num_channels, 4)
    with torch.no_grad():
        ours, reference = module(x, num_frames=16), authors_motion_block(module, x, 16)
        stock = copy.deepcopy(module)
        stock.norm.__class__ = torch.nn.GroupNorm                      # diffusers' statistics over all frames
        across = stock(x, num_frames=16)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert (across - reference).abs().max() > 1e-2, "cross-frame statistics must differ on drifting frames"


def test_every_motion_module_of_the_authors_unets_is_per_frame_and_lightnings_keep_diffusers(composed):
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    for name, unet in composed.items():
        norms = [type(m.norm) for m in unet.modules() if isinstance(m, AnimateDiffTransformer3D)]
        assert norms, name
        expected = torch.nn.GroupNorm if name == "lightning" else PerFrameGroupNorm
        assert set(norms) == {expected}, name


def test_the_switch_keeps_the_weights_and_their_keys(composed):
    unet = composed["magictime"]
    stock = copy.deepcopy(unet)
    for m in stock.modules():
        if type(m) is PerFrameGroupNorm:
            m.__class__ = torch.nn.GroupNorm
    assert list(stock.state_dict()) == list(unet.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(stock.state_dict().values(), unet.state_dict().values(), strict=True))
    assert norm_each_frame(stock) == sum(type(m) is PerFrameGroupNorm for m in unet.modules())


@pytest.mark.parametrize("name", ["magictime", "id-animator"])
def test_the_whole_unet_differs_from_cross_frame_statistics_on_drifting_latents(composed, name):
    """So that the per-frame norm cannot silently fall off a composed UNet."""
    unet = composed[name]
    stock = copy.deepcopy(unet)
    for m in stock.modules():
        if type(m) is PerFrameGroupNorm:
            m.__class__ = torch.nn.GroupNorm
    latents = drifting(8, 4, 8, seed=1).permute(1, 0, 2, 3)[None]            # (1, 4, F, h, w)
    # AnimateDiffPipeline hands the UNet one text embedding per frame (it repeats the prompt's over the frames).
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2))
    text = text.repeat_interleave(8, dim=0)
    kwargs = {}
    if name == "id-animator":
        width = unet.encoder_hid_proj.image_projection_layers[0].proj_in.in_features
        kwargs["added_cond_kwargs"] = {"image_embeds": [torch.randn(8, 1, 5, width)]}
    with torch.no_grad():
        ours = unet(latents, 500, encoder_hidden_states=text, **kwargs).sample
        across = stock(latents, 500, encoder_hidden_states=text, **kwargs).sample
    assert (ours - across).abs().max() > 1e-3 * across.abs().max()


def test_id_animators_demo_negative_prompt_is_the_default_and_its_length_is_said_once():
    from pipelines.identity.pipeline import AUTHORS_NEGATIVE, NEGATIVE_SUFFIX, IdentityPipeline, IdentityRequest

    assert IdentityRequest.negative_prompt == AUTHORS_NEGATIVE
    assert AUTHORS_NEGATIVE.startswith("(deformed iris, deformed pupils, semi-realistic, cgi, 3d, render, sketch, "
                                       "cartoon, drawing, anime), text, cropped, out of frame, worst quality")
    assert AUTHORS_NEGATIVE.endswith("fused fingers, too many fingers, long neck, UnrealisticDream")
    _, negative = IdentityPipeline.prompts(IdentityRequest(photos=("a.jpg",), prompt="a man"))
    assert negative == f"{AUTHORS_NEGATIVE} {NEGATIVE_SUFFIX}"
