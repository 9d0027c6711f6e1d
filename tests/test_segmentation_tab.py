"""The segmentation tab's click surface: a click on the (enlarged) shown frame lands on the video pixel under it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from pipelines.core.video import write_mp4
from studio.tabs.segmentation import add_click, show_frame


def test_a_click_on_the_enlarged_frame_lands_on_the_video_pixel_under_it(tmp_path):
    """A 64×48 clip is shown 7× enlarged (448×336): the displayed pixel (73, 40) is video pixel (10, 5) (73 // 7,
    40 // 7), clicks accumulate, and polarity and object id are kept."""
    frames = np.zeros((3, 48, 64, 3), np.uint8)
    frames[:, 5, 10] = 255                                           # one white video pixel
    path = str(write_mp4(frames, tmp_path / "overlay.mp4", fps=8))
    shown = show_frame(path, 1)
    assert shown.shape == (336, 448, 3)
    bright = np.argwhere(shown.max(axis=2) > 100)
    assert bright.size and (bright // 7 == [5, 10]).all()            # the enlarged pixel covers 7×7 screen pixels

    info = {"size": [64, 48], "num_frames": 3}
    clicks, text, marked = add_click("", 1, "include", 1, info, shown, SimpleNamespace(index=[73, 40]))
    clicks, text, marked = add_click(clicks, 2, "exclude", 2, info, marked, SimpleNamespace(index=[0, 335]))
    points = json.loads(clicks)
    assert [(p["frame"], int(p["x"]), int(p["y"]), p["positive"], p["object_id"]) for p in points] == [
        (1, 10, 5, True, 1), (2, 0, 47, False, 2)]
    assert text
    # each click is marked where it was made on the shown image: green to include, red to exclude, ringed in white
    from pipelines.segmentation.mask_export import EXCLUDE, INCLUDE

    assert tuple(marked[40, 73]) == INCLUDE and tuple(marked[335, 0]) == EXCLUDE
    (r, g, _), (r2, g2, _) = (marked[40, 73].astype(int), marked[335, 0].astype(int))
    assert g > 2 * r and r2 > 2 * g2                                   # include reads green, exclude red
    assert marked[40, 73 + 7].min() > 180                             # the white ring, just outside the 6 px disc
    assert marked.shape == shown.shape and (marked != shown).any(axis=2).sum() < 2 * 3.15 * 8 ** 2


def test_a_large_frame_is_shown_as_it_is_and_clicks_are_not_scaled(tmp_path):
    frames = np.zeros((2, 480, 640, 3), np.uint8)
    path = str(write_mp4(frames, tmp_path / "big.mp4", fps=8))
    assert show_frame(path, 0).shape == (480, 640, 3)
    clicks, *_ = add_click("", 0, "include", None, {"size": [640, 480]}, None, SimpleNamespace(index=[321, 123]))
    assert json.loads(clicks) == [{"frame": 0, "x": 321.0, "y": 123.0, "positive": True, "object_id": 1}]


def test_the_click_list_says_include_and_exclude_in_words():
    from studio.tabs.segmentation_api import clicks_markdown

    said = clicks_markdown([{"frame": 3, "x": 10.0, "y": 20.0, "positive": True, "object_id": 1},
                            {"frame": 4, "x": 5.0, "y": 6.0, "positive": False, "object_id": 1}])
    assert said == "include frame 3 (10, 20) → object 1 · exclude frame 4 (5, 6) → object 1"   # no sign for Markdown
    assert all(ord(ch) < 0x2000 or ch in "→·" for ch in said), said          # no fullwidth ＋/－ to miss from a font


def test_a_clip_from_another_tab_is_named_by_its_words_not_its_random_file_name():
    from studio.tabs.segmentation_api import clip_name

    assert clip_name("/tmp/gradio/x/Two Discs.mp4") == "Two Discs"
    assert clip_name("/out/3f7d427c1fcd4e0b9a6f2d1c5b8e7a90.mp4") == ""              # a generated clip
    assert clip_name("/out/ice-melting-overlay-a1b2c3.mp4") == "ice-melting-overlay"
