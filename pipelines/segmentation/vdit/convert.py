"""VD-IT's checkpoint (`ckpt["model"]`, the authors' module names) -> pipelines/vdit.VDIT.

The released model's state dict (reference/vdit.md section 5, derived by building the repository's model on the
meta device) holds the 30.04 M trained parameters under the repository's names, shared modules twice (aliases), and
possibly the frozen backbone (ModelScope's UNet, VAE and CLIP text encoder, laion's CLIP ViT-H, RoBERTa: ~10.5 GB in
fp32 if stored). The port takes the frozen models from their own hub repositories, so their keys are recognised
and left out here; every other key must find its place, every place must be filled, and shapes must fit. Problems
are collected and raised together (ConversionError, naming the keys) before the model changes.

Renames: the deformable transformer is transformers' Deformable DETR encoder/decoder, whose layers name their parts
`self_attn_layer_norm`, `mlp.fc1`, ... where the repository says `norm1`, `linear1`, ...; the decoder's self-attention
is `nn.MultiheadAttention` there (one packed in_proj) and separate q/k/v projections here (split in that order).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from pipelines.sd15.lora import raise_problems

# The frozen backbone and the unused parts: recognised, never loaded from this file.
FROZEN_PREFIXES = ("backbone.0.diff_ftex.unet.", "backbone.0.diff_ftex.vae.", "backbone.0.diff_ftex.text_encoder.",
                   "backbone.0.diff_ftex.cv_model.", "text_encoder.text_backbone.", "sentence_proj.")
GLUE = "backbone.0.diff_ftex."

_ENCODER = {"norm1": "self_attn_layer_norm", "linear1": "mlp.fc1", "linear2": "mlp.fc2",
            "norm2": "final_layer_norm"}
_DECODER = {"cross_attn": "encoder_attn", "norm1": "encoder_attn_layer_norm", "self_attn.out_proj": "self_attn.o_proj",
            "norm2": "self_attn_layer_norm", "linear1": "mlp.fc1", "linear2": "mlp.fc2", "norm3": "final_layer_norm"}
_LAYER = re.compile(r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)")


def _renamed(key: str) -> list[tuple[str, slice | None]]:
    """A checkpoint key -> [(our key, rows of the tensor it takes or None)], [] if it has no place."""
    if key.startswith(GLUE):
        rest = key[len(GLUE):]
        rest = re.sub(r"^act_(\d)_postprocess\.", lambda m: f"act_postprocess.{int(m.group(1)) - 1}.", rest)
        if rest.startswith(("noise_pred.", "noise_fc.")):
            return [(f"glue.noise.{rest}", None)]
        if rest.startswith(("projection.", "cross_attn.", "act_postprocess.")):
            return [(f"glue.{rest}", None)]
        return []
    if key.startswith("transformer.decoder.bbox_embed."):
        return [("head." + key.removeprefix("transformer.decoder."), None)]
    if key in ("transformer.level_embed",) or key.startswith("transformer.reference_points."):
        return [("head." + key.removeprefix("transformer."), None)]
    match = _LAYER.fullmatch(key)
    if match:
        side, index, rest = match.groups()
        table = _ENCODER if side == "encoder" else _DECODER
        if side == "decoder" and rest.startswith("self_attn.in_proj_"):
            kind = rest.removeprefix("self_attn.in_proj_")          # weight or bias, q/k/v stacked
            return [(f"head.decoder.layers.{index}.self_attn.{proj}_proj.{kind}", slice(i, i + 1))
                    for i, proj in enumerate("qkv")]
        for old, new in table.items():
            if rest == old or rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        return [(f"head.{side}.layers.{index}.{rest}", None)]
    if key.startswith(("bbox_embed.", "class_embed.", "text_proj.", "fusion_module.", "input_proj.", "controller.",
                       "mask_refine.", "query_embed.")) or key == "query_tensors":
        return [(f"head.{key}", None)]
    return []


def vdit_state_dict(checkpoint: Mapping[str, torch.Tensor], model: torch.nn.Module,
                    frozen: Mapping[str, set[str]] | None = None) -> dict[str, torch.Tensor]:
    """Checkpoint -> a state dict that loads into `model` (a VDIT) with strict=True; raises ConversionError listing
    every key without a place, every place without a key, every shape that does not fit, and aliases that differ.

    `frozen`: per frozen prefix, the keys its stock model has (the frozen models load from their own repositories;
    a frozen key the stock model lacks means the file was saved from another architecture, and is named too)."""
    if "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        checkpoint = checkpoint["model"]
    targets = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, tensor in checkpoint.items():
        if key.endswith("position_ids"):
            continue
        if key.startswith(FROZEN_PREFIXES):
            prefix = next(p for p in FROZEN_PREFIXES if key.startswith(p))
            if frozen is not None and prefix in frozen and key[len(prefix):] not in frozen[prefix]:
                problems.append(f"{key}: the stock frozen model has no such weight")
            continue
        places = _renamed(key)
        if not places:
            problems.append(f"{key}: no place for it in VD-IT's trained parts")
            continue
        for name, rows in places:
            if rows is not None:
                third = tensor.shape[0] // 3
                value = tensor[rows.start * third:(rows.start + 1) * third]
            else:
                value = tensor
            if name not in targets:
                problems.append(f"{key}: no place for it (would be {name})")
            elif tuple(value.shape) != tuple(targets[name].shape):
                problems.append(f"{key}: shape {tuple(value.shape)}, the model has {tuple(targets[name].shape)}")
            elif name in out and not torch.equal(out[name], value):
                problems.append(f"{key}: an alias of {name} with other values")
            else:
                out[name] = value
    # A shared module has two names in the model too (the decoder's bbox_embed is the head's); one key fills both.
    for name in targets:
        if name not in out:
            twin = name.replace("head.decoder.bbox_embed.", "head.bbox_embed.") if ".decoder.bbox_embed." in name \
                else name.replace("head.bbox_embed.", "head.decoder.bbox_embed.")
            if twin in out:
                out[name] = out[twin]
    problems += [f"{name}: missing from the checkpoint" for name in targets if name not in out]
    raise_problems("VD-IT's checkpoint does not fit", problems)
    return out
