"""DAVIS video-segmentation metrics: region similarity J, boundary accuracy F, and J&F.

The same maths as the official DAVIS 2017 evaluation (davisvideochallenge/davis2017-evaluation, `metrics.py`), so
that a number printed here can be set beside a published one:

- J = |pred ∩ gt \ void| / |pred ∪ gt \ void|, 1 when that union is empty.
- F = 2PR / (P + R) over boundary pixels (`boundary`) of both masks with the void pixels cleared first, a
  prediction's boundary pixel counting as matched when a ground-truth boundary pixel lies within `tolerance` px of it
  (dilation by a disk), and the other way round.
- J&F = (mean J + mean F) / 2.

Void pixels are DAVIS's label 255 (`VOID_LABEL`): the annotator's "unsure" band, scored as neither object nor
background (its `db_eval_iou` and `f_measure`, `void_pixels`).

numpy and OpenCV only: no torch, no Gradio.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

BOUNDARY_FRACTION = 0.008   # DAVIS's default tolerance: 0.8 % of the image diagonal
VOID_LABEL = 255            # DAVIS's palette index for pixels scored as neither object nor background


def _check(pred: np.ndarray, gt: np.ndarray, void=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"masks must be two (H, W) arrays of one size, got {pred.shape} and {gt.shape}")
    void = np.zeros_like(gt) if void is None else np.asarray(void, dtype=bool)
    if void.shape != gt.shape:
        raise ValueError(f"the void mask is {void.shape}, the masks {gt.shape}")
    return pred, gt, void


def jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """Intersection over union of two boolean (H, W) masks outside the `void` pixels; 1.0 when that union is empty
    (nothing to find, none found)."""
    pred, gt, void = _check(pred, gt, void)
    union = np.count_nonzero((pred | gt) & ~void)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt & ~void) / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean (H, W) mask, as DAVIS's `seg2bmap` marks them (for a same-size map).

    A pixel is on the boundary when its value differs from its right, bottom or bottom-right neighbour. The last
    row is compared with its right neighbour only, the last column with its bottom neighbour only, and the
    bottom-right pixel never is: the image border is *not* an edge, so a mask touching the border has no boundary
    along it. The line is one pixel wide and offset half a pixel towards the origin from the true contour: for a
    square it runs just outside the top and left sides and just inside the right and bottom ones.
    """
    seg = np.asarray(mask, dtype=bool)
    if seg.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got {seg.shape}")
    right, below, diagonal = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    right[:, :-1], below[:-1, :], diagonal[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
    edges = (seg ^ right) | (seg ^ below) | (seg ^ diagonal)
    edges[-1, :] = seg[-1, :] ^ right[-1, :]
    edges[:, -1] = seg[:, -1] ^ below[:, -1]
    edges[-1, -1] = False
    return edges


def default_tolerance(shape: tuple[int, ...]) -> int:
    """DAVIS's boundary tolerance in pixels: ceil(0.008 × the image diagonal)."""
    height, width = shape[:2]
    return math.ceil(BOUNDARY_FRACTION * math.hypot(height, width))


def disk(radius: int) -> np.ndarray:
    """The pixels within `radius` of the centre (x² + y² ≤ r²), as scikit-image's `disk`, which DAVIS dilates with.

    Not OpenCV's MORPH_ELLIPSE: at radius 2 that one also holds (±1, ±2), √5 px away, and would match boundary
    pixels DAVIS does not.
    """
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.uint8)


def f_measure(pred: np.ndarray, gt: np.ndarray, tolerance: int | None = None, void: np.ndarray | None = None,
              ) -> float:
    """Boundary F-measure of two boolean (H, W) masks, with a tolerance in pixels (default: `default_tolerance`);
    `void` pixels are cleared from both masks before their boundaries are taken, as DAVIS does.

    Both boundaries empty gives 1, exactly one empty gives 0 (DAVIS: precision 1 and recall 0, or the reverse).
    """
    pred, gt, void = _check(pred, gt, void)
    radius = default_tolerance(gt.shape) if tolerance is None else int(tolerance)
    pred_b, gt_b = boundary(pred & ~void), boundary(gt & ~void)
    n_pred, n_gt = np.count_nonzero(pred_b), np.count_nonzero(gt_b)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    kernel = disk(radius)
    near_gt = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    near_pred = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
    precision = np.count_nonzero(pred_b & near_gt) / n_pred
    recall = np.count_nonzero(gt_b & near_pred) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def video_scores(pred_frames, gt_frames, tolerance: int | None = None, void_frames=None) -> dict:
    """J, F and J&F of one object over a video: per-frame scores, then their means.

    `pred_frames` and `gt_frames`: sequences (or (T, H, W) arrays) of boolean masks, one per frame, same length;
    `void_frames` the same of void pixels (None: none).
    Returns {"J": mean J, "F": mean F, "JF": (J + F) / 2, "per_frame": [{"J": j, "F": f}, ...]}.
    """
    if len(pred_frames) != len(gt_frames):
        raise ValueError(f"{len(pred_frames)} predicted frames for {len(gt_frames)} ground-truth frames")
    if len(gt_frames) == 0:
        raise ValueError("a video needs at least one frame to score")
    voids = [None] * len(gt_frames) if void_frames is None else list(void_frames)
    per_frame = [{"J": jaccard(p, g, v), "F": f_measure(p, g, tolerance, v)}
                 for p, g, v in zip(pred_frames, gt_frames, voids, strict=True)]
    j = float(np.mean([s["J"] for s in per_frame]))
    f = float(np.mean([s["F"] for s in per_frame]))
    return {"J": j, "F": f, "JF": (j + f) / 2, "per_frame": per_frame}
