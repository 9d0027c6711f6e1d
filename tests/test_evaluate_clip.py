"""studio/evaluate/clip.py: amplitude, coherence and window against hand-computed answers on constructed embeddings;
the tiny ClipScorer's embeddings and CLIP score against the formula; the real profile's loading on files written in
openai/clip-vit-large-patch14's hub layout (tiny sizes), and its message when a file is missing."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import math
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants

from pipelines.core import hub
from pipelines.core.errors import WeightsError
from pipelines.core.hub import MissingWeightsError
from studio.evaluate.clip import (
    CLIP_L,
    CLIP_L_FILES,
    ClipScorer,
    amplitude,
    coherence,
    scorer,
    tiny_model,
    window,
)

A = np.array([1.0, 0.0])
B = np.array([0.0, 1.0])
SIXTY = np.array([math.cos(math.pi / 3), math.sin(math.pi / 3)])


# ------------------------------------------------------------------------------------------------ pure statistics
@pytest.mark.parametrize(("n", "k"), [(1, 1), (3, 1), (4, 1), (8, 1), (12, 2), (16, 2), (20, 2), (24, 3), (32, 4)])
def test_window_is_an_eighth_rounded_half_to_even_at_least_one(n, k):
    assert window(n) == k


def test_window_of_no_frames_is_refused():
    with pytest.raises(ValueError, match="at least one frame"):
        window(0)


def test_a_still_clip_has_amplitude_zero_and_coherence_one():
    e = np.tile(np.array([0.3, -1.2, 2.0, 0.5]), (16, 1))
    assert amplitude(e) == pytest.approx(0.0, abs=1e-12)
    assert coherence(e) == pytest.approx(1.0, abs=1e-12)


def test_a_cross_fade_between_orthogonal_vectors():
    # e_i = (1 - t) a + t b, t = 0, 0.5, 1; k = max(1, round(3/8)) = 1
    e = np.stack([(1 - t) * A + t * B for t in (0.0, 0.5, 1.0)])
    assert amplitude(e) == pytest.approx(1.0, abs=1e-12)                 # 1 - cos(a, b) = 1 - 0
    assert coherence(e) == pytest.approx(1 / math.sqrt(2), abs=1e-12)   # cos(a, (a+b)/2) = cos((a+b)/2, b) = 1/√2
    assert coherence(e) == pytest.approx(0.70711, abs=1e-5)


def test_sixty_degrees_apart_gives_amplitude_one_half():
    e = np.stack([A, (A + SIXTY) / 2, SIXTY])
    assert amplitude(e) == pytest.approx(0.5, abs=1e-12)                 # 1 - cos 60°


def test_sixteen_frames_compare_the_first_two_with_the_last_two():
    rng = np.random.default_rng(3)
    middle = rng.normal(size=(12, 2))
    e = np.concatenate([[A, A], middle, [SIXTY, SIXTY]])
    assert window(16) == 2
    assert amplitude(e) == pytest.approx(0.5, abs=1e-12)
    # k = 2 and not 1: a third frame that differs from the second changes nothing, a second one that differs does
    assert amplitude(np.concatenate([[A, A, B], middle[1:], [SIXTY, SIXTY]])) == pytest.approx(0.5, abs=1e-12)
    assert amplitude(np.concatenate([[A, B], middle, [SIXTY, SIXTY]])) != pytest.approx(0.5, abs=1e-3)


def test_the_means_of_the_windows_are_of_normalised_rows():
    # first window (k = 2): a and 3b, normalised to a and b, mean (a+b)/2 at 45°; last: a. A = 1 - cos 45°.
    e = np.concatenate([[A, 3 * B], np.ones((12, 2)), [A, A]])
    assert amplitude(e) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-12)


def test_opposite_ends_give_amplitude_two():
    assert amplitude(np.stack([A, B, -A])) == pytest.approx(2.0, abs=1e-12)


def test_scaling_rows_changes_neither_amplitude_nor_coherence():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(10, 6))
    scales = rng.uniform(0.01, 100.0, size=(10, 1))
    assert amplitude(e * scales) == pytest.approx(amplitude(e), abs=1e-12)
    assert coherence(e * scales) == pytest.approx(coherence(e), abs=1e-12)
    assert amplitude(e) > 0.01


def test_coherence_of_one_frame_is_refused_amplitude_of_one_is_zero():
    with pytest.raises(ValueError, match="at least two frames"):
        coherence(A[None])
    assert amplitude(A[None]) == pytest.approx(0.0, abs=1e-12)


def test_zero_vectors_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="zero"):
        coherence(np.stack([A, np.zeros(2)]))
    with pytest.raises(ValueError, match="zero"):      # the first window's mean cancels out: a + (-a)
        amplitude(np.concatenate([[A, -A], np.ones((12, 2)), [B, B]]))
    with pytest.raises(ValueError, match="shape"):
        amplitude(A)


# ------------------------------------------------------------------------------------------------ the tiny scorer
FLAT = np.stack([np.full((40, 40, 3), v, np.uint8) for v in (0, 80, 160, 240)])   # four flat grey frames
PROMPT = "a cat"


@pytest.fixture(scope="module")
def tiny() -> ClipScorer:
    return scorer("tiny")


def test_image_embeddings_are_unit_rows_of_the_projection_width_and_deterministic(tiny):
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 40, 40, 3), dtype=np.uint8)
    e = tiny.image_embeddings(frames)
    assert e.shape == (4, 16) and e.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(e, tiny.image_embeddings(frames.copy()))
    np.testing.assert_array_equal(e, ClipScorer("tiny").image_embeddings(frames))    # same seed, same weights
    assert not np.allclose(e[0], e[1])


def test_batching_does_not_change_the_embeddings(tiny, monkeypatch):
    frames = np.random.default_rng(1).integers(0, 256, size=(5, 40, 40, 3), dtype=np.uint8)
    whole = tiny.image_embeddings(frames)
    monkeypatch.setattr("studio.evaluate.clip.BATCH", 2)
    np.testing.assert_allclose(tiny.image_embeddings(frames), whole, atol=1e-6)


def test_text_embedding_is_a_unit_vector_cut_at_77_tokens(tiny):
    t = tiny.text_embedding(PROMPT)
    assert t.shape == (16,)
    assert np.linalg.norm(t) == pytest.approx(1.0, abs=1e-12)
    assert not np.allclose(t, tiny.text_embedding("sunset over the sea"))
    long = " ".join(["cat"] * 200)
    np.testing.assert_array_equal(tiny.text_embedding(long), tiny.text_embedding(" ".join(["cat"] * 75)))


def test_clip_score_is_100_times_the_mean_clamped_cosine(tiny):
    e, t = tiny.image_embeddings(FLAT), tiny.text_embedding(PROMPT)
    cosines = e @ t
    assert (cosines > 0).any() and (cosines < 0).any()     # both signs, so the clamp at 0 is exercised
    by_hand = 100 * np.mean([max(c, 0.0) for c in cosines])
    score = tiny.clip_score(FLAT, PROMPT)
    assert score == pytest.approx(by_hand, abs=1e-9)
    assert score != pytest.approx(100 * cosines.mean(), abs=1e-3)    # not the unclamped mean
    assert 0.0 < score <= 100.0


def test_clip_score_is_within_0_and_100(tiny):
    frames = np.random.default_rng(2).integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8)
    for prompt in (PROMPT, "sunset over the sea", ""):
        assert 0.0 <= tiny.clip_score(frames, prompt) <= 100.0


def test_frames_that_are_not_a_uint8_rgb_clip_are_refused(tiny):
    with pytest.raises(ValueError, match="shape"):
        tiny.image_embeddings(FLAT[0])
    with pytest.raises(ValueError, match="uint8"):
        tiny.image_embeddings(FLAT.astype(np.float32))


def test_an_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="Unknown CLIP profile"):
        ClipScorer("large")


# ------------------------------------------------------------------------------------ the real profile's loading
def write_clip_l(snapshot: Path) -> None:
    """The files of CLIP_L_FILES as openai/clip-vit-large-patch14 lays them out, holding the tiny CLIP."""
    from pipelines.sd15 import tiny as sd15_tiny

    tiny_model().save_pretrained(snapshot)                     # config.json, model.safetensors
    sd15_tiny.tokenizer().save_pretrained(snapshot)            # tokenizer.json, tokenizer_config.json
    sd15_tiny.image_processor().save_pretrained(snapshot)      # preprocessor_config.json
    vocab, merges = sd15_tiny._vocabulary()                    # what the hub repo also holds
    (snapshot / "vocab.json").write_text(json.dumps(vocab))
    (snapshot / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (snapshot / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>"}))


@pytest.fixture
def clip_l_snapshot(monkeypatch, tmp_path) -> Path:
    """An offline Hugging Face cache holding CLIP_L's files (tiny contents); returns its snapshot folder."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "_CHECKED", set())
    repo = cache / f"models--{CLIP_L.replace('/', '--')}"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    write_clip_l(snapshot)
    return snapshot


def test_the_file_list_is_what_the_hub_repository_holds_less_the_other_weight_formats():
    assert CLIP_L == "openai/clip-vit-large-patch14"
    assert sorted(CLIP_L_FILES) == ["config.json", "merges.txt", "model.safetensors", "preprocessor_config.json",
                                    "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
                                    "vocab.json"]


def test_the_real_profile_loads_from_the_hub_layout(clip_l_snapshot, tiny):
    assert sorted(p.name for p in clip_l_snapshot.iterdir()) == sorted(CLIP_L_FILES)   # the layout is the list
    real = ClipScorer("real")
    assert real.tokenizer(PROMPT).input_ids == tiny.tokenizer(PROMPT).input_ids
    e = real.image_embeddings(FLAT)
    assert e.shape == (4, 16)
    np.testing.assert_allclose(e, tiny.image_embeddings(FLAT), atol=1e-6)      # the same weights, read from files
    np.testing.assert_allclose(real.text_embedding(PROMPT), tiny.text_embedding(PROMPT), atol=1e-6)
    assert real.clip_score(FLAT, PROMPT) == pytest.approx(tiny.clip_score(FLAT, PROMPT), abs=1e-4)


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "preprocessor_config.json"])
def test_a_missing_file_fails_fast_naming_it(clip_l_snapshot, name):
    (clip_l_snapshot / name).unlink()
    with pytest.raises(MissingWeightsError) as raised:
        ClipScorer("real")
    assert isinstance(raised.value, WeightsError)
    assert name in str(raised.value) and CLIP_L in str(raised.value)
    assert "HF_HUB_OFFLINE=1" in str(raised.value)
