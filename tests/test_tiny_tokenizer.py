"""The tiny profile's tokenizer counts tokens the way CLIP does for ordinary words, so the studio's "CLIP dropped
…" warnings mean in `tiny` what they mean in `real`, and never fire on the studio's own examples."""

from __future__ import annotations

import json

import pytest

from pipelines.identity.pipeline import NEGATIVE_SUFFIX, PROMPT_SUFFIX
from pipelines.safety.guard import CONCEPTS
from pipelines.sd15 import tiny
from pipelines.sd15.sampling import clip_overflow
from tests.conftest import ROOT

TOKENIZER = tiny.tokenizer()


def test_every_known_word_is_one_token_in_any_case():
    for word in set(tiny.WORDS.split()):
        assert TOKENIZER.tokenize(word) == [f"{word}</w>"], word
        assert TOKENIZER.tokenize(word.capitalize()) == [f"{word}</w>"], word     # CLIP lower-cases


def test_an_unknown_word_falls_back_to_characters_and_any_text_encodes():
    assert TOKENIZER.tokenize("btcde") == ["b", "t", "c", "d", "e</w>"]
    assert TOKENIZER.tokenize("a zyxq") == ["a</w>", "z", "y", "x", "q</w>"]
    ids = TOKENIZER("漢字 🙂 \x07").input_ids
    assert TOKENIZER.unk_token_id not in ids[1:-1]


def test_the_identity_example_with_its_suffix_is_21_tokens_and_drops_nothing():
    """The issue's report: 81 tokens and a warning that CLIP dropped "medium shot", the studio's own suffix."""
    prompt = "a woman in a spacesuit smiling, walking through a flower field " + PROMPT_SUFFIX
    count, dropped = clip_overflow(TOKENIZER, prompt)
    assert (count, dropped) == (21, "")          # one per word, digit and comma: 8k is "8", "k" as in CLIP


@pytest.mark.parametrize("example", json.loads((ROOT / "assets" / "timelapse_examples.json").read_text()),
                         ids=lambda e: e["label"])
def test_no_time_lapse_example_is_cut(example):
    for text in [example["prompt"], *example["keyframes"].splitlines()]:
        count, dropped = clip_overflow(TOKENIZER, text)
        assert dropped == "", (count, dropped)


def test_each_concept_and_the_negative_suffix_are_a_few_tokens_as_in_clip():
    for concept in [c for concepts in CONCEPTS.values() for c in concepts] + [NEGATIVE_SUFFIX]:
        words = concept.replace(",", " ,").replace("-", " - ").split()
        assert len(TOKENIZER.tokenize(concept)) == len(words), concept
