"""SAFREE as the released code computes it, each point written out here independently of pipelines/safety/guard.py: the
concept phrases, the mask id, what P_I spans, β's tokens and normalisation, both filter formulas, the keyframe t′,
a pipeline run whose t′ lies strictly between 0 and γ, nothing installed for a benign call, prompts whose scores
cannot be computed, and an enforced guard that custom concepts cannot weaken (in process and over HTTP)."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from gradio_client import Client

from pipelines.core.cache import ModelCache
from pipelines.safety.guard import CONCEPTS, GuardPlan, PromptPlan, SafetyGuard, SafetyOptions, filter_steps
from pipelines.sd15 import sampling, tiny
from pipelines.sd15.models import Registry
from pipelines.timelapse.models import timelapse_models
from pipelines.timelapse.pipeline import TimelapsePipeline, TimelapseRequest
from tests.conftest import launched, tiny_settings
from tests.test_safety import LinearEncoder, basis

SIZE = dict(width=64, height=64)
ATTACK = "a nude woman on a beach"             # the default concepts flag tokens 1, 5, 6, 7 on the tiny encoder
MID = "a village in the style of van gogh"     # with "artist style": β ≈ 0.548, mid-sigmoid of (κ 3.5, τ 5.5)


@pytest.fixture(scope="module")
def timelapse() -> TimelapsePipeline:
    return TimelapsePipeline(ModelCache("cpu"), Registry("tiny"))


def encoders(timelapse):
    models = timelapse_models(timelapse.registry, "Realistic Vision")
    return timelapse.cache.get(models.tokenizer), timelapse.cache.get(models.text_encoder)


# ----------------------------------------------------------------- the facts, as literals
def test_the_concept_phrases_are_the_released_codes():
    assert CONCEPTS["nudity"] == (
        "Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art", "Lustful",
        "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction", "Sexual Intercourse",
        "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires", "Sexual Gratification")
    assert CONCEPTS["violence"] == (
        "Physical Assault", "Blood", "Aggression", "Domestic Violence", "Gun Violence", "Hate Crimes", "War", "Torture",
        "Abuse", "Bullying", "Verbal Abuse", "Intimidation", "Self-Harm")
    assert CONCEPTS["artist style"] == ("Van Gogh",)


def test_each_token_is_masked_by_id_0_one_row_per_token(timelapse, monkeypatch):
    tok, te = encoders(timelapse)
    guard, batches = SafetyGuard(), []
    original = guard._encode
    monkeypatch.setattr(guard, "_encode", lambda enc, ids, **k: batches.append(ids.clone()) or original(enc, ids, **k))
    guard.plan(tok, te, [ATTACK], SafetyOptions(), 25)
    rows = batches[-1]                                         # the prompt's masked rows, then the prompt itself
    ids = tok(ATTACK).input_ids
    n = len(ids) - 2
    assert rows.shape[0] == n + 1 and rows[-1, :len(ids)].tolist() == ids
    for i in range(n):
        expected = list(ids)
        expected[i + 1] = 0
        assert rows[i, :len(ids)].tolist() == expected, i


def reference_plan(tok, te, prompt: str, concepts: tuple[str, ...], with_bos_eos: bool, order: str):
    """The released code's maths, written out: P_C from the concepts' pooled embeddings, P_I from the pooled embeddings
    of the prompt with each token masked (id 0; not the prompt itself), the projection, and β over the attention mask's
    tokens (BOS, the prompt, EOS) or the prompt's alone, 1 − the mean cosine of each token to its projection."""
    def pooled_and_states(texts):
        ids = tok(list(texts), padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            out = te(ids)
        return out.pooler_output.double(), out.last_hidden_state.double(), ids

    def span(a):
        return a @ torch.linalg.pinv(a.T @ a) @ a.T

    c, _, _ = pooled_and_states(concepts)
    p_c = span(c.T)
    _, states, ids = pooled_and_states([prompt])
    length = int((ids[0] == tok.eos_token_id).nonzero()[0]) + 1
    masked = ids[:, :length].repeat(length - 2, 1)
    for i in range(length - 2):
        masked[i, i + 1] = 0
    with torch.no_grad():
        without = te(masked).pooler_output.double()
    p_i = span(without.T)
    eye = torch.eye(p_c.shape[0], dtype=torch.float64)
    m = (eye - p_c) @ p_i if order == "(I-P_C)P_I" else p_i @ (eye - p_c)
    rows = list(range(length)) if with_bos_eos else list(range(1, length - 1))
    e = states[0, rows]
    cos = (e @ m.T * e).sum(1) / ((e @ m.T).norm(dim=1) * e.norm(dim=1))
    return m, 1 - float(cos.mean())


@pytest.mark.parametrize("beta_tokens, order", [("BOS+prompt+EOS", "(I-P_C)P_I"), ("prompt", "(I-P_C)P_I"),
                                                ("BOS+prompt+EOS", "P_I(I-P_C)")])
def test_the_projection_and_beta_are_the_released_codes(timelapse, beta_tokens, order):
    tok, te = encoders(timelapse)
    options = SafetyOptions(beta_tokens=beta_tokens, projection=order)
    plan = SafetyGuard().plan(tok, te, [ATTACK], options, 50).prompts[ATTACK]
    m, beta = reference_plan(tok, te, ATTACK, options.concepts(), beta_tokens == "BOS+prompt+EOS", order)
    torch.testing.assert_close(plan.projection, m, rtol=0, atol=1e-6)     # float32 encoder runs, batched apart
    assert plan.beta == pytest.approx(beta, abs=1e-6)


def test_the_default_beta_counts_bos_and_eos_and_the_option_does_not(timelapse):
    tok, te = encoders(timelapse)
    default = SafetyGuard().plan(tok, te, [ATTACK], SafetyOptions(), 50).prompts[ATTACK].beta
    prompt_only = SafetyGuard().plan(tok, te, [ATTACK], SafetyOptions(beta_tokens="prompt"), 50).prompts[ATTACK].beta
    assert SafetyOptions().beta_tokens == "BOS+prompt+EOS" and abs(default - prompt_only) > 1e-4


@pytest.mark.parametrize("beta, steps", [(0.3, 50), (0.9, 50), (0.55, 25)])
def test_the_papers_filter_is_gamma_times_sigmoid_of_one_minus_cos(beta, steps):
    gamma = 10 * steps / 50
    assert filter_steps(beta, 2.5, 5.333, steps, "paper") == round(gamma / (1 + math.exp(-beta)))
    assert filter_steps(beta, 2.5, 5.333, steps) == round(gamma / (1 + math.exp(-5 * (10 * beta - 5.333))))
    assert SafetyOptions().filter == "released"


def test_keyframe_stages_are_guarded_until_the_latest_stages_t_prime():
    plan = lambda t, flagged: PromptPlan(f"p{t}", (SimpleNamespace(position=1, flagged=flagged),), None, 0.5, t)  # noqa: E731
    guard = GuardPlan(SafetyOptions(), 25, {"a": plan(3, True), "b": plan(7, True), "c": plan(12, False)})
    assert guard.t_prime == 7                   # the flagged stages' latest; an unflagged stage's t′ does not count


# ----------------------------------------------------------------- in the sampler
def test_a_run_whose_t_prime_lies_between_0_and_gamma_guards_exactly_its_first_t_prime_steps(timelapse):
    tok, te = encoders(timelapse)
    options = SafetyOptions(categories=("artist style",))
    _, beta = reference_plan(tok, te, MID, options.concepts(), True, "(I-P_C)P_I")
    expected = round(4 / (1 + math.exp(-7 * (10 * beta - 5.5))))           # 20 steps: γ = 4; artists κ 3.5, τ 5.5
    assert 0 < expected < 4, beta
    result = timelapse(TimelapseRequest(prompt=MID, steps=20, num_frames=8, **SIZE, safety=options))
    assert result.safety["t_prime"] == expected and result.safety["guarded_steps"] == expected + 1
    assert result.safety["beta"][MID] == pytest.approx(beta, abs=1e-4)
    paper = timelapse(TimelapseRequest(prompt=MID, steps=20, num_frames=8, **SIZE,
                                       safety=dataclasses.replace(options, filter="paper")))
    assert paper.safety["t_prime"] == round(4 / (1 + math.exp(-beta))) == 3


def test_a_benign_call_installs_no_wrapper_and_no_hook(timelapse, monkeypatch):

    seen = []
    original = sampling.animatediff

    def animatediff(*args, **kwargs):
        pipe = original(*args, **kwargs)
        original_call = pipe.__class__.__call__

        def call(self, *a, **k):
            guard_wrapper = "SafetyGuard.applied" in getattr(self.encode_prompt, "__qualname__", "")
            seen.append((guard_wrapper, len(self.unet._forward_pre_hooks), len(self.unet._forward_hooks)))
            return original_call(self, *a, **k)

        pipe.__class__ = type("Watched", (pipe.__class__,), {"__call__": call})
        return pipe

    monkeypatch.setattr("pipelines.timelapse.pipeline.animatediff", animatediff)
    benign = timelapse(TimelapseRequest(prompt="ice melting", steps=2, num_frames=8, **SIZE,
                                        safety=SafetyOptions(alpha=1.0)))
    assert benign.safety["flagged_tokens"] == [] and seen[-1] == (False, 0, 0)
    timelapse(TimelapseRequest(prompt=ATTACK, steps=2, num_frames=8, **SIZE, safety=SafetyOptions()))
    assert seen[-1][:2] == (True, 1)             # the same watch sees the guard when something is flagged


# ----------------------------------------------------------------- scores that cannot be computed
@pytest.fixture(scope="module")
def covering():
    """A designed encoder (tests/test_safety.py): 't' along e0, the other letters of 'btcde' along e4..e7, and
    one-letter concepts 'b', 'c', 'd', 'e' along the same vectors, so concepts can cover the prompt's benign words."""
    tok = tiny.tokenizer()
    vectors = {"x</w>": basis(0), "t": basis(0), "e</w>": basis(7),
               **{char: basis(4 + i) for i, char in enumerate("bcd")},
               **{f"{char}</w>": basis(4 + i) for i, char in enumerate("bcde")}}
    return tok, LinearEncoder(tok, vectors, 16)


def test_a_prompt_inside_the_toxic_span_is_guarded_in_full_with_finite_scores(covering):
    tok, encoder = covering
    plan = SafetyGuard().plan(tok, encoder, ["btcde"],
                              SafetyOptions(categories=(), custom_concepts=("x", "b", "c", "d", "e")), 50)
    prompt = plan.prompts["btcde"]
    assert prompt.unscored and prompt.flagged == [1, 2, 3, 4, 5]
    assert all(math.isfinite(t.score) for t in prompt.tokens)
    report = plan.report()
    assert report["guarded_in_full"] == ["btcde"] and len(report["flagged_tokens"]) == 5


def test_an_enforced_guard_flags_at_least_what_the_default_concepts_flag(timelapse):
    tok, te = encoders(timelapse)
    guard = SafetyGuard()
    default = set(guard.plan(tok, te, [ATTACK], SafetyOptions(), 25).prompts[ATTACK].flagged)
    benign_words = ("a", "nude", "woman", "on", "beach")       # every word: the benign ones outweigh the toxic
    covered = SafetyOptions(custom_concepts=benign_words)
    loose = set(guard.plan(tok, te, [ATTACK], covered, 25).prompts[ATTACK].flagged)
    assert default and not default <= loose, "the covering concepts must really dilute the score here"
    strict = guard.plan(tok, te, [ATTACK], dataclasses.replace(covered, enforced=True), 25)
    assert default <= set(strict.prompts[ATTACK].flagged)
    assert all(math.isfinite(t.score) for t in strict.prompts[ATTACK].tokens)


@pytest.fixture(scope="module")
def enforced_client(tmp_path_factory):
    with launched(tiny_settings(tmp_path_factory.mktemp("enforced"), safety="enforced")) as (_, url):
        yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("enforced-client")))


def test_over_http_custom_concepts_never_unflag_what_the_default_concepts_flag(enforced_client):
    *_, plain = enforced_client.predict(prompt=ATTACK, steps=1, num_frames=8, api_name="/safe_generate")
    *_, covered = enforced_client.predict(prompt=ATTACK, custom_concepts="a, nude, woman, on, beach", steps=1,
                                          num_frames=8, api_name="/safe_generate")
    positions = lambda info: {t["position"] for t in info["safety"]["flagged_tokens"]}  # noqa: E731
    assert positions(plain) and positions(plain) <= positions(covered)
    assert covered["safety"]["enforced"] and covered["safety"]["flagged_by_default_concepts"][ATTACK] >= 1
    assert all(isinstance(t["score"], float) and math.isfinite(t["score"])
               for t in covered["safety"]["tokens"][ATTACK])
    *_, timelapse_info = enforced_client.predict(prompt=ATTACK, steps=1, num_frames=8, api_name="/timelapse")
    assert timelapse_info["safety"]["enforced"] and positions(timelapse_info) == positions(plain)


def test_an_enforced_guard_keeps_the_default_guards_steps_whatever_the_filter_options(timelapse):
    tok, te = encoders(timelapse)
    guard = SafetyGuard()
    default = guard.plan(tok, te, [ATTACK], SafetyOptions(), 25).prompts[ATTACK]
    shorter = SafetyOptions(categories=("nudity", "violence", "artist style"), beta_tokens="prompt", filter="paper")
    assert guard.plan(tok, te, [ATTACK], shorter, 25).prompts[ATTACK].t_prime < default.t_prime
    strict = guard.plan(tok, te, [ATTACK], dataclasses.replace(shorter, enforced=True), 25).prompts[ATTACK]
    assert strict.t_prime == default.t_prime and set(default.flagged) <= set(strict.flagged)
    paper = SafetyOptions(filter="paper")                       # the default concepts, the paper's shorter filter
    assert guard.plan(tok, te, [ATTACK], paper, 25).prompts[ATTACK].t_prime < default.t_prime
    enforced = guard.plan(tok, te, [ATTACK], dataclasses.replace(paper, enforced=True), 25).prompts[ATTACK]
    assert enforced.t_prime == default.t_prime


def test_an_enforcing_server_refuses_the_projection_that_leaves_a_toxic_residue(tmp_path):
    from pipelines.core.errors import InputError
    from studio.engine import Engine

    engine = Engine(tiny_settings(tmp_path / "out", safety="enforced"))
    with pytest.raises(InputError, match=r"'P_I\(I-P_C\)' leaves a residue there"):
        engine.safety_options(True, SafetyOptions(projection="P_I(I-P_C)"))
    assert engine.safety_options(True, SafetyOptions(filter="paper")).enforced
