"""VD-IT (ECCV 2024): referring video segmentation read off a frozen text-to-video diffusion UNet.

This file holds the parts VD-IT trains (30 M parameters) and the maths around the frozen models, per
reference/vdit.md (the inference spec; section numbers below are its). The frozen models are stock classes loaded
through the model cache: ModelScope's `UNet3DConditionModel`, `AutoencoderKL` and CLIP text encoder, laion's CLIP ViT-H
image tower, RoBERTa. Nothing here is copied from the authors' repository; names follow its checkpoint keys so that
pipelines/segmentation/vdit/convert.py maps them one to one (the deformable transformer is transformers' Deformable DETR encoder and
decoder, whose maths the spec checks against the repository's).

In order: preprocessing (section 1), the backbone's trained glue (section 2: ResidualMLP, the text-image
cross-attention, the noise predictor and its t = 0 mixing, the feature post-processing), the frozen UNet and VAE read
by forward hooks (2.6, 2.9), the head (section 3: text projection, query fusion, the deformable transformer with box
refinement, the dynamic mask head, the mask refinement, the query pick), post-processing (section 4), and one clip
end to end (`segment_clip`). The segmentation tab runs it as its "VD-IT" backend (pipelines/segmentation/pipeline.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Section 2.8: the UNet is read once at t = 0 of SD's scaled-linear schedule (0.00085 -> 0.012 over 1000 steps).
BETA_START, BETA_END, TRAIN_STEPS = 0.00085, 0.012, 1000


@dataclass(frozen=True)
class VDITConfig:
    """Sizes of the trained parts; the defaults are the released model's (reference/vdit.md sections 2-3)."""

    d_model: int = 256
    num_queries: int = 5
    layers: int = 4                    # encoder and decoder layers each
    heads: int = 8
    levels: int = 4
    points: int = 4
    ffn: int = 2048
    text_hidden: int = 768             # RoBERTa-base
    unet_text: int = 1024              # ModelScope's CLIP text width (the UNet's cross-attention width)
    vision_hidden: int = 1280          # CLIP ViT-H/14 token width
    cross_heads: int = 16
    cross_head_dim: int = 64
    cross_ffn: int = 512
    # act_postprocess per stride 4 / 8 / 16 / 32: (in, middle, out) channels of its two 1x1 convolutions. In = the VAE
    # tap's 512; cat(F0, U2) = 320 + 640; cat(F1, U1) = 320 + 1280; cat(F2, U0) = 640 + 1280.
    taps: tuple[tuple[int, int, int], ...] = ((512, 256, 128), (960, 512, 256), (1600, 1024, 512), (1920, 1024, 1024))
    dynamic_channels: int = 16         # the dynamic mask head's width
    refine_channels: int = 16          # the mask refinement's width
    group_norm: int = 32

    @property
    def controller_out(self) -> int:
        """Parameters of the dynamic head, per query: W1 (16 x 258) + W2 (16 x 16) + b1 + b2 = 4416."""
        c = self.dynamic_channels
        return (self.d_model + 2) * c + c + c * c + c


def t0_coefficients() -> tuple[float, float]:
    """(sqrt(alpha_bar_0), sqrt(1 - alpha_bar_0)) of SD's scaled-linear schedule, in float32 as diffusers computes it:
    0.9995749 and 0.0291551 (section 2.8)."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_STEPS, dtype=torch.float32) ** 2
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)[0]
    return float(alpha_bar.sqrt()), float((1 - alpha_bar).sqrt())


# ----------------------------------------------------------------- section 1: preprocessing
SHORT_SIDE = 360                   # frames are resized to this short side (no cap on the long one)
PAD_TO = 16                        # then zero-padded (in normalised space) at the bottom and right to a multiple
CHUNK_FRAMES = 36                  # Ref-DAVIS's clip length per forward (the original's CUDA kernel limit)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def caption(text: str) -> str:
    """The expression as training saw it: lower case, whitespace collapsed."""
    return " ".join(text.lower().split())


def resized_size(height: int, width: int, short_side: int = SHORT_SIDE) -> tuple[int, int]:
    """torchvision's Resize(int) on a PIL image: the short side to `short_side`, the long one int(short * long /
    short_old) (truncated)."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def prepare_frames(frames: np.ndarray, short_side: int = SHORT_SIDE
                   ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(T, H, W, 3) uint8 -> (normalised (T, 3, H', W') padded to /16, pad mask (T, H', W') True at padding,
    (h, w) unpadded): PIL bilinear resize, /255, ImageNet mean and std, zeros below and right."""
    from PIL import Image

    h, w = resized_size(*frames.shape[1:3], short_side)
    resized = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames])
    x = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    hp, wp = -(-h // PAD_TO) * PAD_TO, -(-w // PAD_TO) * PAD_TO
    padded = F.pad(x, (0, wp - w, 0, hp - h))
    pad = torch.ones(len(frames), hp, wp, dtype=torch.bool)
    pad[:, :h, :w] = False
    return padded, pad, (h, w)


def diffusion_pixels(normalised: torch.Tensor) -> torch.Tensor:
    """Section 2.1: back to [0, 1] then [-1, 1] for the VAE (padding becomes ImageNet's mean grey)."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (normalised * std + mean) * 2 - 1


def clip_images(pixels: torch.Tensor) -> list[np.ndarray]:
    """Section 2.2: [-1, 1] pixels -> uint8 as the original makes them, int((px + 1) * 127.5), truncated (not
    rounded), for CLIP's own processor (short side 224 bicubic, centre crop 224: CLIP sees the central square)."""
    u8 = ((pixels + 1) * 127.5).to(torch.uint8)          # truncation toward zero, values in [0, 255]
    return list(u8.permute(0, 2, 3, 1).numpy())


# ----------------------------------------------------------------- section 2: the backbone's trained glue
class ResidualMLP(nn.Module):
    """CLIP image tokens (1280) into the UNet's text width: a = linear1(v); out = linear2(a) + a."""

    def __init__(self, inputs: int, width: int):
        super().__init__()
        self.linear1 = nn.Linear(inputs, width)
        self.linear2 = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        a = self.linear1(tokens)
        return self.linear2(a) + a


class _HeadsAttention(nn.Module):
    """Multi-head attention, post-LN: LN(fc(softmax(q k^T / sqrt(d)) v) + query); no biases, LN eps 1e-6."""

    def __init__(self, width: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.w_qs = nn.Linear(width, heads * head_dim, bias=False)
        self.w_ks = nn.Linear(width, heads * head_dim, bias=False)
        self.w_vs = nn.Linear(width, heads * head_dim, bias=False)
        self.fc = nn.Linear(heads * head_dim, width, bias=False)
        self.layer_norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        split = lambda x: x.view(*x.shape[:2], self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.w_qs(query)), split(self.w_ks(key)), split(self.w_vs(value))
        weights = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim**0.5, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(*query.shape[:2], -1)
        return self.layer_norm(self.fc(out) + query)


class _FeedForward(nn.Module):
    """Position-wise feed-forward, post-LN: LN(w_2(relu(w_1 x)) + x), LN eps 1e-6."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(width, hidden)
        self.w_2 = nn.Linear(hidden, width)
        self.layer_norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.w_2(F.relu(self.w_1(x))) + x)


class TextImageCrossAttention(nn.Module):
    """Section 2.5: the prompt's CLIP text tokens attend to the frame's image tokens; the result, one per frame, is the
    UNet's encoder_hidden_states for that frame."""

    def __init__(self, width: int, heads: int, head_dim: int, hidden: int):
        super().__init__()
        self.cros_attn = _HeadsAttention(width, heads, head_dim)
        self.pos_ffn = _FeedForward(width, hidden)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.pos_ffn(self.cros_attn(text, image, image))


class NoisePredictor(nn.Module):
    """Section 2.7: the "video-specific noise" from the clip's own latents: a 3x3 convolution with its bias (the
    authors' `nn.Conv2d(4, 4, 3, padding=1)`, Text-To-Video-Finetuning/train_itcross_pn.py:236), then per pixel a
    two-layer MLP over the 4 channels (no biases) with a sigmoid, normalised over the whole clip tensor (unbiased
    std, + 1e-5)."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.noise_pred = nn.Conv2d(channels, channels, 3, padding=1)
        self.noise_fc = nn.Sequential(nn.Linear(channels, channels, bias=False), nn.ReLU(),
                                      nn.Linear(channels, channels, bias=False), nn.Sigmoid())

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (T, 4, h, w) -> noise of the same shape."""
        n = self.noise_pred(latents).permute(0, 2, 3, 1)
        n = self.noise_fc(n).permute(0, 3, 1, 2)
        return (n - n.mean()) / (n.std() + 1e-5)


def noised_latents(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z' = sqrt(alpha_bar_0) z + sqrt(1 - alpha_bar_0) n: the UNet's input at t = 0."""
    signal, spread = t0_coefficients()
    return signal * latents + spread * noise


class FeatureExtractorGlue(nn.Module):
    """The trained parts of the frozen backbone (checkpoint prefix `backbone.0.diff_ftex.`)."""

    def __init__(self, config: VDITConfig):
        super().__init__()
        self.projection = ResidualMLP(config.vision_hidden, config.unet_text)
        self.cross_attn = TextImageCrossAttention(config.unet_text, config.cross_heads, config.cross_head_dim,
                                                  config.cross_ffn)
        self.noise = NoisePredictor()
        self.act_postprocess = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, m, 1), nn.Conv2d(m, o, 1)) for i, m, o in config.taps)

    def frame_conditions(self, text: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """text (1, 77, 1024), image tokens (T, 257, 1280) -> C (T, 77, 1024), one condition per frame."""
        frames = image_tokens.shape[0]
        return self.cross_attn(text.expand(frames, -1, -1), self.projection(image_tokens))

    def pyramid(self, v4: torch.Tensor, taps: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Section 2.10: [P4, P8, P16, P32] from the VAE tap and the UNet's six maps (F0, F1, F2, U0, U1, U2)."""
        inputs = [v4, torch.cat([taps["F0"], taps["U2"]], 1), torch.cat([taps["F1"], taps["U1"]], 1),
                  torch.cat([taps["F2"], taps["U0"]], 1)]
        return [post(x) for post, x in zip(self.act_postprocess, inputs, strict=True)]


# ----------------------------------------------------------------- section 2.9: reading the frozen UNet
class _Done(Exception):
    """Raised by the last tap: nothing after up_blocks[2] is used (up_blocks[3], conv_out)."""


def _skipped(module, args, kwargs, output):
    """An identity forward hook: the module's input comes out unchanged, in its output's structure."""
    x = args[0] if args else kwargs["hidden_states"]
    return (x,) if isinstance(output, tuple) else x


@torch.no_grad()
def unet_taps(unet, latents: torch.Tensor, conditions: torch.Tensor) -> dict[str, torch.Tensor]:
    """The six maps VD-IT reads off a stock `UNet3DConditionModel` at t = 0 (section 2.9), by forward hooks on the
    unmodified model (section 6's recipe): latents (T, 4, h, w), conditions C (T, 77, D), one per frame ->
    {"F0": transformer_in, "F1": down_blocks[0], "F2": down_blocks[1], "U0"/"U1"/"U2": up_blocks[0..2]}.

    VD-IT's UNet differs from the stock one in three ways, each handled here: every block gets the frame's own
    condition (a pre-hook swaps `encoder_hidden_states`; the stock forward gets a one-frame dummy it repeats);
    it stops after up_blocks[2]; and with one frame it skips transformer_in and every temporal attention and
    temporal convolution except mid_block.temp_convs[0] (identity hooks; without them one frame differs)."""
    frames = latents.shape[0]
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    taps: dict[str, torch.Tensor] = {}

    def per_frame(module, args, kwargs):
        if "encoder_hidden_states" in kwargs:
            kwargs = {**kwargs, "encoder_hidden_states": conditions}
        return args, kwargs

    def keep(name: str, first: bool):
        def hook(module, args, output):
            taps[name] = output[0] if first else output
            if name == "U2":
                raise _Done
        return hook

    handles = [block.register_forward_pre_hook(per_frame, with_kwargs=True) for block in blocks]
    if frames == 1:      # registered before the taps: the taps see the skipped modules' inputs
        temporal = [m for block in blocks for m in (*getattr(block, "temp_attentions", ()),
                                                     *getattr(block, "temp_convs", ()))]
        for module in [unet.transformer_in, *temporal]:
            if module is not unet.mid_block.temp_convs[0]:
                handles.append(module.register_forward_hook(_skipped, with_kwargs=True))
    for name, module, first in (("F0", unet.transformer_in, True), ("F1", unet.down_blocks[0], True),
                                ("F2", unet.down_blocks[1], True), ("U0", unet.up_blocks[0], False),
                                ("U1", unet.up_blocks[1], False), ("U2", unet.up_blocks[2], False)):
        handles.append(module.register_forward_hook(keep(name, first)))
    try:
        sample = latents.permute(1, 0, 2, 3)[None].to(unet.dtype)        # (1, 4, T, h, w)
        unet(sample, 0, encoder_hidden_states=conditions[:1].to(unet.dtype))
    except _Done:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return taps


@torch.no_grad()
def vae_tap(vae, pixels: torch.Tensor, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels (T, 3, H, W) in [-1, 1] -> (latents z = sample * 0.18215 (T, 4, H/8, W/8), V4 = the output of
    encoder.down_blocks[2].resnets[1] (T, 512, H/4, W/4)). Section 2.6: the original samples the latent
    distribution (stochastic; seeded here by `generator`)."""
    seen: list[torch.Tensor] = []
    handle = vae.encoder.down_blocks[2].resnets[1].register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.sample(generator) * vae.config.scaling_factor
    finally:
        handle.remove()
    return latents, seen[0]


# ----------------------------------------------------------------- section 3: the head
def sine_positions_2d(pad: torch.Tensor, features: int = 128, temperature: float = 10000.0) -> torch.Tensor:
    """pad (T, h, w) True at padding -> (T, 2 * features, h, w): DETR's normalised sine embedding of the valid area,
    y then x, (cumsum - 0.5) / (last + 1e-6) * 2 pi (section 2.11): transformers' Deformable DETR embedding, which
    takes the mask the other way round (True = valid)."""
    from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrSinePositionEmbedding

    embed = DeformableDetrSinePositionEmbedding(num_position_features=features, temperature=temperature,
                                                normalize=True)
    frames, h, w = pad.shape
    return embed(shape=(frames, 1, h, w), device=pad.device, dtype=torch.float32, mask=~pad)


def sine_positions_1d(pad: torch.Tensor, features: int = 256, temperature: float = 10000.0) -> torch.Tensor:
    """pad (B, L) True at padding -> (B, L, features): the text's sine positions, x / (last + 1e-6) * 2 pi, with no
    -0.5 (section 3)."""
    x = (~pad).float().cumsum(1)
    x = x / (x[:, -1:] + 1e-6) * 2 * torch.pi
    dim = temperature ** (2 * (torch.arange(features, dtype=torch.float32) // 2) / features)
    p = x[..., None] / dim
    return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=3).flatten(2)


class FeatureResizer(nn.Module):
    """RoBERTa's 768 into d_model: Linear then LayerNorm (eps 1e-12)."""

    def __init__(self, inputs: int, width: int):
        super().__init__()
        self.fc = nn.Linear(inputs, width)
        self.layer_norm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.fc(x))


class QueryFusion(nn.Module):
    """Section 3: each query attends to the text (keys with positions) and is multiplied by what it read."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(width, heads)

    def forward(self, queries: torch.Tensor, text: torch.Tensor, text_pos: torch.Tensor, pad: torch.Tensor):
        """queries (Q, d), text (1, L, d), text_pos (1, L, d), pad (1, L) -> (Q, d)."""
        read = self.multihead_attn(queries[:, None], (text + text_pos).transpose(0, 1), text.transpose(0, 1),
                                   key_padding_mask=pad)[0]
        return queries * read[:, 0]


class MLP(nn.Module):
    def __init__(self, inputs: int, hidden: int, outputs: int, layers: int):
        super().__init__()
        sizes = [inputs] + [hidden] * (layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:] + [outputs], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


def dynamic_masks(params: torch.Tensor, features: torch.Tensor, centres: torch.Tensor, size: tuple[int, int],
                  channels: int) -> torch.Tensor:
    """Section 3's dynamic head for one query per frame. params (T, P), features (T, d, h, w) at stride 8, centres
    (T, 2) normalised (x, y), size (w, h) unpadded -> (T, channels, h, w).

    Each pixel gets its offset from the query's centre in unpadded pixels, centre x * w - (8 j + 4) (and y), as two
    extra channels; then a 1x1 convolution to `channels`, ReLU, and a 1x1 convolution, weights from `params`, which
    the authors' `parse_dynamic_params` splits all weights first, then all biases: [W1 | W2 | b1 | b2]
    (`torch.split_with_sizes(params, weight_nums + bias_nums)`, models/diffvos_cross.py:542)."""
    frames, d, h, w = features.shape
    ys = torch.arange(h, dtype=features.dtype, device=features.device) * 8 + 4
    xs = torch.arange(w, dtype=features.dtype, device=features.device) * 8 + 4
    width, height = size
    rel_x = centres[:, 0, None, None] * width - xs[None, None, :]
    rel_y = centres[:, 1, None, None] * height - ys[None, :, None]
    rel = torch.stack((rel_x.expand(frames, h, w), rel_y.expand(frames, h, w)), 1)
    x = torch.cat((features, rel), 1)
    c, inputs = channels, d + 2
    w1, w2, b1, b2 = params.split([inputs * c, c * c, c, c], dim=1)
    w1, w2 = w1.reshape(frames, c, inputs), w2.reshape(frames, c, c)
    x = F.relu(torch.einsum("toi,tihw->tohw", w1, x) + b1[..., None, None])
    return torch.einsum("toi,tihw->tohw", w2, x) + b2[..., None, None]


class MaskRefine(nn.Module):
    """Section 3's MSO: two residual 3x3 stages at strides 8 and 4 against P8 and P4, then pixel shuffle x4."""

    def __init__(self, channels: int, p8: int, p4: int):
        super().__init__()
        self.conv1_1div8 = nn.Conv2d(channels + p8, channels, 3, padding=1)
        self.conv2_1div8 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1_1div4 = nn.Conv2d(channels + p4, channels, 3, padding=1)
        self.conv2_1div4 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, masks: torch.Tensor, p8: torch.Tensor, p4: torch.Tensor) -> torch.Tensor:
        masks = masks + self.conv2_1div8(F.relu(self.conv1_1div8(F.relu(torch.cat((masks, p8), 1)))))
        masks = F.interpolate(masks, size=p4.shape[-2:], mode="bilinear", align_corners=False)
        masks = masks + self.conv2_1div4(F.relu(self.conv1_1div4(F.relu(torch.cat((masks, p4), 1)))))
        return F.pixel_shuffle(masks, 4)


def pick_query(logits: torch.Tensor) -> int:
    """logits (T, Q): the query whose score, averaged over the frames, is highest (section 3)."""
    return int(logits.sigmoid().mean(0).argmax())


def _deformable_config(config: VDITConfig):
    from transformers import DeformableDetrConfig

    # Post-norm layers, ReLU, no dropout at inference, box refinement, no two-stage: VD-IT's ReferFormer transformer.
    return DeformableDetrConfig(
        d_model=config.d_model, encoder_layers=config.layers, decoder_layers=config.layers,
        encoder_attention_heads=config.heads, decoder_attention_heads=config.heads, encoder_ffn_dim=config.ffn,
        decoder_ffn_dim=config.ffn, num_feature_levels=config.levels, encoder_n_points=config.points,
        decoder_n_points=config.points, activation_function="relu", dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, with_box_refine=True, two_stage=False, num_queries=config.num_queries,
    )


@dataclass
class HeadOutput:
    logits: torch.Tensor          # (T, Q) per frame and query
    boxes: torch.Tensor           # (T, Q, 4) normalised (cx, cy, w, h) after the last refinement
    query: int                    # the query picked (time-averaged score)
    mask_logits: torch.Tensor     # (T, 1, H_pad, W_pad) for the picked query


class VDITHead(nn.Module):
    """Section 3: text, queries, the deformable transformer (transformers' Deformable DETR encoder and decoder) with
    box refinement, and the picked query's mask through the dynamic head and the refinement."""

    def __init__(self, config: VDITConfig):
        from transformers.models.deformable_detr.modeling_deformable_detr import (
            DeformableDetrDecoder,
            DeformableDetrEncoder,
        )

        super().__init__()
        self.config = config
        d, levels = config.d_model, config.levels
        self.text_proj = FeatureResizer(config.text_hidden, d)
        self.fusion_module = QueryFusion(d, config.heads)
        self.query_tensors = nn.Parameter(torch.zeros(config.num_queries, d))
        self.query_embed = nn.Embedding(config.num_queries, d)
        widths = [out for _, _, out in config.taps[1:]]          # P8, P16, P32
        self.input_proj = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(w, d, 1), nn.GroupNorm(config.group_norm, d)) for w in widths]
            + [nn.Sequential(nn.Conv2d(widths[-1], d, 3, stride=2, padding=1), nn.GroupNorm(config.group_norm, d))])
        self.level_embed = nn.Parameter(torch.zeros(levels, d))
        self.reference_points = nn.Linear(d, 2)
        deformable = _deformable_config(config)
        self.encoder, self.decoder = DeformableDetrEncoder(deformable), DeformableDetrDecoder(deformable)
        self.bbox_embed = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(config.layers))
        self.class_embed = nn.ModuleList(nn.Linear(d, 1) for _ in range(config.layers))
        self.decoder.bbox_embed = self.bbox_embed                 # refinement inside the decoder, as the original
        self.controller = MLP(d, d, config.controller_out, 3)
        self.mask_refine = MaskRefine(config.refine_channels, config.taps[1][2], config.taps[0][2])

    def forward(self, pyramid: list[torch.Tensor], pad: torch.Tensor, size: tuple[int, int], text: torch.Tensor,
                text_pad: torch.Tensor) -> HeadOutput:
        """pyramid [P4, P8, P16, P32] of the clip's T frames; pad (T, H_pad, W_pad) True at padding; size (h, w)
        unpadded; text (1, L, 768) RoBERTa's last hidden state; text_pad (1, L) True at padding."""
        config, (p4, p8, p16, p32) = self.config, pyramid
        frames = p8.shape[0]
        words = self.text_proj(text)
        queries = self.fusion_module(self.query_tensors, words, sine_positions_1d(text_pad, config.d_model),
                                     text_pad)

        sources = [proj(x) for proj, x in zip(self.input_proj, (p8, p16, p32, p32), strict=True)]
        flat, positions, valid, shapes, ratios = [], [], [], [], []
        for level, source in enumerate(sources):
            h, w = source.shape[-2:]
            mask = F.interpolate(pad[None].float(), size=(h, w)).bool()[0]
            positions.append((sine_positions_2d(mask, config.d_model // 2).flatten(2).transpose(1, 2)
                              + self.level_embed[level]))
            flat.append(source.flatten(2).transpose(1, 2))
            valid.append((~mask).flatten(1))
            shapes.append((h, w))
            ratios.append(torch.stack([(~mask[:, 0, :]).sum(1) / w, (~mask[:, :, 0]).sum(1) / h], -1))
        flat, positions, valid = torch.cat(flat, 1), torch.cat(positions, 1), torch.cat(valid, 1)
        spatial = torch.as_tensor(shapes, dtype=torch.long, device=flat.device)
        starts = torch.cat((spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]))
        ratios = torch.stack(ratios, 1).to(flat.dtype)
        common = dict(spatial_shapes=spatial, spatial_shapes_list=shapes, level_start_index=starts,
                      valid_ratios=ratios)
        memory = self.encoder(inputs_embeds=flat, attention_mask=valid, spatial_position_embeddings=positions,
                              **common).last_hidden_state

        query_pos = self.query_embed.weight[None].expand(frames, -1, -1)
        decoded = self.decoder(inputs_embeds=queries[None].expand(frames, -1, -1), encoder_hidden_states=memory,
                               encoder_attention_mask=valid, object_queries_position_embeddings=query_pos,
                               reference_points=self.reference_points(query_pos).sigmoid(), **common)
        last = decoded.intermediate_hidden_states[:, -1]                 # (T, Q, d)
        boxes = decoded.intermediate_reference_points[:, -1]             # refined by the last layer: (T, Q, 4)
        logits = self.class_embed[-1](last)[..., 0]
        query = pick_query(logits)

        # Mask features: the encoder's stride-8/16/32 maps, bicubic to stride 8, summed.
        sizes = [h * w for h, w in shapes]
        maps = [m.transpose(1, 2).reshape(frames, config.d_model, *shape)
                for m, shape in zip(memory.split(sizes, 1)[:3], shapes[:3], strict=True)]
        features = sum(F.interpolate(m, size=shapes[0], mode="bicubic", align_corners=False) for m in maps)
        masks = dynamic_masks(self.controller(last[:, query]), features, boxes[:, query, :2], (size[1], size[0]),
                              config.dynamic_channels)
        return HeadOutput(logits, boxes, query, self.mask_refine(masks, p8, p4))


class VDIT(nn.Module):
    """Everything VD-IT trained: the backbone's glue and the head (pipelines/segmentation/vdit/convert.py loads the checkpoint)."""

    def __init__(self, config: VDITConfig | None = None):
        super().__init__()
        self.config = config or VDITConfig()
        self.glue = FeatureExtractorGlue(self.config)
        self.head = VDITHead(self.config)


def masks_at(mask_logits: torch.Tensor, size: tuple[int, int], original: tuple[int, int],
             threshold: float = 0.5) -> torch.Tensor:
    """Section 4: crop the padding, bilinear back to the video's own size, sigmoid > 0.5 -> (T, H, W) bool."""
    h, w = size
    logits = F.interpolate(mask_logits[:, :, :h, :w], size=original, mode="bilinear", align_corners=False)
    return logits[:, 0].sigmoid() > threshold


# ----------------------------------------------------------------- one clip, end to end (sections 1-4)
@dataclass
class VDITModels:
    """The loaded models one call needs (the cache places them; segmentation_models or tiny build them)."""

    unet: nn.Module               # UNet3DConditionModel (ModelScope)
    vae: nn.Module                # AutoencoderKL (ModelScope's)
    text_encoder: nn.Module       # CLIPTextModel (ModelScope's, 1024 wide)
    tokenizer: object             # CLIPTokenizer (ModelScope's)
    vision: nn.Module             # CLIPVisionModel(WithProjection): laion CLIP ViT-H/14
    vision_processor: object      # CLIPImageProcessorPil (short side 224 bicubic, centre crop 224)
    roberta: nn.Module            # RobertaModel (frozen)
    roberta_tokenizer: object     # RobertaTokenizer, padding="longest"
    trained: VDIT                 # the checkpoint's trained parts
    short_side: int = SHORT_SIDE


@dataclass
class ClipResult:
    masks: torch.Tensor           # (T, H, W) bool at the video's own size
    scores: torch.Tensor          # (T,) the picked query's score per frame
    queries: list[int]            # the query picked in each chunk


@torch.inference_mode()
def segment_clip(models: VDITModels, frames: np.ndarray, expression: str, chunk: int = CHUNK_FRAMES,
                 generator: torch.Generator | None = None) -> ClipResult:
    """frames (T, H, W, 3) uint8 + an expression -> masks, the paper's way: the whole clip, or chunks of `chunk`
    frames, each read once through the frozen backbone at t = 0 and decoded by the head; threshold 0.5."""
    text = caption(expression)
    # The trained parts run in float32 (the original keeps its deformable sampling in fp32) beside fp16 frozen models;
    # inputs go to each model's device, outputs come back to the head's.
    head_device = next(models.trained.parameters()).device
    on = lambda x, model: x.to(model.device)  # noqa: E731
    tokens = models.roberta_tokenizer([text], padding="longest", return_tensors="pt")
    words = models.roberta(**{k: on(v, models.roberta) for k, v in tokens.items()}).last_hidden_state.float()
    words_pad = (tokens.attention_mask != 1).to(head_device)
    ids = models.tokenizer(text, padding="max_length", max_length=models.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids
    prompt = models.text_encoder(on(ids, models.text_encoder))[0].float()      # (1, 77, width)
    glue, head = models.trained.glue, models.trained.head
    normalised, pad, size = prepare_frames(frames, models.short_side)
    masks, scores, queries = [], [], []
    for start in range(0, len(frames), chunk):
        part = slice(start, start + chunk)
        pixels = diffusion_pixels(normalised[part])
        images = models.vision_processor(images=clip_images(pixels), return_tensors="pt").pixel_values
        images = images.to(models.vision.device, models.vision.dtype)
        image_tokens = models.vision(images).last_hidden_state.to(head_device, torch.float32)
        conditions = glue.frame_conditions(prompt.to(head_device), image_tokens)
        latents, v4 = vae_tap(models.vae, on(pixels, models.vae), generator)
        latents = latents.to(head_device, torch.float32)
        taps = unet_taps(models.unet, noised_latents(latents, glue.noise(latents)).to(models.unet.device),
                         conditions.to(models.unet.device))
        taps = {k: v.to(head_device, torch.float32) for k, v in taps.items()}
        out = head(glue.pyramid(v4.to(head_device, torch.float32), taps), pad[part].to(head_device), size, words,
                   words_pad)
        masks.append(masks_at(out.mask_logits, size, frames.shape[1:3]).cpu())
        scores.append(out.logits[:, out.query].sigmoid().cpu())
        queries.append(out.query)
    return ClipResult(torch.cat(masks), torch.cat(scores), queries)
