"""Single-file SD1.x checkpoints (LDM layout): account for every key before any part of the file loads.

diffusers' `from_single_file` (0.42) converts the keys it recognises and drops the rest without a word: a
DreamBooth file with a LoRA baked in as extra `lora_down`/`lora_up` tensors, or with parts another model
needs, would load as a half-converted model that still makes plausible pictures. Every other loader here
fails loudly, so this one does too: the file's keys are run through the very converters that will load it
(diffusers' for the UNet and VAE, ours for CLIP), on meta tensors built from the safetensors header (no
weight is read, ~0.1 s for a 2 GB file), and every key must end up in a tensor the target model has, or
match one of the known harmless extras below. Anything else is refused, naming the keys.

A converted tensor is traced to its source key by identity: the converters pass tensors through, or take
views of them (the VAE's 1×1 attention convolutions become Linear weights by indexing), so a tensor or its
`_base` is the file's own. A converter that built new tensors would leave its sources unaccounted, and the
file refused: loud, never silent.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors import safe_open
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel

from pipelines.sd15.lora import ConversionError, raise_problems

logger = logging.getLogger(__name__)

_LDM_CLIP_PREFIX = "cond_stage_model.transformer."

# Keys a real SD1.x single file carries that no model here reads, each skipped knowingly.
HARMLESS_EXTRAS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"model_ema\..+"),
     "the EMA copy of the UNet and its bookkeeping (model_ema.decay, .num_updates): diffusers loads the "
     "non-EMA weights, as the studio's files are meant to be read"),
    (re.compile(r"(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod"
                r"|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod"
                r"|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2"
                r"|logvar)"),
     "the LDM trainer's noise-schedule buffers: the sampler's own config sets the schedule"),
    (re.compile(r"cond_stage_model\.transformer\.(text_model\.)?embeddings\.position_ids"),
     "CLIP's position ids, 0..76: transformers builds them itself"),
)


def harmless_reason(key: str) -> str | None:
    return next((reason for pattern, reason in HARMLESS_EXTRAS if pattern.fullmatch(key)), None)


def header_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file as a meta tensor of its shape and dtype (only the header is read)."""
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            piece = f.get_slice(key)
            dtype = getattr(torch, _SAFETENSORS_DTYPES.get(piece.get_dtype(), "float32"))
            tensors[key] = torch.empty(piece.get_shape(), dtype=dtype, device="meta")
    return tensors


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _consumed(checkpoint: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor],
              wanted: set[str]) -> set[str]:
    """The source keys whose tensors ended up under a key the target model has."""
    source = {id(tensor): key for key, tensor in checkpoint.items()}
    used = set()
    for key, tensor in converted.items():
        if key not in wanted:
            continue
        origin = source.get(id(tensor))
        if origin is None and tensor._base is not None:
            origin = source.get(id(tensor._base))
        if origin is not None:
            used.add(origin)
    return used


def _model_keys(cls, config) -> set[str]:
    with torch.device("meta"):
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    return set(model.state_dict())


def check_single_file(checkpoint: Mapping[str, torch.Tensor], unet_config: Mapping, vae_config: Mapping,
                      text_config, name: str = "the checkpoint") -> list[str]:
    """Refuse (ConversionError naming the keys) a single-file SD1.x checkpoint with a key that neither its UNet,
    its VAE nor its CLIP text encoder takes and that is no known harmless extra. Returns the harmless keys
    skipped. `checkpoint` may hold meta tensors (`header_tensors`); configs are those the loaders use."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    consumed = set()
    consumed |= _consumed(checkpoint, convert_ldm_unet_checkpoint(checkpoint, dict(unet_config)),
                          _model_keys(UNet2DConditionModel, dict(unet_config)))
    consumed |= _consumed(checkpoint, convert_ldm_vae_checkpoint(checkpoint, dict(vae_config)),
                          _model_keys(AutoencoderKL, dict(vae_config)))
    consumed |= _consumed(checkpoint, clip_text_state_dict_from_single_file(checkpoint),
                          _model_keys(CLIPTextModel, text_config))
    leftover = [key for key in checkpoint if key not in consumed]
    skipped = [key for key in leftover if harmless_reason(key)]
    unknown = [key for key in leftover if not harmless_reason(key)]
    lora = [key for key in unknown if "lora" in key.lower()]
    title = (f"{name} has {len(unknown)} weights that no part of the model (UNet, VAE, CLIP text encoder) takes"
             + (f", {len(lora)} of them LoRA factors (a LoRA baked in unmerged?)" if lora else "")
             + "; loading it would silently drop them. Use an SD1.x checkpoint without them")
    raise_problems(title, [f"unused key {key}" for key in unknown])
    if skipped:
        logger.info("%s: skipped %d known harmless keys (%s)", name, len(skipped), ", ".join(skipped[:5]))
    return skipped


# ---------------------------------------------------------------------------- CLIP's part of the file
def unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """Training checkpoints often nest the weights under 'state_dict' next to optimizer bookkeeping."""
    inner = state_dict.get("state_dict")
    return inner if isinstance(inner, Mapping) else state_dict


@functools.cache
def _clip_text_prefix() -> str:
    """'text_model.' where transformers' CLIPTextModel wraps its layers in `.text_model`; '' where it is
    flat (transformers >= 5.6). Checked on a meta-device instance, so it follows the installed version."""
    tiny = CLIPTextConfig(hidden_size=4, intermediate_size=4, num_attention_heads=1, num_hidden_layers=1,
                          vocab_size=4, max_position_embeddings=2, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    with torch.device("meta"):
        return "text_model." if hasattr(CLIPTextModel(tiny), "text_model") else ""


def clip_text_module_name(path: str) -> str:
    """A CLIP text-encoder path in either transformers layout -> the installed CLIPTextModel's layout."""
    return _clip_text_prefix() + path.removeprefix("text_model.")


def clip_text_state_dict_from_single_file(checkpoint: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A single-file SD1.x checkpoint (LDM layout) -> the installed transformers CLIPTextModel's state dict.

    Takes the 'cond_stage_model.transformer.' keys; 'embeddings.position_ids' is dropped because current
    transformers no longer stores it.
    """
    checkpoint = unwrap(checkpoint)
    text = {
        clip_text_module_name(key.removeprefix(_LDM_CLIP_PREFIX)): tensor
        for key, tensor in checkpoint.items()
        if key.startswith(_LDM_CLIP_PREFIX)
    }
    if not text:
        raise ConversionError(
            f"no '{_LDM_CLIP_PREFIX}*' keys: not a single-file SD1.x checkpoint with a CLIP text encoder"
        )
    text.pop(clip_text_module_name("embeddings.position_ids"), None)
    return text
