"""Synthetic referring-segmentation videos (pipelines/segmentation/synthetic.py): exact masks, a distractor, an occlusion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipelines.segmentation.synthetic import make_video

NAMES = {"target", "distractor", "occluder", "newcomer"}


@pytest.fixture(scope="module")
def video():
    return make_video()


def test_shapes_and_dtypes(video):
    assert video.frames.shape == (24, 96, 128, 3) and video.frames.dtype == np.uint8
    assert set(video.masks) == NAMES == {o.name for o in video.objects}
    for mask in video.masks.values():
        assert mask.shape == (24, 96, 128) and mask.dtype == bool
    other = make_video(frames=8, size=(64, 80), seed=3)
    assert other.frames.shape == (8, 64, 80, 3) and other.masks["target"].shape == (8, 64, 80)


def test_same_seed_gives_the_same_video_and_another_seed_another(video):
    again, other = make_video(seed=0), make_video(seed=1)
    np.testing.assert_array_equal(again.frames, video.frames)
    for name in NAMES:
        np.testing.assert_array_equal(again.masks[name], video.masks[name])
    assert not np.array_equal(other.frames, video.frames)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_mask_pixel_has_its_objects_colour_and_masks_do_not_overlap(seed):
    video = make_video(seed=seed)
    for obj in video.objects:
        mask = video.masks[obj.name]
        assert mask.any()
        assert (video.frames[mask] == obj.colour).all()
    assert (sum(m.astype(int) for m in video.masks.values()) <= 1).all()


def test_target_and_distractor_look_alike_on_opposite_halves(video):
    target, distractor = video.object("target"), video.object("distractor")
    assert target.shape == distractor.shape == "disc" and target.colour != distractor.colour
    assert target.colour[0] > 150 and distractor.colour[0] > 150          # both red
    assert (target.side, distractor.side) == ("left", "right")
    half = video.frames.shape[2] // 2
    assert not video.masks["target"][:, :, half:].any()
    assert not video.masks["distractor"][:, :, :half].any()
    assert "left" in target.expression and "right" in distractor.expression


def test_the_occluder_hides_part_of_the_target_for_a_few_frames(video):
    areas = video.masks["target"].sum(axis=(1, 2))
    occluded = video.occluded_frames
    assert 1 <= len(occluded) <= len(areas) // 2
    clear = [k for k in range(len(areas)) if k not in occluded]
    assert areas[occluded].max() < areas[clear].min()                    # smaller masks while covered
    assert (areas[occluded] > 0).all()                                   # covered partly, never wholly
    for k in occluded:                                                   # and what covers it is the occluder
        grown = cv2.dilate(video.masks["target"][k].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert (grown & video.masks["occluder"][k]).any()


def test_the_newcomer_appears_only_from_the_middle(video):
    present = video.masks["newcomer"].any(axis=(1, 2))
    assert not present[:12].any() and present[12:].all()
    assert video.object("newcomer").first_frame == 12 and video.object("target").first_frame == 0


def test_too_small_a_video_is_refused():
    with pytest.raises(ValueError, match="48 x 48"):
        make_video(size=(32, 32))
