"""VD-IT's trained parts against the formulas of reference/vdit.md, each written out independently here (section 8.3):
fixed random weights, the port's output against the maths, in fp32."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipelines.sd15 import tiny
from pipelines.segmentation.vdit import model as vdit
from pipelines.segmentation.vdit import tiny as vdit_tiny

TINY = vdit.VDITConfig(d_model=32, num_queries=3, layers=2, heads=4, points=2, ffn=64, text_hidden=24,
                       unet_text=48, vision_hidden=40, cross_heads=4, cross_head_dim=8, cross_ffn=20,
                       taps=((12, 8, 8), (20, 16, 16), (24, 16, 16), (28, 16, 32)), group_norm=8)


def seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module.eval()


def test_the_unet_is_read_at_t0_of_sds_scaled_linear_schedule():
    signal, spread = vdit.t0_coefficients()
    assert signal == pytest.approx(0.9995749, abs=5e-8) and spread == pytest.approx(0.0291551, abs=5e-8)
    z, n = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(vdit.noised_latents(z, n), signal * z + spread * n, rtol=0, atol=0)


def test_the_noise_predictor_is_conv_then_a_per_pixel_mlp_normalised_over_the_clip():
    module = seeded(vdit.NoisePredictor())
    z = torch.randn(3, 4, 5, 6)
    with torch.no_grad():
        conv = F.conv2d(z, module.noise_pred.weight, padding=1) + module.noise_pred.bias[:, None, None]
        w1, w2 = module.noise_fc[0].weight, module.noise_fc[2].weight
        pixels = conv.permute(0, 2, 3, 1).reshape(-1, 4)                   # every pixel's 4 channels
        n = torch.sigmoid(torch.relu(pixels @ w1.T) @ w2.T).reshape(3, 5, 6, 4).permute(0, 3, 1, 2)
        mean, std = n.mean(), (((n - n.mean()) ** 2).sum() / (n.numel() - 1)).sqrt()   # unbiased, whole tensor
        torch.testing.assert_close(module(z), (n - mean) / (std + 1e-5))


def test_residual_mlp_and_the_text_image_cross_attention_are_post_ln_with_eps_1e_6():
    glue = seeded(vdit.FeatureExtractorGlue(TINY))
    text, image = torch.randn(1, 7, 48), torch.randn(2, 9, 40)
    with torch.no_grad():
        p = glue.projection
        a = image @ p.linear1.weight.T + p.linear1.bias
        tokens = a @ p.linear2.weight.T + p.linear2.bias + a
        torch.testing.assert_close(p(image), tokens)

        att, ffn = glue.cross_attn.cros_attn, glue.cross_attn.pos_ffn
        q = (text.expand(2, -1, -1) @ att.w_qs.weight.T).view(2, 7, 4, 8)
        k, v = (tokens @ att.w_ks.weight.T).view(2, 9, 4, 8), (tokens @ att.w_vs.weight.T).view(2, 9, 4, 8)
        weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8), dim=-1)
        read = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 7, 32) @ att.fc.weight.T
        o = F.layer_norm(read + text, (48,), att.layer_norm.weight, att.layer_norm.bias, eps=1e-6)
        hidden = torch.relu(o @ ffn.w_1.weight.T + ffn.w_1.bias) @ ffn.w_2.weight.T + ffn.w_2.bias
        expected = F.layer_norm(hidden + o, (48,), ffn.layer_norm.weight, ffn.layer_norm.bias, eps=1e-6)
        torch.testing.assert_close(glue.frame_conditions(text, image), expected)
    assert att.layer_norm.eps == ffn.layer_norm.eps == 1e-6


def test_the_pyramid_concatenates_down_then_up_maps_per_stride():
    glue = seeded(vdit.FeatureExtractorGlue(TINY))
    taps = {"F0": torch.randn(1, 8, 8, 8), "F1": torch.randn(1, 8, 4, 4), "F2": torch.randn(1, 12, 2, 2),
            "U0": torch.randn(1, 16, 2, 2), "U1": torch.randn(1, 16, 4, 4), "U2": torch.randn(1, 12, 8, 8)}
    v4 = torch.randn(1, 12, 16, 16)
    with torch.no_grad():
        pyramid = glue.pyramid(v4, taps)
        two_convs = lambda post, x: post[1](post[0](x))  # noqa: E731  (two 1x1 convolutions, no activation)
        for level, (down, up) in ((1, ("F0", "U2")), (2, ("F1", "U1")), (3, ("F2", "U0"))):
            expected = two_convs(glue.act_postprocess[level], torch.cat([taps[down], taps[up]], 1))
            torch.testing.assert_close(pyramid[level], expected)
        torch.testing.assert_close(pyramid[0], two_convs(glue.act_postprocess[0], v4))
    assert [p.shape[1] for p in pyramid] == [8, 16, 16, 32]


def test_2d_sine_positions_follow_the_valid_area_with_the_half_offset_and_1d_has_none():
    pad = torch.zeros(2, 6, 7, dtype=torch.bool)
    pad[0, 4:, :], pad[1, :, 5:] = True, True
    ours = vdit.sine_positions_2d(pad, 16)
    assert ours.shape == (2, 32, 6, 7)
    dim = 10000 ** (2 * (torch.arange(16) // 2) / 16)
    # frame 0, row 2, column 3: 3 valid rows from the top of 4, 4 valid columns of 7
    y, x = (3 - 0.5) / (4 + 1e-6) * 2 * math.pi, (4 - 0.5) / (7 + 1e-6) * 2 * math.pi
    wave = lambda v: torch.stack([(v / d).sin() if i % 2 == 0 else (v / d).cos()  # noqa: E731
                                  for i, d in enumerate(dim)])
    torch.testing.assert_close(ours[0, :, 2, 3], torch.cat([wave(torch.tensor(y)), wave(torch.tensor(x))]))

    text_pad = torch.tensor([[False, False, False, True]])
    positions = vdit.sine_positions_1d(text_pad, 8)
    x = torch.tensor([1.0, 2.0, 3.0, 3.0]) / (3 + 1e-6) * 2 * math.pi            # cumsum / last, no -0.5
    dim = 10000 ** (2 * (torch.arange(8) // 2) / 8)
    expected = torch.stack([(x / d).sin() if i % 2 == 0 else (x / d).cos() for i, d in enumerate(dim)], -1)
    torch.testing.assert_close(positions[0], expected)


def test_query_fusion_multiplies_each_query_by_what_it_read_from_the_text():
    fusion = seeded(vdit.QueryFusion(32, 4))
    queries, text, pos = torch.randn(3, 32), torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    pad = torch.tensor([[False, False, False, False, True]])
    attn = fusion.multihead_attn
    with torch.no_grad():
        wq, wk, wv = attn.in_proj_weight.chunk(3)
        bq, bk, bv = attn.in_proj_bias.chunk(3)
        q = (queries @ wq.T + bq).view(3, 4, 8)
        k = ((text[0] + pos[0]) @ wk.T + bk).view(5, 4, 8)
        v = (text[0] @ wv.T + bv).view(5, 4, 8)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(8)
        scores[:, :, 4] = float("-inf")                                     # the padded word
        read = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(3, 32) @ attn.out_proj.weight.T
        expected = queries * (read + attn.out_proj.bias)
        torch.testing.assert_close(fusion(queries, text, pos, pad), expected)


def test_the_dynamic_head_uses_pixel_unit_offsets_from_the_query_centre():
    frames, d, h, w, c = 2, 6, 3, 4, 5
    params = torch.randn(frames, (d + 2) * c + c + c * c + c)
    features, centres = torch.randn(frames, d, h, w), torch.rand(frames, 2)
    size = (40, 30)                                                          # (w, h) of the unpadded frame
    out = vdit.dynamic_masks(params, features, centres, size, c)
    for t in range(frames):
        # The authors' parse_dynamic_params: all weights first, then all biases, [W1 | W2 | b1 | b2].
        w1 = params[t, :(d + 2) * c].view(c, d + 2)
        w2 = params[t, (d + 2) * c:(d + 2) * c + c * c].view(c, c)
        b1 = params[t, (d + 2) * c + c * c:(d + 2) * c + c * c + c]
        b2 = params[t, (d + 2) * c + c * c + c:]
        for i in range(h):
            for j in range(w):
                rel = torch.tensor([centres[t, 0] * 40 - (8 * j + 4), centres[t, 1] * 30 - (8 * i + 4)])
                pixel = torch.cat([features[t, :, i, j], rel])
                expected = w2 @ torch.relu(w1 @ pixel + b1) + b2
                torch.testing.assert_close(out[t, :, i, j], expected, rtol=1e-5, atol=1e-5)


def test_mask_refinement_is_two_residual_stages_then_a_pixel_shuffle():
    refine = seeded(vdit.MaskRefine(16, 8, 4))
    masks, p8, p4 = torch.randn(1, 16, 3, 5), torch.randn(1, 8, 3, 5), torch.randn(1, 4, 6, 10)
    with torch.no_grad():
        stage = lambda m, p, c1, c2: m + c2(torch.relu(c1(torch.relu(torch.cat([m, p], 1)))))  # noqa: E731
        m = stage(masks, p8, refine.conv1_1div8, refine.conv2_1div8)
        m = stage(F.interpolate(m, size=(6, 10), mode="bilinear", align_corners=False), p4, refine.conv1_1div4,
                  refine.conv2_1div4)
        shuffled = m.view(1, 1, 4, 4, 6, 10).permute(0, 1, 4, 2, 5, 3).reshape(1, 1, 24, 40)   # pixel_shuffle(4)
        torch.testing.assert_close(refine(masks, p8, p4), shuffled)


def test_the_query_is_picked_by_its_score_averaged_over_time():
    # Query 0: one very sure frame; query 1: steadily likely. The mean of the sigmoids picks 1 (0.335 against 0.731);
    # the best single frame would pick 0.
    logits = torch.tensor([[8.0, 1.0], [-6.0, 1.0], [-6.0, 1.0]])
    assert vdit.pick_query(logits) == 1 and int(logits.max(0).values.argmax()) == 0


def test_the_head_refines_2d_references_into_boxes_and_masks_the_padded_frame():
    head = seeded(vdit.VDITHead(TINY), seed=3)
    frames, height, width = 2, 64, 96
    pad = torch.zeros(frames, height, width, dtype=torch.bool)
    pad[:, 56:], pad[:, :, 88:] = True, True
    g = torch.Generator().manual_seed(1)
    pyramid = [torch.randn(frames, c, height // s, width // s, generator=g)
               for c, s in ((8, 4), (16, 8), (16, 16), (32, 32))]
    with torch.no_grad():
        out = head(pyramid, pad, (56, 88), torch.randn(1, 5, 24, generator=g), torch.tensor([[False] * 4 + [True]]))
    assert out.logits.shape == (frames, 3) and out.boxes.shape == (frames, 3, 4)   # 2-D refs became boxes
    assert out.mask_logits.shape == (frames, 1, height, width)
    assert out.query == vdit.pick_query(out.logits)
    masks = vdit.masks_at(out.mask_logits, (56, 88), (112, 176))
    assert masks.shape == (frames, 112, 176) and masks.dtype == torch.bool
    assert head.decoder.bbox_embed is head.bbox_embed                     # one module, two names (the aliases)


# ----------------------------------------------------------------- the frozen backbone's taps (section 8.1)
def tiny_unet3d():
    from diffusers import UNet3DConditionModel

    torch.manual_seed(5)
    unet = UNet3DConditionModel(
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=12,
        attention_head_dim=4, sample_size=8, in_channels=4, out_channels=4).eval()
    # diffusers zero-initialises each temporal convolution's last layer (an identity at init): give every weight a
    # value, as trained ones have, so that running or skipping a temporal layer shows in the maps.
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return unet


def direct_taps(unet, latents, conditions):
    """The same maps computed without hooks: UNet3DConditionModel's forward written out here block by block, every
    block given the per-frame conditions, and with one frame VD-IT's skips done by replacing the modules' forwards."""
    frames = latents.shape[0]
    emb = unet.time_embedding(unet.time_proj(torch.tensor([0])).to(unet.dtype)).repeat_interleave(frames, 0)
    sample = unet.conv_in(latents)
    sample = sample if frames == 1 else unet.transformer_in(sample, num_frames=frames, return_dict=False)[0]
    taps, residuals = {"F0": sample}, (sample,)
    for i, block in enumerate(unet.down_blocks):
        kwargs = dict(encoder_hidden_states=conditions) if getattr(block, "has_cross_attention", False) else {}
        sample, res = block(hidden_states=sample, temb=emb, num_frames=frames, **kwargs)
        residuals += res
        if i < 2:
            taps[f"F{i + 1}"] = sample
    sample = unet.mid_block(sample, emb, encoder_hidden_states=conditions, num_frames=frames)
    for i, block in enumerate(unet.up_blocks[:3]):
        res, residuals = residuals[-len(block.resnets):], residuals[:-len(block.resnets)]
        kwargs = dict(encoder_hidden_states=conditions) if getattr(block, "has_cross_attention", False) else {}
        sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, num_frames=frames,
                       upsample_size=residuals[-1].shape[2:], **kwargs)
        taps[f"U{i}"] = sample
    return taps


@pytest.mark.parametrize("frames", [1, 3])
def test_the_unet_hooks_give_exactly_the_maps_of_a_direct_per_frame_computation(frames, monkeypatch):
    unet = tiny_unet3d()
    g = torch.Generator().manual_seed(frames)
    latents, conditions = torch.randn(frames, 4, 12, 10, generator=g), torch.randn(frames, 7, 12, generator=g)
    hooked = vdit.unet_taps(unet, latents, conditions)
    if frames == 1:                       # VD-IT's one-frame path: no temporal layer but the mid-block's first conv
        blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
        for block in blocks:
            for attn in getattr(block, "temp_attentions", ()):
                monkeypatch.setattr(attn, "forward", lambda hidden_states, *a, **k: (hidden_states,))
            for conv in getattr(block, "temp_convs", ()):
                if conv is not unet.mid_block.temp_convs[0]:
                    monkeypatch.setattr(conv, "forward", lambda hidden_states, *a, **k: hidden_states)
    with torch.no_grad():
        expected = direct_taps(unet, latents, conditions)
    assert hooked.keys() == expected.keys() == {"F0", "F1", "F2", "U0", "U1", "U2"}
    for name in expected:
        torch.testing.assert_close(hooked[name], expected[name], rtol=0, atol=0, msg=name)
    assert [hooked[n].shape[1] for n in ("F0", "F1", "F2", "U0", "U1", "U2")] == [8, 8, 16, 16, 16, 16]
    assert not unet._forward_hooks and not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def test_one_frame_differs_without_vdits_skips():
    unet = tiny_unet3d()
    latents, conditions = torch.randn(1, 4, 12, 10), torch.randn(1, 7, 12)
    with torch.no_grad():
        stock = direct_taps(unet, latents, conditions)      # transformer_in skipped, temporal layers run (stock)
    hooked = vdit.unet_taps(unet, latents, conditions)
    assert not torch.equal(hooked["U2"], stock["U2"])


def test_the_vae_tap_is_down_block_2s_second_resnet_and_the_latent_is_scaled():
    from diffusers import AutoencoderKL

    torch.manual_seed(4)      # SD's VAE layout at toy width: four blocks, two resnets each
    vae = AutoencoderKL(block_out_channels=(4, 8, 8, 8), layers_per_block=2, latent_channels=4, norm_num_groups=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    pixels = torch.rand(2, 3, 64, 48) * 2 - 1
    latents, v4 = vdit.vae_tap(vae, pixels, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = vae.encoder.conv_in(pixels)
        for block in vae.encoder.down_blocks[:2]:
            x = block(x)
        for resnet in vae.encoder.down_blocks[2].resnets:
            x = resnet(x, None)
        torch.testing.assert_close(v4, x, rtol=0, atol=0)
        moments = vae.quant_conv(vae.encoder(pixels)) if vae.quant_conv is not None else vae.encoder(pixels)
        mean, logvar = moments.chunk(2, dim=1)
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
        expected = (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise) * vae.config.scaling_factor
        torch.testing.assert_close(latents, expected)
    assert v4.shape == (2, 8, 16, 12)


# ----------------------------------------------------------------- the checkpoint (section 8.4)
def repository_checkpoint(model: vdit.VDIT, aliases: bool = True) -> dict[str, torch.Tensor]:
    """The model's weights under the authors' names (reference/vdit.md section 5), written out here key by key:
    nn.MultiheadAttention's packed in_proj, norm1/linear1 names, shared modules twice, frozen keys too."""
    ours = model.state_dict()
    out = {}
    for key, value in ours.items():
        if key.startswith("head.decoder.bbox_embed."):
            continue
        if key.startswith("glue."):
            rest = key.removeprefix("glue.").removeprefix("noise.")
            out[f"backbone.0.diff_ftex.{rest}"] = value
            if aliases and rest.startswith("act_postprocess."):
                level = int(rest.split(".")[1])
                out[f"backbone.0.diff_ftex.act_{level + 1}_postprocess." + rest.split(".", 2)[2]] = value
        elif key.startswith(("head.encoder.layers.", "head.decoder.layers.")):
            side, index, rest = key.split(".", 4)[1], key.split(".")[3], key.split(".", 4)[4]
            names = {"self_attn_layer_norm": "norm1", "mlp.fc1": "linear1", "mlp.fc2": "linear2",
                     "final_layer_norm": "norm2"} if side == "encoder" else {
                "encoder_attn_layer_norm": "norm1", "self_attn_layer_norm": "norm2", "mlp.fc1": "linear1",
                "mlp.fc2": "linear2", "final_layer_norm": "norm3", "encoder_attn": "cross_attn",
                "self_attn.o_proj": "self_attn.out_proj"}
            if side == "decoder" and rest.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                continue
            for new, old in names.items():
                if rest.startswith(new):
                    rest = old + rest[len(new):]
                    break
            out[f"transformer.{side}.layers.{index}.{rest}"] = value
        elif key in ("head.level_embed",) or key.startswith("head.reference_points."):
            out["transformer." + key.removeprefix("head.")] = value
        else:
            out[key.removeprefix("head.")] = value
            if aliases and key.startswith("head.bbox_embed."):
                out["transformer.decoder." + key.removeprefix("head.")] = value
    for index in range(model.config.layers):
        prefix = f"head.decoder.layers.{index}.self_attn."
        for kind in ("weight", "bias"):
            out[f"transformer.decoder.layers.{index}.self_attn.in_proj_{kind}"] = torch.cat(
                [ours[f"{prefix}{p}_proj.{kind}"] for p in "qkv"])
    out["backbone.0.diff_ftex.unet.conv_in.weight"] = torch.zeros(1)            # frozen parts, if the file has them
    out["text_encoder.text_backbone.embeddings.position_ids"] = torch.arange(3)
    return out


def test_a_checkpoint_in_the_repositorys_layout_loads_every_trained_weight():
    source, target = seeded(vdit.VDIT(TINY), seed=7), vdit.VDIT(TINY)
    from pipelines.segmentation.vdit.convert import vdit_state_dict

    for aliases in (True, False):
        state = vdit_state_dict({"model": repository_checkpoint(source, aliases)}, target)
        target.load_state_dict(state, strict=True)
        for name, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[name], value), name


def test_a_checkpoint_that_does_not_fit_names_every_key():
    from pipelines.sd15.lora import ConversionError
    from pipelines.segmentation.vdit.convert import vdit_state_dict

    model = seeded(vdit.VDIT(TINY))
    checkpoint = repository_checkpoint(model)
    del checkpoint["mask_refine.conv1_1div8.weight"]
    checkpoint["backbone.0.diff_ftex.noise_gate.weight"] = torch.zeros(4)                # a part we do not have
    checkpoint["controller.layers.2.weight"] = torch.zeros(7, 32)
    checkpoint["transformer.decoder.bbox_embed.0.layers.0.bias"] = torch.ones(32)       # an alias that disagrees
    with pytest.raises(ConversionError) as error:
        vdit_state_dict(checkpoint, vdit.VDIT(TINY))
    text = str(error.value)
    for part in ("head.mask_refine.conv1_1div8.weight: missing", "noise_gate.weight: no place",
                 "controller.layers.2.weight: shape (7, 32)", "an alias of head.bbox_embed.0.layers.0.bias"):
        assert part in text, part


# ----------------------------------------------------------------- preprocessing (section 8.5)
def test_frames_are_resized_to_a_360_short_side_and_padded_to_16_with_grey_for_the_vae():
    import numpy as np
    from PIL import Image

    frames = np.random.default_rng(0).integers(0, 256, (2, 480, 854, 3), dtype=np.uint8)
    normalised, pad, size = vdit.prepare_frames(frames)
    assert size == (360, 640) and normalised.shape == (2, 3, 368, 640) and pad.shape == (2, 368, 640)
    assert pad[:, 360:].all() and not pad[:, :360].any()
    expected = np.asarray(Image.fromarray(frames[1]).resize((640, 360), Image.BILINEAR)).astype(np.float32) / 255
    mean, std = np.array(vdit.IMAGENET_MEAN), np.array(vdit.IMAGENET_STD)
    np.testing.assert_allclose(normalised[1, :, :360].permute(1, 2, 0).numpy(), (expected - mean) / std, atol=1e-5)
    assert torch.all(normalised[:, :, 360:] == 0)
    grey = vdit.diffusion_pixels(normalised)[0, :, 365, 10]
    torch.testing.assert_close(grey, torch.tensor(mean, dtype=torch.float32) * 2 - 1)
    assert vdit.resized_size(854, 480) == (640, 360) and vdit.resized_size(100, 333) == (360, 1198)


def test_clips_images_are_truncated_not_rounded_and_captions_normalised():
    pixels = torch.tensor([-1.0, -0.9161, 0.0, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    (image,) = vdit.clip_images(pixels)
    assert image[0, :, 0].tolist() == [0, 10, 127, 255]          # (-0.9161 + 1) * 127.5 = 10.7 -> 10; 127.5 -> 127
    assert vdit.caption("  The DOG\n on the   left ") == "the dog on the left"


# ----------------------------------------------------------------- end to end on the tiny models
def test_a_clip_is_segmented_end_to_end_deterministically_by_seed_in_chunks():
    import numpy as np


    models = vdit_tiny.vdit_models()
    frames = np.random.default_rng(0).integers(0, 256, (5, 72, 96, 3), dtype=np.uint8)
    run = lambda chunk, seed: vdit.segment_clip(models, frames, "the dog on the left", chunk=chunk,  # noqa: E731
                                                generator=torch.Generator().manual_seed(seed))
    whole = run(36, 0)
    assert whole.masks.shape == (5, 72, 96) and whole.masks.dtype == torch.bool
    assert whole.scores.shape == (5,) and ((whole.scores > 0) & (whole.scores < 1)).all()
    assert len(whole.queries) == 1 and 0 <= whole.queries[0] < 3
    again = run(36, 0)
    assert torch.equal(whole.masks, again.masks) and torch.equal(whole.scores, again.scores)
    chunked = run(2, 0)
    assert len(chunked.queries) == 3 and chunked.masks.shape == (5, 72, 96)


# ----------------------------------------------------------------- through the segmentation tab's API
def test_the_segment_endpoint_runs_vdit_with_the_same_outputs_and_its_scores(client, tmp_path):
    import numpy as np
    from gradio_client import handle_file

    from pipelines.core.video import read_video, write_mp4

    frames = np.random.default_rng(2).integers(0, 256, (6, 48, 64, 3), dtype=np.uint8)
    path = write_mp4(frames, tmp_path / "clip.mp4", fps=8)
    overlay, key_image, archive, rle, plot, explanation, info = client.predict(
        video=handle_file(str(path)), expression="the dog on the left", backend="vdit", api_name="/segment")
    decoded, fps, codec = read_video(overlay)
    assert decoded.shape == (6, 48, 64, 3) and codec == "h264"
    assert info["backend"] == "vdit" and len(info["query_scores"]) == 6 and info["object_ids"] == [1]
    assert info["key_frame"] == int(np.argmax(info["query_scores"]))
    assert "CC-BY-NC-4.0" in explanation and "score per frame" in explanation
    assert {"queue_wait", "read_video", "load", "vdit", "export"} <= set(info["timings"])
    again = client.predict(video=handle_file(str(path)), expression="the dog on the left", backend="vdit",
                           api_name="/segment")[-1]
    assert again["query_scores"] == info["query_scores"]                 # the latent's seed is fixed


def test_vdit_refuses_clicks_and_unknown_backends_clearly(client, tmp_path):
    import numpy as np
    from gradio_client import handle_file

    from pipelines.core.video import write_mp4

    path = write_mp4(np.zeros((4, 48, 64, 3), np.uint8), tmp_path / "clip.mp4", fps=8)
    with pytest.raises(Exception, match="VD-IT takes no refinement clicks"):
        client.predict(video=handle_file(str(path)), expression="the dog", backend="vdit",
                       clicks='[{"frame": 0, "x": 5, "y": 5}]', api_name="/segment_refine")
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict(video=handle_file(str(path)), expression="the dog", backend="sam3", api_name="/segment")


def test_vdit_downloads_name_every_hub_file_it_reads():
    from pipelines.segmentation.models import CLIP_H, MODELSCOPE, ROBERTA, VDIT_REPO, SegmentationRegistry

    files = {(f.repo_id, f.filename) for f in SegmentationRegistry("real").vdit_downloads()}
    assert {repo for repo, _ in files} == {VDIT_REPO, MODELSCOPE, CLIP_H, ROBERTA}
    assert (MODELSCOPE, "unet/diffusion_pytorch_model.fp16.safetensors") in files
    keys = [c.key for c in SegmentationRegistry("real").vdit().all()]
    assert len(set(keys)) == 9 and not any("h94/IP-Adapter" in k for k in keys)   # its own CLIP-H entry
    assert SegmentationRegistry("real").vdit().short_side == 360                   # the paper's frames


def test_the_vdit_bench_runs_and_ends_with_seconds_per_frame():
    import re

    from tests.bench_smoke import smoke

    done = smoke("vdit.py")             # the suite's one smoke run of it: --size tiny --frames 2
    assert done.args[:4] == ["--size", "tiny", "--frames", "2"] and done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    figures = dict(line.split(": ", 1) for line in lines)
    assert lines[-1].startswith("vdit_s_per_frame: ") and float(figures["vdit_s_per_frame"]) > 0
    # both printed to 4 decimals, each rounded on its own: clip = 2 × frame to within 0.5e-4 + 2 × 0.5e-4
    assert float(figures["vdit_s_per_clip"]) == pytest.approx(2 * float(figures["vdit_s_per_frame"]), abs=1.6e-4)
    assert float(figures["vdit_floor_s_per_frame"]) > 0 and re.fullmatch(r"\(2, 72, 128\)", figures["vdit_masks_shape"])


def test_the_released_configuration_has_the_checkpoints_30_04_m_trained_parameters():
    """reference/vdit.md section 5 counts the trained parameters of the authors' model: 30.04 M in all, 11.31 M in the
    deformable transformer, 0.53 M in the box heads, 2.82 M in the input projections. The port's modules, biases
    included, must add up to the same."""
    model = vdit.VDIT()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731  (shared modules once)
    head = model.head
    transformer = (count(head.encoder) + count(head.decoder) - count(head.bbox_embed) + head.level_embed.numel()
                   + count(head.reference_points))
    assert round(count(model) / 1e6, 2) == 30.04
    assert (round(transformer / 1e6, 2), round(count(head.bbox_embed) / 1e6, 2),
            round(count(head.input_proj) / 1e6, 2)) == (11.31, 0.53, 2.82)
    assert head.controller.layers[-1].weight.shape == (4416, 256)


def test_the_real_loader_reads_the_checkpoint_file_from_the_hub_layout(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from pipelines.segmentation.models import VDIT_CHECKPOINT, VDIT_REPO, _vdit_trained
    from tests.test_real_identity_loading import snapshot

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = seeded(vdit.VDIT(TINY), seed=9)
    torch.save({"model": repository_checkpoint(source), "epoch": 9}, snapshot(VDIT_REPO) / VDIT_CHECKPOINT)
    loaded = _vdit_trained(TINY, check_frozen=False)      # no ModelScope configs here to list the frozen keys
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())


# ----------------------------------------------------------------- deformable attention and box refinement
def test_deformable_attention_samples_bilinearly_as_the_formula_says():
    """transformers' MultiScaleDeformableAttention core (what the port runs) against bilinear sampling written out:
    location l in [0, 1] -> pixel l * size - 0.5, four neighbours weighted by distance, zeros outside."""
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    heads, dim, queries, points = 2, 3, 2, 2
    value = torch.randn(1, sum(h * w for h, w in shapes), heads, dim, generator=g)
    locations = torch.rand(1, queries, heads, len(shapes), points, 2, generator=g) * 1.2 - 0.1
    weights = torch.rand(1, queries, heads, len(shapes), points, generator=g)
    ours = MultiScaleDeformableAttention()(value, torch.tensor(shapes), shapes, torch.tensor([0, 12]), locations,
                                           weights, im2col_step=64)
    starts = [0, 12]
    expected = torch.zeros(1, queries, heads * dim)
    for q in range(queries):
        for h in range(heads):
            total = torch.zeros(dim)
            for lvl, (height, width) in enumerate(shapes):
                grid = value[0, starts[lvl]:starts[lvl] + height * width, h].view(height, width, dim)
                for p in range(points):
                    x = float(locations[0, q, h, lvl, p, 0]) * width - 0.5
                    y = float(locations[0, q, h, lvl, p, 1]) * height - 0.5
                    x0, y0 = math.floor(x), math.floor(y)
                    sample = torch.zeros(dim)
                    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                            if 0 <= yy < height and 0 <= xx < width:
                                sample += wy * wx * grid[yy, xx]
                    total += weights[0, q, h, lvl, p] * sample
            expected[0, q, h * dim:(h + 1) * dim] = total
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_box_refinement_adds_the_2d_reference_to_xy_first_then_the_whole_box():
    head = seeded(vdit.VDITHead(TINY), seed=3)
    recorded = []
    for index, layer in enumerate(head.decoder.layers):
        layer.register_forward_hook(lambda m, a, out, i=index: recorded.append(out))
    frames, height, width = 1, 64, 64
    pad = torch.zeros(frames, height, width, dtype=torch.bool)
    pyramid = [torch.randn(frames, c, height // s, width // s) for c, s in ((8, 4), (16, 8), (16, 16), (32, 32))]
    with torch.no_grad():
        out = head(pyramid, pad, (64, 64), torch.randn(1, 4, 24), torch.zeros(1, 4, dtype=torch.bool))
        logit = lambda x: torch.log(x.clamp(1e-5, 1) / (1 - x).clamp(1e-5, 1))  # noqa: E731  (inverse sigmoid)
        reference = head.reference_points(head.query_embed.weight).sigmoid()[None]      # (1, Q, 2)
        first = head.bbox_embed[0](recorded[0])
        first = torch.cat([first[..., :2] + logit(reference), first[..., 2:]], -1).sigmoid()    # 2-D: x, y only
        second = (head.bbox_embed[1](recorded[1]) + logit(first)).sigmoid()                     # 4-D: the whole box
    torch.testing.assert_close(out.boxes, second)


def test_the_texts_are_tokenised_as_the_original_does(monkeypatch):
    import numpy as np


    models = vdit_tiny.vdit_models()
    seen = {}
    roberta, clip = models.roberta_tokenizer, models.tokenizer
    models.roberta_tokenizer = lambda texts, **kw: seen.setdefault("roberta", (texts, kw)) and roberta(texts, **kw)
    models.tokenizer = type("Spy", (), {"model_max_length": clip.model_max_length,
                                        "__call__": lambda self, text, **kw: seen.setdefault("clip", (text, kw))
                                        and clip(text, **kw)})()
    vdit.segment_clip(models, np.zeros((1, 40, 40, 3), np.uint8), "  The DOG  on the left ",
                      generator=torch.Generator().manual_seed(0))
    assert seen["roberta"] == (["the dog on the left"], {"padding": "longest", "return_tensors": "pt"})
    text, kwargs = seen["clip"]
    assert text == "the dog on the left" and kwargs["padding"] == "max_length" and kwargs["max_length"] == 77
    assert kwargs["truncation"] is True


def test_frozen_keys_in_the_checkpoint_must_be_the_stock_models_own():
    from pipelines.sd15.lora import ConversionError
    from pipelines.segmentation.vdit.convert import vdit_state_dict

    model = seeded(vdit.VDIT(TINY))
    checkpoint = repository_checkpoint(model)
    stock = {"backbone.0.diff_ftex.unet.": {"conv_in.weight", "conv_in.bias"}}
    vdit_state_dict(checkpoint, vdit.VDIT(TINY), frozen=stock)                  # conv_in.weight: the stock UNet's
    checkpoint["backbone.0.diff_ftex.unet.input_fft.weight"] = torch.zeros(1)  # a layer the stock UNet lacks
    with pytest.raises(ConversionError, match="unet.input_fft.weight: the stock frozen model has no such weight"):
        vdit_state_dict(checkpoint, vdit.VDIT(TINY), frozen=stock)


def test_the_frozen_keys_come_from_the_stock_models_built_from_the_hub_configs(monkeypatch, tmp_path):
    from huggingface_hub import constants
    from transformers import CLIPConfig

    from pipelines.segmentation.models import (
        CLIP_H,
        MODELSCOPE,
        ROBERTA,
        VDIT_CHECKPOINT,
        VDIT_REPO,
        _frozen_keys,
        _vdit_trained,
    )
    from tests.test_real_identity_loading import snapshot
    from tests.test_real_loading import write_complete

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    models = vdit_tiny.vdit_models()
    folder = snapshot(MODELSCOPE)
    models.unet.save_config(folder / "unet")
    models.vae.save_config(folder / "vae")
    models.text_encoder.config.save_pretrained(folder / "text_encoder")
    CLIPConfig(vision_config=models.vision.config.to_dict()).save_pretrained(snapshot(CLIP_H))
    models.roberta.config.save_pretrained(snapshot(ROBERTA))
    weights = ("unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
               "text_encoder/model.fp16.safetensors", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
               "tokenizer/tokenizer_config.json", "tokenizer/vocab.json")
    for repo, files in ((MODELSCOPE, weights),
                        (CLIP_H, ("model.safetensors",)),
                        (ROBERTA, ("model.safetensors", "merges.txt", "vocab.json", "tokenizer.json"))):
        for name in files:
            write_complete(snapshot(repo) / name)
    keys = _frozen_keys()
    assert keys["backbone.0.diff_ftex.unet."] == set(models.unet.state_dict())
    assert keys["text_encoder.text_backbone."] == set(models.roberta.state_dict())
    source = seeded(vdit.VDIT(TINY), seed=9)
    checkpoint = repository_checkpoint(source)
    checkpoint.pop("backbone.0.diff_ftex.unet.conv_in.weight")           # the helper's placeholder, not the stock shape
    checkpoint |= {f"backbone.0.diff_ftex.unet.{k}": v for k, v in models.unet.state_dict().items()}
    torch.save({"model": checkpoint}, snapshot(VDIT_REPO) / VDIT_CHECKPOINT)
    loaded = _vdit_trained(TINY)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())


def test_the_checkpoint_is_found_rather_than_assumed(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from pipelines.core.errors import WeightsError
    from pipelines.segmentation.models import VDIT_CHECKPOINT, VDIT_REPO, vdit_checkpoint
    from tests.test_real_identity_loading import snapshot

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("STUDIO_VDIT_CHECKPOINT", raising=False)
    assert vdit_checkpoint() == VDIT_CHECKPOINT                        # offline, nothing cached: the default name
    (snapshot(VDIT_REPO) / "ytvos_r50_vdit.pth").write_bytes(b"x")
    (snapshot(VDIT_REPO) / "README.md").write_text("card")
    assert vdit_checkpoint() == "ytvos_r50_vdit.pth"                     # the one weight file there
    (snapshot(VDIT_REPO) / "davis.pth").write_bytes(b"x")
    with pytest.raises(WeightsError, match="several weight files .*davis.pth, ytvos_r50_vdit.pth.*STUDIO_VDIT"):
        vdit_checkpoint()
    monkeypatch.setenv("STUDIO_VDIT_CHECKPOINT", "davis.pth")
    assert vdit_checkpoint() == "davis.pth"


def test_the_real_loaders_read_modelscope_clip_h_and_roberta_from_their_hub_layouts(monkeypatch, tmp_path):
    import json

    from huggingface_hub import constants
    from transformers import CLIPConfig, CLIPModel

    from pipelines.core.cache import ModelCache
    from pipelines.segmentation.models import CLIP_H, MODELSCOPE, ROBERTA, SegmentationRegistry
    from tests.test_real_identity_loading import snapshot
    from tests.test_real_loading import write_clip_tokenizer

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    models = vdit_tiny.vdit_models()
    folder = snapshot(MODELSCOPE)
    models.unet.save_pretrained(folder / "unet", variant="fp16")
    models.vae.save_pretrained(folder / "vae", variant="fp16")
    models.text_encoder.save_pretrained(folder / "text_encoder", variant="fp16")
    vocab, merges = tiny._vocabulary()
    write_clip_tokenizer(folder / "tokenizer", vocab, merges)
    torch.manual_seed(1)
    clip = CLIPModel(CLIPConfig(vision_config=models.vision.config.to_dict(),
                                text_config=dict(hidden_size=8, intermediate_size=8, num_attention_heads=2,
                                                 num_hidden_layers=1, vocab_size=50))).eval()
    clip.save_pretrained(snapshot(CLIP_H))                        # laion's repository holds the whole CLIP model
    models.roberta.save_pretrained(snapshot(ROBERTA))
    # What roberta-base's repository has: vocab.json, merges.txt and tokenizer.json (no tokenizer_config.json).
    models.roberta_tokenizer.save_pretrained(tmp_path / "roberta-tok")
    (snapshot(ROBERTA) / "tokenizer.json").write_bytes((tmp_path / "roberta-tok" / "tokenizer.json").read_bytes())
    (snapshot(ROBERTA) / "vocab.json").write_text(json.dumps(vdit_tiny._roberta_vocab()))
    (snapshot(ROBERTA) / "merges.txt").write_text("#version: 0.2\n")

    parts = SegmentationRegistry("real").vdit()
    cache = ModelCache("cpu")
    same = lambda a, b: all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())  # noqa: E731
    with cache.use(parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, parts.vision, parts.roberta,
                   parts.roberta_tokenizer, parts.vision_processor) as (unet, vae, text, tok, vision, roberta,
                                                                         rtok, processor):
        assert same(unet, models.unet) and same(vae, models.vae) and same(text, models.text_encoder)
        assert same(vision, clip.vision_model)                                 # the vision tower of the full model
        assert same(roberta, models.roberta)
        assert tok("the dog").input_ids == models.tokenizer("the dog").input_ids
        assert rtok("the dog").input_ids == models.roberta_tokenizer("the dog").input_ids
        assert processor.crop_size["height"] == 224                            # CLIP's own 224 crop, PIL maths


def test_post_processing_crops_the_padding_before_resizing_and_thresholds_at_half():
    logits = torch.full((1, 1, 8, 8), -5.0)
    logits[:, :, :4, :4] = 0.2                      # the unpadded 4 x 4: sigmoid 0.55, just above the threshold
    masks = vdit.masks_at(logits, (4, 4), (8, 8))
    assert masks.shape == (1, 8, 8) and masks.all()   # without the crop only a quarter would be in the mask
