"""Format-independent LoRA handling: pair factor tensors into deltas and merge them into a model in place.

Merging (W += scale * up @ down) instead of hooking adapters at run time keeps inference at the base
model's cost and lets any pipeline use the result. Every check happens before the first weight changes,
so a checkpoint that does not fit leaves the model exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from pipelines.core.errors import WeightsError

MAX_LISTED_PROBLEMS = 20


class ConversionError(WeightsError, ValueError):
    """A checkpoint key or shape we cannot place. Message names the key(s)."""


def raise_problems(title: str, problems: list[str]) -> None:
    """Raise one ConversionError listing every problem found, so a single run shows them all
    (capped, because a wrong file can have thousands of keys)."""
    if not problems:
        return
    listed = problems[:MAX_LISTED_PROBLEMS]
    if len(problems) > len(listed):
        listed.append(f"... and {len(problems) - len(listed)} more")
    raise ConversionError(f"{title}:\n  " + "\n  ".join(listed))


@dataclass(frozen=True)
class LoraDelta:
    """One low-rank update W += scale * (up @ down).

    Linear: up (out, r), down (r, in). Conv: up (out, r, 1, 1), down (r, in, kh, kw); the product is
    reshaped to the conv weight's (out, in, kh, kw).
    """

    up: torch.Tensor
    down: torch.Tensor
    scale: float

    def __post_init__(self):
        fits = (
            self.up.dim() in (2, 4) and self.down.dim() in (2, 4)
            and all(size == 1 for size in self.up.shape[2:])
            and self.up.shape[1] == self.down.shape[0]
        )
        if not fits:
            raise ConversionError(
                f"LoRA factors do not fit together: up {tuple(self.up.shape)}, down {tuple(self.down.shape)}"
            )

    @property
    def shape(self) -> torch.Size:
        """Shape of the weight this delta applies to."""
        return torch.Size((self.up.shape[0], *self.down.shape[1:]))

    def weight(self) -> torch.Tensor:
        """scale * (up @ down) in float32 (fp16 factors would lose precision in the product)."""
        product = self.up.flatten(1).float() @ self.down.flatten(1).float()
        return (self.scale * product).reshape(self.shape)


def collect_lora_deltas(
    state_dict: Mapping[str, torch.Tensor],
    parse_key: Callable[[str], tuple[str, str] | None],
    scale_for: Callable[[str], float],
) -> dict[str, LoraDelta]:
    """Pair the factor keys of a LoRA state dict into one LoraDelta per module path.

    `parse_key(key)` returns `(module path, "up" | "down")`, or None for a key that is not a factor.
    A LoRA file must be used entirely (a silently skipped key is a silently wrong model), so
    unrecognised keys, duplicated or unpaired factors and factors whose ranks disagree all raise.
    """
    keys_by_module: dict[str, dict[str, str]] = {}
    problems = []
    for key in state_dict:
        parsed = parse_key(key)
        if parsed is None:
            problems.append(f"unrecognised key {key}")
            continue
        module, role = parsed
        seen = keys_by_module.setdefault(module, {})
        if role in seen:
            problems.append(f"{key} duplicates {seen[role]}")
        else:
            seen[role] = key
    deltas = {}
    for module, keys in keys_by_module.items():
        if keys.keys() != {"up", "down"}:
            (role, key), = keys.items()
            problems.append(f"{key} has no matching {'down' if role == 'up' else 'up'} factor")
            continue
        try:
            deltas[module] = LoraDelta(state_dict[keys["up"]], state_dict[keys["down"]], scale_for(module))
        except ConversionError as err:
            problems.append(f"{keys['up']} / {keys['down']}: {err}")
    raise_problems("cannot convert LoRA checkpoint", problems)
    return deltas


def merge_lora_(model: torch.nn.Module, deltas: Mapping[str, LoraDelta]) -> int:
    """In place: W += delta.weight() for each module path, summed in float32 and cast back to W's dtype.

    Returns the number of weight tensors changed. Raises ConversionError naming every path whose module
    is missing, has no `.weight`, or whose shape differs, before changing any weight.
    """
    targets: dict[str, torch.Tensor] = {}
    problems = []
    for path, delta in deltas.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            problems.append(f"{path}: no such module")
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            problems.append(f"{path}: {type(module).__name__} has no weight")
        elif weight.shape != delta.shape:
            problems.append(f"{path}: weight shape {tuple(weight.shape)}, LoRA delta shape {tuple(delta.shape)}")
        else:
            targets[path] = weight
    raise_problems(f"cannot merge LoRA into {type(model).__name__}", problems)
    with torch.no_grad():
        for path, weight in targets.items():
            weight.copy_(weight.float() + deltas[path].weight().to(weight.device))
    return len(targets)


def merge_image_lora(unet, state_dict: dict, name: str) -> None:
    """A LoRA for SD1.5's image layers (Hyper-SD's), through diffusers' loader (it reads kohya and diffusers key
    styles), fused for good. Every layer it names must exist and none may be a motion layer: a LoRA that finds no
    target would otherwise load as nothing, with a warning in a log."""
    from diffusers import AnimateDiffPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft

    converted, alphas = AnimateDiffPipeline.lora_state_dict(dict(state_dict))   # class methods: no pipeline needed
    other = sorted({k.split(".", 1)[0] for k in converted if not k.startswith("unet.")})
    if other:
        raise WeightsError(f"{name} has weights for {', '.join(other)}, not only the UNet: not a UNet speed LoRA.")
    peft_keys = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in converted.items()})
    targets = {k.split(".lora_")[0] for k in peft_keys if ".lora_" in k}
    AnimateDiffPipeline.load_lora_into_unet(converted, alphas, unet, adapter_name="speed")
    placed = {n for n, m in unet.named_modules() if hasattr(m, "lora_A") and "speed" in m.lora_A}
    if placed != targets or any(".motion_modules." in n for n in placed):
        missing = sorted(targets - placed)[:5]
        raise WeightsError(f"{name} does not fit this UNet: {len(targets - placed)} of its {len(targets)} layers "
                           f"have no place here (e.g. {', '.join(missing) or 'motion layers'}).")
    unet.fuse_lora(adapter_names=["speed"], lora_scale=1.0)
    unet.unload_lora()
