"""The SAFREE guard: its maths against hand computations, what the sampler receives, and both tabs guarded."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage import data

from pipelines.core.cache import ModelCache
from pipelines.core.errors import InputError
from pipelines.identity.pipeline import IdentityPipeline, IdentityRequest
from pipelines.safety import guard as safety_module
from pipelines.safety.guard import (
    CONCEPTS,
    SafetyGuard,
    SafetyOptions,
    filter_steps,
    projector,
    reattend,
    token_projection,
)
from pipelines.sd15 import sampling, tiny
from pipelines.sd15.models import Registry
from pipelines.timelapse.models import timelapse_models
from pipelines.timelapse.pipeline import TimelapsePipeline, TimelapseRequest

DATA = Path(__file__).parents[1].parent / "shared" / "data"
SIZE = dict(width=64, height=64)
UNSAFE = "a nude woman on a beach"          # flags tokens on the tiny encoder (checked where it matters)
NOTHING_FLAGGED = SafetyOptions(alpha=1.0)  # a margin no token of the tiny encoder reaches: a benign prompt


# ----------------------------------------------------------------------------- the projectors
def test_the_toxic_projector_is_symmetric_and_idempotent_and_spans_the_concepts():
    g = torch.Generator().manual_seed(0)
    concepts = torch.randn(16, 5, generator=g, dtype=torch.float64)
    p = projector(concepts)
    torch.testing.assert_close(p, p.T)
    torch.testing.assert_close(p @ p, p)
    torch.testing.assert_close(p @ concepts, concepts)
    assert round(float(torch.trace(p))) == 5


def test_in_the_released_codes_order_a_projected_token_has_nothing_left_in_the_toxic_span():
    """The released code's safe tokens are `I_m_cs @ ms @ e`, (I − P_C) P_I e: the default. The paper prints
    P_I (I − P_C) e, which leaves a residue in the toxic span (they do not commute)."""
    g = torch.Generator().manual_seed(1)
    p_c = projector(torch.randn(16, 4, generator=g, dtype=torch.float64))
    p_i = projector(torch.randn(16, 9, generator=g, dtype=torch.float64))
    e = torch.randn(16, generator=g, dtype=torch.float64)
    eye = torch.eye(16, dtype=torch.float64)
    released, paper = token_projection(p_c, p_i, "(I-P_C)P_I"), token_projection(p_c, p_i, "P_I(I-P_C)")
    torch.testing.assert_close(released, (eye - p_c) @ p_i)
    torch.testing.assert_close(paper, p_i @ (eye - p_c))
    assert SafetyOptions().projection == "(I-P_C)P_I"
    assert float((p_c @ (released @ e)).norm()) < 1e-10                 # (I − P_C) last: nothing in span(C)
    assert float((p_c @ (paper @ e)).norm()) > 1e-3                     # the orders differ: they do not commute


@pytest.mark.parametrize("old", ["paper", "released"])
def test_the_old_ambiguous_order_names_are_refused_saying_the_new_ones(old):
    with pytest.raises(InputError, match=r"ambiguous: say '\(I-P_C\)P_I' \(the released code's order"):
        SafetyOptions(projection=old).validate()


# ----------------------------------------------------------------------------- selection, on a constructed encoder
class LinearEncoder(torch.nn.Module):
    """A text encoder whose embeddings are designed: each token is a chosen vector, the pooled output is their sum
    (BOS, EOS, padding and the mask id are zero vectors, so masking a token removes it)."""

    def __init__(self, tokenizer, vectors: dict[str, torch.Tensor], width: int):
        super().__init__()
        self.table = torch.zeros(len(tokenizer), width)
        for token, vector in vectors.items():
            self.table[tokenizer.convert_tokens_to_ids(token)] = vector
        self.device = torch.device("cpu")

    def forward(self, ids):
        states = self.table[ids]
        return SimpleNamespace(last_hidden_state=states, pooler_output=states.sum(1))


def basis(i: int, width: int = 16) -> torch.Tensor:
    return torch.eye(width)[i]


@pytest.fixture(scope="module")
def designed():
    """Concepts 'x' and 'y' span e0, e1. Prompt tokens: 'b', 'c', 'd', 'e' along e4..e7, 't' along e0."""
    tok = tiny.tokenizer()
    vectors = {"x</w>": basis(0), "y</w>": basis(1), "t": basis(0),
               **{char: basis(4 + i) for i, char in enumerate("bcd")}, "e</w>": basis(7), "t</w>": basis(0)}
    return tok, LinearEncoder(tok, vectors, 16)


def test_selection_flags_exactly_the_token_in_the_toxic_span(designed):
    tok, encoder = designed
    plan = SafetyGuard().plan(tok, encoder, ["btcde"], SafetyOptions(categories=(), custom_concepts=("x", "y")), 50)
    tokens = plan.prompts["btcde"].tokens
    assert [t.token for t in tokens] == ["b", "t", "c", "d", "e"]
    assert [t.flagged for t in tokens] == [False, True, False, False, False]
    # by hand: masking 't' leaves the four benign unit vectors (distance 2); masking a benign one leaves 3 (√3)
    assert tokens[1].score == pytest.approx(2 / ((4 * 3**0.5) / 4) - 1, abs=1e-9)
    benign = 3**0.5 / ((2 + 3 * 3**0.5) / 4) - 1
    assert all(t.score == pytest.approx(benign, abs=1e-9) for t in tokens if t.token != "t")


def test_a_benign_construction_flags_nothing(designed):
    tok, encoder = designed
    plan = SafetyGuard().plan(tok, encoder, ["bcde"], SafetyOptions(categories=(), custom_concepts=("x", "y")), 50)
    assert not plan.active and [t.flagged for t in plan.prompts["bcde"].tokens] == [False] * 4


def test_a_concept_list_spanning_the_whole_space_is_refused():
    """The old tiny encoder's trap: 17 nudity concepts in an 8-wide space leave nothing outside the toxic span."""
    tok = tiny.tokenizer()
    narrow = LinearEncoder(tok, {}, 8)
    narrow.table = torch.randn(len(tok), 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="span the whole 8-dimensional text-embedding space"):
        SafetyGuard().plan(tok, narrow, ["a cat"], SafetyOptions(categories=("nudity",)), 25)
    assert tiny.text_encoder(0).config.hidden_size > len(CONCEPTS["nudity"]) + len(CONCEPTS["violence"])


def test_the_toxic_subspace_is_cached_per_encoder_and_concept_list(designed, monkeypatch):
    tok, encoder = designed
    guard, calls = SafetyGuard(), []
    original = guard._encode
    monkeypatch.setattr(guard, "_encode", lambda te, ids, **k: calls.append(len(ids)) or original(te, ids, **k))
    options = SafetyOptions(categories=(), custom_concepts=("x", "y"))
    first = guard.toxic_subspace(tok, encoder, options.concepts())
    assert guard.toxic_subspace(tok, encoder, options.concepts()) is first and calls == [2]
    guard.toxic_subspace(tok, encoder, ("x",))
    assert calls == [2, 1]


# ----------------------------------------------------------------------------- the step filter
@pytest.mark.parametrize("beta, steps, expected", [
    (0.45, 50, 0), (0.533, 50, 5), (0.60, 50, 10),     # the hand values (nudity κ 2.5, τ 5.333, γ 10)
    (0.60, 25, 5), (0.60, 10, 2), (0.533, 25, 2),      # γ scales with the step count: 10 · steps / 50
])
def test_filter_steps_match_hand_computed_values(beta, steps, expected):
    assert filter_steps(beta, 2.5, 5.333, steps) == expected


def test_artists_use_their_own_filter_constants():
    assert SafetyOptions(categories=("artist style",)).filter_constants() == (3.5, 5.5)
    assert SafetyOptions().filter_constants() == (2.5, 5.333)
    assert filter_steps(0.55, 3.5, 5.5, 50) == 5


# ----------------------------------------------------------------------------- in the sampler
@pytest.fixture(scope="module")
def timelapse() -> TimelapsePipeline:
    return TimelapsePipeline(ModelCache("cpu"), Registry("tiny"))


def watch_unet(monkeypatch, pipeline) -> list:
    """What the UNet receives each call: (timestep, encoder_hidden_states). Registered on the cached UNet after
    the guard's own hook, so it sees what the guard hands over."""
    seen, unet = [], pipeline.cache.get(timelapse_models(pipeline.registry, "Realistic Vision").unet)

    original = sampling.animatediff

    def animatediff(*args, **kwargs):
        pipe = original(*args, **kwargs)
        original_call = pipe.__class__.__call__

        def call(self, *a, **k):
            handle = unet.register_forward_pre_hook(
                lambda m, args, kw: seen.append((int(args[1]), kw["encoder_hidden_states"].clone())), with_kwargs=True)
            try:
                return original_call(self, *a, **k)
            finally:
                handle.remove()

        pipe.__class__ = type("Watched", (pipe.__class__,), {"__call__": call})
        return pipe

    monkeypatch.setattr("pipelines.timelapse.pipeline.animatediff", animatediff)
    return seen


def test_the_sampler_gets_the_safe_embeddings_up_to_t_prime_and_the_original_after(timelapse, monkeypatch):
    request = TimelapseRequest(prompt=UNSAFE, steps=6, num_frames=8, **SIZE, safety=SafetyOptions())
    seen = watch_unet(monkeypatch, timelapse)
    guarded = timelapse(request)
    guarded_embeds = [e for _, e in seen]
    seen.clear()
    timelapse(dataclasses.replace(request, safety=None))
    plain_embeds = [e for _, e in seen]
    safety = guarded.safety
    assert safety["flagged_tokens"] and 0 <= safety["t_prime"] < 5, safety["t_prime"]
    frames = 8
    flagged = sorted({t["position"] for t in safety["flagged_tokens"]})
    for step, (mine, plain) in enumerate(zip(guarded_embeds, plain_embeds, strict=True)):
        assert mine.shape == plain.shape == (2 * frames, 77, tiny.CROSS_ATTENTION_DIM)
        assert torch.equal(mine[:frames], plain[:frames])                  # the negative branch: untouched
        if step > safety["t_prime"]:
            assert torch.equal(mine, plain), step                          # after t′: the original prompt
            continue
        cond, original = mine[frames:], plain[frames:]
        kept = [i for i in range(77) if i not in flagged]                  # BOS, unflagged tokens, padding
        assert torch.equal(cond[:, kept], original[:, kept]), step
        assert not torch.equal(cond[:, flagged], original[:, flagged]), step
    assert safety["guarded_steps"] == safety["t_prime"] + 1


def test_a_projected_token_reaches_the_unet_as_the_hand_projection(timelapse, monkeypatch):
    """The cond rows the UNet gets at step 0 are e_k · M for the flagged tokens, M = (I − P_C) P_I from the guard."""
    seen = watch_unet(monkeypatch, timelapse)
    request = TimelapseRequest(prompt=UNSAFE, steps=2, num_frames=8, **SIZE, safety=SafetyOptions())
    timelapse(dataclasses.replace(request, safety=None))
    plain = seen[0][1][8:]
    seen.clear()
    result = timelapse(request)
    models = timelapse_models(timelapse.registry, "Realistic Vision")
    tok, te = (timelapse.cache.get(c) for c in (models.tokenizer, models.text_encoder))
    plan = timelapse.guard.plan(tok, te, [UNSAFE], SafetyOptions(), 2).prompts[UNSAFE]
    flagged = plan.flagged
    expected = (plain[:, flagged].double() @ plan.projection.T).float()
    assert result.safety["flagged_tokens"]
    torch.testing.assert_close(seen[0][1][8:, flagged], expected, rtol=0, atol=1e-6)


def test_keyframe_stages_are_each_guarded_through_freenoise(timelapse, monkeypatch):
    """Each stage's prompt is projected with its own plan before FreeNoise interpolates between stages: on every
    guarded step, frame f of 0..12 gets (1 − f/12)·safe(lake) + (f/12)·safe(war) and frames 12..23 safe(war);
    after t′ every frame gets the unguarded interpolation; the negative rows are never touched."""
    lake, war = "a calm lake", "a bloody war"
    request = TimelapseRequest(prompt=lake, keyframes={12: war}, num_frames=24, steps=2, **SIZE,
                               safety=SafetyOptions())
    seen = watch_unet(monkeypatch, timelapse)
    timelapse(dataclasses.replace(request, safety=None))
    plain = [e for _, e in seen]
    seen.clear()
    result = timelapse(request)
    guarded = [e for _, e in seen]

    models = timelapse_models(timelapse.registry, "Realistic Vision")
    tok, te = (timelapse.cache.get(c) for c in (models.tokenizer, models.text_encoder))
    plans = timelapse.guard.plan(tok, te, [lake, war], SafetyOptions(), 2).prompts
    assert plans[war].flagged and "a bloody war" in result.safety["beta"]
    assert {t["prompt"] for t in result.safety["flagged_tokens"]} <= {lake, war}

    def safe(stage_embeds, plan):                       # the hand projection of one stage's flagged tokens
        out = stage_embeds.clone()
        out[:, plan.flagged] = (stage_embeds[:, plan.flagged].double() @ plan.projection.T).float()
        return out

    cond = plain[0][24:]
    weights = torch.arange(13, dtype=torch.float32)[:, None, None] / 12
    torch.testing.assert_close(cond[:13], (1 - weights) * cond[:1] + weights * cond[12:13], rtol=0, atol=1e-5)
    safe_lake, safe_war = safe(cond[:1], plans[lake]), safe(cond[12:13], plans[war])
    expected = torch.cat([(1 - weights) * safe_lake + weights * safe_war, safe_war.expand(11, -1, -1)])
    t_prime = result.safety["t_prime"]
    assert len(guarded) == len(plain) == 2 and t_prime >= 0
    for step, (mine, theirs) in enumerate(zip(guarded, plain, strict=True)):
        assert mine.shape == theirs.shape == (48, 77, tiny.CROSS_ATTENTION_DIM)
        assert torch.equal(mine[:24], theirs[:24]), step                    # negatives untouched
        if step > t_prime:
            assert torch.equal(mine, theirs), step
        else:
            torch.testing.assert_close(mine[24:], expected, rtol=0, atol=1e-5)
            assert not torch.equal(mine[36:], theirs[36:]), step


def test_a_benign_prompt_gives_bit_identical_frames_on_both_tabs(timelapse):
    """Nothing flagged and the options off: the guarded call is the unguarded one, bit for bit (keyframes too)."""
    for request in (TimelapseRequest(prompt="ice melting", steps=2, num_frames=8, **SIZE),
                    TimelapseRequest(prompt="a rose", keyframes={12: "a rose in full bloom"}, num_frames=20, steps=2,
                                     **SIZE)):
        guarded = timelapse(dataclasses.replace(request, safety=NOTHING_FLAGGED))
        assert guarded.safety["flagged_tokens"] == [] and guarded.safety["guarded_steps"] == 0
        assert np.array_equal(guarded.frames, timelapse(dataclasses.replace(request, safety=None)).frames)

    identity = IdentityPipeline(timelapse.cache, timelapse.registry)
    request = IdentityRequest(photos=(data.astronaut(),), prompt="a woman on a beach", steps=2, num_frames=8, **SIZE)
    faces = identity.reference_faces(request.photos)
    guarded = identity(dataclasses.replace(request, safety=NOTHING_FLAGGED), faces=faces, measure_identity=False)
    assert guarded.safety["flagged_tokens"] == []
    plain = identity(dataclasses.replace(request, safety=None), faces=faces, measure_identity=False)
    assert np.array_equal(guarded.frames, plain.frames)
    unsafe = identity(dataclasses.replace(request, prompt=UNSAFE, safety=SafetyOptions()), faces=faces,
                      measure_identity=False)
    assert unsafe.safety["flagged_tokens"] and unsafe.safety["guarded_steps"] >= 1


def test_concepts_as_negative_prompt_are_appended_to_the_negative(timelapse, monkeypatch):
    from diffusers import AnimateDiffPipeline

    calls = []
    original = AnimateDiffPipeline.__call__
    monkeypatch.setattr(AnimateDiffPipeline, "__call__", lambda self, *a, **k: calls.append(k) or original(self, *a, **k))
    options = SafetyOptions(categories=("artist style",), custom_concepts=("Snoopy",), concepts_as_negative=True)
    timelapse(TimelapseRequest(prompt="a dog", steps=1, num_frames=8, **SIZE, safety=options))
    assert calls[0]["negative_prompt"] == "worst quality, low quality, letterboxed, Van Gogh, Snoopy"


# ----------------------------------------------------------------------------- re-attention
def test_reattention_scales_only_the_safe_low_frequencies_that_exceed_the_reference():
    g = torch.Generator().manual_seed(3)
    frames, channels, size = 2, 3, 8
    uncond, safe, reference = (torch.randn(frames, channels, size, size, generator=g) for _ in range(3))
    skip = torch.cat([uncond, safe, reference])                    # frame-folded: (branches · frames, C, h, w)
    out = reattend(skip, branches=3, scale=0.2)
    assert torch.equal(out[:frames], uncond) and torch.equal(out[2 * frames:], reference)

    shift = lambda x: torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))  # noqa: E731
    before, after, ref = shift(safe), shift(out[frames:2 * frames]), shift(reference)
    window = torch.zeros(size, size, dtype=torch.bool)
    window[3:5, 3:5] = True                                        # the central 2×2 after fftshift
    window[5, 5] = window[5, 4] = window[4, 5] = True               # and their conjugate partners (frequency −f)
    scaled = window & (before.abs() > ref.abs())
    assert scaled.any() and (window & ~scaled).any()               # both cases occur in this construction
    torch.testing.assert_close(after[scaled], 0.2 * before[scaled], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after[~scaled], before[~scaled], rtol=1e-4, atol=1e-4)


def test_reattention_splits_frame_folded_batches_by_branch():
    """Frame 0 of the safe branch exceeds its reference, frame 1 does not: only frame 0 changes."""
    frames = torch.zeros(2, 1, 4, 4)
    safe = frames + torch.tensor([3.0, 1.0])[:, None, None, None]      # constant frames: only the DC term
    reference = frames + torch.tensor([1.0, 3.0])[:, None, None, None]
    out = reattend(torch.cat([frames, safe, reference]), branches=3, scale=0.5)
    torch.testing.assert_close(out[2], safe[0] * 0.5)                  # DC scaled: the frame's level halves
    torch.testing.assert_close(out[3], safe[1])


def test_reattention_sits_where_freeu_puts_its_filter_on_an_sd15_shaped_unet(monkeypatch):
    """SD1.5's up path is 1280, 1280, 640, 320 wide: s1 wherever the backbone feature is the widest, s2 where it
    is the next width, nothing on the narrowest (FreeU's `h.shape[1] == 1280 / 640`). The same shape at 1/40 width:
    up blocks (32, 32, 16, 8) with two resnets each; the features entering them are 32 ×5, 16 ×2, 8 ×1 wide."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    widths = (8, 16, 32, 32)
    unet = UNetMotionModel.from_unet2d(
        UNet2DConditionModel(block_out_channels=widths, layers_per_block=1, norm_num_groups=4, sample_size=16,
                             cross_attention_dim=8, attention_head_dim=2),
        MotionAdapter(block_out_channels=widths, motion_layers_per_block=1, motion_norm_num_groups=4,
                      motion_num_attention_heads=2, motion_max_seq_length=32))
    calls = []
    real = safety_module.reattend
    monkeypatch.setattr(safety_module, "reattend",
                        lambda skip, branches, scale: calls.append((branches, scale)) or real(skip, branches, scale))
    safety_module._install_freeu_dispatcher()
    owner = safety_module._Reattention((0.9, 0.2), unet.config.block_out_channels)
    unet.enable_freeu(s1=owner.marker, s2=owner.marker, b1=owner.marker, b2=owner.marker)
    owner.branches = 3
    with torch.no_grad():
        unet(torch.randn(3, 4, 2, 16, 16), 10, encoder_hidden_states=torch.randn(6, 5, 8))
    assert calls == [(3, 0.9)] * 5 + [(3, 0.2)] * 2


def test_reattention_runs_in_the_sampler_and_changes_the_guarded_frames(timelapse, monkeypatch):
    request = TimelapseRequest(prompt=UNSAFE, steps=3, num_frames=8, **SIZE, safety=SafetyOptions())
    plain = timelapse(request)
    calls = []
    real = safety_module.reattend
    monkeypatch.setattr(safety_module, "reattend",
                        lambda skip, branches, scale: calls.append((branches, scale)) or real(skip, branches, scale))
    attended = timelapse(dataclasses.replace(request, safety=SafetyOptions(reattention=True)))
    assert attended.frames.shape == plain.frames.shape == (8, 64, 64, 3)
    assert not np.array_equal(attended.frames, plain.frames)
    # Three branches (uncond, safe, unguarded) on every guarded step; the tiny UNet is 8 wide throughout: s1 only.
    assert calls and set(calls) == {(3, 0.9)}
    unet = timelapse.cache.get(timelapse_models(timelapse.registry, "Realistic Vision").unet)
    assert not getattr(unet.up_blocks[0], "s1", None)              # FreeU switched off again after the call


# ----------------------------------------------------------------------------- requests and prompt sets
@pytest.mark.parametrize("options, message", [
    (SafetyOptions(categories=("gore",)), "Unknown concept categories"),
    (SafetyOptions(categories=()), "Choose at least one concept"),
    (SafetyOptions(alpha=2.0), "between 0 and 1"),
    (SafetyOptions(projection="sideways"), r"Projection order must be one of \(I-P_C\)P_I, P_I\(I-P_C\)"),
    (SafetyOptions(custom_concepts=("x" * 101,)), "at most 100 characters"),
])
def test_bad_guard_options_are_refused_before_any_model_work(options, message):
    cache = ModelCache("cpu")
    with pytest.raises(InputError, match=message):
        TimelapsePipeline(cache, Registry("tiny"))(TimelapseRequest(prompt="ice", **SIZE, safety=options))
    assert cache.stats()["misses"] == 0


@pytest.mark.skipif(not (DATA / "coco-benign-1000.csv").exists(), reason="shared/data is not beside the checkout")
def test_the_thousand_benign_coco_prompts_go_through_selection_and_projection(timelapse):
    prompts = [row["prompt"] for row in csv.DictReader((DATA / "coco-benign-1000.csv").open())]
    models = timelapse_models(timelapse.registry, "Realistic Vision")
    tok, te = (timelapse.cache.get(c) for c in (models.tokenizer, models.text_encoder))
    guard, seen = SafetyGuard(), 0
    for start in range(0, len(prompts), 100):
        plan = guard.plan(tok, te, prompts[start:start + 100], SafetyOptions(), 25)
        for prompt_plan in plan.prompts.values():
            assert torch.isfinite(prompt_plan.projection).all() and 0 <= prompt_plan.beta <= 2
            assert prompt_plan.tokens and -1 <= prompt_plan.t_prime <= 5
        seen += len(plan.prompts)
    assert seen == len(set(prompts)) >= 990
