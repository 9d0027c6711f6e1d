"""ID-Animator's toy face adapter: `animator.ckpt`'s contents in its authors' layout, at toy width, for the tiny profile
(the same converter as the real file reads it)."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from pipelines.sd15 import tiny

RESAMPLER_QUERIES = 4       # ID-Animator has 16 face tokens; diffusers fixes the head size at 64


def animator_file(unet2d: torch.nn.Module, seed: int) -> dict:
    """`animator.ckpt` contents in ID-Animator's layout: an IP-Adapter-Plus resampler (depth 4, head size 64,
    feed-forward x4, original key names) and, per 2-D cross-attention layer, to_k_face/to_v_face and a LoRA
    on q/k/v/out under ID-Animator's processor numbering."""
    from pipelines.identity.convert import attn2_names

    # Widths read when called, not imported: bench/preload_rss.py sets them to the real ones.
    cross_dim, image_width = tiny.CROSS_ATTENTION_DIM, tiny.IMAGE_ENCODER_WIDTH
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, s=0.3: torch.randn(*shape, generator=g) * s  # noqa: E731
    width, inner = 16, 2 * 64

    def norm(prefix, n):
        return {f"{prefix}.weight": 1 + rand(n, s=0.1), f"{prefix}.bias": rand(n, s=0.1)}

    image_proj = {"latents": rand(1, RESAMPLER_QUERIES, width, s=1.0), "proj_in.weight": rand(width, image_width),
                  "proj_in.bias": rand(width, s=0.1), "proj_out.weight": rand(cross_dim, width),
                  "proj_out.bias": rand(cross_dim, s=0.1), **norm("norm_out", cross_dim)}
    for n in range(4):
        image_proj |= {**norm(f"layers.{n}.0.norm1", width), **norm(f"layers.{n}.0.norm2", width),
                       f"layers.{n}.0.to_q.weight": rand(inner, width), f"layers.{n}.0.to_kv.weight": rand(2 * inner, width),
                       f"layers.{n}.0.to_out.weight": rand(width, inner, s=0.1), **norm(f"layers.{n}.1.0", width),
                       f"layers.{n}.1.1.weight": rand(4 * width, width), f"layers.{n}.1.3.weight": rand(width, 4 * width, s=0.1)}
    face_adapter = {}
    for index, path in attn2_names(unet2d).items():
        attn = unet2d.get_submodule(path)
        face_adapter[f"{index}.to_k_face.weight"] = rand(attn.to_k.out_features, cross_dim, s=0.5)
        face_adapter[f"{index}.to_v_face.weight"] = rand(attn.to_v.out_features, cross_dim, s=0.5)
        for proj, layer in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v), ("to_out", attn.to_out[0])):
            down, up = tiny.lora_pair(layer, g)
            face_adapter[f"{index}.{proj}_lora.down.weight"] = down
            face_adapter[f"{index}.{proj}_lora.up.weight"] = up
    return {"image_proj": image_proj, "face_adapter": face_adapter}


def random_similarity(frames: np.ndarray) -> list[float]:
    """The tiny profile's identity report: its frames are noise with no face in them, so the face detector finds
    none and the report would never draw. A random score per frame stands in (seeded by the frames' bytes: the same
    clip, the same scores); the summary calls it random."""
    rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(frames).tobytes()))
    return [round(float(score), 4) for score in rng.uniform(0.2, 0.8, len(frames))]
