"""Fast modes (Lightning for identity, Hyper-SD for the time-lapse, the tiny decoder), the live preview and the
timing breakdown: what a person notices — which sampler runs, refusals with the mode's numbers, a preview that never
changes the final clip, no model reloaded on a second tour — and the merge maths against a reference computation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, UNetMotionModel
from gradio_client import handle_file

from pipelines.core.cache import ModelCache
from pipelines.core.errors import InputError, WeightsError
from pipelines.core.video import to_uint8
from pipelines.identity.models import (
    LIGHTNING,
    ensure_identity_available,
    identity_downloads,
    identity_models,
    lightning_file,
)
from pipelines.identity.pipeline import IdentityPipeline, IdentityRequest
from pipelines.sd15 import tiny
from pipelines.sd15.lora import merge_image_lora, merge_lora_
from pipelines.sd15.models import TAESD, Registry
from pipelines.sd15.sampling import animatediff, decode_frames, decode_with
from pipelines.timelapse import tiny as magictime_tiny
from pipelines.timelapse.convert import SwiftLoraConfig, animatediff_module_name, swift_lora_deltas
from pipelines.timelapse.models import HYPER_SD_LORA, compose_magic_unet, timelapse_downloads, timelapse_models
from pipelines.timelapse.pipeline import TimelapsePipeline, TimelapseRequest
from tests.conftest import ROOT
from tests.test_defaults import calls  # noqa: F401  (the AnimateDiffPipeline spy fixture)

PHOTO = str(ROOT / "assets" / "examples" / "astronaut.jpg")
SMALL = dict(width=64, height=64, num_frames=8, safety=None)


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache("cpu")


# ----------------------------------------------------------------- modes: what they take, what they refuse
@pytest.mark.parametrize("request_, message", [
    (TimelapseRequest("ice", mode="fast"), "made for 8 steps: set Steps to 8 (not 25)"),
    (TimelapseRequest("ice", mode="fast", steps=8), "takes guidance 1 to 8 (not 8.5)"),
    (TimelapseRequest("ice", mode="lightning"), "drops MagicTime's temporal adapter"),
    (TimelapseRequest("ice", mode="animatelcm"), "drops MagicTime's temporal adapter"),
    (TimelapseRequest("ice", mode="turbo"), "mode must be one of 'quality', 'fast', 'fast-preview', not 'turbo'"),
    (IdentityRequest((PHOTO,), "a man", mode="fast"), "made for 4 or 8 steps: set Steps to 4 or 8 (not 30)"),
    (IdentityRequest((PHOTO,), "a man", mode="fast", steps=4), "takes guidance 1 to 2 (not 8)"),
])
def test_a_fast_mode_refuses_what_it_was_not_made_for_naming_its_numbers(request_, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        request_.validate()


def test_each_fast_path_is_its_own_cache_entry_naming_its_files():
    registry = Registry("tiny")
    quality, fast = timelapse_models(registry, "ToonYou"), timelapse_models(registry, "ToonYou", fast=True)
    assert fast.unet.key == quality.unet.key.replace("|float32", f"|+ByteDance/Hyper-SD/{HYPER_SD_LORA}|float32")
    assert fast.unet.deps == quality.unet.deps                     # one 2-D UNet, one v3 motion adapter, shared
    lightning = {steps: identity_models(registry, steps).unet for steps in (4, 8)}
    assert len({identity_models(registry).unet.key, lightning[4].key, lightning[8].key}) == 3
    assert f"{LIGHTNING}/{lightning_file(4)}" in lightning[4].key
    assert identity_models(registry, 4).image_encoder.key == identity_models(registry).image_encoder.key
    assert TAESD in quality.tiny_vae.key and quality.tiny_vae == identity_models(registry).tiny_vae
    with pytest.raises(ValueError, match="4, 8"):
        identity_models(registry, 6)


def test_downloads_list_each_modes_files_and_a_fast_call_names_the_missing_one(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from pipelines.core.hub import MissingWeightsError

    registry = Registry("real")
    names = lambda files: {f"{f.repo_id}/{f.filename}" for f in files}  # noqa: E731
    everything = names(identity_downloads())
    assert {f"{LIGHTNING}/{lightning_file(4)}", f"{LIGHTNING}/{lightning_file(8)}",
            f"{TAESD}/diffusion_pytorch_model.safetensors"} <= everything
    quality = names(identity_downloads(fast=False, tiny_decoder=False))
    assert not any(LIGHTNING in n or TAESD in n for n in quality)
    assert "guoyww/animatediff-motion-adapter-v1-5-2/config.json" in quality
    fast = names(identity_downloads(fast=True, steps=4, tiny_decoder=False))
    assert f"{LIGHTNING}/{lightning_file(4)}" in fast and f"{LIGHTNING}/{lightning_file(8)}" not in fast
    assert not any("guoyww" in n for n in fast)                  # Lightning replaces v2's motion module
    assert f"ByteDance/Hyper-SD/{HYPER_SD_LORA}" in names(timelapse_downloads(fast=True))

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="AnimateDiff-Lightning"):
        ensure_identity_available(registry, fast=True, steps=4)


# ----------------------------------------------------------------- the time-lapse keeps v3
def test_a_v2_layout_motion_module_is_refused_for_the_time_lapse_though_its_lora_would_load_silently():
    unet2d = tiny.unet2d(1)
    v3, v2 = tiny.motion_adapter(2), tiny.motion_adapter(2, mid_block=True)
    config, weights = magictime_tiny.temporal_lora_files(UNetMotionModel.from_unet2d(unet2d, v3), seed=4)
    temporal = swift_lora_deltas(SwiftLoraConfig.from_dict(config), weights, rename=animatediff_module_name)
    merge_lora_(UNetMotionModel.from_unet2d(unet2d, v2), temporal)   # the trap: every layer fits, no error
    with pytest.raises(WeightsError, match="AnimateDiff v2's layout"):
        compose_magic_unet(unet2d, v2, {}, temporal)


def test_the_speed_lora_merges_into_image_layers_only_with_kohya_scaling():
    unet2d = tiny.unet2d(1)
    plain = UNetMotionModel.from_unet2d(unet2d, tiny.motion_adapter(2))
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    speed = tiny.kohya_lora_file(unet2d, seed=5)
    merge_image_lora(plain, speed, HYPER_SD_LORA)
    after = plain.state_dict()
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
    key = "lora_unet_" + layer.replace(".", "_")
    rank = speed[f"{key}.lora_down.weight"].shape[0]
    expected = before[f"{layer}.weight"] + (speed[f"{key}.alpha"] / rank) * (
        speed[f"{key}.lora_up.weight"] @ speed[f"{key}.lora_down.weight"])
    torch.testing.assert_close(after[f"{layer}.weight"], expected)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert len(changed) == sum(k.endswith(".lora_down.weight") for k in speed)
    assert not any(".motion_modules." in k for k in changed)
    assert not any("lora" in name for name, _ in plain.named_modules())    # fused, PEFT layers gone


def test_a_speed_lora_that_does_not_fit_is_refused_before_the_unet_changes():
    unet2d = tiny.unet2d(1)
    unet = UNetMotionModel.from_unet2d(unet2d, tiny.motion_adapter(2))
    speed = tiny.kohya_lora_file(unet2d, seed=5)
    key = next(k for k in speed if k.endswith(".lora_down.weight")).removesuffix(".lora_down.weight")
    wrong = {**speed, **{k.replace(key, "lora_unet_nowhere_block_to_q"): v for k, v in speed.items() if key in k}}
    with pytest.raises(WeightsError, match="does not fit this UNet"):
        merge_image_lora(unet, wrong, HYPER_SD_LORA)
    with pytest.raises(WeightsError, match="not only the UNet"):
        merge_image_lora(UNetMotionModel.from_unet2d(unet2d, tiny.motion_adapter(2)),
                          {**speed, "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
                           torch.zeros(2, 64), "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight":
                           torch.zeros(64, 2)}, HYPER_SD_LORA)


# ----------------------------------------------------------------- the samplers each mode runs
def test_fast_identity_runs_lightnings_euler_trailing_without_guidance_and_cond_only_faces(cache, calls):  # noqa: F811
    result = IdentityPipeline(cache, Registry("tiny"))(
        IdentityRequest((PHOTO,), "a man", mode="fast", steps=4, guidance=1.0, **SMALL))
    (call,) = calls
    scheduler = call["scheduler"]
    assert type(scheduler) is EulerDiscreteScheduler
    assert (scheduler.config.timestep_spacing, scheduler.config.beta_schedule) == ("trailing", "linear")
    assert call["timesteps"] == [999.0, 749.0, 499.0, 249.0]          # trailing: 1000 - 250 k, minus one
    assert call["guidance_scale"] == 1.0
    (embeds,) = call["ip_adapter_image_embeds"]
    assert embeds.shape[0] == 1                                       # no blank-face branch without CFG
    assert result.frames.shape == (8, 64, 64, 3) and result.mode == "fast"


def test_fast_time_lapse_runs_ddim_trailing_with_guidance_and_the_negative_prompt(cache, calls):  # noqa: F811
    TimelapsePipeline(cache, Registry("tiny"))(TimelapseRequest("ice melting", mode="fast", steps=8, guidance=5.0,
                                                                 **SMALL))
    (call,) = calls
    assert type(call["scheduler"]) is DDIMScheduler and call["scheduler"].config.timestep_spacing == "trailing"
    assert call["timesteps"] == [999, 874, 749, 624, 499, 374, 249, 124]
    assert call["guidance_scale"] == 5.0 and call["negative_prompt"]


def test_same_seed_same_fast_clip_and_fast_differs_from_quality(cache):
    pipeline = TimelapsePipeline(cache, Registry("tiny"))
    fast = lambda seed: pipeline(TimelapseRequest("ice melting", mode="fast", steps=8, guidance=5.0,  # noqa: E731
                                                  seed=seed, **SMALL)).frames
    first = fast(3)
    assert np.array_equal(first, fast(3)) and not np.array_equal(first, fast(4))
    quality = pipeline(TimelapseRequest("ice melting", steps=8, guidance=5.0, seed=3, **SMALL)).frames
    assert not np.array_equal(first, quality)       # Hyper-SD's LoRA and trailing timesteps change the clip


def test_fast_preview_decodes_with_the_tiny_decoder(cache, monkeypatch):
    import pipelines.timelapse.pipeline as timelapse

    decoders, original = [], timelapse.decode_frames
    def spy(pipe, latents, chunk, vae=None):
        decoders.append(vae)
        return original(pipe, latents, chunk, vae)

    monkeypatch.setattr(timelapse, "decode_frames", spy)
    registry = Registry("tiny")
    pipeline = TimelapsePipeline(cache, registry)
    for mode in ("fast", "fast-preview"):
        pipeline(TimelapseRequest("ice melting", mode=mode, steps=8, guidance=5.0, **SMALL))
    assert decoders[0] is None
    with cache.use(timelapse_models(registry, "Realistic Vision").tiny_vae) as (taesd,):
        assert decoders[1] is taesd


def test_decoding_without_a_pipeline_matches_diffusers_decode_latents():
    vae, taesd = tiny.vae(1), tiny.tiny_vae(2)
    pipe = animatediff(vae, None, None, None, timelapse_models(Registry("tiny"), "ToonYou").scheduler_config)
    latents = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():                 # diffusers' own path: decode_latents, then its video processor
        video = pipe.decode_latents(latents, decode_chunk_size=2)
        theirs = pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
    np.testing.assert_array_equal(decode_frames(pipe, latents, chunk=2), to_uint8(theirs))
    np.testing.assert_array_equal(decode_with(vae, latents, chunk=2), to_uint8(theirs))
    frames = decode_frames(pipe, latents, chunk=5, vae=taesd)
    with torch.no_grad():
        reference = taesd.decode(latents[0].permute(1, 0, 2, 3)).sample        # TAESD takes the UNet's latents
    expected = (np.clip((reference.permute(0, 2, 3, 1).numpy() + 1) / 2, 0, 1) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(frames, expected)


# ----------------------------------------------------------------- live preview
def test_the_live_preview_shows_the_clip_early_and_never_changes_it(cache):
    pipeline = TimelapsePipeline(cache, Registry("tiny"))
    request = TimelapseRequest("ice melting", steps=6, seed=2, **SMALL)
    shown = []
    with_preview = pipeline(request, preview=lambda frames, done: shown.append((frames, done)))
    without = pipeline(request)
    np.testing.assert_array_equal(with_preview.frames, without.frames)
    frames, done = shown[0]
    assert done == 1 and frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8     # half size, step 1
    assert all(d < request.steps for _, d in shown)                                       # not after the last
    assert 0 < with_preview.timings["preview"] < with_preview.timings["denoise"]


def test_the_preview_is_the_predicted_clean_clip_not_the_noisy_latents(cache, monkeypatch):
    import pipelines.sd15.sampling as common

    decoded, steps = [], []
    decode, step = common.decode_with, DDIMScheduler.step
    monkeypatch.setattr(common, "decode_with", lambda vae, latents, chunk: decoded.append(latents.clone())
                        or decode(vae, latents, chunk))
    monkeypatch.setattr(DDIMScheduler, "step", lambda self, *a, **k: steps.append(step(self, *a, **k)) or steps[-1])
    TimelapsePipeline(cache, Registry("tiny"))(
        TimelapseRequest("ice melting", steps=4, seed=2, **SMALL), preview=lambda frames, done: None)
    # diffusers' step callback sees x_{t-1} (prev_sample); the preview decodes DDIM's x0 prediction of that step
    torch.testing.assert_close(decoded[0], steps[0].pred_original_sample, rtol=0, atol=0)
    assert not torch.equal(decoded[0], steps[0].prev_sample)


def test_a_stopped_preview_stream_releases_the_models_at_once(tmp_path):
    from studio.engine import Engine
    from studio.tabs.timelapse_api import TimelapseAPI
    from tests.conftest import tiny_settings

    engine = Engine(tiny_settings(tmp_path / "out"))
    stream = TimelapseAPI(engine).stream("ice melting", num_frames=8, steps=40, seed=1, safety=False, preview=True,
                                         progress=lambda *a, **k: None)
    path, summary, _ = next(stream)
    assert path.endswith(".mp4") and summary.startswith("**Denoising step 1/40** · preview from step 1")
    start = time.monotonic()
    stream.close()                                           # the page went away, or Stop
    assert time.monotonic() - start < 10
    assert not any(c["locked"] for c in engine.cache.stats()["components"])
    assert not [t for t in threading.enumerate() if t.name == "timelapse-call"]
    *_, info = TimelapseAPI(engine).generate("ice melting", num_frames=8, steps=2, seed=1, safety=False,
                                             progress=lambda *a, **k: None)
    assert info["num_frames"] == 8


# ----------------------------------------------------------------- through the API
def test_fast_modes_through_the_api_report_mode_and_timings(client):
    _, _, info = client.predict(prompt="ice melting", num_frames=8, steps=8, guidance=5.0, mode="fast",
                                api_name="/timelapse")
    assert info["mode"] == "fast" and info["num_frames"] == 8
    assert {"queue_wait", "load", "text_encoding", "denoise", "denoise_per_step", "decode", "safety_check",
            "encode_mp4"} <= set(info["timings"])
    assert "preview" not in info["timings"]                 # off for API calls unless asked
    _, _, _, info = client.predict(photos=[handle_file(PHOTO)], prompt="a man", num_frames=8, steps=4, guidance=1.0,
                                   mode="fast-preview", preview=True, api_name="/identity")
    assert info["mode"] == "fast-preview" and "preview" in info["timings"]


def test_a_mode_alone_gets_its_own_steps_and_guidance_over_the_api(client):
    """As choosing the mode in the page sets its sliders: steps and guidance left out are the mode's own."""
    *_, info = client.predict(prompt="ice", num_frames=8, mode="fast", api_name="/timelapse")
    assert info["mode"] == "fast" and info["steps"] == 8 and info["guidance"] == 5.0
    *_, info = client.predict(prompt="ice", num_frames=8, mode="quality", api_name="/timelapse")
    assert info["steps"] == 25 and info["guidance"] == 8.5
    *_, info = client.predict(photos=[handle_file(PHOTO)], prompt="a man", num_frames=8, mode="fast",
                              api_name="/identity")
    assert info["mode"] == "fast" and info["steps"] == 4 and info["guidance"] == 1.0


def test_a_fast_mode_with_quality_settings_is_a_clear_api_error(client):
    with pytest.raises(Exception, match="made for 4 or 8 steps"):
        client.predict(photos=[handle_file(PHOTO)], prompt="a man", mode="fast", steps=30, api_name="/identity")
    with pytest.raises(Exception, match="drops MagicTime's temporal adapter"):   # not only "not in the choices"
        client.predict(prompt="ice", mode="lightning", steps=4, guidance=1.0, api_name="/timelapse")
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict(prompt="ice", mode="turbo", api_name="/timelapse")


def test_queue_wait_counts_the_time_behind_another_call(server):
    from gradio_client import Client

    _, url = server
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    running = first.submit(prompt="ice melting", num_frames=16, steps=100, seed=1, api_name="/timelapse")
    time.sleep(0.5)
    _, _, waited = second.predict(prompt="ice melting", num_frames=8, steps=1, seed=1, api_name="/timelapse")
    *_, ran = running.result(timeout=300)
    assert ran["timings"]["queue_wait"] < 1.0
    assert waited["timings"]["queue_wait"] > 0.5 * ran["timings"]["denoise"]


# ----------------------------------------------------------------- the real loaders, on files in the hubs' layouts
def test_real_lightning_and_taesd_loaders_read_their_hub_layouts(monkeypatch, tmp_path):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    import pipelines.identity.models as registry
    from tests.test_real_identity_loading import snapshot

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # Lightning's files are bare MotionAdapter state dicts in v2's layout; that layout is the registry's, at toy size.
    layout = dict(tiny.motion_adapter(7, mid_block=True).config)
    monkeypatch.setattr(registry, "MOTION_ADAPTER_V2_LAYOUT", {k: layout[k] for k in registry.MOTION_ADAPTER_V2_LAYOUT})
    written = tiny.motion_adapter(7, mid_block=True)
    save_file(written.state_dict(), snapshot(LIGHTNING) / lightning_file(4))
    loaded = registry.RealIdentityLoaders(torch.float32).motion_adapter_lightning(4)
    assert loaded.state_dict().keys() == written.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in written.state_dict().items())
    save_file(tiny.motion_adapter(7).state_dict(), snapshot(LIGHTNING) / lightning_file(8))   # v3: no mid-block
    with pytest.raises(WeightsError, match=f"{lightning_file(8)} is not an AnimateDiff-Lightning motion adapter"):
        registry.RealIdentityLoaders(torch.float32).motion_adapter_lightning(8)

    taesd = tiny.tiny_vae(3)
    taesd.save_pretrained(snapshot(TAESD))             # config.json + diffusion_pytorch_model.safetensors
    assert {p.name for p in snapshot(TAESD).iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}
    loaded = registry.RealIdentityLoaders(torch.float32).tiny_vae()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in taesd.state_dict().items())


def test_real_fast_magic_unet_reads_hyper_sds_file_and_merges_it_after_magictimes(monkeypatch, tmp_path):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from pipelines.sd15.models import STYLES
    from pipelines.timelapse.convert import spatial_lora_deltas
    from pipelines.timelapse.models import HYPER_SD, SPATIAL_LORA, TEMPORAL_LORA, RealTimelapseLoaders
    from tests.test_real_identity_loading import snapshot
    from tests.test_real_loading import write_swift

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    unet2d, adapter = tiny.unet2d(1), tiny.motion_adapter(2)
    probe = UNetMotionModel.from_unet2d(unet2d, adapter)
    spatial = magictime_tiny.spatial_lora_file(probe, seed=3)
    config, weights = magictime_tiny.temporal_lora_files(probe, seed=4)
    magictime = snapshot("BestWishYsh/MagicTime")
    (magictime / SPATIAL_LORA).parent.mkdir(parents=True)
    torch.save(spatial, magictime / SPATIAL_LORA)
    write_swift(magictime / TEMPORAL_LORA, config, weights)
    speed = tiny.kohya_lora_file(unet2d, seed=5)
    save_file(speed, snapshot(HYPER_SD) / HYPER_SD_LORA)

    fast = RealTimelapseLoaders(torch.float32).magic_unet(STYLES["ToonYou"], unet2d, adapter, fast=True)
    temporal = swift_lora_deltas(SwiftLoraConfig.from_dict(config), weights, rename=animatediff_module_name)
    expected = compose_magic_unet(unet2d, adapter, spatial_lora_deltas(spatial), temporal, speed)
    quality = RealTimelapseLoaders(torch.float32).magic_unet(STYLES["ToonYou"], unet2d, adapter)
    for name, value in expected.state_dict().items():
        assert torch.equal(fast.state_dict()[name], value), name
    assert any(not torch.equal(fast.state_dict()[n], v) for n, v in quality.state_dict().items())


# ----------------------------------------------------------------- GPU knobs
def test_knobs_set_up_the_unet_and_vae_as_asked():
    from pipelines.sd15.knobs import Knobs

    registry = Registry("tiny", knobs=Knobs(channels_last=True, vae_tiling=True))
    cache = ModelCache("cpu")
    models = timelapse_models(registry, "ToonYou")
    with cache.use(models.unet, models.vae) as (unet, vae):
        conv = unet.conv_in.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        assert vae.use_tiling
        # attention is PyTorch's SDPA everywhere (diffusers' default; nothing falls back to the classic maths)
        assert {type(p).__name__ for p in unet.attn_processors.values()} == {"AttnProcessor2_0"}
    with pytest.raises(ValueError, match="compile must be one of"):
        Knobs(compile="max")


def test_the_identity_unet_attends_with_sdpa_too(cache):
    models = identity_models(Registry("tiny"), 4)
    with cache.use(models.unet) as (unet,):
        assert {type(p).__name__ for p in unet.attn_processors.values()} <= {"AttnProcessor2_0",
                                                                             "IPAdapterAttnProcessor2_0"}


# ----------------------------------------------------------------- the timing breakdown, on every tab
def test_every_tab_reports_where_its_seconds_went(client, tmp_path):
    from pipelines.core.video import write_mp4

    generating = {"load", "text_encoding", "denoise", "denoise_per_step", "decode", "safety_check", "encode_mp4"}
    *_, info = client.predict(prompt="ice melting", num_frames=8, steps=2, api_name="/timelapse")
    assert {"queue_wait", "safety_prompt"} | generating <= set(info["timings"])
    *_, info = client.predict(photos=[handle_file(PHOTO)], prompt="a man", num_frames=8, steps=2,
                              api_name="/identity")
    assert {"queue_wait", "faces", "safety_photos", "encode_faces", "identity_report"} | generating <= set(
        info["timings"])
    *_, info = client.predict(prompt="a cat", steps=2, api_name="/safe_generate")
    assert {"queue_wait"} | generating <= set(info["timings"]) and generating <= set(info["unguarded"]["timings"])
    clip = write_mp4(np.zeros((8, 64, 64, 3), np.uint8), tmp_path / "clip.mp4", fps=8)
    *_, info = client.predict(video=handle_file(str(clip)), expression="the dog", api_name="/segment")
    assert {"queue_wait", "read_video", "load", "grounding", "propagation", "export"} <= set(info["timings"])
    assert all(isinstance(v, float) and v >= 0 for v in info["timings"].values())


def test_bf16_on_a_cpu_runs_every_generating_path_with_the_vae_in_fp32():
    """The real profile's default on a CPU with bf16 instructions (studio/settings.py): UNets and text encoders in
    bf16, the VAE and TAESD in fp32. Every path runs: guard, keyframes, the face adapter, fast modes, the preview."""
    registry, cache = Registry("tiny", "bfloat16", vae_dtype="float32"), ModelCache("cpu")
    models = timelapse_models(registry, "ToonYou")
    with cache.use(models.unet, models.vae, models.tiny_vae) as (unet, vae, taesd):
        assert (unet.dtype, vae.dtype, taesd.dtype) == (torch.bfloat16, torch.float32, torch.float32)
    small = dict(width=64, height=64, num_frames=8)
    shown = []
    clip = TimelapsePipeline(cache, registry)(
        TimelapseRequest("ice melting", keyframes={4: "water"}, steps=2, style="ToonYou", **small),
        preview=lambda frames, done: shown.append(done))
    assert clip.frames.shape == (8, 64, 64, 3) and clip.frames.std() > 0 and shown
    fast = TimelapsePipeline(cache, registry)(TimelapseRequest("ice melting", mode="fast-preview", steps=8,
                                                               guidance=5.0, **small))
    assert fast.frames.shape == (8, 64, 64, 3)
    person = IdentityPipeline(cache, registry)(IdentityRequest((PHOTO,), "a man", mode="fast", steps=4,
                                                               guidance=1.0, **small), measure_identity=False)
    assert person.frames.shape == (8, 64, 64, 3)


def test_the_compile_knob_compiles_the_unets_and_leaves_the_rest():
    """STUDIO_COMPILE=torch: the motion UNets go through torch.compile when they load (the compile itself happens
    on their first call, minutes on this CPU: not run here); VAEs and encoders are left as they are."""
    from pipelines.sd15.knobs import Knobs

    registry, cache = Registry("tiny", knobs=Knobs(compile="torch")), ModelCache("cpu")
    models = identity_models(registry, 4)
    with cache.use(models.unet, models.vae, models.text_encoder) as (unet, vae, text):
        assert unet._compiled_call_impl is not None
        assert vae._compiled_call_impl is None and text._compiled_call_impl is None
    plain = timelapse_models(Registry("tiny"), "ToonYou")
    with cache.use(plain.unet) as (unet,):
        assert unet._compiled_call_impl is None


def test_the_preview_budget_shows_step_one_then_only_what_fits_and_never_the_last_step():
    """LivePreview's rule on its own: after step 1 always; later only while the previews' total stays within the
    budget's share of the time so far; never after the last step (the final decode follows)."""
    from types import SimpleNamespace

    from pipelines.sd15.sampling import LivePreview

    def run(budget: float, steps: int = 5) -> list[int]:
        pipe = SimpleNamespace(scheduler=SimpleNamespace(step=lambda *a, **k: SimpleNamespace(
            pred_original_sample=torch.zeros(1, 4, 2, 2, 2))))
        shown = []
        live = LivePreview(pipe, tiny.tiny_vae(2), lambda frames, done: shown.append(done), budget=budget)
        for done in range(1, steps + 1):
            pipe.scheduler.step()                                       # what diffusers calls each step
            live.after_step(done, steps)
        return shown

    assert run(budget=0.0) == [1]                       # nothing fits a zero budget but the first glimpse
    assert run(budget=-1.0) == [1]                      # which comes whatever the budget
    assert run(budget=1e9) == [1, 2, 3, 4]              # everything fits: every step but the last
