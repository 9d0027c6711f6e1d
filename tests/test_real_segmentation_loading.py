"""The segmentation tab's `real` profile, offline, on a Hugging Face cache holding a grounder's and a tracker's
repositories in their hub layout (tiny models saved with save_pretrained): what loads is what was written, the
clip's masks are those of the same models in memory, and missing files fail fast, naming them."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pipelines.core.cache import ModelCache
from pipelines.core.hub import MissingWeightsError
from pipelines.segmentation.models import (
    DEFAULT_GROUNDER,
    DEFAULT_TRACKER,
    EXPRESSION_GROUNDERS,
    GROUNDERS,
    TRACKER_FILES,
    TRACKERS,
    SegmentationRegistry,
    _tiny_grounder_model,
    _tiny_grounder_processor,
    _tiny_tracker,
    grounder_files,
)
from pipelines.segmentation.pipeline import SegmentationPipeline, SegmentationRequest
from pipelines.segmentation.synthetic import make_video
from tests.test_real_identity_loading import block_network, cached_files, hub, snapshot  # noqa: F401  (hub: fixture)


def write_repos(grounder: str = DEFAULT_GROUNDER, tracker: str = DEFAULT_TRACKER, skip: tuple = ()):
    model, processor = _tiny_grounder_model(grounder), _tiny_grounder_processor(grounder)
    if GROUNDERS[grounder] not in skip:
        folder = snapshot(GROUNDERS[grounder])
        model.save_pretrained(folder)
        if grounder in EXPRESSION_GROUNDERS:      # transformers' own layout: one processor_config.json
            processor.save_pretrained(folder)
        else:
            processor.image_processor.save_pretrained(folder)
            processor.tokenizer.save_pretrained(folder)
    sam2 = _tiny_tracker(tracker)
    if TRACKERS[tracker] not in skip:
        sam2.save_pretrained(snapshot(TRACKERS[tracker]))
    return model, processor, sam2


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name, cls", [
    (DEFAULT_GROUNDER, "GroundingDinoForObjectDetection"),
    ("MM-Grounding-DINO tiny", "MMGroundingDinoForObjectDetection"),
])
@pytest.mark.usefixtures("hub")
def test_real_profile_loads_the_files_and_segments_as_the_models_in_memory(monkeypatch, name, cls):
    """Grounding DINO, and MM Grounding DINO (MM-Grounding-DINO and LLMDet: untied per-layer heads, its own
    config class): the real loader (AutoModelForZeroShotObjectDetection) picks the class from config.json."""
    grounder, processor, sam2 = write_repos(name)
    attempts = block_network(monkeypatch)
    registry = SegmentationRegistry("real")
    models = registry.models(name)
    cache = ModelCache("cpu")
    loaded, loaded_processor, tracker = (cache.get(c) for c in (models.grounder, models.grounder_processor,
                                                                 models.tracker))
    assert type(loaded).__name__ == type(grounder).__name__ == cls
    assert same_weights(loaded, grounder) and same_weights(tracker, sam2)
    assert loaded_processor.tokenizer("a dog.").input_ids == processor.tokenizer("a dog.").input_ids
    assert attempts == []

    video = make_video(frames=8)
    request = SegmentationRequest(frames=video.frames, expression="the circle on the left", box_threshold=0.05,
                                  text_threshold=0.05, grounder=name)
    real = SegmentationPipeline(cache, registry)(request)
    tiny = SegmentationPipeline(ModelCache("cpu"), SegmentationRegistry("tiny"))(request)
    assert real.key_frame == tiny.key_frame and real.reason == tiny.reason
    assert real.masks.shape == (1, 8, 96, 128) and np.array_equal(real.masks, tiny.masks)


@pytest.mark.usefixtures("hub")
@pytest.mark.parametrize("name", ["Florence-2 base", "Florence-2 large"])
def test_florence_loads_from_its_transformers_layout_with_the_pil_image_processor(monkeypatch, name):
    """Florence-2 as save_pretrained writes it: the real loader gets the same weights, a processor whose image
    processor is the PIL one (no torchvision), the same tokens and the output parser's rules."""
    grounder, processor, _ = write_repos(name)
    attempts = block_network(monkeypatch)
    models = SegmentationRegistry("real").models(name)
    cache = ModelCache("cpu")
    loaded, loaded_processor = cache.get(models.grounder), cache.get(models.grounder_processor)
    assert type(loaded).__name__ == "Florence2ForConditionalGeneration" and same_weights(loaded, grounder)
    assert type(loaded_processor.image_processor).__name__ == "CLIPImageProcessorPil"
    assert loaded_processor.post_processor_config == processor.post_processor_config
    text = "<OPEN_VOCABULARY_DETECTION>the dog on the left"
    frame = np.zeros((48, 64, 3), np.uint8)
    ours, theirs = (p(text=text, images=frame, return_tensors="pt") for p in (loaded_processor, processor))
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    assert attempts == []


@pytest.mark.usefixtures("hub")
@pytest.mark.parametrize("name", [DEFAULT_GROUNDER, "MM-Grounding-DINO tiny", "Florence-2 large"])
def test_downloads_list_exactly_the_files_the_loaders_read(name):
    write_repos(name)
    cache = ModelCache("cpu")
    models = SegmentationRegistry("real").models(name)
    for component in (models.grounder, models.grounder_processor, models.tracker):
        cache.get(component)
    listed = {(f.repo_id, f.filename) for f in SegmentationRegistry("real").downloads(name, DEFAULT_TRACKER)}
    assert listed == {(GROUNDERS[name], f) for f in grounder_files(name)} | {
        (TRACKERS[DEFAULT_TRACKER], f) for f in TRACKER_FILES}
    assert listed <= cached_files()


@pytest.mark.usefixtures("hub")
def test_a_missing_tracker_fails_within_seconds_naming_it(monkeypatch):
    write_repos(skip=(TRACKERS[DEFAULT_TRACKER],))
    block_network(monkeypatch)
    start = time.monotonic()
    try:
        SegmentationPipeline(ModelCache("cpu"), SegmentationRegistry("real"))(
            SegmentationRequest(frames=np.zeros((2, 32, 32, 3), np.uint8), expression="a dog"))
    except MissingWeightsError as error:
        assert error.repo_ids == [TRACKERS[DEFAULT_TRACKER]] and "STUDIO_PROFILE=tiny" in str(error)
    else:
        raise AssertionError("no MissingWeightsError")
    assert time.monotonic() - start < 5
