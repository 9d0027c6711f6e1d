"""The bundled example clip of the Referring segmentation tab: two cats and a cup, so a presenter need not bring a
video, and "the cat on the left" means one thing on every frame.

Composited, deterministically, from two photographs scikit-image ships (no download): `skimage.data.chelsea()`
("Chelsea the cat", CC0 by the photographer, Stefan van der Walt) and `skimage.data.coffee()` (a cup of espresso on
its saucer, CC0 by the photographer, Rachel Michetti; courtesy of Pikolo Espresso Bar). Both are public-domain
dedications ("no copyright restrictions"), so the clip made from them is too.

The scene, over a plain wall-and-table background drawn here:
- "left cat": Chelsea's face, large, in the left third, drifting slowly right;
- "right cat": the same face mirrored and smaller, in the right third, drifting slowly left;
- "cup": the cup and saucer, low in the middle, sliding slowly left to right.
Each cut-out is a rectangle of its photo under a soft elliptic alpha, with a soft shadow; no two overlap on any frame,
and the left cat's box stays wholly left of the right cat's (`example_layout` gives the boxes, for tests and for
checking a result). `EXPRESSIONS` are referring expressions `relations.py` reads whole (nothing unread), each with
the objects it names in `REFERS_TO`.

scikit-image is a development requirement, not a runtime one: it is imported only when the clip is made, so the
studio serves the bundled file without it. Regenerate the file with
    python -m pipelines.segmentation.example_clip assets/examples/segmentation-two-cats-and-a-cup.mp4
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from pipelines.core.video import write_mp4

FPS = 8                 # the studio's usual rate (write_mp4's default; the time-lapse tab's): 24 frames, 3 s
FRAMES, SIZE = 24, (320, 240)   # SIZE is (width, height), as a 320×240 video is named
FILE_NAME = "segmentation-two-cats-and-a-cup.mp4"
OBJECTS = ("left cat", "right cat", "cup")

# What each expression names, by object (left to right); every one is read whole by relations.parse_expression.
REFERS_TO = {
    "the cat on the left": ("left cat",),
    "the cat on the right": ("right cat",),
    "the cup": ("cup",),
    "both cats": ("left cat", "right cat"),
    "the smaller cat": ("right cat",),
    "the cat left of the cup": ("left cat",),
}
EXPRESSIONS = list(REFERS_TO)

# Where each photo's object is (rows, columns) and how it is placed, in fractions of the frame's height/width:
# (photo, crop rows, crop cols, mirrored, sprite height / frame height, centre x at the start and end, centre y).
_CAT_ROWS, _CAT_COLS = (0, 300), (40, 420)
_CUP_ROWS, _CUP_COLS = (12, 392), (72, 484)
_PLACES = {
    "left cat": ("chelsea", _CAT_ROWS, _CAT_COLS, False, 0.42, (0.22, 0.27), 0.36),
    "right cat": ("chelsea", _CAT_ROWS, _CAT_COLS, True, 0.34, (0.79, 0.74), 0.37),
    "cup": ("coffee", _CUP_ROWS, _CUP_COLS, False, 0.30, (0.42, 0.58), 0.78),
}
_FEATHER = 0.10         # the alpha falls from 1 to 0 over this fraction of the ellipse's radius
_HORIZON = 0.60         # where the wall meets the table, as a fraction of the height


def _check(frames: int, size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if int(frames) < 1 or width < 64 or height < 48:
        raise ValueError(f"the example clip needs at least 1 frame and 64×48 pixels, got {frames} and {size}")
    return width, height


def example_layout(frames: int = FRAMES, size: tuple[int, int] = SIZE) -> dict[str, list[tuple[int, int, int, int]]]:
    """Per object name (OBJECTS), its box on every frame: (x1, y1, x2, y2) pixels, x2 and y2 exclusive, as drawn by
    `make_example_clip(frames, size)`. Motion eases in and out (a half cosine), so it is slow at both ends."""
    width, height = _check(frames, size)
    boxes: dict[str, list[tuple[int, int, int, int]]] = {}
    for name in OBJECTS:
        _, rows, cols, _, scale, (x0, x1), cy = _PLACES[name]
        h = max(8, round(scale * height))
        w = max(8, round(h * (cols[1] - cols[0]) / (rows[1] - rows[0])))
        boxes[name] = []
        for k in range(int(frames)):
            t = 0.5 - 0.5 * float(np.cos(np.pi * k / max(1, frames - 1)))
            cx = (x0 + (x1 - x0) * t) * width
            left, top = round(cx - w / 2), round(cy * height - h / 2)
            boxes[name].append((left, top, left + w, top + h))
    return boxes


@lru_cache(maxsize=2)
def _photo(name: str) -> np.ndarray:
    import skimage.data  # a development requirement: only needed to make the clip

    return getattr(skimage.data, name)()


def _sprite(name: str, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float32 (h, w, 3), alpha float32 (h, w)) of one object's cut-out."""
    photo, rows, cols, mirrored, *_ = _PLACES[name]
    crop = _photo(photo)[rows[0]:rows[1], cols[0]:cols[1]]
    if mirrored:
        crop = crop[:, ::-1]
    rgb = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    return rgb, _ellipse(w, h)


def _ellipse(w: int, h: int) -> np.ndarray:
    """A soft elliptic alpha filling a w×h rectangle: 1 inside, falling to 0 at the rectangle's edges."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((x + 0.5 - w / 2) / (w / 2), (y + 0.5 - h / 2) / (h / 2))
    return np.clip((1.0 - r) / _FEATHER, 0.0, 1.0)


def _background(width: int, height: int) -> np.ndarray:
    """A plain scene: a pale wall with a soft vertical gradient over a warm wooden-toned table."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    wall = np.array([226, 221, 211], np.float32) + (y / _HORIZON) * np.array([-22, -22, -20], np.float32)
    table = np.array([176, 128, 88], np.float32) + ((y - _HORIZON) / (1 - _HORIZON)) * np.array([-40, -32, -24],
                                                                                                 np.float32)
    picture = np.where(y < _HORIZON, wall, table)
    picture = np.broadcast_to(picture, (height, width, 3)).copy()
    edge = round(_HORIZON * height)
    picture[max(0, edge - 1):edge + 1] *= 0.82    # the table's edge
    return picture


def _paste(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Alpha-blend a sprite into `canvas` (float32, in place) at `box`, clipped to the frame."""
    x1, y1, x2, y2 = box
    height, width = canvas.shape[:2]
    cx1, cy1, cx2, cy2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if cx1 >= cx2 or cy1 >= cy2:
        return
    part = (slice(cy1 - y1, cy2 - y1), slice(cx1 - x1, cx2 - x1))
    a = alpha[part][..., None]
    canvas[cy1:cy2, cx1:cx2] = canvas[cy1:cy2, cx1:cx2] * (1 - a) + rgb[part] * a


def _shadow(canvas: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Darken a soft ellipse under and behind a sprite, so it sits in the scene rather than floats on it."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    dx, dy = max(1, round(0.03 * w)), max(1, round(0.05 * h))
    shade = 0.35 * _ellipse(w, h)
    _paste(canvas, np.zeros((h, w, 3), np.float32), shade, (x1 + dx, y1 + dy, x2 + dx, y2 + dy))


def make_example_clip(frames: int = FRAMES, size: tuple[int, int] = SIZE) -> np.ndarray:
    """The example scene, (frames, height, width, 3) uint8 for `size` = (width, height); same arguments, same pixels.
    The objects are where `example_layout(frames, size)` says."""
    width, height = _check(frames, size)
    layout = example_layout(frames, size)
    sprites = {}
    for name in OBJECTS:
        x1, y1, x2, y2 = layout[name][0]
        sprites[name] = _sprite(name, x2 - x1, y2 - y1)
    background = _background(width, height)
    clip = np.empty((int(frames), height, width, 3), np.uint8)
    for k in range(int(frames)):
        canvas = background.copy()
        for name in OBJECTS:
            _shadow(canvas, layout[name][k])
        for name in OBJECTS:
            _paste(canvas, *sprites[name], layout[name][k])
        clip[k] = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return clip


def write_example_clip(path: str | Path, frames: int = FRAMES, size: tuple[int, int] = SIZE) -> Path:
    """Write the example clip as the studio writes every video (H.264, yuv420p) at FPS; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_mp4(make_example_clip(frames, size), path, fps=FPS)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print(f"usage: python -m pipelines.segmentation.example_clip assets/examples/{FILE_NAME}", file=sys.stderr)
        return 2
    path = write_example_clip(args[0])
    print(f"{path}: {FRAMES} frames, {SIZE[0]}×{SIZE[1]}, {FRAMES / FPS:.0f} s, {path.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
