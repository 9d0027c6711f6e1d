"""The guard and the output check as a user of the studio meets them: every endpoint's safety block, the Safe
generation endpoint, enforced mode over HTTP, flagged frames blurred and named, the classifier on a real photo."""

from __future__ import annotations

import cv2
import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from skimage import data

from pipelines.core.errors import InputError
from pipelines.core.video import read_video
from pipelines.safety.guard import SafetyOptions
from pipelines.safety.output_check import FLAG_THRESHOLD, FrameChecker, blur_frames
from studio.engine import Engine, enforced_floor
from studio.tabs.identity_api import IdentityAPI
from studio.tabs.timelapse_api import TimelapseAPI
from tests.conftest import ROOT, launched, tiny_settings

PHOTO = str(ROOT / "assets" / "examples" / "astronaut.jpg")
UNSAFE = "a nude woman on a beach"


def sharpness(frame: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


# ----------------------------------------------------------------------------- every generating endpoint
def test_timelapse_and_identity_info_carry_the_safety_block(client):
    *_, info = client.predict(prompt=UNSAFE, steps=3, api_name="/timelapse")
    safety = info["safety"]
    assert safety["enabled"] and safety["mode"] == "on" and safety["concepts"] == ["nudity", "violence"]
    assert safety["flagged_tokens"] and {"token", "score"} <= set(safety["flagged_tokens"][0])
    assert safety["guarded_steps_text"] == f"{safety['t_prime'] + 1} of 3 steps"
    check = safety["output_check"]
    assert len(check["per_frame"]) == 16 and check["flagged_frames"] == [] and check["threshold"] == FLAG_THRESHOLD
    assert "safety_check" in info["timings"] and "safety_prompt" in info["timings"]

    *_, info = client.predict(photos=[handle_file(PHOTO)], prompt="a man on a beach", steps=1, safety=False,
                              api_name="/identity")
    assert info["safety"]["enabled"] is False and len(info["safety"]["output_check"]["per_frame"]) == 16
    assert "safety_photos" in info["timings"]


def test_safe_generate_shows_the_guarded_and_unguarded_clip_and_the_tokens(client):
    guarded, unguarded, tokens, summary, info = client.predict(
        prompt="a starry night over a village in the style of Van Gogh", concepts=["artist style"], steps=2,
        api_name="/safe_generate")
    first, fps, codec = read_video(guarded)
    second = read_video(unguarded)[0]
    assert first.shape == second.shape == (8, 64, 64, 3) and codec == "h264"
    assert info["safety"]["concepts"] == ["artist style"] and info["compare"].startswith("unguarded")
    assert info["unguarded"]["safety"]["enabled"] is False
    # The API's tokens are clean: the tokenizer's text, the raw score, projected or not (the ▲ is the page's).
    assert tokens and all(set(t) == {"text", "score", "projected"} for t in tokens)
    assert [t["text"] for t in tokens] == [t["token"] for t in info["safety"]["tokens"][info["prompt"]]]
    assert not any("▲" in t["text"] or not t["text"].strip() for t in tokens)
    assert sum(t["projected"] for t in tokens) == len(info["safety"]["flagged_tokens"])
    assert "Projected" in summary or "Nothing to project" in summary


def test_custom_concepts_and_bad_guard_options_through_the_api(client):
    *_, info = client.predict(prompt="a dog in a park", concepts=[], custom_concepts="Snoopy, Mickey Mouse",
                              compare=False, steps=1, api_name="/safe_generate")
    assert info["safety"]["custom_concepts"] == ["Snoopy", "Mickey Mouse"] and "unguarded" not in info
    with pytest.raises(AppError, match="Choose at least one concept"):
        client.predict(prompt="a dog", concepts=[], api_name="/safe_generate")
    with pytest.raises(AppError, match="'sideways'.*not in the list of choices"):
        client.predict(prompt="a dog", projection="sideways", api_name="/safe_generate")


def test_an_empty_prompt_gets_the_safe_tabs_own_message(client):
    for prompt in ("", "   "):
        with pytest.raises(AppError, match="Write a prompt to check: the guard shows which of its words") as caught:
            client.predict(prompt=prompt, api_name="/safe_generate")
        assert "changes over time" not in str(caught.value)        # not the time-lapse tab's message


# ----------------------------------------------------------------------------- enforced mode, over HTTP
@pytest.fixture(scope="module")
def enforced(tmp_path_factory):
    with launched(tiny_settings(tmp_path_factory.mktemp("enforced"), safety="enforced")) as (_, url):
        yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("enforced-client")))


def test_enforced_mode_refuses_safety_off_and_shows_the_switch_locked(enforced):
    with pytest.raises(AppError, match=r"enforced on this server \(STUDIO_SAFETY=enforced\)"):
        enforced.predict(prompt="ice melting", safety=False, api_name="/timelapse")
    with pytest.raises(AppError, match="enforced on this server"):
        enforced.predict(photos=[handle_file(PHOTO)], prompt="a man", safety=False, api_name="/identity")
    *_, info = enforced.predict(prompt="ice melting", steps=1, api_name="/timelapse")
    assert info["safety"]["enabled"] and info["safety"]["mode"] == "enforced"
    guarded, unguarded, *_, info = enforced.predict(prompt="a dog", compare=True, steps=1,
                                                    api_name="/safe_generate")
    assert unguarded is None and info["compare"] == "off: this server enforces the guard"
    switches = [c["props"] for c in enforced.config["components"] if c["props"].get("label") == "Safety guard"]
    assert len(switches) == 2 and all(s["interactive"] is False for s in switches)
    assert all("STUDIO_SAFETY=enforced" in s["info"] for s in switches)


def test_enforced_mode_lets_safe_generate_be_stricter_never_weaker(enforced):
    """A guard that is on but flags nothing is off by another name: a call may add concepts or lower α, not drop
    a default category or raise α."""
    with pytest.raises(AppError, match=r"concepts must include nudity, violence \(missing: violence\)"):
        enforced.predict(prompt="a dog", concepts=["nudity"], steps=1, api_name="/safe_generate")
    with pytest.raises(AppError, match=r"1.0 is greater than maximum value 0.01"):    # the slider's own range
        enforced.predict(prompt="a dog", alpha=1.0, steps=1, api_name="/safe_generate")
    with pytest.raises(InputError, match=r"α may be at most 0.01 .*not 0.02"):          # and the engine's, behind it
        enforced_floor(SafetyOptions(alpha=0.02))
    *_, info = enforced.predict(prompt="a dog", concepts=["nudity", "violence", "artist style"], alpha=0.0,
                                custom_concepts="Snoopy", steps=1, api_name="/safe_generate")
    assert info["safety"]["concepts"] == ["nudity", "violence", "artist style"] and info["safety"]["alpha"] == 0.0
    sliders = [c["props"] for c in enforced.config["components"] if c["props"].get("label") == "α: selection margin"]
    assert [s["maximum"] for s in sliders] == [0.01]


# ----------------------------------------------------------------------------- the output check
def test_blur_changes_only_the_flagged_frames():
    frames = np.stack([data.astronaut()[::4, ::4]] * 3)
    out = blur_frames(frames, [1])
    assert np.array_equal(out[0], frames[0]) and np.array_equal(out[2], frames[2])
    assert sharpness(out[1]) < 0.05 * sharpness(frames[1]) and abs(out[1].mean() - frames[1].mean()) < 3


def test_a_flagged_frame_is_blurred_in_the_clip_and_reported(tmp_path):
    """A score over the threshold injected at the checker's seam for frame 2: the MP4 has it blurred (not black),
    the info names it, and the person is told why and what to do."""
    engine = Engine(tiny_settings(tmp_path))
    call = lambda: TimelapseAPI(engine).generate("ice melting", steps=2, seed=4, safety=False,  # noqa: E731
                                                progress=lambda *a, **k: None)
    plain_path, _, _ = call()
    engine.checker = FrameChecker(score=lambda frames: np.where(np.arange(len(frames)) == 2, 0.95, 0.01))
    path, summary, info = call()
    plain, flagged = read_video(plain_path)[0], read_video(path)[0]
    check = info["safety"]["output_check"]
    assert check["flagged_frames"] == [2] and check["blurred"] and check["per_frame"][2] == 0.95
    assert sharpness(flagged[2]) < 0.3 * sharpness(plain[2]) and flagged[2].mean() > 5   # blurred, not black
    others = [i for i in range(16) if i != 2]                         # the others as they were (up to H.264)
    assert all(sharpness(flagged[i]) > 0.7 * sharpness(plain[i]) for i in others)
    assert np.abs(flagged[others].astype(int) - plain[others]).mean() < 3
    assert any("flagged 1 of 16 frames" in w and "Try another seed" in w for w in info["warnings"])
    assert "1 of 16 frames flagged" in summary


def test_live_previews_go_through_the_output_check_too(tmp_path):
    """A preview is shown to the person as well: the same check, flagged frames blurred before it is written."""
    from contextlib import closing

    engine = Engine(tiny_settings(tmp_path))
    checked = []

    def score(frames):
        checked.append(len(frames))
        return np.where(np.arange(len(frames)) == 1, 0.95, 0.01)

    engine.checker = FrameChecker(score=score)
    with closing(TimelapseAPI(engine).stream("ice melting", num_frames=8, steps=6, seed=3, safety=False,
                                              preview=True, progress=lambda *a, **k: None)) as stream:
        first_preview = next(stream)[0]
    shown = read_video(first_preview)[0]
    assert checked and checked[0] == 8 == len(shown)                  # every preview frame, in one batch
    assert sharpness(shown[1]) < 0.5 * min(sharpness(shown[i]) for i in (0, 2, 3))


def test_reference_photos_go_through_the_checker_first(tmp_path):
    flag_all = FrameChecker(score=lambda frames: np.full(len(frames), 0.9))
    relaxed = Engine(tiny_settings(tmp_path / "on"))
    relaxed.checker = flag_all
    *_, info = IdentityAPI(relaxed).generate([PHOTO], "a man", steps=1, num_frames=8, progress=lambda *a, **k: None)
    assert any("photo 1 (0.90) as explicit" in w for w in info["warnings"])

    strict = Engine(tiny_settings(tmp_path / "enforced", safety="enforced"))
    strict.checker = flag_all
    with pytest.raises(gr.Error, match="photo 1 \\(0.90\\) as explicit; this server enforces"):
        IdentityAPI(strict).generate([PHOTO], "a man", steps=1, progress=lambda *a, **k: None)
    assert not any("unet" in c["key"] for c in strict.cache.stats()["components"])   # refused before the GPU


def test_the_open_nsfw_model_scores_a_real_photo_as_safe_in_one_batch():
    checker = FrameChecker()
    photo = data.astronaut()
    frames = np.stack([photo, photo[::-1].copy(), np.full_like(photo, 200)])
    verdict = checker.check(frames)
    assert len(verdict.scores) == 3 and verdict.flagged == []
    assert verdict.scores[0] < 0.2                                       # measured 0.03 (the docs: < 0.2 is safe)
    assert verdict.scores[0] == pytest.approx(checker.check(photo).scores[0], abs=1e-5)


def test_a_frame_is_flagged_from_0_8_on():
    """Open-NSFW's own guidance: above 0.8 is unsafe. The threshold, written out here, is inclusive."""
    from pipelines.safety.output_check import Verdict

    assert Verdict((0.79, 0.8, 0.95, 0.2), threshold=FLAG_THRESHOLD).flagged == [1, 2]
    assert FLAG_THRESHOLD == 0.8 and FrameChecker().threshold == 0.8


def test_safe_generate_streams_a_live_preview_of_both_clips_when_asked(client):
    """The Safe tab's two clips run in one GPU call; with `preview` each is shown while it denoises (the updates
    before the final one carry preview clips into the guarded and the unguarded slot)."""
    job = client.submit(prompt="a quiet harbour at dawn", concepts=["artist style"], steps=3, preview=True,
                        api_name="/safe_generate")
    guarded, unguarded, tokens, summary, info = job.result(timeout=300)
    updates = job.outputs()
    assert len(updates) > 1 and "Took" in summary
    previews = [u for u in updates[:-1] if "preview from step" in (u[3] or "")]
    assert any(u[0] for u in previews) and any(u[1] for u in previews)     # each clip had its preview
    assert read_video(guarded)[0].shape == read_video(unguarded)[0].shape == (8, 64, 64, 3)
