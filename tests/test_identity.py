"""The identity pipeline and endpoint on the tiny profile, with a real photo (skimage's public-domain astronaut)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from skimage import data

from pipelines.core.cache import ModelCache
from pipelines.core.errors import InputError
from pipelines.core.video import read_video, to_uint8, write_mp4
from pipelines.identity.faces import FaceAnalyzer
from pipelines.identity.models import identity_models
from pipelines.identity.pipeline import IdentityPipeline, IdentityRequest
from pipelines.sd15 import tiny
from pipelines.sd15.models import Registry
from tests.conftest import ROOT

ASTRONAUT = data.astronaut()
SIZE = dict(width=64, height=64)


@pytest.fixture(scope="module")
def pipeline() -> IdentityPipeline:
    return IdentityPipeline(ModelCache("cpu"), Registry("tiny"), FaceAnalyzer())


def run(pipeline, **fields):
    return pipeline(IdentityRequest(**{"photos": (ASTRONAUT,), "prompt": "a woman on a beach", "steps": 3,
                                       **SIZE, **fields}))


def test_a_photo_gives_a_16_frame_clip_and_a_report(pipeline):
    result = run(pipeline)
    assert result.frames.shape == (16, 64, 64, 3) and result.frames.dtype == np.uint8 and result.fps == 9
    assert len(result.face_similarity) == 16
    assert result.faces.crops[0].shape == (224, 224, 3)
    assert {"faces", "load", "encode_faces", "denoise", "decode", "identity_report"} <= set(result.timings)


def test_same_seed_same_frames_and_the_identity_reaches_the_model(pipeline):
    first, again = run(pipeline, seed=4), run(pipeline, seed=4)
    assert np.array_equal(first.frames, again.frames)
    assert not np.array_equal(first.frames, run(pipeline, seed=5).frames)
    assert not np.array_equal(first.frames, run(pipeline, seed=4, identity_strength=0.0).frames)
    other_face = np.ascontiguousarray(ASTRONAUT[:, ::-1])        # the mirror image: another face embedding
    assert not np.array_equal(first.frames, run(pipeline, seed=4, photos=(other_face,)).frames)


def test_several_photos_average_the_projected_face_tokens(pipeline):
    """ID-Animator's identity mixing: the mean of each photo's face tokens, not their concatenation."""
    models = identity_models(pipeline.registry)
    faces = pipeline.reference_faces((ASTRONAUT, np.ascontiguousarray(ASTRONAUT[:, ::-1])))
    with pipeline.cache.use(models.unet, models.image_encoder, models.image_processor) as (unet, encoder, processor):
        embeds = pipeline._face_embeds(encoder, processor, faces.crops, guided=True)   # (2, photos, tokens, width)
        with torch.no_grad():
            both = unet.encoder_hid_proj([embeds])[0]
            each = [unet.encoder_hid_proj([embeds[:, i:i + 1]])[0] for i in range(2)]
    assert both.shape == each[0].shape                                           # as many tokens as one photo
    torch.testing.assert_close(both, (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-6)


def _bare_pipe(pipeline, **components) -> AnimateDiffPipeline:
    """diffusers' own AnimateDiffPipeline around the cached identity components, for reference computations."""
    models = identity_models(pipeline.registry)
    names = ("tokenizer", "text_encoder", "vae", "unet", "image_encoder", "image_processor")
    tok, te, vae, unet, encoder, processor = (pipeline.cache.get(getattr(models, n)) for n in names)
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, motion_adapter=None,
                               scheduler=DDIMScheduler.from_config(models.scheduler_config), image_encoder=encoder,
                               feature_extractor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_face_embeds_are_diffusers_own_ip_adapter_plus_encoding(pipeline):
    """The photo's penultimate hidden states, and the encoder's output for an all-zero image as the unguided
    branch: what diffusers' IP-Adapter-Plus encoding (and ID-Animator's) gives for the same crops."""
    faces = pipeline.reference_faces((ASTRONAUT, np.ascontiguousarray(ASTRONAUT[:, ::-1])))
    pipe = _bare_pipe(pipeline)
    with torch.no_grad():
        cond, uncond = pipe.encode_image(faces.crops, "cpu", 1, output_hidden_states=True)
        guided = pipeline._face_embeds(pipe.image_encoder, pipe.feature_extractor, faces.crops, guided=True)
        unguided = pipeline._face_embeds(pipe.image_encoder, pipe.feature_extractor, faces.crops, guided=False)
    assert cond.shape == (2, 17, tiny.IMAGE_ENCODER_WIDTH)               # 2 photos, 4×4 patches + class token
    assert guided.shape == (2, *cond.shape) and torch.equal(guided[0], uncond) and torch.equal(guided[1], cond)
    assert unguided.shape == (1, *cond.shape) and torch.equal(unguided[0], cond)
    assert not torch.equal(cond, uncond)


def test_guidance_1_gives_every_frame_the_real_face(pipeline):
    """Without guidance diffusers does not split the face embeds in two: every frame must get the photo's face.
    Reference: diffusers run on the same components with the conditional embeds built here by hand."""
    request = dict(guidance=1.0, num_frames=8, steps=2, seed=3, identity_strength=1.0, safety=None)
    studio = run(pipeline, **request).frames
    pipe = _bare_pipe(pipeline)
    crop = pipeline.reference_faces((ASTRONAUT,)).crops[0]
    with torch.no_grad():
        pixels = pipe.feature_extractor(images=[crop], return_tensors="pt").pixel_values
        cond = pipe.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
    pipe.set_ip_adapter_scale(1.0)
    expected = pipe(prompt="a woman on a beach 8k uhd, high quality, medium shot",
                    negative_prompt="long shots, full body", num_frames=8, height=64, width=64,
                    num_inference_steps=2, guidance_scale=1.0, ip_adapter_image_embeds=[cond[None]],
                    generator=torch.Generator("cpu").manual_seed(3), output_type="np").frames[0]
    expected = to_uint8(expected)
    per_frame = np.abs(studio.astype(int) - expected).reshape(8, -1).max(axis=1)
    assert studio.shape == expected.shape == (8, 64, 64, 3)
    assert (per_frame == 0).all(), f"max difference per frame {per_frame.tolist()}"


def test_identity_report_on_real_faces(pipeline):
    """A 'clip' of the reference photo itself scores ~1; a frame without a face is counted, not guessed."""
    smaller = np.asarray(Image.fromarray(ASTRONAUT).resize((256, 256)).resize((512, 512)))   # a blurrier copy
    frames = np.stack([ASTRONAUT, smaller, np.full((512, 512, 3), 128, np.uint8)])
    report = pipeline.identity_report(frames, pipeline.reference_faces((ASTRONAUT,)).embeddings)
    assert report[0] == pytest.approx(1.0, abs=1e-3)
    assert 0.4 < report[1] < 0.99           # the same person (similarity 0.4 is dlib's 0.6 distance threshold)
    assert report[2] is None


@pytest.mark.parametrize("fields, message", [
    (dict(photos=()), "Give 1 to 4 photos"),
    (dict(photos=(ASTRONAUT,) * 5), "Give 1 to 4 photos"),
    (dict(prompt=" "), "Write a prompt"),
    (dict(photos=(ASTRONAUT, np.full((300, 300, 3), 90, np.uint8))), "No face found in photo 2"),
    (dict(num_frames=24), "Frames must be between 8 and 16"),
    (dict(identity_strength=3.0), "Identity strength must be between 0 and 1.5"),
    (dict(steps=0), "Steps must be between 1 and 100"),
])
def test_bad_requests_are_refused_before_any_model_work(fields, message):
    cache = ModelCache("cpu")
    with pytest.raises(InputError, match=message):
        IdentityPipeline(cache, Registry("tiny"))(
            IdentityRequest(**{"photos": (ASTRONAUT,), "prompt": "a woman", **SIZE, **fields}))
    assert cache.stats()["misses"] == 0


# ----------------------------------------------------------------- through the server
PHOTO = str(ROOT / "assets" / "examples" / "astronaut.jpg")


def test_identity_endpoint_returns_an_h264_clip_and_the_identity_report(client):
    video, summary, plot, info = client.predict(photos=[handle_file(PHOTO)], prompt="a woman on a beach", steps=2,
                                                api_name="/identity")
    frames, fps, codec = read_video(video)
    assert frames.shape == (16, 64, 64, 3) and codec == "h264" and fps == 9
    assert info["seed"] == 0 and info["photos"] == 1
    similarity = info["face_similarity"]
    assert len(similarity["per_frame"]) == 16 and similarity["frames_without_face"] == 16 - sum(
        s is not None for s in similarity["per_frame"])
    assert "Identity" in summary


def test_face_preview_shows_the_aligned_crop(client):
    crops, notes = client.predict(photos=[handle_file(PHOTO)], api_name="/identity_faces")
    assert len(crops) == 1 and crops[0]["caption"] == "Photo 1"
    assert Image.open(crops[0]["image"]).size == (224, 224)


@pytest.mark.parametrize("name, message", [
    ("wall.png", "No face found in photo 2"),
    ("notes.png", "Photo 2 is not an image"),
])
def test_bad_photos_get_a_clear_error_and_the_server_keeps_serving(client, tmp_path, name, message):
    Image.new("RGB", (320, 240), (90, 90, 90)).save(tmp_path / "wall.png")      # a photo of a wall
    (tmp_path / "notes.png").write_text("not an image")                         # a text file named .png
    with pytest.raises(AppError, match=message):
        client.predict(photos=[handle_file(PHOTO), handle_file(str(tmp_path / name))], prompt="a woman",
                       api_name="/identity")
    assert client.predict(photos=[handle_file(PHOTO)], prompt="still here", steps=1, api_name="/identity")[-1]["photos"] == 1


def test_identity_calls_leave_no_trace_on_the_time_lapse_tab(client, tmp_path):
    """Adapter state must not leak between tabs: the time-lapse frames after identity calls equal those of a
    fresh process."""
    client.predict(photos=[handle_file(PHOTO)], prompt="a woman", steps=1, identity_strength=1.2, api_name="/identity")
    after = read_video(client.predict(prompt="ice melting", steps=2, seed=9, api_name="/timelapse")[0])[0]
    fresh = subprocess.run(
        [sys.executable, "-c", (
            "import os, sys; os.environ['HF_HUB_OFFLINE'] = '1'; sys.path.insert(0, '.');"
            "from pipelines.core.cache import ModelCache; from pipelines.sd15.models import Registry;"
            "from pipelines.timelapse.pipeline import TimelapsePipeline, TimelapseRequest;"
            "f = TimelapsePipeline(ModelCache('cpu'), Registry('tiny'))(TimelapseRequest("
            "prompt='ice melting', steps=2, seed=9, width=64, height=64)).frames;"
            "sys.stdout.buffer.write(f.tobytes())")],
        cwd=ROOT, capture_output=True, check=True, timeout=120,
    ).stdout
    fresh_frames = np.frombuffer(fresh, np.uint8).reshape(16, 64, 64, 3)
    assert np.array_equal(read_video(write_mp4(fresh_frames, tmp_path / "fresh.mp4"))[0], after)
