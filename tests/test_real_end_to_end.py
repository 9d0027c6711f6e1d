"""The `real` profile end to end, offline, on a Hugging Face cache laid out as MagicTime's hub repository
(tiny sizes): every weight comes from a file in its *original* format.

- `DreamBooth/<style>.safetensors`: one single-file SD1.x checkpoint in the original LDM (CompVis) key
  layout: UNet under `model.diffusion_model.`, VAE under `first_stage_model.`, CLIP under
  `cond_stage_model.transformer.`; loaded through diffusers' `from_single_file` with the local SD1.5
  folder as `config`.
- `Base_Model/motion_module/motion_module.ckpt`: the motion module in original AnimateDiff names.
- the SD1.5 folder's configs and tokenizer, the spatial LoRA ckpt and the two ms-swift LoRA folders.

The files are written from tiny in-memory models, so the loaded components can be compared with what went
in: weight for weight, and frame for frame against diffusers' AnimateDiffPipeline run on the same modules.
The one thing the repository does not take from files is the motion adapter's architecture
(`timelapse_models_module.MOTION_ADAPTER_V3`, full size); the tests point it at the tiny adapter's config.
"""

from __future__ import annotations

import copy
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNetMotionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors.torch import save_file

from pipelines.core import tiny as core_tiny
from pipelines.core.cache import ModelCache
from pipelines.core.errors import WeightsError
from pipelines.core.video import to_uint8
from pipelines.sd15 import tiny
from pipelines.sd15.lora import ConversionError
from pipelines.sd15.models import DDIM_CONFIG, STYLES, RealLoaders, Registry
from pipelines.sd15.single_file import harmless_reason
from pipelines.timelapse import models as timelapse_models_module
from pipelines.timelapse import tiny as magictime_tiny
from pipelines.timelapse.convert import motion_adapter_state_dict
from pipelines.timelapse.models import MOTION_MODULE, SPATIAL_LORA, TEMPORAL_LORA, TEXT_ENCODER_LORA, timelapse_models
from pipelines.timelapse.pipeline import DEFAULT_NEGATIVE, DEFAULT_STYLE, TimelapsePipeline, TimelapseRequest
from tests.test_motion_norm import fold_frames_in_motion_norms
from tests.test_real_loading import hub_cache, write_base, write_swift  # noqa: F401  (hub_cache is a fixture)

STYLE = "Realistic Vision"
CHECKPOINT = STYLES[STYLE]
UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
# The guard off: these tests compare the loaded weights' clip with diffusers' own (tests/test_safety.py guards).
REQUEST = TimelapseRequest(prompt="ice melting on a warm stone", width=64, height=64, steps=2, seed=7, safety=None)


# ----------------------------------------------------------------- diffusers -> original LDM key names
# The inverse of diffusers' own LDM -> diffusers converters (diffusers/loaders/single_file_utils.py:
# convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint), for SD1.x-shaped UNets and VAEs.
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}


def _resnet_ldm(rest: str) -> str:
    layer, param = rest.split(".", 1)
    return f"{_UNET_RESNET[layer]}.{param}"


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel state dict -> the LDM UNet's ('input_blocks.N.M...', no prefix).

    LDM numbers the layers flat: input block 0 is conv_in, then per down block `layers_per_block`
    (resnet[, attention]) layers and one downsampler ('.0.op'), except after the last block; the middle
    block is resnet, attention, resnet; output blocks have `layers_per_block + 1` layers each, the
    upsampler sitting after the last layer's attention ('.2.conv') or resnet ('.1.conv').
    """
    per_block = config["layers_per_block"]
    out = {}
    for key, tensor in state_dict.items():
        if m := re.fullmatch(r"(time_embedding\.linear_[12]|conv_in|conv_norm_out|conv_out)\.(\w+)", key):
            new = f"{_UNET_FIXED[m[1]]}.{m[2]}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            index = 1 + int(m[1]) * (per_block + 1) + int(m[3])
            new = (f"input_blocks.{index}.0.{_resnet_ldm(m[4])}" if m[2] == "resnets"
                   else f"input_blocks.{index}.1.{m[4]}")
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            new = f"input_blocks.{1 + int(m[1]) * (per_block + 1) + per_block}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet_ldm(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            index = int(m[1]) * (per_block + 1) + int(m[3])
            new = (f"output_blocks.{index}.0.{_resnet_ldm(m[4])}" if m[2] == "resnets"
                   else f"output_blocks.{index}.1.{m[4]}")
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            block = int(m[1])
            has_attention = "CrossAttn" in config["up_block_types"][block]
            index = block * (per_block + 1) + per_block
            new = f"output_blocks.{index}.{2 if has_attention else 1}.conv.{m[2]}"
        else:
            raise AssertionError(f"no LDM name for UNet key {key}")
        out[new] = tensor
    return out


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> the LDM VAE's ('encoder.down.N.block.M...', no prefix).

    The decoder's LDM up blocks are numbered in reverse; the mid-block attention is 1x1 convolutions in
    LDM (diffusers' converter squeezes them to Linear weights).
    """
    blocks = len(config["up_block_types"])
    out = {}
    for key, tensor in state_dict.items():
        if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        elif re.fullmatch(r"((encoder|decoder)\.conv_(in|out)|(post_)?quant_conv)\.\w+", key):
            new = key
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            new = f"decoder.up.{blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)"
                               r"\.(weight|bias)", key):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                tensor = tensor[:, :, None, None]        # Linear (out, in) -> 1x1 conv (out, in, 1, 1)
        else:
            raise AssertionError(f"no LDM name for VAE key {key}")
        out[new] = tensor
    return out


def motion_adapter_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers MotionAdapter state dict -> AnimateDiff's motion_module.ckpt names (the inverse of
    diffusers' convert_animatediff_checkpoint_to_diffusers, plus the per-attention-block position tables
    that diffusers keeps once per transformer block)."""
    out = {}
    for key, tensor in state_dict.items():
        key = re.sub(r"(\.motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
        if key.endswith(".pos_embed.pe"):
            block = key.removesuffix(".pos_embed.pe")
            for attention in (0, 1):
                out[f"{block}.attention_blocks.{attention}.pos_encoder.pe"] = tensor.clone()
            continue
        for new, old in ((".attention_blocks.0.", ".attn1."), (".attention_blocks.1.", ".attn2."),
                         (".norms.0.", ".norm1."), (".norms.1.", ".norm2."), (".ff_norm.", ".norm3.")):
            key = key.replace(old, new)
        out[key] = tensor
    return out


# ----------------------------------------------------------------- LoRA merges, computed independently
def _merged(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, scale: float) -> torch.Tensor:
    return weight.float() + scale * (up.float() @ down.float())


def expected_magic_unet(unet2d, adapter, spatial: dict, temporal_config: dict, temporal: dict) -> UNetMotionModel:
    """The composition MagicTime describes, without the repository's converters: W += 4 * up @ down for the
    spatial LoRA (processor keys), W += alpha / r * B @ A for the temporal one (original AnimateDiff names), and the
    motion modules' norms per frame, as MagicTime's temporal transformer computes them."""
    unet = UNetMotionModel.from_unet2d(copy.deepcopy(unet2d), copy.deepcopy(adapter))
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for key in spatial:
            if m := re.fullmatch(r"(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.down\.weight", key):
                target = f"{m[1]}.{'to_out.0' if m[2] == 'to_out' else m[2]}.weight"
                up = spatial[key.replace(".down.weight", ".up.weight")]
                params[target].copy_(_merged(params[target], up, spatial[key], 4.0))
        scale = temporal_config["lora_alpha"] / temporal_config["r"]
        for key in temporal:
            if m := re.fullmatch(r"(.+)\.lora_A\.default\.weight", key):
                module = (m[1].replace(".temporal_transformer", "").replace(".attention_blocks.0", ".attn1")
                          .replace(".attention_blocks.1", ".attn2"))
                up = temporal[key.replace(".lora_A.", ".lora_B.")]
                params[f"{module}.weight"].copy_(_merged(params[f"{module}.weight"], up, temporal[key], scale))
    return fold_frames_in_motion_norms(unet).eval()        # MagicTime's motion modules normalise per frame


def expected_text_encoder(clip, config: dict, weights: dict):
    model = copy.deepcopy(clip)
    params = dict(model.named_parameters())
    scale = config["lora_alpha"] / config["r"]
    with torch.no_grad():
        for key in weights:
            if m := re.fullmatch(r"(.+)\.lora_A\.default\.weight", key):
                name = f"{m[1]}.weight"
                name = name if name in params else name.removeprefix("text_model.")
                up = weights[key.replace(".lora_A.", ".lora_B.")]
                params[name].copy_(_merged(params[name], up, weights[key], scale))
    return model.eval()


# ----------------------------------------------------------------- the files
@dataclass
class Originals:
    """The tiny in-memory models and adapter files' contents that the fake hub cache is written from."""

    unet2d: torch.nn.Module
    vae: torch.nn.Module
    clip: torch.nn.Module
    adapter: MotionAdapter
    adapter_config: dict
    single_file: dict[str, torch.Tensor]
    motion_module: dict[str, torch.Tensor]
    spatial: dict[str, torch.Tensor]
    temporal_config: dict
    temporal: dict[str, torch.Tensor]
    text_config: dict
    text: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def originals() -> Originals:
    seed = lambda name: core_tiny.seed_of("end-to-end", name)  # noqa: E731
    unet2d, vae, clip = tiny.unet2d(seed("unet")), tiny.vae(seed("vae")), tiny.text_encoder(seed("clip"))
    adapter = tiny.motion_adapter(seed("motion"))
    adapter_config = {k: v for k, v in adapter.config.items() if not k.startswith("_")}

    clip_weights = {f"text_model.{k.removeprefix('text_model.')}": v for k, v in clip.state_dict().items()}
    clip_weights["text_model.embeddings.position_ids"] = torch.arange(77)[None]   # real SD1.x files carry it
    single_file = {
        **{UNET_PREFIX + k: v for k, v in unet_to_ldm(unet2d.state_dict(), unet2d.config).items()},
        **{VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()},
        **{CLIP_PREFIX + k: v for k, v in clip_weights.items()},
        # The sampler's tables an LDM training checkpoint carries next to the weights.
        "betas": torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2,
        "alphas_cumprod": torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, 0),
    }
    single_file = {k: v.detach().clone().contiguous() for k, v in single_file.items()}

    probe = UNetMotionModel.from_unet2d(unet2d, adapter)   # lays out the adapters' keys
    temporal_config, temporal = magictime_tiny.temporal_lora_files(probe, seed("temporal-lora"))
    text_config, text = magictime_tiny.text_encoder_lora_files(clip, seed("text-lora"))
    return Originals(
        unet2d=unet2d.eval(), vae=vae.eval(), clip=clip.eval(), adapter=adapter.eval(), adapter_config=adapter_config,
        single_file=single_file,
        motion_module={k: v.detach().clone() for k, v in motion_adapter_to_original(adapter.state_dict()).items()},
        spatial=magictime_tiny.spatial_lora_file(probe, seed("spatial-lora")),
        temporal_config=temporal_config, temporal=temporal, text_config=text_config, text=text,
    )


def write_magictime(snapshot: Path, o: Originals) -> None:
    write_base(snapshot)
    (snapshot / CHECKPOINT).parent.mkdir(parents=True)
    save_file(o.single_file, snapshot / CHECKPOINT)
    (snapshot / MOTION_MODULE).parent.mkdir(parents=True)
    torch.save(o.motion_module, snapshot / MOTION_MODULE)
    (snapshot / SPATIAL_LORA).parent.mkdir(parents=True)
    torch.save(o.spatial, snapshot / SPATIAL_LORA)
    write_swift(snapshot / TEMPORAL_LORA, o.temporal_config, o.temporal)
    write_swift(snapshot / TEXT_ENCODER_LORA, o.text_config, o.text)


@pytest.fixture
def magictime(hub_cache, originals, monkeypatch) -> Path:
    """A complete MagicTime cache; the motion adapter's architecture is the tiny one's."""
    monkeypatch.setattr(timelapse_models_module, "MOTION_ADAPTER_V3", originals.adapter_config)
    write_magictime(hub_cache, originals)
    return hub_cache


# ----------------------------------------------------------------- the files are what the originals are
def test_the_written_files_convert_back_with_diffusers_own_converters(originals):
    """Self-check of the inverse mappings above: diffusers' forward converters and the repository's
    motion-module converter reproduce the diffusers state dicts exactly."""
    o = originals
    for model, convert in ((o.unet2d, convert_ldm_unet_checkpoint), (o.vae, convert_ldm_vae_checkpoint)):
        expected = model.state_dict()
        converted = convert(checkpoint=o.single_file, config=model.config)
        assert converted.keys() == expected.keys()
        assert all(torch.equal(converted[k], expected[k]) for k in expected)
    assert o.single_file[f"{VAE_PREFIX}encoder.mid.attn_1.q.weight"].dim() == 4   # 1x1 conv, as in SD files
    adapter = MotionAdapter(**o.adapter_config)
    adapter.load_state_dict(motion_adapter_state_dict(o.motion_module), strict=True)
    assert all(torch.equal(v, o.adapter.state_dict()[k]) for k, v in adapter.state_dict().items())
    assert any(".attention_blocks.1.pos_encoder.pe" in k for k in o.motion_module)


# ----------------------------------------------------------------- A: the whole real path runs offline
@pytest.mark.parametrize("offline_flag", ["1", "0"])
def test_real_profile_makes_a_clip_offline_from_magictime_files(magictime, monkeypatch, offline_flag):
    """With HF_HUB_OFFLINE=0 too: everything is in the cache, so nothing may even try the network."""
    from huggingface_hub import constants

    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)       # recorded too, in case a library swallows the error
        raise OSError(f"network access attempted: {args}")

    monkeypatch.setenv("HF_HUB_OFFLINE", offline_flag)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline_flag == "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    cache = ModelCache("cpu")
    result = TimelapsePipeline(cache, Registry("real"))(REQUEST)
    assert result.frames.shape == (16, 64, 64, 3) and result.frames.dtype == np.uint8
    assert result.frames.std() > 0
    keys = [c["key"] for c in cache.stats()["components"]]
    assert any(k.startswith(f"real|unet-motion|{CHECKPOINT}") for k in keys)
    assert len(keys) == 6      # tokenizer, text encoder, VAE, motion UNet and its two ingredients
    assert attempts == []


# ----------------------------------------------------------------- B: the components are the originals
def _assert_same_weights(actual: torch.nn.Module, expected: torch.nn.Module) -> None:
    actual, expected = actual.state_dict(), expected.state_dict()
    assert actual.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


def _plain(config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}


def test_real_components_equal_the_originals_with_magictime_adapters(magictime, originals):
    o = originals
    loaders = RealLoaders(torch.float32)
    unet2d = loaders.unet2d(CHECKPOINT)                  # from_single_file, LDM layout
    _assert_same_weights(unet2d, o.unet2d)
    assert _plain(unet2d.config) == _plain(o.unet2d.config)      # the tiny config.json from the SD1.5 folder

    models = timelapse_models(Registry("real"), STYLE)
    cache = ModelCache("cpu")
    tokenizer, text_encoder, vae, unet = (cache.get(c) for c in
                                          (models.tokenizer, models.text_encoder, models.vae, models.unet))
    _assert_same_weights(vae, o.vae)                     # from_single_file, LDM layout, 1x1-conv attention

    # Text encoder: the style's CLIP + MagicTime's text LoRA (alpha / r); one weight worked out by hand.
    expected_te = expected_text_encoder(o.clip, o.text_config, o.text)
    _assert_same_weights(text_encoder, expected_te)
    v_proj = "encoder.layers.1.self_attn.v_proj"
    original = f"text_model.{v_proj}"
    by_hand = dict(o.clip.named_parameters())[f"{v_proj}.weight"] + o.text_config["lora_alpha"] / o.text_config["r"] * (
        o.text[f"{original}.lora_B.default.weight"] @ o.text[f"{original}.lora_A.default.weight"])
    torch.testing.assert_close(dict(text_encoder.named_parameters())[f"{v_proj}.weight"], by_hand)

    # Motion UNet: style UNet + motion module, spatial LoRA x4 and temporal LoRA merged.
    plain = UNetMotionModel.from_unet2d(o.unet2d, o.adapter)
    _assert_same_weights(unet, expected_magic_unet(o.unet2d, o.adapter, o.spatial, o.temporal_config, o.temporal))
    before, after = dict(plain.named_parameters()), dict(unet.named_parameters())
    spatial = "up_blocks.1.attentions.1.transformer_blocks.0.attn2"
    by_hand = before[f"{spatial}.to_k.weight"] + 4.0 * (
        o.spatial[f"{spatial}.processor.to_k_lora.up.weight"] @ o.spatial[f"{spatial}.processor.to_k_lora.down.weight"])
    torch.testing.assert_close(after[f"{spatial}.to_k.weight"], by_hand)
    temporal = "down_blocks.1.motion_modules.0.transformer_blocks.0.attn2.to_v"
    original = "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_v"
    by_hand = before[f"{temporal}.weight"] + o.temporal_config["lora_alpha"] / o.temporal_config["r"] * (
        o.temporal[f"{original}.lora_B.default.weight"] @ o.temporal[f"{original}.lora_A.default.weight"])
    torch.testing.assert_close(after[f"{temporal}.weight"], by_hand)
    untouched = "down_blocks.0.motion_modules.0.proj_out.weight"
    assert torch.equal(after[untouched], before[untouched])

    assert tokenizer(REQUEST.prompt).input_ids == tiny.tokenizer()(REQUEST.prompt).input_ids


def test_real_clip_equals_animatediff_pipeline_on_the_original_modules(magictime, originals):
    """Same seed, same request: the real profile's frames are diffusers' AnimateDiffPipeline's on the
    in-memory originals with the LoRAs merged by hand, to the bit."""
    o = originals
    actual = TimelapsePipeline(ModelCache("cpu"), Registry("real"))(REQUEST).frames

    pipe = AnimateDiffPipeline(
        vae=o.vae, text_encoder=expected_text_encoder(o.clip, o.text_config, o.text), tokenizer=tiny.tokenizer(),
        unet=expected_magic_unet(o.unet2d, o.adapter, o.spatial, o.temporal_config, o.temporal),
        motion_adapter=None, scheduler=DDIMScheduler.from_config(DDIM_CONFIG),
    )
    pipe.set_progress_bar_config(disable=True)
    assert REQUEST.style == DEFAULT_STYLE == STYLE
    expected = pipe(
        prompt=REQUEST.prompt, negative_prompt=DEFAULT_NEGATIVE, num_frames=16, height=64, width=64,
        num_inference_steps=REQUEST.steps, guidance_scale=REQUEST.guidance,
        generator=torch.Generator("cpu").manual_seed(REQUEST.seed), output_type="np",
    ).frames[0]
    expected = to_uint8(expected)
    assert actual.shape == expected.shape == (16, 64, 64, 3)
    assert np.array_equal(actual, expected), f"max difference {np.abs(actual.astype(int) - expected).max()}"


# ----------------------------------------------------------------- C: broken files fail, naming what is wrong
def _generate():
    return TimelapsePipeline(ModelCache("cpu"), Registry("real"))(REQUEST)


def _rename(state: dict, old: str, new: str) -> dict:
    return {new if k == old else k: v for k, v in state.items()}


_TO_Q = "up_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight"
_PE = "up_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"


@pytest.mark.parametrize("corrupt, message", [
    # strict loading names the key in diffusers' spelling: the one the model lacks, and the one it cannot place
    (lambda d: _rename(d, _TO_Q, _TO_Q.replace(".to_q.", ".to_qq.")),
     r'Missing key\(s\).*"up_blocks\.1\.motion_modules\.0\.transformer_blocks\.0\.attn1\.to_q\.weight"(.|\n)*'
     r'Unexpected key\(s\).*"up_blocks\.1\.motion_modules\.0\.transformer_blocks\.0\.attn1\.to_qq\.weight"'),
    (lambda d: {**d, _TO_Q: torch.zeros(8, 4)},
     r"size mismatch for up_blocks\.1\.motion_modules\.0\.transformer_blocks\.0\.attn1\.to_q\.weight"),
    (lambda d: {**d, _PE: d[_PE] * 2}, re.escape(_PE) + " differs from the other position table of its block"),
], ids=["renamed-key", "wrong-shape", "position-table"])
def test_a_corrupted_motion_module_fails_naming_the_key(magictime, originals, corrupt, message):
    torch.save(corrupt(dict(originals.motion_module)), magictime / MOTION_MODULE)
    with pytest.raises((RuntimeError, ValueError), match=message):
        _generate()


def test_a_wrong_shape_in_the_dreambooth_unet_fails_naming_the_key(magictime, originals):
    save_file({**originals.single_file, f"{UNET_PREFIX}out.2.weight": torch.zeros(4, 8, 1, 1)}, magictime / CHECKPOINT)
    with pytest.raises(ValueError, match=r"conv_out\.weight expected shape torch\.Size\(\[4, 8, 3, 3\]\)"):
        _generate()


@pytest.mark.parametrize("stray, lora", [
    (f"{UNET_PREFIX}stray.weight", False),                                                 # outside any LDM block
    (f"{UNET_PREFIX}input_blocks.1.1.transformer_blocks.0.attn1.to_q.lora_down.weight", True),  # a baked-in LoRA
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", True),                  # kohya-style, top level
    (f"{VAE_PREFIX}decoder.mid.attn_1.q.lora_down.weight", True),                           # in the VAE part
    (f"{CLIP_PREFIX}text_model.encoder.layers.0.mlp.fc3.weight", False),                    # in the CLIP part
    ("conditioner.embedders.1.model.ln_final.weight", False),                               # another model's part
], ids=["unrecognised", "unet-lora", "kohya-lora", "vae", "clip", "foreign"])
def test_a_stray_key_in_the_dreambooth_file_is_refused_naming_it(magictime, originals, stray, lora):
    """diffusers' from_single_file would drop these without a word: the studio refuses the file instead."""
    save_file({**originals.single_file, stray: torch.zeros(2, 8)}, magictime / CHECKPOINT)
    with pytest.raises(ConversionError) as error:
        _generate()
    message = str(error.value)
    assert f"unused key {stray}" in message and Path(CHECKPOINT).name in message
    assert ("LoRA factors" in message) == lora


def test_known_harmless_extras_are_skipped_and_the_clip_is_unchanged(magictime, originals):
    """A real SD1.5 file also holds the EMA copy, the trainer's schedule buffers and CLIP's position ids: the
    same clip as without them (each named here, not taken from the code under test)."""
    plain = _generate().frames
    extras = {
        "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000, dtype=torch.int32),
        "model_ema.diffusion_modelinput_blocks00weight": torch.zeros(8, 4, 3, 3),
        "betas": torch.zeros(1000), "alphas_cumprod": torch.zeros(1000), "alphas_cumprod_prev": torch.zeros(1000),
        "sqrt_alphas_cumprod": torch.zeros(1000), "posterior_mean_coef1": torch.zeros(1000),
        "posterior_log_variance_clipped": torch.zeros(1000), "logvar": torch.zeros(1000),
        f"{CLIP_PREFIX}text_model.embeddings.position_ids": torch.arange(77)[None],
    }
    save_file({**originals.single_file, **extras}, magictime / CHECKPOINT)
    assert np.array_equal(_generate().frames, plain)
    assert all(harmless_reason(key) for key in extras)
    for near_miss in ("model_emax.decay", "betas2", "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha",
                      f"{CLIP_PREFIX}text_model.embeddings.position_ids_2", "first_stage_model.loss.logvar"):
        assert harmless_reason(near_miss) is None, near_miss


def test_a_missing_key_in_the_dreambooth_unet_fails_naming_the_file(magictime, originals):
    missing = f"{UNET_PREFIX}input_blocks.1.1.proj_in.weight"
    save_file({k: v for k, v in originals.single_file.items() if k != missing}, magictime / CHECKPOINT)
    with pytest.raises(WeightsError, match=rf"{Path(CHECKPOINT).name} is incomplete: its unet part"):
        _generate()
