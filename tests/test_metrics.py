"""DAVIS J and F (pipelines/segmentation/metrics.py) against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.segmentation.metrics import boundary, default_tolerance, disk, f_measure, jaccard, video_scores


def square(shape=(96, 128), top=40, left=40, side=10) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + side, left:left + side] = True
    return mask


def pixel(shape, y, x) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y, x] = True
    return mask


def test_identical_masks_score_one():
    mask = square()
    assert jaccard(mask, mask) == 1.0 and f_measure(mask, mask) == 1.0


def test_two_empty_masks_score_one():
    empty = np.zeros((20, 30), bool)
    assert jaccard(empty, empty) == 1.0 and f_measure(empty, empty) == 1.0


@pytest.mark.parametrize("swap", [False, True])
def test_one_empty_mask_scores_zero(swap):
    pair = (np.zeros((96, 128), bool), square())
    pred, gt = pair[::-1] if swap else pair
    assert jaccard(pred, gt) == 0.0 and f_measure(pred, gt) == 0.0


@pytest.mark.parametrize("k, expected", [(1, 90 / 110), (3, 70 / 130)])
def test_iou_of_a_square_and_the_square_shifted_by_k_pixels(k, expected):
    # intersection (10 - k) x 10, union (10 + k) x 10
    assert jaccard(square(left=40 + k), square()) == pytest.approx(expected, abs=1e-12)


def test_boundary_of_a_square_is_davis_seg2bmap():
    # A 3x3 square: the line runs just outside its top and left sides and just inside its right and bottom ones.
    mask = square((7, 7), top=2, left=2, side=3)
    expected = np.array([[0, 0, 0, 0, 0, 0, 0],
                         [0, 1, 1, 1, 1, 0, 0],
                         [0, 1, 0, 0, 1, 0, 0],
                         [0, 1, 0, 0, 1, 0, 0],
                         [0, 1, 1, 1, 1, 0, 0],
                         [0, 0, 0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(boundary(mask), expected)


def test_the_image_border_is_not_a_boundary():
    bottom_half = np.zeros((4, 4), bool)
    bottom_half[2:] = True
    np.testing.assert_array_equal(boundary(bottom_half), np.array([[0, 0, 0, 0],
                                                                   [1, 1, 1, 1],
                                                                   [0, 0, 0, 0],
                                                                   [0, 0, 0, 0]], bool))
    last_column = np.zeros((4, 4), bool)
    last_column[:, 3] = True
    np.testing.assert_array_equal(boundary(last_column), np.array([[0, 0, 1, 0],
                                                                   [0, 0, 1, 0],
                                                                   [0, 0, 1, 0],
                                                                   [0, 0, 1, 0]], bool))
    assert not boundary(np.ones((5, 6), bool)).any()


def test_default_tolerance_is_0_8_percent_of_the_diagonal_rounded_up():
    assert default_tolerance((96, 128)) == 2          # diagonal 160: 1.28 px -> 2
    assert default_tolerance((480, 854)) == 8         # a DAVIS 480p frame: diagonal 979.6 -> 7.84 -> 8


def test_boundary_offset_by_the_tolerance_matches_and_one_pixel_more_does_not():
    gt = square()                                                      # 96x128: tolerance 2 px
    assert f_measure(square(left=42), gt) == 1.0
    assert f_measure(square(top=42), gt) == 1.0
    # Shifted 3 px right: of the 40 pixels of each boundary line, 24 lie within 2 px of the other's
    # (top and bottom rows 10 of 11 each, the near side 4 of 9, the far side none): P = R = 0.6.
    assert f_measure(square(left=43), gt) == pytest.approx(0.6, abs=1e-12)


def test_f_with_an_explicit_tolerance():
    # A pixel's boundary is the 2x2 block above-left of it; 3 px apart, the blocks' near columns are 2 px apart.
    gt, pred = pixel((11, 11), 5, 5), pixel((11, 11), 5, 8)
    assert f_measure(pred, gt, tolerance=1) == 0.0
    assert f_measure(pred, gt, tolerance=2) == pytest.approx(0.5, abs=1e-12)   # P = R = 2/4
    assert f_measure(pred, gt, tolerance=3) == 1.0


def test_tolerance_is_a_round_disk_as_in_davis():
    np.testing.assert_array_equal(disk(2), np.array([[0, 0, 1, 0, 0],
                                                     [0, 1, 1, 1, 0],
                                                     [1, 1, 1, 1, 1],
                                                     [0, 1, 1, 1, 0],
                                                     [0, 0, 1, 0, 0]]))
    # Blocks rows 19-20 x cols 19-20 and rows 22-23 x cols 20-21: only (22, 20) and (20, 20) are <= 2 px apart;
    # (22, 21) is sqrt(5) px from (20, 20), which OpenCV's MORPH_ELLIPSE would count as matched.
    gt, pred = pixel((40, 40), 20, 20), pixel((40, 40), 23, 21)
    assert f_measure(pred, gt, tolerance=2) == pytest.approx(0.25, abs=1e-12)


def test_video_scores_are_the_means_over_frames():
    gt = [square(), square(), square()]
    pred = [square(), square(left=43), np.zeros((96, 128), bool)]
    scores = video_scores(pred, gt)
    j, f = (1 + 7 / 13 + 0) / 3, (1 + 0.6 + 0) / 3
    assert scores["J"] == pytest.approx(j) and scores["F"] == pytest.approx(f)
    assert scores["JF"] == pytest.approx((j + f) / 2)
    assert [s["J"] for s in scores["per_frame"]] == pytest.approx([1, 7 / 13, 0])
    assert [s["F"] for s in scores["per_frame"]] == pytest.approx([1, 0.6, 0])


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="one size"):
        jaccard(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="frames"):
        video_scores([square()], [square(), square()])
