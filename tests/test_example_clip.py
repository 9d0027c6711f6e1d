"""The Referring segmentation tab's bundled example clip: the file plays, is what the code makes, and every example
expression names one and the same thing on every frame."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from pipelines.core.video import read_video
from pipelines.segmentation import example_clip
from pipelines.segmentation.example_clip import EXPRESSIONS, REFERS_TO, example_layout, make_example_clip
from pipelines.segmentation.relations import Candidate, parse_expression, resolve
from studio.tabs import segmentation_examples
from tests.conftest import ROOT

CLIP = ROOT / "assets" / "examples" / "segmentation-two-cats-and-a-cup.mp4"


@pytest.fixture(scope="module")
def made() -> np.ndarray:
    return make_example_clip()


def test_the_bundled_clip_is_a_small_h264_video_of_the_expected_size():
    frames, fps, codec = read_video(CLIP)
    assert codec == "h264"
    assert frames.shape == (example_clip.FRAMES, 240, 320, 3) and frames.dtype == np.uint8
    assert fps == example_clip.FPS and len(frames) / fps <= 3
    assert CLIP.stat().st_size < 400 * 1024


def test_the_bundled_clip_is_what_make_example_clip_makes(made):
    """Regenerating gives the same pictures, up to the codec's loss: a stale file fails here."""
    decoded = read_video(CLIP)[0]
    assert decoded.shape == made.shape
    difference = np.abs(decoded.astype(np.int16) - made.astype(np.int16))
    assert difference.mean() < 3.0
    assert [difference[k].mean() < 4.0 for k in range(len(made))] == [True] * len(made)


def test_the_clip_is_deterministic(made):
    assert np.array_equal(made, make_example_clip())
    small = make_example_clip(frames=5, size=(160, 120))
    assert small.shape == (5, 120, 160, 3) and np.array_equal(small, make_example_clip(frames=5, size=(160, 120)))


def test_the_objects_keep_their_places_on_every_frame():
    """The left cat is wholly left of the right cat, no two objects overlap, all stay inside the frame, and they move."""
    layout = example_layout()
    assert set(layout) == {"left cat", "right cat", "cup"}
    for name, boxes in layout.items():
        assert len(boxes) == example_clip.FRAMES, name
        assert all(0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240 for x1, y1, x2, y2 in boxes), name
        assert boxes[0] != boxes[-1], f"the {name} does not move"
    for k in range(example_clip.FRAMES):
        assert layout["left cat"][k][2] <= layout["right cat"][k][0], k
        for a, b in combinations(layout, 2):
            (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = layout[a][k], layout[b][k]
            assert ax2 <= bx1 or bx2 <= ax1 or ay2 <= by1 or by2 <= ay1, f"{a} and {b} overlap on frame {k}"


def test_the_objects_are_drawn_where_the_layout_says(made):
    """Each box's centre shows its photo (not the plain background), and the background is plain elsewhere."""
    layout = example_layout()
    for k in (0, len(made) - 1):
        covered = np.zeros(made.shape[1:3], bool)
        for boxes in layout.values():
            x1, y1, x2, y2 = boxes[k]
            covered[y1:y2 + 8, x1:x2 + 8] = True              # the box and its shadow
            centre = made[k, (y1 + y2) // 2 - 5:(y1 + y2) // 2 + 5, (x1 + x2) // 2 - 5:(x1 + x2) // 2 + 5]
            assert centre.std() > 8                           # a photo's detail, not a flat wall
        # the rest is the plain background, one colour per row: nothing is drawn outside the boxes
        picture = made[k].astype(np.int16)
        for y in range(picture.shape[0]):
            free = picture[y][~covered[y]]
            assert np.abs(free - np.median(free, axis=0)).max() <= 1, (k, y)


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_every_example_expression_is_read_whole_and_names_its_objects_on_every_frame(expression):
    """Parsed with nothing unread, and resolved on the clip's own boxes (a perfect grounder) to REFERS_TO's objects,
    frame after frame."""
    query = parse_expression(expression)
    assert query.unread == () and query.understood(), expression
    layout = example_layout()
    for k in range(example_clip.FRAMES):
        names = [name for name in layout if query.phrase in name]
        candidates = [Candidate(layout[name][k], 0.8, query.phrase) for name in names]
        anchors = [Candidate(layout[query.anchor][k], 0.8, query.anchor)] if query.anchor else None
        choice = resolve(query, candidates, frame=k, frame_size=(320, 240), anchors=anchors)
        assert tuple(names[i] for i in choice.chosen) == REFERS_TO[expression], (expression, k, choice.reason)


def test_the_tab_examples_point_at_the_bundled_clip():
    assert segmentation_examples.EXAMPLE_CLIP == CLIP and CLIP.is_file()
    assert segmentation_examples.EXAMPLES == [[str(CLIP), e] for e in EXPRESSIONS]
    assert len(EXPRESSIONS) >= 4 and "the cat on the left" in EXPRESSIONS and "the cat on the right" in EXPRESSIONS


def test_the_script_regenerates_the_file(tmp_path, capsys):
    assert example_clip.main([]) == 2
    assert example_clip.main([str(tmp_path / "clip.mp4")]) == 0
    frames = read_video(tmp_path / "clip.mp4")[0]
    assert frames.shape == (example_clip.FRAMES, 240, 320, 3)
    assert "24 frames" in capsys.readouterr().out
