"""VD-IT against facts that do not come from the port: the authors' trained keys and shapes (listed here from their
module definitions, as reference/vdit.md section 5 describes them), the constants as literals, and the wiring of
segment_clip (what reaches each model), so that a mistake in the spec or the port shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.segmentation.vdit import model as vdit
from pipelines.segmentation.vdit import tiny as vdit_tiny
from pipelines.segmentation.vdit.convert import vdit_state_dict


# ----------------------------------------------------------------- the authors' trained keys
def authors_trained_keys(d=256, queries=5, layers=4, heads=8, levels=4, points=4, ffn=2048) -> dict[str, tuple]:
    """The released model's trained tensors, by the authors' names and shapes (ReferFormer's deformable transformer,
    MSDeformAttn, nn.MultiheadAttention with a packed in_proj; the backbone's glue with its nn.Conv2d(4, 4, 3) noise
    convolution and its bias; the dynamic head's 4416-output controller)."""
    keys: dict[str, tuple] = {}

    def linear(name, out, inp, bias=True):
        keys[f"{name}.weight"] = (out, inp)
        if bias:
            keys[f"{name}.bias"] = (out,)

    def norm(name, width):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (width,), (width,)

    def conv(name, out, inp, k):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (out, inp, k, k), (out,)

    def deformable(name):
        linear(f"{name}.sampling_offsets", heads * levels * points * 2, d)
        linear(f"{name}.attention_weights", heads * levels * points, d)
        linear(f"{name}.value_proj", d, d)
        linear(f"{name}.output_proj", d, d)

    def multihead(name):
        keys[f"{name}.in_proj_weight"], keys[f"{name}.in_proj_bias"] = (3 * d, d), (3 * d,)
        linear(f"{name}.out_proj", d, d)

    for i in range(layers):
        e = f"transformer.encoder.layers.{i}"
        deformable(f"{e}.self_attn")
        norm(f"{e}.norm1", d), linear(f"{e}.linear1", ffn, d), linear(f"{e}.linear2", d, ffn), norm(f"{e}.norm2", d)
        dec = f"transformer.decoder.layers.{i}"
        deformable(f"{dec}.cross_attn")
        norm(f"{dec}.norm1", d), multihead(f"{dec}.self_attn"), norm(f"{dec}.norm2", d)
        linear(f"{dec}.linear1", ffn, d), linear(f"{dec}.linear2", d, ffn), norm(f"{dec}.norm3", d)
        for j, (out, inp) in enumerate(((d, d), (d, d), (4, d))):
            linear(f"bbox_embed.{i}.layers.{j}", out, inp)
        linear(f"class_embed.{i}", 1, d)
    keys["transformer.level_embed"] = (levels, d)
    linear("transformer.reference_points", 2, d)
    keys["query_tensors"], keys["query_embed.weight"] = (queries, d), (queries, d)
    linear("text_proj.fc", d, 768), norm("text_proj.layer_norm", d)
    multihead("fusion_module.multihead_attn")
    for i, width in enumerate((256, 512, 1024)):
        conv(f"input_proj.{i}.0", d, width, 1), norm(f"input_proj.{i}.1", d)
    conv("input_proj.3.0", d, 1024, 3), norm("input_proj.3.1", d)
    for j, out in enumerate((d, d, 16 * 258 + 16 * 16 + 16 + 16)):
        linear(f"controller.layers.{j}", out, d)
    conv("mask_refine.conv1_1div8", 16, 16 + 256, 3), conv("mask_refine.conv2_1div8", 16, 16, 3)
    conv("mask_refine.conv1_1div4", 16, 16 + 128, 3), conv("mask_refine.conv2_1div4", 16, 16, 3)
    g = "backbone.0.diff_ftex"
    for proj in ("w_qs", "w_ks", "w_vs", "fc"):
        linear(f"{g}.cross_attn.cros_attn.{proj}", 1024, 1024, bias=False)
    norm(f"{g}.cross_attn.cros_attn.layer_norm", 1024)
    linear(f"{g}.cross_attn.pos_ffn.w_1", 512, 1024), linear(f"{g}.cross_attn.pos_ffn.w_2", 1024, 512)
    norm(f"{g}.cross_attn.pos_ffn.layer_norm", 1024)
    linear(f"{g}.projection.linear1", 1024, 1280), linear(f"{g}.projection.linear2", 1024, 1024)
    conv(f"{g}.noise_pred", 4, 4, 3)
    linear(f"{g}.noise_fc.0", 4, 4, bias=False), linear(f"{g}.noise_fc.2", 4, 4, bias=False)
    for i, (inp, mid, out) in enumerate(((512, 256, 128), (960, 512, 256), (1600, 1024, 512), (1920, 1024, 1024))):
        conv(f"{g}.act_postprocess.{i}.0", mid, inp, 1), conv(f"{g}.act_postprocess.{i}.1", out, mid, 1)
    return keys


def random_checkpoint(keys: dict[str, tuple], aliases: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    out = {k: torch.randn(shape, generator=g) for k, shape in keys.items()}
    if aliases:                                     # shared modules written twice, as the released file may hold them
        for k in list(out):
            if k.startswith("bbox_embed."):
                out[f"transformer.decoder.{k}"] = out[k]
            if k.startswith("backbone.0.diff_ftex.act_postprocess."):
                parts = k.split(".")                            # backbone.0.diff_ftex.act_postprocess.L.rest
                out[f"backbone.0.diff_ftex.act_{int(parts[4]) + 1}_postprocess.{'.'.join(parts[5:])}"] = out[k]
    return out


def test_the_listing_adds_up_to_the_released_30_04_m_trained_parameters():
    keys = authors_trained_keys()
    assert round(sum(int(np.prod(shape)) for shape in keys.values()) / 1e6, 2) == 30.04
    assert keys["backbone.0.diff_ftex.noise_pred.bias"] == (4,)


@pytest.mark.parametrize("aliases", [False, True])
def test_the_converter_takes_every_trained_key_of_the_authors_model(aliases):
    checkpoint = random_checkpoint(authors_trained_keys(), aliases)
    model = vdit.VDIT()
    state = vdit_state_dict({"model": checkpoint}, model)
    model.load_state_dict(state, strict=True)
    torch.testing.assert_close(model.glue.noise.noise_pred.bias, checkpoint["backbone.0.diff_ftex.noise_pred.bias"],
                               rtol=0, atol=0)
    q, k, v = checkpoint["transformer.decoder.layers.2.self_attn.in_proj_weight"].chunk(3)
    assert torch.equal(model.head.decoder.layers[2].self_attn.k_proj.weight, k)
    assert torch.equal(model.head.controller.layers[2].weight, checkpoint["controller.layers.2.weight"])


# ----------------------------------------------------------------- constants, as literals
def test_frames_are_normalised_with_imagenets_mean_and_std():
    assert vdit.IMAGENET_MEAN == (0.485, 0.456, 0.406) and vdit.IMAGENET_STD == (0.229, 0.224, 0.225)
    frame = np.full((1, 32, 48, 3), (124, 116, 104), np.uint8)
    normalised, _, _ = vdit.prepare_frames(frame, 32)
    expected = (torch.tensor([124, 116, 104]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    torch.testing.assert_close(normalised[0, :, 5, 5], expected)


def test_a_pixel_whose_probability_is_between_0_4_and_0_5_is_not_in_the_mask():
    logit = float(np.log(0.45 / 0.55))                           # sigmoid 0.45
    masks = vdit.masks_at(torch.full((1, 1, 4, 4), logit), (4, 4), (4, 4))
    assert not masks.any()
    assert vdit.masks_at(torch.full((1, 1, 4, 4), -logit), (4, 4), (4, 4)).all()


# ----------------------------------------------------------------- segment_clip's wiring
@pytest.fixture(scope="module")
def wired():
    """What segment_clip hands each model, recorded on a tiny clip whose resized frame is not a multiple of 16."""
    models = vdit_tiny.vdit_models()
    frames = np.random.default_rng(0).integers(0, 256, (3, 60, 84, 3), dtype=np.uint8)
    seen = {}
    originals = {name: getattr(vdit, name) for name in ("unet_taps", "vae_tap", "dynamic_masks")}

    def unet_taps(unet, latents, conditions):
        seen["unet_latents"], seen["conditions"] = latents.clone(), conditions.clone()
        return originals["unet_taps"](unet, latents, conditions)

    def vae_tap(vae, pixels, generator=None):
        out = originals["vae_tap"](vae, pixels, generator)
        seen["clean_latents"] = out[0].clone()
        return out

    def dynamic_masks(params, features, centres, size, channels):
        seen["dynamic_size"], seen["features"] = size, features.clone()
        return originals["dynamic_masks"](params, features, centres, size, channels)

    glue, head = models.trained.glue, models.trained.head
    head_forward, conditions_of = head.forward, glue.frame_conditions

    def forward(pyramid, pad, size, text, text_pad):
        seen["head_text"], seen["head_size"], seen["pyramid"] = text.clone(), size, pyramid
        out = head_forward(pyramid, pad, size, text, text_pad)
        seen["out"] = out
        return out

    def frame_conditions(text, image_tokens):
        seen["unet_text"] = text.clone()
        return conditions_of(text, image_tokens)

    decoded = []
    hook = head.decoder.register_forward_hook(lambda m, a, k, o: decoded.append(o), with_kwargs=True)
    interpolations = []
    real_interpolate = F.interpolate

    def interpolate(x, *args, **kwargs):
        interpolations.append((kwargs.get("mode", "nearest"), kwargs.get("align_corners")))
        return real_interpolate(x, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        for name, fn in (("unet_taps", unet_taps), ("vae_tap", vae_tap), ("dynamic_masks", dynamic_masks)):
            patch.setattr(vdit, name, fn)
        patch.setattr(head, "forward", forward)
        patch.setattr(glue, "frame_conditions", frame_conditions)
        patch.setattr(vdit.F, "interpolate", interpolate)
        result = vdit.segment_clip(models, frames, "The dog  on the LEFT", generator=torch.Generator().manual_seed(0))
    hook.remove()
    seen.update(decoded=decoded[-1], interpolations=interpolations, result=result, models=models, frames=frames)
    return seen


def test_the_unet_gets_the_latents_with_the_video_specific_noise(wired):
    glue = wired["models"].trained.glue
    with torch.no_grad():
        expected = vdit.noised_latents(wired["clean_latents"], glue.noise(wired["clean_latents"]))
    torch.testing.assert_close(wired["unet_latents"], expected)
    assert not torch.allclose(wired["unet_latents"], wired["clean_latents"])


def test_the_unet_text_is_the_full_77_token_clip_encoding(wired):
    models = wired["models"]
    ids = models.tokenizer("the dog on the left", padding="max_length", max_length=77, truncation=True,
                           return_tensors="pt").input_ids
    with torch.no_grad():
        expected = models.text_encoder(ids)[0]
    assert wired["unet_text"].shape == (1, 77, expected.shape[-1])
    torch.testing.assert_close(wired["unet_text"], expected)
    assert not torch.allclose(wired["unet_text"][0, 0], wired["unet_text"][0, -1])


def test_the_head_reads_robertas_tokens_unpooled(wired):
    models = wired["models"]
    tokens = models.roberta_tokenizer(["the dog on the left"], padding="longest", return_tensors="pt")
    with torch.no_grad():
        expected = models.roberta(**tokens).last_hidden_state
    assert wired["head_text"].shape == expected.shape and expected.shape[1] > 1
    torch.testing.assert_close(wired["head_text"], expected)


def test_scores_come_from_the_last_decoder_layer(wired):
    head, out, decoded = wired["models"].trained.head, wired["out"], wired["decoded"]
    with torch.no_grad():
        last = head.class_embed[-1](decoded.intermediate_hidden_states[:, -1])[..., 0]
        first = head.class_embed[0](decoded.intermediate_hidden_states[:, 0])[..., 0]
    torch.testing.assert_close(out.logits, last)
    assert not torch.allclose(out.logits, first)


def test_memory_maps_are_fused_bicubically_and_offsets_use_the_unpadded_size(wired):
    assert wired["interpolations"].count(("bicubic", False)) == 3      # the three memory maps, to stride 8
    h, w = wired["head_size"]
    assert wired["dynamic_size"] == (w, h)                              # (w, h) unpadded
    assert (h % 16, w % 16) != (0, 0), "the test clip must be padded for this to show"


def test_the_whole_video_can_be_read_in_one_pass_or_in_chunks(monkeypatch):
    from pipelines.core.cache import ModelCache
    from pipelines.segmentation.models import SegmentationRegistry
    from pipelines.segmentation.pipeline import SegmentationPipeline, SegmentationRequest

    chunks = []
    real = vdit.segment_clip
    monkeypatch.setattr(vdit, "segment_clip", lambda *a, chunk, **k: chunks.append(chunk) or real(*a, chunk=chunk, **k))
    pipeline = SegmentationPipeline(ModelCache("cpu"), SegmentationRegistry("tiny"))
    frames = np.random.default_rng(1).integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)
    for vdit_pass in ("chunks", "whole"):
        pipeline(SegmentationRequest(frames=frames, expression="a dog", backend="vdit", vdit_pass=vdit_pass))
    assert chunks == [36, 40]
    with pytest.raises(Exception, match="VD-IT's pass must be one of: chunks, whole"):
        SegmentationRequest(frames=frames, expression="a dog", backend="vdit", vdit_pass="halves").validate()
