"""MagicTime weight conversion on tiny real diffusers/transformers modules.

Files are written in the real layouts (torch pickles, ms-swift folders) and expected weights are computed
here independently (W0 + scale * up @ down with the scale spelled out), so a wrong key map, scale, factor
order or partial merge fails.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel  # noqa: E402
from torch.testing import assert_close  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from pipelines.sd15.lora import ConversionError, LoraDelta, merge_lora_
from pipelines.sd15.single_file import clip_text_state_dict_from_single_file
from pipelines.timelapse.convert import (
    SwiftLoraConfig,
    motion_adapter_state_dict,
    spatial_lora_deltas,
    temporal_lora_deltas,
    text_encoder_lora_deltas,
)

ADAPTER_CONFIG = dict(
    block_out_channels=(8, 8), motion_layers_per_block=1, motion_norm_num_groups=2, motion_num_attention_heads=2,
    motion_max_seq_length=32, use_motion_mid_block=False,
)


def tiny_motion_unet() -> UNetMotionModel:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=2, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12,  # differs from the channel count, so a transposed factor cannot fit attn2
        attention_head_dim=2,
    )
    return UNetMotionModel.from_unet2d(unet, MotionAdapter(**ADAPTER_CONFIG))


def tiny_clip() -> CLIPTextModel:
    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(
        hidden_size=8, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=100,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def assert_weights(model: torch.nn.Module, before: dict, expected: dict[str, torch.Tensor]) -> None:
    """`expected` maps module path -> weight; every other tensor must be bit-identical to `before`."""
    after = model.state_dict()
    for name, tensor in before.items():
        module = name.removesuffix(".weight")
        if module in expected and name.endswith(".weight"):
            assert_close(after[name], expected[module], msg=lambda m: f"{name}: {m}")
        else:
            assert torch.equal(after[name], tensor), f"{name} changed"


# ------------------------------------------------------------------------------------ spatial LoRA
SPATIAL_ATTN = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    "mid_block.attentions.0.transformer_blocks.0.attn1",
]
PROJ_TARGET = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}


def spatial_file(model: torch.nn.Module, rank: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    out = {}
    for attn in SPATIAL_ATTN:
        for proj, target in PROJ_TARGET.items():
            out_features, in_features = model.get_submodule(f"{attn}.{target}").weight.shape
            out[f"{attn}.processor.{proj}_lora.down.weight"] = torch.randn(rank, in_features)
            out[f"{attn}.processor.{proj}_lora.up.weight"] = torch.randn(out_features, rank)
    return out


def save_load(obj, path):
    torch.save(obj, path)
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("wrapped", [False, True])
def test_spatial_lora_merges_four_times_up_down(tmp_path, wrapped):
    model = tiny_motion_unet()
    file = spatial_file(model)
    loaded = save_load({"state_dict": file} if wrapped else file, tmp_path / "magic_adapter_s.ckpt")
    before = snapshot(model)

    changed = merge_lora_(model, spatial_lora_deltas(loaded))

    assert changed == len(SPATIAL_ATTN) * 4
    expected = {
        f"{attn}.{target}": before[f"{attn}.{target}.weight"]
        + 4.0 * file[f"{attn}.processor.{proj}_lora.up.weight"] @ file[f"{attn}.processor.{proj}_lora.down.weight"]
        for attn in SPATIAL_ATTN for proj, target in PROJ_TARGET.items()
    }
    assert_weights(model, before, expected)


def test_spatial_lora_keeps_weight_dtype():
    model = tiny_motion_unet().to(torch.float16)
    file = spatial_file(model)
    before = snapshot(model)
    merge_lora_(model, spatial_lora_deltas(file))
    attn = SPATIAL_ATTN[0]
    weight = model.get_submodule(f"{attn}.to_q").weight
    up, down = file[f"{attn}.processor.to_q_lora.up.weight"], file[f"{attn}.processor.to_q_lora.down.weight"]
    expected = before[f"{attn}.to_q.weight"].float() + 4.0 * (up @ down)
    assert weight.dtype == torch.float16
    assert torch.equal(weight, expected.half())


@pytest.mark.parametrize("stray", [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_x_lora.down.weight",
    "conv_in.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q_lora.down.weight",
])
def test_spatial_lora_rejects_stray_key(stray):
    file = spatial_file(tiny_motion_unet())
    file[stray] = torch.zeros(2, 8)
    with pytest.raises(ConversionError, match=re.escape(stray)):
        spatial_lora_deltas(file)


def test_spatial_lora_rejects_unpaired_factor():
    file = spatial_file(tiny_motion_unet())
    orphan = f"{SPATIAL_ATTN[1]}.processor.to_k_lora.down.weight"
    del file[f"{SPATIAL_ATTN[1]}.processor.to_k_lora.up.weight"]
    with pytest.raises(ConversionError, match=re.escape(orphan)):
        spatial_lora_deltas(file)


def test_shape_mismatch_names_path_and_leaves_model_untouched():
    model = tiny_motion_unet()
    file = spatial_file(model)
    bad = "up_blocks.1.attentions.1.transformer_blocks.0.attn2"  # to_k maps 12 -> 8 there
    file[f"{bad}.processor.to_k_lora.down.weight"] = torch.randn(2, 8)
    deltas = spatial_lora_deltas(file)
    assert list(deltas)[-1] != f"{bad}.to_k"  # good deltas come after the bad one: validation must come first
    before = snapshot(model)
    with pytest.raises(ConversionError, match=re.escape(f"{bad}.to_k: weight shape (8, 12), LoRA delta shape (8, 8)")):
        merge_lora_(model, deltas)
    assert_weights(model, before, {})


@pytest.mark.parametrize("path, problem", [
    ("down_blocks.7.attentions.0.to_q", "no such module"),
    (SPATIAL_ATTN[0], "has no weight"),
])
def test_merge_rejects_unplaceable_path(path, problem):
    model = tiny_motion_unet()
    before = snapshot(model)
    good = {f"{SPATIAL_ATTN[0]}.to_q": LoraDelta(torch.ones(8, 1), torch.ones(1, 8), 1.0)}
    with pytest.raises(ConversionError, match=re.escape(f"{path}: ") + ".*" + problem):
        merge_lora_(model, {**good, path: LoraDelta(torch.ones(8, 1), torch.ones(1, 8), 1.0)})
    assert_weights(model, before, {})


def test_lora_delta_conv_1x1_and_rank_check():
    up, down = torch.randn(6, 2, 1, 1), torch.randn(2, 3, 1, 1)
    delta = LoraDelta(up, down, 0.5)
    assert delta.weight().shape == (6, 3, 1, 1)
    assert_close(delta.weight()[:, :, 0, 0], 0.5 * up[:, :, 0, 0] @ down[:, :, 0, 0])
    conv = torch.nn.Conv2d(3, 6, 1)
    w0 = conv.weight.detach().clone()
    assert merge_lora_(conv, {"": delta}) == 1
    assert_close(conv.weight.detach(), w0 + delta.weight())
    with pytest.raises(ConversionError, match=r"up \(6, 2\), down \(3, 3\)"):
        LoraDelta(torch.randn(6, 2), torch.randn(3, 3), 1.0)


# ----------------------------------------------------------------------------- ms-swift LoRA folders
# original AnimateDiff module path -> diffusers path, written out by hand
TEMPORAL = {
    "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q":
        "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_out.0":
        "down_blocks.1.motion_modules.0.transformer_blocks.0.attn2.to_out.0",
    "up_blocks.1.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_v":
        "up_blocks.1.motion_modules.1.transformer_blocks.0.attn2.to_v",
    "up_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.ff.net.0.proj":
        "up_blocks.0.motion_modules.0.transformer_blocks.0.ff.net.0.proj",
    "up_blocks.0.motion_modules.1.temporal_transformer.proj_in": "up_blocks.0.motion_modules.1.proj_in",
}
TEXT = [
    "text_model.encoder.layers.0.self_attn.q_proj",
    "text_model.encoder.layers.1.self_attn.out_proj",
    "text_model.encoder.layers.1.mlp.fc1",
]


def write_swift_folder(root, adapter_config: dict, weights: dict) -> None:
    (root / "default").mkdir(parents=True)
    (root / "configuration.json").write_text(json.dumps({"framework": "pytorch", "task": "text-to-video"}))
    (root / "default" / "adapter_config.json").write_text(json.dumps({**adapter_config, "swift_type": "LORA"}))
    torch.save(weights, root / "default" / "adapter_model.bin")


def lora_weights(shapes: dict[str, tuple[int, int]], ranks: dict[str, int], default_infix: bool) -> dict:
    """{file module path: (out, in)} -> ms-swift keys with random A (r, in) and B (out, r)."""
    infix = ".default" if default_infix else ""
    out = {}
    for module, (out_features, in_features) in shapes.items():
        out[f"{module}.lora_A{infix}.weight"] = torch.randn(ranks[module], in_features)
        out[f"{module}.lora_B{infix}.weight"] = torch.randn(out_features, ranks[module])
    return out


def expected_merge(before, weights, targets: dict[str, str], scales: dict[str, float]) -> dict:
    A = {k.split(".lora_A")[0]: v for k, v in weights.items() if ".lora_A" in k}
    B = {k.split(".lora_B")[0]: v for k, v in weights.items() if ".lora_B" in k}
    return {target: before[f"{target}.weight"] + scales[module] * B[module] @ A[module]
            for module, target in targets.items()}


CASES = [  # rank, alpha, use_rslora, ".default" in keys
    (4, 8.0, False, True),
    (2, 1.0, False, False),
    (4, 8.0, True, False),
    (2, 1.0, True, True),
]


@pytest.mark.parametrize("rank, alpha, rslora, default_infix", CASES)
def test_temporal_lora(tmp_path, rank, alpha, rslora, default_infix):
    model = tiny_motion_unet()
    before = snapshot(model)
    shapes = {module: tuple(before[f"{target}.weight"].shape) for module, target in TEMPORAL.items()}
    torch.manual_seed(2)
    weights = lora_weights(shapes, dict.fromkeys(TEMPORAL, rank), default_infix)
    write_swift_folder(tmp_path, {"r": rank, "lora_alpha": alpha, "use_rslora": rslora, "rank_pattern": {},
                                  "alpha_pattern": {}, "target_modules": ["to_q", "to_v", "to_out.0", "proj"]}, weights)

    assert merge_lora_(model, temporal_lora_deltas(tmp_path)) == len(TEMPORAL)

    scale = alpha / math.sqrt(rank) if rslora else alpha / rank
    assert_weights(model, before, expected_merge(before, weights, TEMPORAL, dict.fromkeys(TEMPORAL, scale)))


def test_temporal_lora_rank_and_alpha_patterns(tmp_path):
    model = tiny_motion_unet()
    before = snapshot(model)
    shapes = {module: tuple(before[f"{target}.weight"].shape) for module, target in TEMPORAL.items()}
    q, out = list(TEMPORAL)[:2]
    ranks = {**dict.fromkeys(TEMPORAL, 4), q: 3}
    torch.manual_seed(3)
    weights = lora_weights(shapes, ranks, True)
    write_swift_folder(tmp_path, {"r": 4, "lora_alpha": 8, "use_rslora": False, "target_modules": None,
                                  "rank_pattern": {"attention_blocks.0.to_q": 3},
                                  "alpha_pattern": {"attention_blocks.1.to_out.0": 2}}, weights)

    merge_lora_(model, temporal_lora_deltas(tmp_path))

    scales = {**dict.fromkeys(TEMPORAL, 8 / 4), q: 8 / 3, out: 2 / 4}
    assert_weights(model, before, expected_merge(before, weights, TEMPORAL, scales))


def test_swift_pattern_matches_whole_name_parts():
    config = SwiftLoraConfig(r=4, lora_alpha=4, rank_pattern={"to_q": 2}, alpha_pattern={"attn1.to_q": 8})
    assert config.scale_for("a.attn1.to_q") == 8 / 2
    assert config.scale_for("a.attn2.to_q") == 4 / 2
    assert config.scale_for("a.attn1.xto_q") == 4 / 4
    assert config.scale_for("to_q") == 4 / 2


@pytest.mark.parametrize("rank, alpha, rslora, default_infix", CASES)
def test_text_encoder_lora(tmp_path, rank, alpha, rslora, default_infix):
    model = tiny_clip()
    prefix = "text_model." if hasattr(model, "text_model") else ""  # transformers >= 5.6 is flat
    targets = {module: prefix + module.removeprefix("text_model.") for module in TEXT}
    before = snapshot(model)
    shapes = {module: tuple(before[f"{target}.weight"].shape) for module, target in targets.items()}
    torch.manual_seed(4)
    weights = lora_weights(shapes, dict.fromkeys(TEXT, rank), default_infix)
    write_swift_folder(tmp_path, {"r": rank, "lora_alpha": alpha, "use_rslora": rslora, "rank_pattern": {},
                                  "alpha_pattern": {}, "target_modules": ["q_proj", "out_proj", "fc1"]}, weights)

    assert merge_lora_(model, text_encoder_lora_deltas(tmp_path)) == len(TEXT)

    scale = alpha / math.sqrt(rank) if rslora else alpha / rank
    assert_weights(model, before, expected_merge(before, weights, targets, dict.fromkeys(TEXT, scale)))


def text_folder(tmp_path, r=2, **config):
    shapes = {module: (8, 8) for module in TEXT[:2]}
    weights = lora_weights(shapes, dict.fromkeys(shapes, 2), True)
    write_swift_folder(tmp_path, {"r": r, "lora_alpha": 2, **config}, weights)
    return weights


def test_swift_stray_key_is_named(tmp_path):
    weights = text_folder(tmp_path)
    stray = "text_model.encoder.layers.0.self_attn.q_proj.base_layer.weight"
    torch.save({**weights, stray: torch.zeros(8, 8)}, tmp_path / "default" / "adapter_model.bin")
    with pytest.raises(ConversionError, match=re.escape(stray)):
        text_encoder_lora_deltas(tmp_path)


def test_swift_unpaired_factor_is_named(tmp_path):
    weights = text_folder(tmp_path)
    orphan = f"{TEXT[1]}.lora_A.default.weight"
    del weights[f"{TEXT[1]}.lora_B.default.weight"]
    torch.save(weights, tmp_path / "default" / "adapter_model.bin")
    with pytest.raises(ConversionError, match=re.escape(orphan)):
        text_encoder_lora_deltas(tmp_path)


def test_swift_rank_must_match_config(tmp_path):
    text_folder(tmp_path, r=4)
    with pytest.raises(ConversionError, match=re.escape(f"{TEXT[0]}: lora_A has rank 2, config says 4")):
        text_encoder_lora_deltas(tmp_path)


def test_swift_missing_files_are_named(tmp_path):
    text_folder(tmp_path)
    (tmp_path / "default" / "adapter_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.bin"):
        text_encoder_lora_deltas(tmp_path)
    (tmp_path / "default" / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        text_encoder_lora_deltas(tmp_path)


def test_swift_rejects_other_adapter_types(tmp_path):
    text_folder(tmp_path, peft_type="LOHA")
    with pytest.raises(ConversionError, match="peft_type is 'LOHA'"):
        text_encoder_lora_deltas(tmp_path)


def test_swift_reads_safetensors(tmp_path):
    from safetensors.torch import save_file

    weights = text_folder(tmp_path)
    (tmp_path / "default" / "adapter_model.bin").unlink()
    save_file(weights, tmp_path / "default" / "adapter_model.safetensors")
    assert len(text_encoder_lora_deltas(tmp_path)) == 2


# ---------------------------------------------------------------------------- full state dicts
def original_motion_names(diffusers_state: dict) -> dict:
    """Inverse of the AnimateDiff -> diffusers renaming, with the per-attention-block position tables."""
    out = {}
    for name, tensor in diffusers_state.items():
        name = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", name)
        if name.endswith(".pos_embed.pe"):
            block = name.removesuffix(".pos_embed.pe")
            out[f"{block}.attention_blocks.0.pos_encoder.pe"] = tensor.clone()
            out[f"{block}.attention_blocks.1.pos_encoder.pe"] = tensor.clone()
            continue
        for new, old in ((".norm1", ".norms.0"), (".norm2", ".norms.1"), (".norm3", ".ff_norm"),
                         (".attn1", ".attention_blocks.0"), (".attn2", ".attention_blocks.1")):
            name = name.replace(new, old)
        out[name] = tensor
    return out


def random_adapter() -> MotionAdapter:
    torch.manual_seed(5)
    adapter = MotionAdapter(**ADAPTER_CONFIG)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()
    return adapter


@pytest.mark.parametrize("wrapped", [False, True])
def test_motion_adapter_state_dict_round_trip(tmp_path, wrapped):
    source = random_adapter().state_dict()
    original = original_motion_names(source)
    assert "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.ff_norm.weight" in original
    loaded = save_load({"state_dict": original} if wrapped else original, tmp_path / "motion_module.ckpt")

    fresh = MotionAdapter(**ADAPTER_CONFIG)
    fresh.load_state_dict(motion_adapter_state_dict(loaded), strict=True)

    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, source[name]), name


def test_motion_adapter_stray_key_fails_strict_load():
    original = original_motion_names(random_adapter().state_dict())
    original["down_blocks.0.motion_modules.0.temporal_transformer.bogus.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="bogus"):
        MotionAdapter(**ADAPTER_CONFIG).load_state_dict(motion_adapter_state_dict(original), strict=True)


def test_motion_adapter_wrong_sequence_length_fails_strict_load():
    original = original_motion_names(random_adapter().state_dict())
    with pytest.raises(RuntimeError, match="pos_embed.pe"):
        MotionAdapter(**{**ADAPTER_CONFIG, "motion_max_seq_length": 24}).load_state_dict(
            motion_adapter_state_dict(original), strict=True)


def test_motion_adapter_rejects_disagreeing_position_tables():
    original = original_motion_names(random_adapter().state_dict())
    key = "up_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    original[key] = original[key] + 1
    with pytest.raises(ConversionError, match=re.escape(key)):
        motion_adapter_state_dict(original)


@pytest.mark.parametrize("text_model_in_file", [True, False])
def test_clip_text_from_single_file(text_model_in_file):
    source = tiny_clip()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    state = source.state_dict()
    inner = "text_model." if text_model_in_file else ""
    checkpoint = {
        f"cond_stage_model.transformer.{inner}{name.removeprefix('text_model.')}": t for name, t in state.items()
    }
    checkpoint[f"cond_stage_model.transformer.{inner}embeddings.position_ids"] = torch.arange(77)[None]
    checkpoint["model.diffusion_model.x"] = torch.zeros(1)
    checkpoint["first_stage_model.y"] = torch.zeros(1)

    fresh = tiny_clip()
    fresh.load_state_dict(clip_text_state_dict_from_single_file(checkpoint), strict=True)

    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_clip_text_needs_text_encoder_keys():
    with pytest.raises(ConversionError, match="cond_stage_model.transformer."):
        clip_text_state_dict_from_single_file({"model.diffusion_model.x": torch.zeros(1)})
