"""The real profile's loading code, on files these tests write in MagicTime's hub layout (tiny sizes),
and its behaviour when the weights are not there."""

from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr
import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from pipelines.core.cache import ModelCache
from pipelines.core.errors import WeightsError
from pipelines.core.hub import MissingWeightsError
from pipelines.sd15 import tiny
from pipelines.sd15.models import BASE, MAGICTIME, STYLES, Registry
from pipelines.timelapse import tiny as magictime_tiny
from pipelines.timelapse.models import (
    MOTION_MODULE,
    SPATIAL_LORA,
    TEMPORAL_LORA,
    TEXT_ENCODER_LORA,
    RealTimelapseLoaders,
    timelapse_downloads,
    timelapse_models,
)
from pipelines.timelapse.pipeline import TimelapsePipeline, TimelapseRequest
from studio.engine import Engine
from studio.settings import Settings
from studio.tabs.timelapse_api import TimelapseAPI

CHECKPOINT = STYLES["ToonYou"]


@pytest.fixture
def hub_cache(monkeypatch, tmp_path) -> Path:
    """An empty Hugging Face cache; returns the MagicTime snapshot folder to write files into."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / f"models--{MAGICTIME.replace('/', '--')}"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    return snapshot


def write_swift(folder: Path, config: dict, weights: dict) -> None:
    (folder / "default").mkdir(parents=True)
    (folder / "configuration.json").write_text(json.dumps({"framework": "pytorch"}))
    (folder / "default" / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
    torch.save(weights, folder / "default" / "adapter_model.bin")


def write_clip_tokenizer(folder: Path, vocab: dict[str, int], merges=()) -> None:
    """SD1.5's tokenizer folder as it is on the hub: vocab.json, merges.txt and two small configs."""
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "do_lower_case": True}))


def write_base(snapshot: Path, vocab: dict[str, int] | None = None) -> None:
    base = snapshot / BASE
    if vocab is None:
        vocab, merges = tiny._vocabulary()
        write_clip_tokenizer(base / "tokenizer", vocab, merges)
    else:
        write_clip_tokenizer(base / "tokenizer", vocab)
    tiny.text_encoder(0).config.save_pretrained(base / "text_encoder")
    tiny.unet2d(0).save_config(base / "unet")
    tiny.vae(0).save_config(base / "vae")


def write_complete(path: Path) -> None:
    """A small file that is complete by its format's own structure (what the cache's completeness check reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({"w": torch.zeros(2)}, path)
    elif path.suffix in (".ckpt", ".bin"):
        torch.save({"w": torch.zeros(2)}, path)
    elif path.suffix == ".json":
        path.write_text("{}")
    else:
        path.write_text("x")


# ----------------------------------------------------------------- no weights: fast, actionable failure
def test_missing_weights_fail_within_seconds_naming_the_repository(hub_cache):
    pipeline = TimelapsePipeline(ModelCache("cpu"), Registry("real"))
    start = time.monotonic()
    with pytest.raises(MissingWeightsError) as error:
        pipeline(TimelapseRequest(prompt="ice melting", width=64, height=64))
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert MAGICTIME in message and "python -m studio download" in message and "STUDIO_PROFILE=tiny" in message


def test_unreachable_hub_fails_within_seconds(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")   # nothing listens there
    start = time.monotonic()
    with pytest.raises(MissingWeightsError, match="cannot be reached"):
        timelapse_models(Registry("real"), "Realistic Vision").tokenizer.load()
    assert time.monotonic() - start < 10


def test_the_generate_click_gets_the_message_as_a_gradio_error(hub_cache, tmp_path):
    engine = Engine(Settings(profile="real", resolution=64, output_dir=tmp_path))
    with pytest.raises(gr.Error, match="STUDIO_PROFILE=tiny"):
        TimelapseAPI(engine).generate("ice melting", progress=lambda *a, **k: None)
    assert engine.cache.stats()["components"] == []


def test_downloads_name_magictime_files_as_the_reference_lays_them_out():
    files = {f.filename for f in timelapse_downloads()}
    assert {MOTION_MODULE, SPATIAL_LORA, *STYLES.values()} <= files
    for folder in (TEMPORAL_LORA, TEXT_ENCODER_LORA):
        assert f"{folder}/default/adapter_config.json" in files and f"{folder}/default/adapter_model.bin" in files
    assert f"{BASE}/tokenizer/vocab.json" in files
    quality = timelapse_downloads(fast=False, tiny_decoder=False)
    assert all(f.repo_id == MAGICTIME for f in quality)
    extra = {(f.repo_id, f.filename) for f in timelapse_downloads()} - {
        (f.repo_id, f.filename) for f in quality}
    assert extra == {("ByteDance/Hyper-SD", "Hyper-SD15-8steps-CFG-lora.safetensors"),
                     ("madebyollin/taesd", "config.json"), ("madebyollin/taesd", "diffusion_pytorch_model.safetensors")}


# ----------------------------------------------------------------- files in the real layout
def test_tokenizer_that_loads_empty_is_an_error(hub_cache):
    write_base(hub_cache, vocab={"<|startoftext|>": 0, "<|endoftext|>": 1})
    with pytest.raises(WeightsError, match="loaded empty"):
        RealTimelapseLoaders(torch.float32).tokenizer()


def test_real_tokenizer_and_text_encoder_with_magictime_lora(hub_cache):
    write_base(hub_cache)
    clip = tiny.text_encoder(seed=99)
    single_file = {f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v.contiguous()
                   for k, v in clip.state_dict().items()}
    single_file["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 4, 3, 3)   # the UNet's conv_in
    (hub_cache / "DreamBooth").mkdir()
    save_file(single_file, hub_cache / CHECKPOINT)
    rank, alpha = 4, 6.0
    g = torch.Generator().manual_seed(0)
    width = tiny.CROSS_ATTENTION_DIM
    down, up = torch.randn(rank, width, generator=g), torch.randn(width, rank, generator=g)
    target = "text_model.encoder.layers.1.self_attn.v_proj"
    write_swift(hub_cache / TEXT_ENCODER_LORA, {"r": rank, "lora_alpha": alpha, "target_modules": ["v_proj"],
                                                 "use_rslora": False, "swift_type": "LORA"},
                {f"{target}.lora_A.default.weight": down, f"{target}.lora_B.default.weight": up})

    loaders = RealTimelapseLoaders(torch.float32)
    assert len(loaders.tokenizer()) == len(tiny.tokenizer())
    merged = dict(loaders.text_encoder(CHECKPOINT).named_parameters())
    original = dict(clip.named_parameters())
    name = next(n for n in merged if n.endswith("layers.1.self_attn.v_proj.weight"))
    torch.testing.assert_close(merged[name], original[name] + (alpha / rank) * up @ down)
    untouched = next(n for n in merged if n.endswith("layers.1.self_attn.q_proj.weight"))
    assert torch.equal(merged[untouched], original[untouched])


def test_real_magic_unet_merges_spatial_4x_and_temporal_lora(hub_cache):
    from diffusers import UNetMotionModel

    unet2d, adapter = tiny.unet2d(1), tiny.motion_adapter(2)
    plain = UNetMotionModel.from_unet2d(unet2d, adapter)
    spatial = magictime_tiny.spatial_lora_file(plain, seed=3)
    (hub_cache / SPATIAL_LORA).parent.mkdir(parents=True)
    torch.save(spatial, hub_cache / SPATIAL_LORA)
    config, weights = magictime_tiny.temporal_lora_files(plain, seed=4)
    config = {**config, "r": tiny.LORA_RANK, "lora_alpha": 3.0, "use_rslora": True}
    write_swift(hub_cache / TEMPORAL_LORA, config, weights)

    merged = dict(RealTimelapseLoaders(torch.float32).magic_unet(CHECKPOINT, unet2d, adapter).named_parameters())
    before = dict(plain.named_parameters())
    block = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    expected = before[f"{block}.to_out.0.weight"] + 4.0 * (
        spatial[f"{block}.processor.to_out_lora.up.weight"] @ spatial[f"{block}.processor.to_out_lora.down.weight"])
    torch.testing.assert_close(merged[f"{block}.to_out.0.weight"], expected)
    original = "up_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q"
    scale = 3.0 / tiny.LORA_RANK ** 0.5     # rslora
    expected = before["up_blocks.1.motion_modules.0.transformer_blocks.0.attn1.to_q.weight"] + scale * (
        weights[f"{original}.lora_B.default.weight"] @ weights[f"{original}.lora_A.default.weight"])
    torch.testing.assert_close(merged["up_blocks.1.motion_modules.0.transformer_blocks.0.attn1.to_q.weight"], expected)


# ----------------------------------------------------------------- python -m studio download
def test_download_checks_the_cache_and_names_what_is_missing(hub_cache, capsys):
    from studio.__main__ import main

    assert main(["download", "--tab", "timelapse"]) == 1
    assert "Base_Model/stable-diffusion-v1-5/tokenizer/merges.txt" in capsys.readouterr().err
    from tests.test_real_identity_loading import snapshot

    for file in timelapse_downloads():       # a complete (copied) cache for one tab
        write_complete(snapshot(file.repo_id) / file.filename)
    capsys.readouterr()
    assert main(["download", "--tab", "timelapse"]) == 0
    assert f"All {len(timelapse_downloads())} files" in capsys.readouterr().out
    assert main(["download"]) == 1                             # every tab: the identity tab's files are missing
    assert "ID-Animator/ID-Animator" in capsys.readouterr().err
