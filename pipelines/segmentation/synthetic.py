"""Synthetic referring-segmentation videos with exact masks, for tests and benchmarks (no dataset ships here).

Flat-coloured shapes move over a textured background:

- "target": a red disc in the left half ("the red disc on the left");
- "distractor": a disc of the same size in a darker red, in the right half: only "left"/"right" tells them apart;
- "occluder": a blue square that falls down through the left half and passes over the target for a few frames;
- "newcomer": a yellow square that appears only from frame T // 2, low in the right half.

The masks hold visible pixels only (a shape drawn later hides what is under it), and every mask pixel of a frame
has exactly its object's colour: no anti-aliasing, integer centres. Same seed, same video.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TARGET_RED, DISTRACTOR_RED = (215, 45, 40), (165, 30, 55)
BLUE, YELLOW = (40, 80, 205), (235, 200, 35)


@dataclass(frozen=True)
class SyntheticObject:
    name: str
    colour: tuple[int, int, int]     # RGB, the exact value of every pixel of its mask
    shape: str                       # "disc" or "square"
    side: str                        # "left" or "right": the half of the frame its centre stays in
    first_frame: int                 # the first frame where any of it is visible
    expression: str                  # a referring expression that names it and nothing else


@dataclass
class SyntheticVideo:
    frames: np.ndarray                    # (T, H, W, 3) uint8
    masks: dict[str, np.ndarray]          # name -> (T, H, W) bool, visible pixels only
    objects: list[SyntheticObject]        # in drawing order, bottom first
    occluded_frames: list[int]            # frames where the occluder hides part of the target

    def object(self, name: str) -> SyntheticObject:
        return next(o for o in self.objects if o.name == name)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blurred noise over soft diagonal stripes, in muted greens and browns (no object colour in it)."""
    noise = cv2.GaussianBlur(rng.normal(0, 1, (height, width, 3)).astype(np.float32), (0, 0), 2.0)
    y, x = np.mgrid[0:height, 0:width]
    stripes = np.sin((x + y) * 2 * np.pi / rng.uniform(10, 18))[..., None]
    base = np.array([105, 115, 90], np.float32)
    return np.clip(base + 14 * noise / noise.std() + 10 * stripes, 0, 255).astype(np.uint8)


def _shape(kind: str, centre: tuple[int, int], half: int, height: int, width: int) -> np.ndarray:
    """The pixels of a disc of radius `half`, or a square of side 2·half + 1, centred on (x, y)."""
    y, x = np.ogrid[0:height, 0:width]
    cx, cy = centre
    if kind == "disc":
        return (x - cx) ** 2 + (y - cy) ** 2 <= half ** 2
    return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)


def make_video(frames: int = 24, size: tuple[int, int] = (96, 128), seed: int = 0) -> SyntheticVideo:
    """A video of `frames` frames of `size` = (height, width) pixels; the seed sets the texture and the motion."""
    height, width = size
    if frames < 4 or min(height, width) < 48:
        raise ValueError(f"make_video needs at least 4 frames and 48 x 48 pixels, got {frames} and {size}")
    rng = np.random.default_rng(seed)
    t = np.arange(frames)
    radius = max(5, round(0.11 * min(height, width)))
    square = max(3, round(0.8 * radius))           # half-side: the occluder covers the disc's middle, not all of it
    small = max(3, round(0.6 * radius))
    margin = radius + 2

    def sway(lo: float, hi: float, periods: float) -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi)
        return lo + (hi - lo) * (0.5 - 0.5 * np.cos(2 * np.pi * periods * t / frames + phase))

    target_x = sway(margin, width / 2 - margin, 1.0)
    target_y = sway(0.4 * height, 0.55 * height, 1.5)
    distractor_x = sway(width / 2 + margin, width - margin, 1.0)
    distractor_y = sway(0.3 * height, 0.55 * height, 1.5)
    # The occluder falls through the whole frame and sits exactly on the target at frame `meet`.
    meet = frames // 4
    fall = (height + 2 * square + 2) / frames
    occluder_x = np.full(frames, target_x[meet])
    occluder_y = target_y[meet] + fall * (t - meet)
    newcomer_x = np.linspace(width - small - 2, width / 2 + small + 2, frames)
    newcomer_y = np.full(frames, height - small - 3.0)

    # Bottom first: (name, kind, colour, half-size, x, y, first frame drawn).
    layers = [("newcomer", "square", YELLOW, small, newcomer_x, newcomer_y, frames // 2),
              ("distractor", "disc", DISTRACTOR_RED, radius, distractor_x, distractor_y, 0),
              ("target", "disc", TARGET_RED, radius, target_x, target_y, 0),
              ("occluder", "square", BLUE, square, occluder_x, occluder_y, 0)]
    video = np.repeat(_texture(rng, height, width)[None], frames, axis=0)
    masks = {name: np.zeros((frames, height, width), bool) for name, *_ in layers}
    target_full = np.zeros((frames, height, width), bool)
    for k in range(frames):
        for name, kind, colour, half, xs, ys, start in layers:
            if k < start:
                continue
            shape = _shape(kind, (int(round(xs[k])), int(round(ys[k]))), half, height, width)
            video[k][shape] = colour
            for below in masks.values():           # what this shape covers is no longer visible
                below[k] &= ~shape
            masks[name][k] = shape
            if name == "target":
                target_full[k] = shape

    expressions = {"target": "the red disc on the left", "distractor": "the red disc on the right",
                   "occluder": "the blue square", "newcomer": "the yellow square"}
    objects = [SyntheticObject(name, colour, kind, "left" if np.mean(xs) < width / 2 else "right",
                               int(np.argmax(masks[name].any(axis=(1, 2)))), expressions[name])
               for name, kind, colour, _, xs, _, _ in layers]
    occluded = [k for k in range(frames) if masks["target"][k].sum() < target_full[k].sum()]
    return SyntheticVideo(video, masks, objects, occluded)
