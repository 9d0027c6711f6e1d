"""The identity tab's `real` profile, offline, on a Hugging Face cache holding the four repositories it reads,
each in its real hub layout (tiny sizes):

- `BestWishYsh/MagicTime`: the SD1.5 folder's configs and tokenizer, and Realistic Vision's single-file LDM
  checkpoint (`DreamBooth/RealisticVisionV60B1_v51VAE.safetensors`), the same file the time-lapse tab reads.
- `ID-Animator/ID-Animator`: `animator.ckpt` ({"image_proj": resampler, "face_adapter": per-attn2 weights}).
- `guoyww/animatediff-motion-adapter-v1-5-2`: `MotionAdapter.save_pretrained` output (diffusers layout).
- `h94/IP-Adapter`: `models/image_encoder/`, `CLIPVisionModelWithProjection.save_pretrained` output.

The files are written from in-memory modules, so what the real loaders build can be compared with them:
weight for weight against hand-written layer names, and frame for frame with ID-Animator composed by hand on
diffusers' own pipeline and loaders. The
single-file checkpoint and the SD1.5 folder come from tests/test_real_end_to_end.py's fixtures.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNetMotionModel
from huggingface_hub import constants
from safetensors.torch import save_file
from skimage import data
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from pipelines.core import hub as hub_module
from pipelines.core import tiny as core_tiny
from pipelines.core.cache import ModelCache
from pipelines.core.hub import MissingWeightsError
from pipelines.core.video import to_uint8
from pipelines.identity import tiny as animator_tiny
from pipelines.identity.faces import FaceAnalyzer
from pipelines.identity.models import (
    ANIMATOR_CKPT,
    ID_ANIMATOR,
    IDENTITY_CHECKPOINT,
    IMAGE_ENCODER_FILES,
    IP_ADAPTER,
    MOTION_ADAPTER_V2,
    MOTION_ADAPTER_V2_FILES,
    identity_downloads,
    identity_models,
)
from pipelines.identity.pipeline import IdentityPipeline, IdentityRequest
from pipelines.sd15 import tiny
from pipelines.sd15.models import MAGICTIME, RealLoaders, Registry
from pipelines.timelapse.models import timelapse_models
from pipelines.timelapse.pipeline import TimelapsePipeline, TimelapseRequest
from tests.test_motion_norm import fold_frames_in_motion_norms
from tests.test_real_end_to_end import CHECKPOINT, STYLE, magictime, originals  # noqa: F401  (fixtures)
from tests.test_real_loading import hub_cache, write_base  # noqa: F401  (hub_cache: magictime's fixture)

ASTRONAUT = data.astronaut()
# The guard off: the clip is compared with ID-Animator on bare diffusers (tests/test_safety.py tests the guard).
REQUEST = IdentityRequest(photos=(ASTRONAUT,), prompt="a man reading in a garden", width=64, height=64, steps=2,
                          seed=5, safety=None)
LORA_PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
# ID-Animator's face-adapter numbering on the tiny UNet (tiny.unet2d: one cross-attention down block, two up-block
# layers, the mid block), written out by hand: attn1/attn2 alternate in the 2-D UNet's processor order and the
# mid block registers after the up blocks, so it comes last (as index 31 does on SD1.5).
TINY_ATTN2 = {
    1: "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
    3: "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    5: "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    7: "mid_block.attentions.0.transformer_blocks.0.attn2",
}
FACE_ROLES = ("to_k_face", "to_v_face", *(f"{p}_lora.{r}" for p in LORA_PROJECTIONS for r in ("down", "up")))


# ----------------------------------------------------------------- a fake Hugging Face cache, any repository
@pytest.fixture
def hub(monkeypatch, tmp_path) -> Path:
    """An empty Hugging Face cache (the same folder test_real_loading's `hub_cache` uses, so the two combine)."""
    root = tmp_path / "hub"
    root.mkdir(exist_ok=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


def snapshot(repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in the current cache (models--org--name/refs/main + snapshots/<sha>/),
    created if need be: write the repository's files into it under their hub paths."""
    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    refs = repo / "refs" / "main"
    if refs.exists():
        return repo / "snapshots" / refs.read_text()
    sha = hashlib.sha1(repo_id.encode()).hexdigest()
    refs.parent.mkdir(parents=True)
    refs.write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    return repo / "snapshots" / sha


def cached_files() -> set[tuple[str, str]]:
    """(repo_id, filename) of every file in the current cache's snapshots."""
    files = set()
    for repo in Path(constants.HF_HUB_CACHE).glob("models--*"):
        repo_id = repo.name.removeprefix("models--").replace("--", "/")
        for snap in (repo / "snapshots").iterdir():
            files |= {(repo_id, p.relative_to(snap).as_posix()) for p in snap.rglob("*") if p.is_file()}
    return files


# ----------------------------------------------------------------- the modules the files are written from
def image_encoder(seed: int) -> CLIPVisionModelWithProjection:
    """tiny.image_encoder at the real input size: the real profile's processor is CLIP's own (224 px), as the
    IP-Adapter encoder folder ships no preprocessor config; the width is the one animator_tiny.animator_file reads."""
    config = CLIPVisionConfig(image_size=224, patch_size=32, hidden_size=tiny.IMAGE_ENCODER_WIDTH,
                              intermediate_size=24, num_attention_heads=2, num_hidden_layers=2, projection_dim=16)
    return core_tiny.build(CLIPVisionModelWithProjection, seed, config=config).eval()


@dataclass
class IdentityOriginals:
    unet2d: torch.nn.Module        # these three are in the MagicTime single file
    vae: torch.nn.Module
    clip: torch.nn.Module
    single_file: dict
    adapter: MotionAdapter         # AnimateDiff v2 (not the time-lapse tab's v3 one: another seed)
    image_encoder: CLIPVisionModelWithProjection
    animator: dict


@pytest.fixture(scope="module")
def ids(originals) -> IdentityOriginals:
    seed = lambda name: core_tiny.seed_of("identity-real", name)  # noqa: E731
    return IdentityOriginals(
        unet2d=originals.unet2d, vae=originals.vae, clip=originals.clip, single_file=originals.single_file,
        adapter=tiny.motion_adapter(seed("motion-v2")).eval(), image_encoder=image_encoder(seed("image-encoder")),
        animator=animator_tiny.animator_file(originals.unet2d, seed("animator")),
    )


def write_identity_repos(o: IdentityOriginals, skip: tuple[str, ...] = (), magictime: bool = True) -> None:
    """The three identity-only repositories (minus `skip`) and, if `magictime`, MagicTime's identity files."""
    if magictime:
        base = snapshot(MAGICTIME)
        write_base(base)
        (base / IDENTITY_CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
        save_file(o.single_file, base / IDENTITY_CHECKPOINT)
    if ID_ANIMATOR not in skip:
        torch.save(o.animator, snapshot(ID_ANIMATOR) / ANIMATOR_CKPT)
    if MOTION_ADAPTER_V2 not in skip:
        o.adapter.save_pretrained(snapshot(MOTION_ADAPTER_V2))
    if IP_ADAPTER not in skip:
        o.image_encoder.save_pretrained(snapshot(IP_ADAPTER) / Path(IMAGE_ENCODER_FILES[0]).parent)


@pytest.fixture
def identity_hub(hub, ids) -> Path:
    write_identity_repos(ids)
    return hub


@pytest.fixture(scope="module")
def faces():
    return IdentityPipeline(None, None).reference_faces(REQUEST.photos)


class NoFrameFaces(FaceAnalyzer):
    """Skips the per-frame identity report (16 face detections) where a test compares frames only."""

    def frame_embedding(self, frame):
        return None


def block_network(monkeypatch) -> list:
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)       # recorded too, in case a library swallows the error
        raise OSError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    return attempts


def _assert_same_weights(actual: torch.nn.Module, expected: torch.nn.Module) -> None:
    actual, expected = actual.state_dict(), expected.state_dict()
    assert actual.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


# ----------------------------------------------------------------- 1: the whole real path runs offline
def test_real_profile_makes_an_identity_clip_offline(identity_hub, monkeypatch):
    attempts = block_network(monkeypatch)
    cache = ModelCache("cpu")
    result = IdentityPipeline(cache, Registry("real"))(REQUEST)
    assert result.frames.shape == (16, 64, 64, 3) and result.frames.dtype == np.uint8
    assert result.frames.std() > 0 and len(result.face_similarity) == 16
    keys = [c["key"] for c in cache.stats()["components"]]
    assert any(k.startswith(f"real|unet-motion|{IDENTITY_CHECKPOINT}|{MOTION_ADAPTER_V2}") for k in keys)
    # tokenizer, CLIP, VAE, image encoder and processor, motion UNet and its 2-D UNet and v2 adapter
    assert len(keys) == 8 and cache.stats()["loads"] == 8
    assert attempts == []


# ----------------------------------------------------------------- 2: the components are the originals
def test_real_identity_components_equal_the_files_contents(identity_hub, ids):
    o = ids
    models = identity_models(Registry("real"))
    cache = ModelCache("cpu")
    unet, encoder, te, vae = (cache.get(c) for c in (models.unet, models.image_encoder, models.text_encoder,
                                                     models.vae))
    unet2d_component, adapter_component, _ = models.unet.deps
    _assert_same_weights(cache.get(unet2d_component), o.unet2d)
    _assert_same_weights(cache.get(adapter_component), o.adapter)
    _assert_same_weights(encoder, o.image_encoder)
    _assert_same_weights(te, o.clip)            # Realistic Vision's own CLIP: no MagicTime text LoRA
    _assert_same_weights(vae, o.vae)
    assert isinstance(cache.get(models.image_processor), CLIPImageProcessor)
    assert cache.get(models.tokenizer)(REQUEST.prompt).input_ids == tiny.tokenizer()(REQUEST.prompt).input_ids

    # The motion UNet: from_unet2d(RV UNet, v2 adapter), face branch added, ID-Animator's LoRA fused (scale 1).
    plain = dict(UNetMotionModel.from_unet2d(o.unet2d, o.adapter).named_parameters())
    after = dict(unet.named_parameters())
    face = o.animator["face_adapter"]
    assert set(face) == {f"{i}.{role}.weight" for i in TINY_ATTN2 for role in FACE_ROLES}
    fused, names = {}, TINY_ATTN2
    for index, path in names.items():
        for proj, module in LORA_PROJECTIONS.items():
            up, down = face[f"{index}.{proj}_lora.up.weight"], face[f"{index}.{proj}_lora.down.weight"]
            fused[f"{path}.{module}.weight"] = plain[f"{path}.{module}.weight"] + up @ down
        processor = unet.get_submodule(path).processor
        assert torch.equal(processor.to_k_ip[0].weight, face[f"{index}.to_k_face.weight"]), path
        assert torch.equal(processor.to_v_ip[0].weight, face[f"{index}.to_v_face.weight"]), path
    assert len(names) == 4 and len(fused) == 4 * len(names)     # the tiny UNet's cross-attention layers
    for name, weight in fused.items():
        torch.testing.assert_close(after[name], weight, rtol=1e-5, atol=1e-6)
        assert not torch.equal(after[name], plain[name])
    unchanged = [n for n in plain if n not in fused]
    assert any(".motion_modules." in n for n in unchanged)
    changed = [n for n in unchanged if not torch.equal(after[n], plain[n])]
    assert not changed, f"weights outside the face adapter's LoRA changed: {changed[:5]}"
    assert not any("lora" in n for n in after), "the LoRA must be fused and unloaded"
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    assert torch.equal(projection.latents, o.animator["image_proj"]["latents"])


def reference_identity_pipe(o: IdentityOriginals) -> AnimateDiffPipeline:
    """ID-Animator on diffusers, built here without the studio's converter or composition: the motion UNet from
    diffusers' from_unet2d, each attn2's LoRA fused by hand (W + up @ down, scale 1), the face branch loaded with
    diffusers' own load_ip_adapter under the hand-written numbering, the real profile's CLIP preprocessing."""
    unet = fold_frames_in_motion_norms(UNetMotionModel.from_unet2d(copy.deepcopy(o.unet2d), copy.deepcopy(o.adapter)))
    face = o.animator["face_adapter"]
    with torch.no_grad():
        for index, path in TINY_ATTN2.items():
            for proj, module in LORA_PROJECTIONS.items():
                layer = unet.get_submodule(f"{path}.{module}")
                layer.weight += face[f"{index}.{proj}_lora.up.weight"] @ face[f"{index}.{proj}_lora.down.weight"]
    pipe = AnimateDiffPipeline(vae=copy.deepcopy(o.vae), text_encoder=copy.deepcopy(o.clip), tokenizer=tiny.tokenizer(),
                               unet=unet, motion_adapter=None, image_encoder=copy.deepcopy(o.image_encoder),
                               feature_extractor=CLIPImageProcessor(),
                               scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                                                       steps_offset=1, clip_sample=False, timestep_spacing="leading"))
    ip_adapter = {f"{i}.to_{kv}_ip.weight": face[f"{i}.to_{kv}_face.weight"] for i in TINY_ATTN2 for kv in "kv"}
    pipe.load_ip_adapter({"image_proj": o.animator["image_proj"], "ip_adapter": ip_adapter}, subfolder="",
                         weight_name="", image_encoder_folder=None)
    for index, path in TINY_ATTN2.items():       # diffusers numbered the layers as ID-Animator does
        assert torch.equal(unet.get_submodule(path).processor.to_k_ip[0].weight, face[f"{index}.to_k_face.weight"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_real_identity_clip_equals_an_independent_diffusers_composition(identity_hub, ids, faces):
    """Same request, same face crop: the real profile's frames are those of diffusers' AnimateDiffPipeline with
    ID-Animator put together by hand from the same files' contents (8 frames: the comparison needs no more)."""
    request = dataclasses.replace(REQUEST, num_frames=8, identity_strength=0.9, negative_prompt="")
    actual = IdentityPipeline(ModelCache("cpu"), Registry("real"), NoFrameFaces())(request, faces=faces).frames

    pipe = reference_identity_pipe(ids)
    pipe.set_ip_adapter_scale(0.9)
    expected = pipe(
        prompt="a man reading in a garden 8k uhd, high quality, medium shot", negative_prompt="long shots, full body",
        ip_adapter_image=[faces.crops[0]], num_frames=8, height=64, width=64, num_inference_steps=2,
        guidance_scale=8.0, generator=torch.Generator("cpu").manual_seed(5), output_type="np",
    ).frames[0]
    expected = to_uint8(expected)
    assert actual.shape == expected.shape == (8, 64, 64, 3) and actual.std() > 0
    assert np.array_equal(actual, expected), f"max difference {np.abs(actual.astype(int) - expected).max()}"


# ----------------------------------------------------------------- 3: one RV UNet for both tabs
def test_the_rv_unet2d_is_shared_with_the_timelapse_tab_and_loads_once(magictime, ids, originals, faces,
                                                                        monkeypatch):
    real = Registry("real")
    timelapse, identity = timelapse_models(real, STYLE), identity_models(real)
    assert CHECKPOINT == IDENTITY_CHECKPOINT
    timelapse_unet2d, identity_unet2d = timelapse.unet.deps[0], identity.unet.deps[0]
    assert timelapse_unet2d.key == identity_unet2d.key == f"real|unet2d|{CHECKPOINT}|float32"
    assert timelapse.vae.key == identity.vae.key and timelapse.tokenizer.key == identity.tokenizer.key

    write_identity_repos(ids, magictime=False)      # next to the complete MagicTime repository
    reads = []
    real_unet2d = RealLoaders.unet2d
    monkeypatch.setattr(RealLoaders, "unet2d", lambda self, checkpoint: reads.append(checkpoint)
                        or real_unet2d(self, checkpoint))
    cache = ModelCache("cpu")
    TimelapsePipeline(cache, real)(TimelapseRequest(prompt="ice melting", width=64, height=64, steps=1))
    IdentityPipeline(cache, real, NoFrameFaces())(
        IdentityRequest(photos=REQUEST.photos, prompt="a man", width=64, height=64, steps=1, num_frames=8),
        faces=faces)

    stats = cache.stats()
    keys = [c["key"] for c in stats["components"]]
    assert reads == [CHECKPOINT]
    assert keys.count(identity_unet2d.key) == 1 and len(keys) == len(set(keys))
    # time-lapse: 6; identity adds its CLIP (no text LoRA), v2 adapter, image encoder, processor, motion UNet
    assert stats["loads"] == len(keys) == 11
    # Composing the identity UNet left the shared 2-D UNet as the file has it.
    _assert_same_weights(cache.get(identity_unet2d), originals.unet2d)


# ----------------------------------------------------------------- 4: missing weights fail fast, naming them
def test_missing_id_animator_weights_fail_within_seconds_naming_it(hub, ids, monkeypatch):
    write_identity_repos(ids, skip=(ID_ANIMATOR,))
    block_network(monkeypatch)
    start = time.monotonic()
    with pytest.raises(MissingWeightsError) as error:
        IdentityPipeline(ModelCache("cpu"), Registry("real"))(REQUEST)
    assert time.monotonic() - start < 5
    assert error.value.repo_ids == [ID_ANIMATOR] and ANIMATOR_CKPT in str(error.value)
    message = str(error.value)
    assert ID_ANIMATOR in message and "python -m studio download" in message and "STUDIO_PROFILE=tiny" in message


def _only_magictime(ids, faces, monkeypatch) -> MissingWeightsError:
    write_identity_repos(ids, skip=(ID_ANIMATOR, MOTION_ADAPTER_V2, IP_ADAPTER))
    block_network(monkeypatch)
    start = time.monotonic()
    with pytest.raises(MissingWeightsError) as error:
        IdentityPipeline(ModelCache("cpu"), Registry("real"))(REQUEST, faces=faces)
    assert time.monotonic() - start < 5
    return error.value


def test_only_magictime_present_names_id_animator_and_every_missing_repository(hub, ids, faces, monkeypatch):
    message = str(_only_magictime(ids, faces, monkeypatch))
    assert all(repo in message for repo in (ID_ANIMATOR, MOTION_ADAPTER_V2, IP_ADAPTER)), message


@pytest.mark.parametrize("missing", [MOTION_ADAPTER_V2, IP_ADAPTER])
def test_each_missing_identity_repository_is_named(hub, ids, faces, missing):
    write_identity_repos(ids, skip=(missing,))
    with pytest.raises(MissingWeightsError) as error:
        IdentityPipeline(ModelCache("cpu"), Registry("real"))(REQUEST, faces=faces)
    assert error.value.repo_ids == [missing] and missing in str(error.value)


# ----------------------------------------------------------------- 5: the download list is what is read
def test_downloads_list_exactly_the_files_the_identity_loaders_read(identity_hub, monkeypatch):
    """With HF_HUB_OFFLINE=0 too: everything is in the cache, so loading may not even try the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    attempts = block_network(monkeypatch)
    asked = []
    resolve = hub_module.HubFile.path
    monkeypatch.setattr(hub_module.HubFile, "path", lambda f: asked.append((f.repo_id, f.filename)) or resolve(f))
    models = identity_models(Registry("real"))
    cache = ModelCache("cpu")
    for component in (models.tokenizer, models.text_encoder, models.vae, models.unet, models.image_encoder,
                      models.image_processor):
        cache.get(component)
    assert attempts == []

    downloads = identity_downloads(fast=False, tiny_decoder=False)   # the quality mode's
    listed = [(f.repo_id, f.filename) for f in downloads]
    assert len(listed) == len(set(listed))
    assert set(listed) == cached_files()       # the minimal cache the loaders ran on above
    assert set(listed) == set(asked)           # and every one of them asked for through the hub
    assert {f.repo_id for f in downloads} == {MAGICTIME, ID_ANIMATOR, MOTION_ADAPTER_V2, IP_ADAPTER}
    assert {f.filename for f in downloads if f.repo_id == MOTION_ADAPTER_V2} == set(MOTION_ADAPTER_V2_FILES)
