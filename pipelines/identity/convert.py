"""ID-Animator's face adapter (`animator.ckpt`) -> diffusers' IP-Adapter machinery plus a PEFT LoRA.

The checkpoint holds two things: an IP-Adapter-Plus Perceiver resampler (`image_proj`), which diffusers loads
as is, and one attention processor per 2-D cross-attention layer (`face_adapter`), keyed by that processor's
position in the 2-D UNet's `attn_processors` (1, 3, ..., 31 on SD1.5). Each processor holds a face branch
(`to_k_face`/`to_v_face`, which is exactly IP-Adapter's `to_k_ip`/`to_v_ip`) and a rank-128 LoRA on the layer's
own q/k/v/out projections (scale 1.0).

The two halves take different routes on purpose. The face branch goes through `load_ip_adapter`, which numbers
cross-attention layers the way ID-Animator does as long as motion modules are skipped (diffusers skips them for
the face branch). The LoRA does *not* go through the IP-Adapter dict: diffusers' FaceID-LoRA path numbers every
processor of a `UNetMotionModel`, motion modules included, and would put most of the LoRAs on the wrong layers.
Instead each LoRA is keyed by the module *name* of its attn2 layer and loaded with `load_lora_adapter`, so it
cannot land on a motion module whatever the numbering.

As in the other converters, everything is checked (every key used exactly once, every shape against the target
UNet) before the pipeline changes, and a problem raises ConversionError naming the keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from diffusers.models.embeddings import MultiIPAdapterImageProjection
from torch import Tensor

from pipelines.sd15.lora import ConversionError, raise_problems

IDENTITY_ADAPTER_NAME = "identity"

# The two layouts `animator.ckpt` comes in.
_PLAIN_PARTS = ("image_proj", "face_adapter")
_WRAPPED_PREFIXES = {"image_proj_model.": "image_proj", "adapter_modules.": "face_adapter"}
_DDP_PREFIX = "module."  # torch DistributedDataParallel's wrapper name, present when saved from a DDP model

# LoRA name in the file -> projection module in diffusers' Attention (to_out is (Linear, Dropout)).
_LORA_PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_FACE_KEY = re.compile(
    r"(?P<index>\d+)\.(?:(?P<face>to_k_face|to_v_face)|(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<role>down|up))"
    r"\.weight"
)
_FACE_ROLES = ("to_k_face", "to_v_face", *(f"{p}_lora.{r}" for p in _LORA_PROJECTIONS for r in ("down", "up")))

# diffusers' IPAdapterPlusImageProjection is built with these fixed values (depth, head size, feed-forward
# ratio are not read from the checkpoint), so a resampler with other values cannot load.
_RESAMPLER_DEPTH = 4
_RESAMPLER_DIM_HEAD = 64
_RESAMPLER_FF_MULT = 4


# ------------------------------------------------------------------------------------ the file
def split_animator_checkpoint(checkpoint: Mapping) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """animator.ckpt in either real layout -> (image_proj state dict, face_adapter state dict).

    Layout 1: {"image_proj": {...}, "face_adapter": {...}}. Layout 2: {"state_dict": {...}} with key prefixes
    "image_proj_model." / "adapter_modules.", optionally preceded by "module." (a DDP-wrapped training model).
    Any other key, at the top or inside, raises ConversionError naming it: the file is the adapter alone, so an
    unknown key means a different file.
    """
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"animator.ckpt: expected a dict, got {type(checkpoint).__name__}")
    problems: list[str] = []
    parts: dict[str, dict[str, Tensor]] = {part: {} for part in _PLAIN_PARTS}
    if "state_dict" in checkpoint:
        problems += [f"unexpected top-level key {key!r} next to 'state_dict'"
                     for key in checkpoint if key != "state_dict"]
        inner = checkpoint["state_dict"]
        if not isinstance(inner, Mapping):
            raise_problems("cannot read animator.ckpt", [*problems, "'state_dict' is not a dict"])
        for key, value in inner.items():
            stripped = key.removeprefix(_DDP_PREFIX) if isinstance(key, str) else key
            prefix = next((p for p in _WRAPPED_PREFIXES if isinstance(stripped, str) and stripped.startswith(p)), None)
            if prefix is None:
                problems.append(f"unrecognised key state_dict[{key!r}]")
                continue
            part, name = _WRAPPED_PREFIXES[prefix], stripped.removeprefix(prefix)
            if name in parts[part]:
                problems.append(f"state_dict[{key!r}] duplicates another key of {part} ({name})")
            parts[part][name] = value
    else:
        problems += [f"unexpected top-level key {key!r}" for key in checkpoint if key not in _PLAIN_PARTS]
        for part in _PLAIN_PARTS:
            value = checkpoint.get(part)
            if value is None:
                problems.append(f"missing top-level key {part!r}")
            elif not isinstance(value, Mapping):
                problems.append(f"{part!r} is a {type(value).__name__}, not a state dict")
            else:
                parts[part] = dict(value)
    for part, state_dict in parts.items():
        problems += [f"{part}[{key!r}] is a {type(v).__name__}, not a tensor"
                     for key, v in state_dict.items() if not isinstance(v, Tensor)]
    problems += [f"no {part} weights found" for part, state_dict in parts.items() if not state_dict and not problems]
    raise_problems("cannot read animator.ckpt", problems)
    return parts["image_proj"], parts["face_adapter"]


# ----------------------------------------------------------------------------- layer numbering
def attn2_names(unet2d) -> dict[int, str]:
    """ID-Animator's face-adapter index i (1, 3, ...) -> module path of that 2-D cross-attention layer, e.g.
    1 -> "down_blocks.0.attentions.0.transformer_blocks.0.attn2".

    ID-Animator numbers one processor per entry of the 2-D UNet's `attn_processors` (attn1, attn2 alternating,
    so attn2 sits at the odd positions; mid_block comes last because the UNet registers it after up_blocks).
    Its motion modules use attention without processors, so they take no numbers; a UNetMotionModel may be
    passed too, its motion-module processors are skipped (diffusers registers its blocks in the same order).
    Raises ConversionError if the processors do not come in (attn1, attn2) pairs, where the numbering would
    be meaningless.
    """
    paths = [name.removesuffix(".processor") for name in unet2d.attn_processors]
    paths = [path for path in paths if ".motion_modules." not in f".{path}"]
    problems, names = [], {}
    for position, path in enumerate(paths):
        expected = "attn1" if position % 2 == 0 else "attn2"
        if path.rsplit(".", 1)[-1] != expected:
            problems.append(f"processor {position} is {path}, expected an {expected} layer")
        elif expected == "attn2":
            if path.removesuffix(".attn2") != paths[position - 1].removesuffix(".attn1"):
                problems.append(f"processor {position} ({path}) does not follow the attn1 of its block")
            names[position] = path
    if len(paths) % 2:
        problems.append(f"odd number of attention processors ({len(paths)}): {paths[-1]} has no partner")
    raise_problems(f"{type(unet2d).__name__} does not have ID-Animator's (attn1, attn2) processor layout", problems)
    return names


def diffusers_ip_adapter_indices(unet) -> dict[str, int]:
    """attn module path -> the index `load_ip_adapter` reads its `{index}.to_k_ip.weight` under in this UNet.

    Mirrors diffusers' loader: it walks `attn_processors`, skips self-attention (attn1) and motion modules, and
    counts the rest 1, 3, 5, ...
    """
    indices, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        indices[name.removesuffix(".processor")] = key_id
        key_id += 2
    return indices


# -------------------------------------------------------------------------------- face adapter
def _group_face_adapter(face_adapter: Mapping[str, Tensor], names: Mapping[int, str]) -> dict[int, dict[str, Tensor]]:
    """{index: {role: tensor}} with every role present for every index in `names`, and nothing else.

    Both converters call this on the whole face_adapter, so a key neither of them uses (a stray key, an index
    the UNet does not have, a missing factor) fails in either, before anything is built.
    """
    groups: dict[int, dict[str, Tensor]] = {}
    problems = []
    for key, tensor in face_adapter.items():
        match = _FACE_KEY.fullmatch(key) if isinstance(key, str) else None
        if match is None:
            problems.append(f"unrecognised face_adapter key {key!r}")
            continue
        index = int(match["index"])
        if index not in names:
            problems.append(f"{key}: index {index} is not a cross-attention layer of the UNet "
                            f"(expected one of {sorted(names)})")
            continue
        role = match["face"] or f"{match['proj']}_lora.{match['role']}"
        groups.setdefault(index, {})[role] = tensor
    for index in sorted(names):
        have = groups.get(index, {})
        problems += [f"missing face_adapter key {index}.{role}.weight (for {names[index]})"
                     for role in _FACE_ROLES if role not in have]
    for index, group in sorted(groups.items()):
        for proj in _LORA_PROJECTIONS:
            down, up = group.get(f"{proj}_lora.down"), group.get(f"{proj}_lora.up")
            if down is None or up is None:
                continue
            if down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]:
                problems.append(f"{index}.{proj}_lora: up {tuple(up.shape)} and down {tuple(down.shape)} "
                                "are not the factors of one linear LoRA")
        for role in ("to_k_face", "to_v_face"):
            if role in group and group[role].dim() != 2:
                problems.append(f"{index}.{role}.weight: shape {tuple(group[role].shape)} is not a linear weight")
    raise_problems("cannot convert ID-Animator face_adapter", problems)
    return groups


def _check_image_proj(image_proj: Mapping[str, Tensor]) -> None:
    """The exact key set and consistent shapes of IP-Adapter-Plus's Resampler (depth 4, 64-wide heads,
    feed-forward x4) in its original naming: what diffusers' IP-Adapter-Plus branch can load strictly.

    Without this, a different projection (plain IP-Adapter, FaceID) would be taken for another kind by
    diffusers' key sniffing, and a missing tensor would stay uninitialised under low_cpu_mem_usage.
    """
    problems = []
    latents, proj_in = image_proj.get("latents"), image_proj.get("proj_in.weight")
    if latents is None or latents.dim() != 3 or latents.shape[0] != 1:
        raise_problems("image_proj is not an IP-Adapter-Plus resampler", [
            "missing 'latents'" if latents is None
            else f"'latents' has shape {tuple(latents.shape)}, expected (1, queries, dim)"
        ])
    dim = latents.shape[2]
    proj_out = image_proj.get("proj_out.weight")
    to_q = image_proj.get("layers.0.0.to_q.weight")
    if proj_in is None or proj_out is None or to_q is None:
        raise_problems("image_proj is not an IP-Adapter-Plus resampler", [
            f"missing '{key}'" for key, v in (("proj_in.weight", proj_in), ("proj_out.weight", proj_out),
                                               ("layers.0.0.to_q.weight", to_q)) if v is None
        ])
    embedding_dim, output_dim, inner = proj_in.shape[-1], proj_out.shape[0], to_q.shape[0]
    if inner % _RESAMPLER_DIM_HEAD:
        problems.append(f"layers.0.0.to_q.weight: {inner} outputs is not a whole number of "
                        f"{_RESAMPLER_DIM_HEAD}-wide heads (diffusers' resampler fixes the head size)")
    expected = {
        "latents": tuple(latents.shape),
        "proj_in.weight": (dim, embedding_dim), "proj_in.bias": (dim,),
        "proj_out.weight": (output_dim, dim), "proj_out.bias": (output_dim,),
        "norm_out.weight": (output_dim,), "norm_out.bias": (output_dim,),
    }
    for n in range(_RESAMPLER_DEPTH):
        expected |= {
            f"layers.{n}.0.norm1.weight": (dim,), f"layers.{n}.0.norm1.bias": (dim,),
            f"layers.{n}.0.norm2.weight": (dim,), f"layers.{n}.0.norm2.bias": (dim,),
            f"layers.{n}.0.to_q.weight": (inner, dim), f"layers.{n}.0.to_kv.weight": (2 * inner, dim),
            f"layers.{n}.0.to_out.weight": (dim, inner),
            f"layers.{n}.1.0.weight": (dim,), f"layers.{n}.1.0.bias": (dim,),
            f"layers.{n}.1.1.weight": (_RESAMPLER_FF_MULT * dim, dim),
            f"layers.{n}.1.3.weight": (dim, _RESAMPLER_FF_MULT * dim),
        }
    problems += [f"unrecognised image_proj key {key!r}" for key in image_proj if key not in expected]
    problems += [f"missing image_proj key {key!r}" for key in expected if key not in image_proj]
    problems += [
        f"image_proj[{key!r}]: shape {tuple(image_proj[key].shape)}, expected {shape}"
        for key, shape in expected.items() if key in image_proj and tuple(image_proj[key].shape) != shape
    ]
    raise_problems("image_proj is not an IP-Adapter-Plus resampler (depth 4, head size 64)", problems)


def ip_adapter_state_dict(image_proj: Mapping[str, Tensor], face_adapter: Mapping[str, Tensor],
                          names: Mapping[int, str], unet=None) -> dict:
    """{"image_proj": image_proj unchanged, "ip_adapter": {"{j}.to_k_ip.weight": to_k_face, "{j}.to_v_ip.weight":
    to_v_face}}, the in-memory form `pipe.load_ip_adapter` accepts.

    j is the index diffusers' loader reads for that layer. Without `unet` it is ID-Animator's own index i (what
    diffusers uses on the 2-D UNet, by construction of `attn2_names`). With `unet` (the model that will receive
    the weights) it is recomputed from that model's processor order, so a UNetMotionModel is numbered as
    diffusers will number it; every cross-attention layer of `unet` must then be one of `names`.
    The `*_lora` keys are left out on purpose (see the module docstring); `identity_lora_state_dict` takes them.
    """
    _check_image_proj(image_proj)
    groups = _group_face_adapter(face_adapter, names)
    if unet is None:
        target_index = {path: index for index, path in names.items()}
    else:
        target_index = diffusers_ip_adapter_indices(unet)
        known = set(names.values())
        raise_problems(f"face_adapter does not cover the cross-attention layers of {type(unet).__name__}", [
            *(f"{path}: no face_adapter weights for it" for path in target_index if path not in known),
            *(f"face_adapter index {i} ({path}): no such cross-attention layer in the target UNet"
              for i, path in sorted(names.items()) if path not in target_index),
        ])
    ip_adapter = {}
    for index, path in sorted(names.items()):
        j = target_index[path]
        ip_adapter[f"{j}.to_k_ip.weight"] = groups[index]["to_k_face"]
        ip_adapter[f"{j}.to_v_ip.weight"] = groups[index]["to_v_face"]
    return {"image_proj": dict(image_proj), "ip_adapter": ip_adapter}


def identity_lora_state_dict(face_adapter: Mapping[str, Tensor], names: Mapping[int, str]) -> dict[str, Tensor]:
    """The rank-r LoRA on to_q/to_k/to_v/to_out of each attn2, in PEFT naming with the "unet." prefix:
    "unet.<attn2 path>.to_q.lora_A.weight" (down) / ".lora_B.weight" (up), to_out -> "to_out.0".

    Load with `unet.load_lora_adapter(d, prefix="unet", adapter_name="identity")`. PEFT targets the full
    module paths, so the LoRA lands on these layers only (never on a motion module, whose paths differ), and
    with no alphas in the dict its scale is 1.0, as in ID-Animator. lora_A keys come first: diffusers decides
    from the first key whether a dict is already in PEFT naming.
    """
    groups = _group_face_adapter(face_adapter, names)
    lora = {}
    for index, path in sorted(names.items()):
        for proj, module in _LORA_PROJECTIONS.items():
            lora[f"unet.{path}.{module}.lora_A.weight"] = groups[index][f"{proj}_lora.down"]
            lora[f"unet.{path}.{module}.lora_B.weight"] = groups[index][f"{proj}_lora.up"]
    return lora


# ---------------------------------------------------------------------------------- loading
def _check_fits(pipe, image_proj: Mapping[str, Tensor], face_adapter: Mapping[str, Tensor],
                names: Mapping[int, str], adapter_name: str) -> None:
    """Every shape against the modules that will receive it, before the pipeline is touched (diffusers would
    otherwise fail halfway, with the IP-Adapter processors already swapped in)."""
    unet = pipe.unet
    problems = []
    if adapter_name in getattr(unet, "peft_config", {}):
        problems.append(f"the UNet already has a LoRA adapter named {adapter_name!r}")
    output_dim, embedding_dim = image_proj["proj_out.weight"].shape[0], image_proj["proj_in.weight"].shape[1]
    if output_dim != unet.config.cross_attention_dim:
        problems.append(f"image_proj makes {output_dim}-wide tokens, the UNet's cross-attention takes "
                        f"{unet.config.cross_attention_dim}")
    encoder = getattr(pipe, "image_encoder", None)
    if encoder is None:
        problems.append("the pipeline has no image_encoder (set it before loading the face adapter)")
    elif encoder.config.hidden_size != embedding_dim:
        problems.append(f"image_proj reads {embedding_dim}-wide image features, the image encoder's hidden "
                        f"states are {encoder.config.hidden_size} wide")
    for index, path in sorted(names.items()):
        try:
            attn = unet.get_submodule(path)
        except AttributeError:
            problems.append(f"face_adapter index {index}: the UNet has no module {path}")
            continue
        for role, target in (("to_k_face", attn.to_k), ("to_v_face", attn.to_v)):
            have = tuple(face_adapter[f"{index}.{role}.weight"].shape)
            want = (target.out_features, target.in_features)
            if have != want:
                problems.append(f"{index}.{role}.weight: shape {have}, {path} needs {want}")
        for proj, module in _LORA_PROJECTIONS.items():
            target = attn.get_submodule(module)
            down = face_adapter[f"{index}.{proj}_lora.down.weight"]
            up = face_adapter[f"{index}.{proj}_lora.up.weight"]
            if down.shape[1] != target.in_features or up.shape[0] != target.out_features:
                problems.append(f"{index}.{proj}_lora: delta {up.shape[0]}x{down.shape[1]}, "
                                f"{path}.{module} is {target.out_features}x{target.in_features}")
    raise_problems("ID-Animator face adapter does not fit the pipeline", problems)


def load_face_adapter(pipe, checkpoint: Mapping, unet2d_for_names=None,
                      adapter_name: str = IDENTITY_ADAPTER_NAME) -> None:
    """Split, convert and load animator.ckpt into an AnimateDiffPipeline whose UNet is a UNetMotionModel and
    whose image_encoder is already set.

    The face branch and resampler go in with `pipe.load_ip_adapter(<dict>, subfolder="", weight_name="",
    image_encoder_folder=None)` (nothing is fetched), the LoRA with `pipe.unet.load_lora_adapter(<dict>,
    prefix="unet", adapter_name=adapter_name)`. `unet2d_for_names` is the 2-D UNet whose processor order
    defines ID-Animator's numbering; by default `pipe.unet` is used with its motion modules skipped, which
    gives the same order. Everything is validated first; on a ConversionError the pipeline is unchanged.
    IP-Adapter scale starts at 1.0 (diffusers' default); set it with `pipe.set_ip_adapter_scale`.
    """
    image_proj, face_adapter = split_animator_checkpoint(checkpoint)
    names = attn2_names(pipe.unet if unet2d_for_names is None else unet2d_for_names)
    ip_dict = ip_adapter_state_dict(image_proj, face_adapter, names, unet=pipe.unet)
    lora = identity_lora_state_dict(face_adapter, names)
    _check_fits(pipe, image_proj, face_adapter, names, adapter_name)
    pipe.load_ip_adapter(ip_dict, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.unet.load_lora_adapter(lora, prefix="unet", adapter_name=adapter_name)




class _MeanOverPhotos(MultiIPAdapterImageProjection):
    """ID-Animator's identity mixing: several reference photos are averaged *after* projection into face
    tokens. diffusers concatenates the tokens of several images instead (more tokens, each photo's identity
    competing with the others); averaging keeps the 16 tokens the adapter was trained with."""

    def forward(self, image_embeds: list[Tensor]) -> list[Tensor]:
        return [tokens.mean(dim=1, keepdim=True) for tokens in super().forward(image_embeds)]


def use_identity_mixing(unet) -> None:
    """Make `unet` (with the face adapter loaded) average the face tokens of several photos."""
    if not isinstance(unet.encoder_hid_proj, MultiIPAdapterImageProjection):
        raise ConversionError("identity mixing needs the face adapter loaded first (no image projection found)")
    unet.encoder_hid_proj = _MeanOverPhotos(unet.encoder_hid_proj.image_projection_layers)
