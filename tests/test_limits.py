"""Text limits on the server, for every text an endpoint takes: a short message, never the text echoed back."""

from __future__ import annotations

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from pipelines.core.checks import excerpt
from tests.conftest import ROOT

PHOTO = str(ROOT / "assets" / "examples" / "astronaut.jpg")
HUGE = "word " * 20_000                                   # 100,000 characters


@pytest.mark.parametrize("api_name, arguments", [
    ("/timelapse", dict(prompt=HUGE)),
    ("/timelapse", dict(prompt="ice", negative_prompt=HUGE)),
    ("/timelapse", dict(prompt="ice", keyframes=HUGE)),
    ("/identity", dict(photos=[handle_file(PHOTO)], prompt=HUGE)),
    ("/identity", dict(photos=[handle_file(PHOTO)], prompt="a man", negative_prompt=HUGE)),
    ("/safe_generate", dict(prompt=HUGE)),
    ("/safe_generate", dict(prompt="a dog", custom_concepts=HUGE)),
])
def test_a_huge_text_is_refused_with_a_short_message(client, api_name, arguments):
    with pytest.raises(AppError) as error:
        client.predict(api_name=api_name, **arguments)
    message = str(error.value)
    assert len(message) < 300 and ("characters long" in message or "at most" in message), message


def test_a_long_prompt_is_quoted_back_only_in_part(client):
    prompt = " ".join(f"word{i}" for i in range(200))     # far past CLIP's 77 tokens, under the length limit
    *_, info = client.predict(prompt=prompt, steps=1, api_name="/timelapse")
    (warning,) = [w for w in info["warnings"] if "dropped" in w]
    assert len(warning) < 300 and "more words)" in warning


def test_excerpt_keeps_short_texts_and_cuts_long_ones_at_a_word():
    assert excerpt("a rose") == "a rose"
    cut = excerpt("alpha beta " * 30, limit=20)
    assert cut.startswith("alpha beta alpha") and cut.endswith("(57 more words)")


@pytest.mark.parametrize("api_name, arguments, message", [
    ("/timelapse", dict(prompt="ice", seed="abc"), "Seed takes a whole number from 0 to 4294967295, not 'abc'"),
    ("/timelapse", dict(prompt="ice", steps="many"), "Steps takes a whole number from 1 to 100, not 'many'"),
    ("/timelapse", dict(prompt="ice", safety="yes"), "Safety guard takes true or false, not 'yes'"),
    ("/identity", dict(photos=[handle_file(PHOTO)], prompt="a man", identity_strength="strong"),
     "Identity strength takes a number from 0 to 1.5"),
    ("/safe_generate", dict(prompt="a dog", alpha=[1]), "selection margin takes a number"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_parameter(client, api_name, arguments, message):
    with pytest.raises(AppError, match=message):
        client.predict(api_name=api_name, **arguments)
    assert client.predict(prompt="still here", steps=1, api_name="/timelapse")[-1]["num_frames"] == 16
