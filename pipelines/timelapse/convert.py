"""MagicTime's weight files -> diffusers/transformers modules.

MagicTime ships an AnimateDiff v3 motion module in the original AnimateDiff naming, a spatial LoRA in the
old diffusers attention-processor format (merged as W += 4 * up @ down), and two ms-swift LoRA folders
(temporal, text encoder). Each converter accounts for every key it is given and fails loudly, naming the
keys, on anything it cannot place: a half-applied adapter would give plausible-looking but wrong videos.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from safetensors.torch import load_file
from torch import Tensor

from pipelines.sd15.lora import ConversionError, LoraDelta, collect_lora_deltas, raise_problems
from pipelines.sd15.single_file import clip_text_module_name, unwrap

SPATIAL_LORA_SCALE = 4.0  # the original merges W += 4·(up @ down): alpha 1.0 with both factors doubled

_SPATIAL_KEY = re.compile(
    r"(?P<attn>.+\.attn\d+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<role>down|up)\.weight"
)
_SWIFT_KEY = re.compile(r"(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.default)?\.weight")
_POS_ENCODER_KEY = re.compile(r"(?P<block>.+\.transformer_blocks\.\d+)\.attention_blocks\.\d+\.pos_encoder\.pe")


# ------------------------------------------------------------------------------------ spatial LoRA
def _parse_spatial_key(key: str) -> tuple[str, str] | None:
    match = _SPATIAL_KEY.fullmatch(key)
    if match is None:
        return None
    proj = "to_out.0" if match["proj"] == "to_out" else match["proj"]  # to_out is (Linear, Dropout)
    return f"{match['attn']}.{proj}", match["role"]


def spatial_lora_deltas(state_dict: Mapping[str, Tensor], scale: float = SPATIAL_LORA_SCALE) -> dict[str, LoraDelta]:
    """magic_adapter_s.ckpt: '<attn path>.processor.to_{q,k,v,out}_lora.{down,up}.weight' ->
    '<attn path>.to_{q,k,v}' / '<attn path>.to_out.0'. Spatial UNet paths are the same in UNetMotionModel."""
    return collect_lora_deltas(unwrap(state_dict), _parse_spatial_key, lambda module: scale)


# ----------------------------------------------------------------------------- ms-swift LoRA folders
def _pattern_value(patterns: Mapping[str, Any], module_path: str, default: Any) -> Any:
    """peft's rule: a pattern applies to a module whose path is the pattern or ends in '.' + pattern."""
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module_path):
            return value
    return default


@dataclass(frozen=True)
class SwiftLoraConfig:
    """The fields of an ms-swift `adapter_config.json` (a peft LoraConfig) that decide the merge."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    target_modules: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "adapter_config.json") -> SwiftLoraConfig:
        """Parse adapter_config.json contents. Rank and alpha are required: MagicTime does not publish
        them, and peft's defaults would silently give a wrong scale."""
        for type_field in ("swift_type", "peft_type"):
            if str(raw.get(type_field, "LORA")).upper() != "LORA":
                raise ConversionError(
                    f"{source}: {type_field} is {raw[type_field]!r}; only LORA adapters are supported"
                )
        missing = [name for name in ("r", "lora_alpha") if raw.get(name) is None]
        if missing:
            raise ConversionError(f"{source}: missing {', '.join(missing)}")
        targets = raw.get("target_modules") or ()
        return cls(
            r=int(raw["r"]),
            lora_alpha=float(raw["lora_alpha"]),
            use_rslora=bool(raw.get("use_rslora", False)),
            rank_pattern=dict(raw.get("rank_pattern") or {}),
            alpha_pattern=dict(raw.get("alpha_pattern") or {}),
            target_modules=(targets,) if isinstance(targets, str) else tuple(targets),
        )

    def rank_for(self, module_path: str) -> int:
        return int(_pattern_value(self.rank_pattern, module_path, self.r))

    def scale_for(self, module_path: str) -> float:
        """alpha/r, or alpha/sqrt(r) with rslora; rank_pattern/alpha_pattern override per module as in peft."""
        rank = self.rank_for(module_path)
        alpha = float(_pattern_value(self.alpha_pattern, module_path, self.lora_alpha))
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def read_swift_lora(folder: str | Path) -> tuple[SwiftLoraConfig, dict[str, Tensor]]:
    """Read `<folder>/default/adapter_config.json` and `<folder>/default/adapter_model.{safetensors,bin}`.
    (`<folder>/configuration.json` is ms-swift's hub metadata; nothing in it affects the weights.)"""
    adapter_dir = Path(folder) / "default"
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"ms-swift LoRA folder is missing {config_path}")
    config = SwiftLoraConfig.from_dict(json.loads(config_path.read_text()), source=str(config_path))
    safetensors_path, pickle_path = adapter_dir / "adapter_model.safetensors", adapter_dir / "adapter_model.bin"
    if safetensors_path.is_file():
        return config, load_file(safetensors_path)
    if pickle_path.is_file():
        return config, torch.load(pickle_path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"ms-swift LoRA folder is missing {pickle_path} (or {safetensors_path.name})")


def _parse_swift_key(key: str) -> tuple[str, str] | None:
    match = _SWIFT_KEY.fullmatch(key)
    return None if match is None else (match["module"], "down" if match["factor"] == "A" else "up")


def swift_lora_deltas(
    config: SwiftLoraConfig, state_dict: Mapping[str, Tensor], rename: Callable[[str], str] = lambda name: name
) -> dict[str, LoraDelta]:
    """'<module>.lora_A[.default].weight' (down) / '.lora_B[...]' (up) -> {rename(module): delta}.

    Scale and rank come from the config for the module's name in the file (that is the model the patterns
    were written against); the rank check catches a config that does not belong to the weights.
    """
    deltas = collect_lora_deltas(state_dict, _parse_swift_key, config.scale_for)
    raise_problems("LoRA rank differs from adapter_config.json", [
        f"{module}: lora_A has rank {delta.down.shape[0]}, config says {config.rank_for(module)}"
        for module, delta in deltas.items() if delta.down.shape[0] != config.rank_for(module)
    ])
    renamed: dict[str, LoraDelta] = {}
    for module, delta in deltas.items():
        target = rename(module)
        if target in renamed:
            raise ConversionError(f"{module} and another LoRA module both map to {target}")
        renamed[target] = delta
    return renamed


# -------------------------------------------------------------------------------- naming conventions
def animatediff_module_name(path: str) -> str:
    """Original AnimateDiff motion-module path -> diffusers MotionAdapter/UNetMotionModel path, using
    diffusers' own checkpoint converter on the name so both stay in step."""
    converted = convert_animatediff_checkpoint_to_diffusers({path: None})
    if not converted:
        raise ConversionError(f"{path}: position-encoding buffers are not modules in diffusers")
    return next(iter(converted))


def temporal_lora_deltas(folder: str | Path) -> dict[str, LoraDelta]:
    """magic_adapter_t: an ms-swift LoRA on the motion modules, in original AnimateDiff names."""
    config, state_dict = read_swift_lora(folder)
    return swift_lora_deltas(config, state_dict, rename=animatediff_module_name)


def text_encoder_lora_deltas(folder: str | Path) -> dict[str, LoraDelta]:
    """magic_text_encoder: an ms-swift LoRA on CLIPTextModel ('text_model.encoder.layers.N...')."""
    config, state_dict = read_swift_lora(folder)
    return swift_lora_deltas(config, state_dict, rename=clip_text_module_name)


# ---------------------------------------------------------------------------- full state dicts
def motion_adapter_state_dict(original: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """AnimateDiff motion_module.ckpt -> diffusers MotionAdapter state dict (load it with strict=True).

    The original keeps a sinusoid table per attention block ('...attention_blocks.N.pos_encoder.pe');
    diffusers keeps one per transformer block ('...pos_embed.pe', a persistent buffer, so strict loading
    needs it). The tables are a function of (dim, max length) alone, so they are moved rather than dropped:
    strict loading then also checks that motion_max_seq_length matches the checkpoint.
    """
    original = unwrap(original)
    converted = convert_animatediff_checkpoint_to_diffusers(original)  # renames, drops pos_encoder keys
    problems = []
    for key, table in original.items():
        if "pos_encoder" not in key:
            continue
        match = _POS_ENCODER_KEY.fullmatch(key)
        if match is None:
            problems.append(f"unrecognised position-encoding key {key}")
            continue
        target = animatediff_module_name(match["block"]) + ".pos_embed.pe"
        if not torch.equal(converted.setdefault(target, table), table):
            problems.append(f"{key} differs from the other position table of its block; diffusers shares one")
    raise_problems("cannot convert AnimateDiff motion module", problems)
    return converted
