"""The time-lapse pipeline on the tiny profile: what a user of the tab would notice."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipelines.core.cache import ModelCache
from pipelines.core.errors import Cancelled, InputError
from pipelines.sd15.models import Registry
from pipelines.sd15.sampling import clip_overflow
from pipelines.sd15.tiny import tokenizer as tiny_tokenizer
from pipelines.timelapse.pipeline import TimelapsePipeline, TimelapseRequest, parse_keyframes

SIZE = dict(width=64, height=64)


@pytest.fixture(scope="module")
def pipeline() -> TimelapsePipeline:
    return TimelapsePipeline(ModelCache("cpu"), Registry("tiny"))


def run(pipeline, **fields):
    return pipeline(TimelapseRequest(**{"prompt": "an ice cube is melting", "steps": 4, **SIZE, **fields}))


def test_default_request_gives_16_frames_at_the_requested_size(pipeline):
    result = run(pipeline)
    assert result.frames.shape == (16, 64, 64, 3) and result.frames.dtype == np.uint8
    assert result.fps == 8 and result.seed == 0
    assert set(result.timings) == {"load", "safety_prompt", "text_encoding", "denoise", "denoise_per_step", "decode"}
    assert result.frames.std() > 1   # not a blank clip


def test_same_seed_gives_same_frames_other_seed_other_frames(pipeline):
    first, again, other = run(pipeline, seed=5), run(pipeline, seed=5), run(pipeline, seed=6)
    assert np.array_equal(first.frames, again.frames)
    assert not np.array_equal(first.frames, other.frames)


def test_frames_differ_over_time(pipeline):
    frames = run(pipeline).frames.astype(int)
    assert np.abs(frames[0] - frames[-1]).mean() > 1


def test_styles_are_different_models(pipeline):
    assert not np.array_equal(run(pipeline, style="ToonYou").frames, run(pipeline, style="RcnzCartoon").frames)


def test_keyframes_give_longer_clips_through_freenoise(pipeline):
    result = run(pipeline, num_frames=32, keyframes={12: "a sprout", 24: "a sunflower in bloom"})
    assert result.frames.shape[0] == 32
    changed = run(pipeline, num_frames=32, keyframes={12: "a sprout", 24: "a wilted sunflower"})
    assert not np.array_equal(result.frames, changed.frames)   # the stages reach the model


def test_a_keyframed_call_leaves_no_trace_on_the_next_call(pipeline):
    before = run(pipeline, seed=3).frames
    run(pipeline, num_frames=24, keyframes={0: "a bud", 16: "a flower"})
    assert np.array_equal(run(pipeline, seed=3).frames, before)


def test_long_prompt_warns_with_the_words_clip_dropped(pipeline):
    words = [f"w{i}" for i in range(40)]        # the tiny tokenizer spends a token per character
    result = run(pipeline, prompt=" ".join(words))
    assert len(result.warnings) == 1 and "dropped" in result.warnings[0]
    tok = tiny_tokenizer()
    count, dropped = clip_overflow(tok, " ".join(words))
    assert result.prompt_tokens == count > 75
    kept = words[: len(words) - len(dropped.split())]
    assert " ".join(kept + dropped.split()) == " ".join(words)
    assert dropped in result.warnings[0]
    assert len(tok(" ".join(kept), add_special_tokens=False).input_ids) <= 75      # what is kept fits ...
    assert len(tok(" ".join(words[: len(kept) + 1]), add_special_tokens=False).input_ids) > 75  # ... and no more


def test_short_prompt_has_no_warning(pipeline):
    assert run(pipeline).warnings == []


def test_progress_reports_each_step_and_stop_interrupts(pipeline):
    seen = []
    run(pipeline)  # warm
    pipeline(TimelapseRequest(prompt="ice", steps=3, **SIZE), progress=lambda f, d: seen.append((f, d)))
    assert [d for _, d in seen if d.startswith("Denoising")] == [f"Denoising step {i}/3" for i in (1, 2, 3)]

    def stop_at_second_step(fraction, desc):
        if desc.startswith("Denoising step 2"):
            raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        pipeline(TimelapseRequest(prompt="ice", steps=5, **SIZE), progress=stop_at_second_step)
    assert run(pipeline, steps=4).frames.shape[0] == 16   # and the next call is fine


def test_parse_keyframes():
    assert parse_keyframes("0: a closed rose bud\n\n 24 : a rose in full bloom \n") == {
        0: "a closed rose bud", 24: "a rose in full bloom"}
    assert parse_keyframes("") == {}


@pytest.mark.parametrize("text, message", [
    ("a closed bud", "line 1"),
    ("0: bud\nlater: flower", "line 2"),
    ("0: bud\n0: flower", "repeats frame 0"),
    ("5:", "no description"),
])
def test_keyframes_that_do_not_parse_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        parse_keyframes(text)


@pytest.mark.parametrize("fields, message", [
    (dict(prompt="  "), "Write a prompt"),
    (dict(num_frames=4), "Frames must be between 8 and 64"),
    (dict(num_frames=65, keyframes={0: "a"}), "Frames must be between 8 and 64"),
    (dict(num_frames=32), "needs keyframes"),
    (dict(keyframes={16: "too late"}), "past the last frame"),
    (dict(steps=0), "Steps must be between 1 and 100"),
    (dict(seed=-1), "Seed must be between 0"),
    (dict(seed=1.5), "whole number"),
    (dict(guidance=0.5), "Guidance must be between"),
    (dict(style="Pixar"), "Unknown style"),
    (dict(width=100), "multiple of 8"),
])
def test_bad_requests_are_refused_before_any_model_work(fields, message):
    cache = ModelCache("cpu")
    with pytest.raises(InputError, match=message):
        TimelapsePipeline(cache, Registry("tiny"))(TimelapseRequest(**{"prompt": "ice", **SIZE, **fields}))
    assert cache.stats()["misses"] == 0


def test_timings_split_text_encoding_from_denoising_per_step(pipeline, monkeypatch):
    """The info's breakdown: text encoding timed on its own (every encode_prompt call, FreeNoise's too),
    denoising is the rest of the sampling call, and the per-step figure is denoising over the steps."""
    import pipelines.sd15.sampling as common

    calls = []
    real_encode = common.AnimateDiffPipeline.encode_prompt

    def slow_encode(self, *args, **kwargs):
        calls.append(1)
        time.sleep(0.05)
        return real_encode(self, *args, **kwargs)

    monkeypatch.setattr(common.AnimateDiffPipeline, "encode_prompt", slow_encode)
    timings = run(pipeline, steps=4).timings
    assert timings["text_encoding"] >= 0.05 * len(calls) - 0.01 and len(calls) >= 1
    assert timings["denoise_per_step"] == pytest.approx(timings["denoise"] / 4, abs=1e-3)
    staged = run(pipeline, steps=2, num_frames=24, keyframes={0: "ice", 12: "water"}).timings
    assert staged["text_encoding"] >= 0.05 * 2        # FreeNoise: the stages in one batch, then the negative
