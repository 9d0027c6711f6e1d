"""What a user gets when they leave a setting alone, pinned against the originals' values written out here.

Every value below is a literal from the papers' released code (reference/timelapse.md, reference/identity.md),
never a constant imported from the code under test, and each is read where it takes effect: the arguments
diffusers' AnimateDiffPipeline receives, the scheduler it samples with and the FreeNoise windows, during a
call made through the API with the parameter left out.
"""

from __future__ import annotations

import pytest
from diffusers import AnimateDiffPipeline, DDIMScheduler
from gradio_client import handle_file

from pipelines.identity.pipeline import AUTHORS_NEGATIVE
from tests.conftest import ROOT

PHOTO = str(ROOT / "assets" / "examples" / "astronaut.jpg")

# AnimateDiff's inference config, which both MagicTime and ID-Animator sample with.
ORIGINAL_DDIM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                     steps_offset=1, clip_sample=False, timestep_spacing="leading", prediction_type="epsilon")


def leading_timesteps(steps: int) -> list[int]:
    """DDIM's 'leading' spacing with steps_offset 1, computed independently: 0, k, 2k, ... reversed, plus 1."""
    ratio = 1000 // steps
    return [i * ratio + 1 for i in reversed(range(steps))]


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """Every AnimateDiffPipeline call the server makes while the test runs: its arguments, its scheduler, the
    FreeNoise window settings and the face-adapter scale at the moment of the call, and the timesteps it ran."""
    seen = []
    original = AnimateDiffPipeline.__call__

    def spy(pipe, *args, **kwargs):
        scales = {tuple(p.scale) for p in pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")}
        call = dict(kwargs, scheduler=pipe.scheduler, context_length=getattr(pipe, "_free_noise_context_length", None),
                    context_stride=getattr(pipe, "_free_noise_context_stride", None), face_scales=scales)
        seen.append(call)
        output = original(pipe, *args, **kwargs)
        call["timesteps"] = pipe.scheduler.timesteps.tolist()
        return output

    monkeypatch.setattr(AnimateDiffPipeline, "__call__", spy)
    return seen


def assert_original_ddim(call: dict) -> None:
    scheduler = call["scheduler"]
    assert type(scheduler) is DDIMScheduler
    assert {key: scheduler.config[key] for key in ORIGINAL_DDIM} == ORIGINAL_DDIM
    assert call["timesteps"] == leading_timesteps(call["num_inference_steps"])


def test_timelapse_defaults_are_magictimes(client, calls):
    video, summary, info = client.predict(prompt="ice melting", api_name="/timelapse")
    (call,) = calls
    assert call["num_inference_steps"] == 25 and call["guidance_scale"] == 8.5
    assert call["negative_prompt"] == "worst quality, low quality, letterboxed"
    assert call["num_frames"] == 16 and call["prompt"] == "ice melting"
    assert call["context_length"] is None                        # no FreeNoise without keyframes
    assert_original_ddim(call)
    assert call["timesteps"][:3] == [961, 921, 881] and call["timesteps"][-1] == 1
    assert info["fps"] == 8 and info["num_frames"] == 16 and info["seed"] == 0 and info["style"] == "Realistic Vision"


def test_keyframes_slide_freenoise_windows_of_16_by_4(client, calls):
    client.predict(prompt="a rose", keyframes="0: a closed bud\n20: a rose in full bloom", num_frames=24, steps=2,
                   api_name="/timelapse")
    (call,) = calls
    assert (call["context_length"], call["context_stride"]) == (16, 4)
    assert call["prompt"] == {0: "a closed bud", 20: "a rose in full bloom"}
    assert_original_ddim(call)


def test_identity_defaults_are_id_animators(client, calls):
    video, summary, plot, info = client.predict(photos=[handle_file(PHOTO)], prompt="a woman on a beach",
                                                api_name="/identity")
    (call,) = calls
    assert call["num_inference_steps"] == 30 and call["guidance_scale"] == 8.0 and call["num_frames"] == 16
    assert call["prompt"] == "a woman on a beach 8k uhd, high quality, medium shot"
    assert call["negative_prompt"] == f"{AUTHORS_NEGATIVE} long shots, full body"     # ID-Animator's demo's list
    assert call["face_scales"] == {(0.8,)}
    assert_original_ddim(call)
    assert call["timesteps"][:2] == [958, 925] and call["timesteps"][-1] == 1
    assert info["fps"] == 9 and info["num_frames"] == 16 and info["identity_strength"] == 0.8
    assert info["prompt_used"] == call["prompt"] and info["negative_prompt_used"] == call["negative_prompt"]


def test_identity_appends_the_negative_suffix_to_what_the_user_writes(client, calls):
    client.predict(photos=[handle_file(PHOTO)], prompt="a man surfing", negative_prompt="blurry, cartoon",
                   identity_strength=1.1, steps=1, api_name="/identity")
    (call,) = calls
    assert call["negative_prompt"] == "blurry, cartoon long shots, full body"
    assert call["prompt"] == "a man surfing 8k uhd, high quality, medium shot"
    assert call["face_scales"] == {(1.1,)}


@pytest.mark.parametrize("tab, steps, guidance", [("timelapse", 25, 8.5), ("identity", 30, 8.0)])
def test_the_page_and_choosing_quality_again_give_the_originals_steps_and_guidance(client, tab, steps, guidance):
    """The sliders as the page first shows them, and what picking "Quality" again puts back into them
    (controls.follow_mode reads the mode's defaults): the originals' numbers both times."""
    from pipelines.sd15.modes import IDENTITY_MODES, TIMELAPSE_MODES

    quality = (TIMELAPSE_MODES if tab == "timelapse" else IDENTITY_MODES)["quality"]
    assert (quality.default_steps, quality.default_guidance) == (steps, guidance)
    sliders = {c["props"].get("label"): c["props"]["value"] for c in client.config["components"]
               if c["props"].get("elem_id", "") in (f"{tab}-steps", f"{tab}-guidance")}
    assert sliders == {"Steps": steps, "Guidance": guidance}, sliders
