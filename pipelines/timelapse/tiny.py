"""The time-lapse's toy adapters, made as *files' contents* in MagicTime's own key layouts (spatial LoRA, ms-swift
temporal and text-encoder LoRAs), so that the tiny profile runs them through the same converters as the real files."""

from __future__ import annotations

import re

import torch

from pipelines.sd15.tiny import LORA_RANK, lora_pair


def spatial_lora_file(unet: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """`magic_adapter_s.ckpt` contents: processor-style keys on every spatial attention projection."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in unet.named_modules():
        if ".attentions." in name and name.rsplit(".", 1)[-1] in ("attn1", "attn2"):
            for proj, target in (("to_q", module.to_q), ("to_k", module.to_k), ("to_v", module.to_v),
                                 ("to_out", module.to_out[0])):
                down, up = lora_pair(target, g)
                out[f"{name}.processor.{proj}_lora.down.weight"] = down
                out[f"{name}.processor.{proj}_lora.up.weight"] = up
    return out


def _original_motion_name(name: str) -> str:
    """diffusers motion-module path -> the original AnimateDiff path the temporal LoRA file uses."""
    name = re.sub(r"(\.motion_modules\.\d+)\.", r"\1.temporal_transformer.", name)
    return name.replace(".attn1", ".attention_blocks.0").replace(".attn2", ".attention_blocks.1")


def swift_lora_files(model: torch.nn.Module, select, seed: int, rename=lambda n: n) -> tuple[dict, dict]:
    """An ms-swift LoRA folder's `(adapter_config.json, adapter_model.bin)` contents for the Linear layers
    of `model` whose path `select` accepts."""
    g = torch.Generator().manual_seed(seed)
    weights, targets = {}, set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and select(name):
            down, up = lora_pair(module, g)
            weights[f"{rename(name)}.lora_A.default.weight"] = down
            weights[f"{rename(name)}.lora_B.default.weight"] = up
            targets.add(name.rsplit(".", 1)[-1])
    config = {"r": LORA_RANK, "lora_alpha": 2 * LORA_RANK, "target_modules": sorted(targets),
              "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {}, "swift_type": "LORA"}
    return config, weights


def temporal_lora_files(unet_motion: torch.nn.Module, seed: int) -> tuple[dict, dict]:
    return swift_lora_files(
        unet_motion, lambda n: ".motion_modules." in n and (".attn1.to_" in n or ".attn2.to_" in n), seed,
        rename=_original_motion_name,
    )


def text_encoder_lora_files(text_model: torch.nn.Module, seed: int) -> tuple[dict, dict]:
    """MagicTime's file names CLIP layers as `text_model.encoder.layers.N...` whatever transformers does now."""
    return swift_lora_files(
        text_model, lambda n: n.endswith(("q_proj", "k_proj", "v_proj", "out_proj")), seed,
        rename=lambda n: n if n.startswith("text_model.") else f"text_model.{n}",
    )
