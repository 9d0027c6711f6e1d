"""ID-Animator's animator.ckpt -> diffusers IP-Adapter + PEFT LoRA, on a tiny AnimateDiff pipeline.

The fake checkpoints are written in both real layouts with the original key names (IP-Adapter-Plus resampler,
`{i}.to_k_face` / `{i}.to_q_lora.down` ...). What the loaded layers compute is compared with a reference written
here from the paper's description (q, k, v, out with their LoRA deltas; a face branch added with the adapter
scale; the Perceiver resampler), using plain tensor algebra and the base weights of a separately built UNet, so
a wrong key map, a transposed factor, a wrong layer or a wrong scale fails.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AnimateDiffPipeline, DDIMScheduler, UNet2DConditionModel, UNetMotionModel  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: E402

from pipelines.core import tiny as core_tiny
from pipelines.identity.convert import (
    attn2_names,
    diffusers_ip_adapter_indices,
    identity_lora_state_dict,
    ip_adapter_state_dict,
    load_face_adapter,
    split_animator_checkpoint,
)
from pipelines.sd15 import tiny
from pipelines.sd15.lora import ConversionError

UNET_SEED = 11
RANK = 4
IMAGE_HIDDEN = 12  # the image encoder's width = the resampler's embedding_dim
RESAMPLER_DIM, RESAMPLER_HEADS, RESAMPLER_DIM_HEAD, QUERIES = 16, 2, 64, 3
CROSS = tiny.CROSS_ATTENTION_DIM

# The tiny UNet's 2-D cross-attention layers, written out (not derived) so the numbering itself is under test.
TINY_ATTN2 = {
    1: "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    3: "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    5: "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    7: "mid_block.attentions.0.transformer_blocks.0.attn2",
}
LORA_TARGETS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}

# identity.md's table for SD1.5 (index: block; each `<block>.transformer_blocks.0.attn2`).
SD15_TABLE = {
    1: "down_blocks.0.attentions.0", 3: "down_blocks.0.attentions.1", 5: "down_blocks.1.attentions.0",
    7: "down_blocks.1.attentions.1", 9: "down_blocks.2.attentions.0", 11: "down_blocks.2.attentions.1",
    13: "up_blocks.1.attentions.0", 15: "up_blocks.1.attentions.1", 17: "up_blocks.1.attentions.2",
    19: "up_blocks.2.attentions.0", 21: "up_blocks.2.attentions.1", 23: "up_blocks.2.attentions.2",
    25: "up_blocks.3.attentions.0", 27: "up_blocks.3.attentions.1", 29: "up_blocks.3.attentions.2",
    31: "mid_block.attentions.0",
}


# ----------------------------------------------------------------------------------- fake files
def resampler_file(g: torch.Generator) -> dict[str, torch.Tensor]:
    """IP-Adapter-Plus Resampler weights in the original naming (depth 4, ff_mult 4)."""
    d, inner = RESAMPLER_DIM, RESAMPLER_HEADS * RESAMPLER_DIM_HEAD

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix, n):
        return {f"{prefix}.weight": 1 + rand(n, scale=0.1), f"{prefix}.bias": rand(n, scale=0.1)}

    sd = {"latents": rand(1, QUERIES, d, scale=1.0), "proj_in.weight": rand(d, IMAGE_HIDDEN),
          "proj_in.bias": rand(d, scale=0.1), "proj_out.weight": rand(CROSS, d),
          "proj_out.bias": rand(CROSS, scale=0.1),
          **norm("norm_out", CROSS)}
    for n in range(4):
        sd |= {**norm(f"layers.{n}.0.norm1", d), **norm(f"layers.{n}.0.norm2", d),
               f"layers.{n}.0.to_q.weight": rand(inner, d), f"layers.{n}.0.to_kv.weight": rand(2 * inner, d),
               f"layers.{n}.0.to_out.weight": rand(d, inner, scale=0.1), **norm(f"layers.{n}.1.0", d),
               f"layers.{n}.1.1.weight": rand(4 * d, d), f"layers.{n}.1.3.weight": rand(d, 4 * d, scale=0.1)}
    return sd


def face_adapter_file(unet2d: UNet2DConditionModel, g: torch.Generator) -> dict[str, torch.Tensor]:
    sd = {}
    for i, path in TINY_ATTN2.items():
        attn = unet2d.get_submodule(path)
        sd[f"{i}.to_k_face.weight"] = torch.randn(attn.to_k.out_features, CROSS, generator=g) * 0.5
        sd[f"{i}.to_v_face.weight"] = torch.randn(attn.to_v.out_features, CROSS, generator=g) * 0.5
        for proj, module in LORA_TARGETS.items():
            layer = attn.get_submodule(module)
            sd[f"{i}.{proj}_lora.down.weight"] = torch.randn(RANK, layer.in_features, generator=g) * 0.3
            sd[f"{i}.{proj}_lora.up.weight"] = torch.randn(layer.out_features, RANK, generator=g) * 0.3
    return sd


def animator_ckpt(layout: str) -> dict:
    g = torch.Generator().manual_seed(5)
    image_proj, face = resampler_file(g), face_adapter_file(tiny.unet2d(UNET_SEED), g)
    if layout == "plain":
        return {"image_proj": image_proj, "face_adapter": face}
    prefix = "module." if layout == "ddp" else ""
    return {"state_dict": {**{f"{prefix}image_proj_model.{k}": v for k, v in image_proj.items()},
                           **{f"{prefix}adapter_modules.{k}": v for k, v in face.items()}}}


def save_and_load(checkpoint: dict, tmp_path) -> dict:
    path = tmp_path / "animator.ckpt"
    torch.save(checkpoint, path)
    return torch.load(path, map_location="cpu", weights_only=True)


def tiny_pipe() -> AnimateDiffPipeline:
    motion_unet = UNetMotionModel.from_unet2d(tiny.unet2d(UNET_SEED), tiny.motion_adapter(12))
    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=IMAGE_HIDDEN, intermediate_size=24,
                              num_attention_heads=2, num_hidden_layers=2, projection_dim=16)
    image_encoder = core_tiny.build(CLIPVisionModelWithProjection, 13, config=config)
    return AnimateDiffPipeline(
        vae=tiny.vae(14), text_encoder=tiny.text_encoder(15), tokenizer=tiny.tokenizer(), unet=motion_unet,
        motion_adapter=None, scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                                                     steps_offset=1, clip_sample=False),
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        image_encoder=image_encoder,
    )


@pytest.fixture(scope="module", params=["plain", "state_dict", "ddp"])
def loaded(request, tmp_path_factory):
    """(pipeline with the face adapter loaded, the checkpoint as read back from disk) per file layout."""
    checkpoint = save_and_load(animator_ckpt(request.param), tmp_path_factory.mktemp(request.param))
    pipe = tiny_pipe()
    load_face_adapter(pipe, checkpoint, tiny.unet2d(UNET_SEED))
    return pipe, checkpoint


# ----------------------------------------------------------------------------- reference maths
def multi_head_attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head; q (B, N, H*d), k and v (B, M, H*d)."""
    b, n, width = q.shape
    d = width // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, width)


def reference_attn2(base_attn, face, i, h, text, face_tokens, s):
    """ID-Animator's cross-attention: LoRA'd q/k/v/out on the text branch, plus s x the face branch."""
    def w(module, proj):
        return module.weight + face[f"{i}.{proj}_lora.up.weight"] @ face[f"{i}.{proj}_lora.down.weight"]

    q = h @ w(base_attn.to_q, "to_q").T
    k, v = text @ w(base_attn.to_k, "to_k").T, text @ w(base_attn.to_v, "to_v").T
    k_f, v_f = face_tokens @ face[f"{i}.to_k_face.weight"].T, face_tokens @ face[f"{i}.to_v_face.weight"].T
    heads = base_attn.heads
    mixed = multi_head_attention(q, k, v, heads) + s * multi_head_attention(q, k_f, v_f, heads)
    return mixed @ w(base_attn.to_out[0], "to_out").T + base_attn.to_out[0].bias


def reference_resampler(sd, x):
    """IP-Adapter-Plus's Perceiver resampler from its original weights: latents attend to (features, latents)."""
    def ln(t, prefix):
        return F.layer_norm(t, t.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])

    latents = sd["latents"].expand(x.shape[0], -1, -1)
    x = x @ sd["proj_in.weight"].T + sd["proj_in.bias"]
    for n in range(4):
        p = f"layers.{n}"
        features, lat = ln(x, f"{p}.0.norm1"), ln(latents, f"{p}.0.norm2")
        q = lat @ sd[f"{p}.0.to_q.weight"].T
        k, v = (torch.cat([features, lat], dim=1) @ sd[f"{p}.0.to_kv.weight"].T).chunk(2, dim=-1)
        latents = multi_head_attention(q, k, v, RESAMPLER_HEADS) @ sd[f"{p}.0.to_out.weight"].T + latents
        hidden = F.gelu(ln(latents, f"{p}.1.0") @ sd[f"{p}.1.1.weight"].T)
        latents = hidden @ sd[f"{p}.1.3.weight"].T + latents
    return ln(latents @ sd["proj_out.weight"].T + sd["proj_out.bias"], "norm_out")


# ------------------------------------------------------------------------------------ numbering
def test_attn2_names_on_the_tiny_unet_and_its_motion_version():
    unet2d = tiny.unet2d(UNET_SEED)
    assert attn2_names(unet2d) == TINY_ATTN2
    motion = UNetMotionModel.from_unet2d(unet2d, tiny.motion_adapter(12))
    assert attn2_names(motion) == TINY_ATTN2  # motion-module processors take no numbers
    # diffusers' IP-Adapter loader numbers the motion UNet's cross-attention layers the same way.
    assert diffusers_ip_adapter_indices(motion) == {path: i for i, path in TINY_ATTN2.items()}


def test_attn2_names_reproduce_the_sd15_table():
    config = dict(
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        sample_size=64, in_channels=4, out_channels=4,
    )
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    assert attn2_names(unet) == {i: f"{block}.transformer_blocks.0.attn2" for i, block in SD15_TABLE.items()}


# ------------------------------------------------------------------------------------ the file
@pytest.mark.parametrize("layout", ["plain", "state_dict", "ddp"])
def test_split_reads_both_layouts(layout, tmp_path):
    expected = animator_ckpt("plain")
    image_proj, face = split_animator_checkpoint(save_and_load(animator_ckpt(layout), tmp_path))
    assert image_proj.keys() == expected["image_proj"].keys() and face.keys() == expected["face_adapter"].keys()
    assert all(torch.equal(face[k], v) for k, v in expected["face_adapter"].items())
    assert all(torch.equal(image_proj[k], v) for k, v in expected["image_proj"].items())


def test_split_rejects_unknown_keys():
    plain, wrapped = animator_ckpt("plain"), animator_ckpt("state_dict")
    with pytest.raises(ConversionError, match="optimizer"):
        split_animator_checkpoint({**wrapped, "optimizer": {}})
    with pytest.raises(ConversionError, match="optimizer"):
        split_animator_checkpoint({**plain, "optimizer": {}})
    with pytest.raises(ConversionError, match=r"unet\.conv_in\.weight"):
        split_animator_checkpoint({"state_dict": {**wrapped["state_dict"], "unet.conv_in.weight": torch.zeros(1)}})
    with pytest.raises(ConversionError, match="face_adapter"):
        split_animator_checkpoint({"image_proj": plain["image_proj"]})


def test_converted_dicts():
    plain = animator_ckpt("plain")
    face = plain["face_adapter"]
    ip = ip_adapter_state_dict(plain["image_proj"], face, TINY_ATTN2)
    assert ip["image_proj"] == plain["image_proj"]
    assert ip["ip_adapter"].keys() == {f"{i}.to_{kv}_ip.weight" for i in TINY_ATTN2 for kv in "kv"}
    assert all(ip["ip_adapter"][f"{i}.to_k_ip.weight"] is face[f"{i}.to_k_face.weight"] for i in TINY_ATTN2)
    lora = identity_lora_state_dict(face, TINY_ATTN2)
    assert len(lora) + len(ip["ip_adapter"]) == len(face)  # every key used once
    assert lora["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0.lora_A.weight"] is \
        face["7.to_out_lora.down.weight"]
    assert next(iter(lora)).endswith("lora_A.weight")


@pytest.mark.parametrize("stray", ["5.to_x_face.weight", "9.to_k_face.weight", "1.to_q_lora.mid.weight"])
def test_stray_face_adapter_key_is_named(stray):
    plain = animator_ckpt("plain")
    face = {**plain["face_adapter"], stray: torch.zeros(8, 8)}
    for convert in (lambda: ip_adapter_state_dict(plain["image_proj"], face, TINY_ATTN2),
                    lambda: identity_lora_state_dict(face, TINY_ATTN2)):
        with pytest.raises(ConversionError, match=stray.replace(".", r"\.")):
            convert()


def test_missing_factor_and_bad_resampler_are_named():
    plain = animator_ckpt("plain")
    face = dict(plain["face_adapter"])
    del face["5.to_v_lora.up.weight"]
    with pytest.raises(ConversionError, match=r"5\.to_v_lora\.up\.weight"):
        identity_lora_state_dict(face, TINY_ATTN2)
    image_proj = {k: v for k, v in plain["image_proj"].items() if not k.startswith("layers.3.")}
    with pytest.raises(ConversionError, match=r"layers\.3\.0\.to_kv\.weight"):
        ip_adapter_state_dict(image_proj, plain["face_adapter"], TINY_ATTN2)


def test_failed_load_leaves_the_pipeline_unchanged():
    pipe = tiny_pipe()
    processors = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    plain = animator_ckpt("plain")
    bad_shape = {**plain, "face_adapter": {**plain["face_adapter"], "3.to_k_face.weight": torch.zeros(8, 6)}}
    stray = {**plain, "face_adapter": {**plain["face_adapter"], "5.to_x_face.weight": torch.zeros(8, 8)}}
    for checkpoint, named in ((bad_shape, r"3\.to_k_face\.weight"), (stray, r"5\.to_x_face\.weight")):
        with pytest.raises(ConversionError, match=named):
            load_face_adapter(pipe, checkpoint, tiny.unet2d(UNET_SEED))
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == processors
    assert not getattr(pipe.unet, "peft_config", None)
    assert pipe.unet.encoder_hid_proj is None


# ------------------------------------------------------------------------------- after loading
@pytest.mark.parametrize("path_index", [1, 5, 7], ids=["down", "up", "mid"])
def test_cross_attention_matches_reference(loaded, path_index):
    pipe, checkpoint = loaded
    _, face = split_animator_checkpoint(checkpoint)
    path = TINY_ATTN2[path_index]
    base = tiny.unet2d(UNET_SEED).get_submodule(path)  # untouched weights, built apart from the pipeline
    g = torch.Generator().manual_seed(path_index)
    h, text = torch.randn(2, 6, 8, generator=g), torch.randn(2, 5, CROSS, generator=g)
    face_tokens = torch.randn(2, QUERIES, CROSS, generator=g)
    worst = 0.0
    for s in (0.7, 1.0):
        pipe.set_ip_adapter_scale(s)
        with torch.no_grad():
            got = pipe.unet.get_submodule(path)(h, encoder_hidden_states=(text, [face_tokens]))
            expected = reference_attn2(base, face, path_index, h, text, face_tokens, s)
        worst = max(worst, (got - expected).abs().max().item())
    print(f"max |attn2 - reference| at {path}: {worst:.2e}")
    assert worst <= 1e-4


def test_lora_only_on_2d_cross_attention(loaded):
    pipe, _ = loaded
    lora_layers = {name for name, m in pipe.unet.named_modules() if isinstance(m, BaseTunerLayer)}
    assert lora_layers == {f"{path}.{module}" for path in TINY_ATTN2.values() for module in LORA_TARGETS.values()}
    assert all(".attn2." in name and "motion_modules" not in name for name in lora_layers)
    assert set(pipe.unet.peft_config) == {"identity"}


def test_image_projection_matches_reference(loaded):
    pipe, checkpoint = loaded
    image_proj, _ = split_animator_checkpoint(checkpoint)
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert torch.equal(projection.latents, image_proj["latents"])
    assert torch.equal(projection.layers[2].attn.to_v.weight, image_proj["layers.2.0.to_kv.weight"].chunk(2)[1])
    x = torch.randn(2, 5, IMAGE_HIDDEN, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (projection(x) - reference_resampler(image_proj, x)).abs().max().item()
    print(f"max |resampler - reference|: {diff:.2e}")
    assert diff <= 1e-4


def test_pipeline_runs_with_a_face_image(loaded):
    """End to end: the image encoder's penultimate hidden states feed the resampler and the face changes
    the result only through the adapter scale."""
    pipe, _ = loaded
    pixels = torch.randint(0, 256, (40, 40, 3), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    face = Image.fromarray(pixels.numpy())
    args = dict(prompt="a person", num_frames=2, height=64, width=64, num_inference_steps=1, guidance_scale=1.0,
                output_type="latent", ip_adapter_image=[face])
    latents = {}
    for s in (0.0, 1.0):
        pipe.set_ip_adapter_scale(s)
        latents[s] = pipe(**args, generator=torch.Generator().manual_seed(0)).frames
    assert torch.isfinite(latents[1.0]).all()
    assert not torch.allclose(latents[0.0], latents[1.0])
