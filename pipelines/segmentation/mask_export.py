"""What a segmentation gives a person: an overlay clip, the key frame with its boxes, and the masks as files.

- Overlay: each object's mask tinted in its own colour (40 %), a 2 px outline, its id label at the top of the mask.
- Key frame: every grounding candidate in grey, the chosen ones in their object's colour, with their scores.
- Masks: a zip of per-frame PNGs (`<object id>/<frame>.png`, 0/255, the video's size: mattes for an editor), and
  COCO run-length JSON (pycocotools' encoding, one annotation per object per frame).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# Distinct, readable on video: Okabe–Ito's colour-blind-safe set, then a few more.
COLOURS = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (255, 255, 255)]
TINT = 0.4
LABELLED_CANDIDATES = 6      # the key frame writes every candidate's score up to this many, else the chosen ones'


def colour(object_id: int) -> tuple[int, int, int]:
    return COLOURS[(object_id - 1) % len(COLOURS)]


def overlay_frames(frames: np.ndarray, masks: np.ndarray, object_ids: list[int]):
    """The overlay one frame at a time, (H, W, 3) uint8 each: every object's mask tinted, outlined and labelled.
    Made per frame in the frame's own dtype (the tint in float only on the mask's pixels), so an export streamed
    into the MP4 writer holds one frame beyond the clip, whatever its length (the whole-clip float32 copies it made
    before were ~12x the decoded frames: 21 GiB at the 300-frame 1080p cap)."""
    scale = max(frames.shape[1], frames.shape[2]) / 640
    tints = [np.array(colour(i), np.float32) for i in object_ids]
    for t in range(len(frames)):
        frame = np.array(frames[t], dtype=np.uint8, copy=True)
        for mask, tint in zip(masks, tints, strict=True):
            on = mask[t]
            if on.any():
                frame[on] = np.round((1 - TINT) * frame[on] + TINT * tint).clip(0, 255).astype(np.uint8)
        for mask, object_id in zip(masks, object_ids, strict=True):
            if not mask[t].any():
                continue
            contours, _ = cv2.findContours(mask[t].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(frame, contours, -1, colour(object_id), max(1, round(2 * scale)))
            ys, xs = np.nonzero(mask[t])
            anchor = (int(xs.min()), max(int(ys.min()) - 4, 12))
            cv2.putText(frame, str(object_id), anchor, cv2.FONT_HERSHEY_SIMPLEX, max(0.4, 0.6 * scale),
                        colour(object_id), max(1, round(2 * scale)), cv2.LINE_AA)
        yield frame


def overlay(frames: np.ndarray, masks: np.ndarray, object_ids: list[int]) -> np.ndarray:
    """(T, H, W, 3) uint8 frames with every object's mask tinted, outlined and labelled (all of them at once: the
    studio streams `overlay_frames` instead)."""
    return np.stack(list(overlay_frames(frames, masks, object_ids)))


def display_scale(width: int, height: int, side: int = 480) -> int:
    """The whole-number factor a small frame is enlarged by for display (clicks on it are divided by it)."""
    return max(1, side // max(width, height))


def enlarge(frame: np.ndarray, factor: int) -> np.ndarray:
    return frame if factor == 1 else np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


def key_frame_boxes(frame: np.ndarray, candidates, chosen, object_ids: list[int], note: str = "") -> np.ndarray:
    """The key frame with every candidate box (grey) and the chosen ones (their object's colour), scores written;
    a small frame enlarged by `display_scale` so that boxes and labels stay legible. `note`: a line written on a
    dark band across the top (the sampled frames disagreed: the person should look before trusting the clip)."""
    factor = display_scale(frame.shape[1], frame.shape[0])
    image = np.ascontiguousarray(enlarge(frame, factor))
    thickness = max(1, round(max(image.shape[:2]) / 320))
    picked = {c.box: object_id for c, object_id in zip(chosen, object_ids, strict=False)}
    # Scores are written on the chosen boxes, and on the others only while few: eighteen labels in one frame pile
    # into a cluster no one can read (every score is in the Details JSON).
    label_all = len(candidates) <= LABELLED_CANDIDATES
    size = 0.45 * thickness
    ordered = sorted(candidates, key=lambda c: c.box in picked)             # chosen drawn last, on top
    for candidate in ordered:
        x1, y1, x2, y2 = (int(round(v * factor)) for v in candidate.box)
        object_id = picked.get(candidate.box)
        tone = colour(object_id) if object_id else (170, 170, 170)
        cv2.rectangle(image, (x1, y1), (x2, y2), tone, thickness * (2 if object_id else 1))
    for candidate in ordered:                                               # labels over every box line
        object_id = picked.get(candidate.box)
        if not (object_id or label_all):
            continue
        x1, y1 = (int(round(v * factor)) for v in candidate.box[:2])
        text = f"{object_id}: {candidate.score:.2f}" if object_id else f"{candidate.score:.2f}"
        (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, thickness)
        x, y = min(max(x1, 0), image.shape[1] - w - 2), max(y1 - 4, h + 2)
        cv2.rectangle(image, (x - 1, y - h - 2), (x + w + 1, y + 3), (0, 0, 0), -1)      # a dark plate to read on
        cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, size,
                    colour(object_id) if object_id else (225, 225, 225), thickness, cv2.LINE_AA)
    if note:                 # as large as fits across the image (up to 1.0), on a band sized to the text
        width = image.shape[1]
        (text_w, text_h), _ = cv2.getTextSize(note, cv2.FONT_HERSHEY_SIMPLEX, 1.0, thickness)
        size = min(1.0, 0.94 * width / text_w)
        band = max(14, int(text_h * size) + 10)
        image[:band] = (image[:band].astype(np.uint16) * 3 // 10).astype(np.uint8)      # darkened, still visible
        cv2.putText(image, note, (int(0.03 * width), band - 5), cv2.FONT_HERSHEY_SIMPLEX, size, (255, 210, 80),
                    thickness, cv2.LINE_AA)
    return image


INCLUDE, EXCLUDE = (0, 200, 90), (230, 40, 40)


def mark_click(image: np.ndarray, x: float, y: float, positive: bool) -> np.ndarray:
    """The shown frame with a refinement click marked where it was made (display pixels): a filled disc, green to
    include and red to exclude, ringed in white so it reads on any colour."""
    marked = np.ascontiguousarray(np.array(image, dtype=np.uint8, copy=True))
    radius = max(4, round(max(marked.shape[:2]) / 80))
    centre = (int(round(x)), int(round(y)))
    cv2.circle(marked, centre, radius + 2, (255, 255, 255), -1, cv2.LINE_AA)
    cv2.circle(marked, centre, radius, INCLUDE if positive else EXCLUDE, -1, cv2.LINE_AA)
    return marked


def masks_zip(masks: np.ndarray, object_ids: list[int], path: str | Path) -> Path:
    """Per-frame 0/255 PNGs, `<object id>/<frame:05d>.png`, in one zip."""
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for mask, object_id in zip(masks, object_ids, strict=True):
            for frame, plane in enumerate(mask):
                buffer = io.BytesIO()
                Image.fromarray(plane.astype(np.uint8) * 255).save(buffer, format="PNG")
                archive.writestr(f"{object_id}/{frame:05d}.png", buffer.getvalue())
    return path


def coco_rle(masks: np.ndarray, object_ids: list[int], expression: str) -> dict:
    """COCO-style JSON: one annotation per object per frame, `segmentation` in pycocotools' compressed RLE."""
    from pycocotools import mask as coco

    objects, frames, height, width = masks.shape
    annotations = []
    for mask, object_id in zip(masks, object_ids, strict=True):
        for frame in range(frames):              # a frame at a time: no second copy of the clip's masks
            rle = coco.encode(np.asfortranarray(mask[frame][:, :, None].astype(np.uint8)))[0]
            area = int(coco.area(rle))
            annotations.append({
                "id": len(annotations) + 1, "image_id": frame, "object_id": object_id, "category_id": 1,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "area": area, "bbox": [float(v) for v in coco.toBbox(rle)], "iscrowd": 0,
            })
    return {
        "info": {"description": f"masks for “{expression}”", "frames": frames},
        "images": [{"id": frame, "file_name": f"{frame:05d}.png", "height": height, "width": width}
                   for frame in range(frames)],
        "categories": [{"id": 1, "name": expression}],
        "annotations": annotations,
    }


def decode_coco_rle(data: dict) -> dict[int, np.ndarray]:
    """The inverse of coco_rle: {object id: (T, H, W) bool}."""
    from pycocotools import mask as coco

    frames = len(data["images"])
    height, width = data["images"][0]["height"], data["images"][0]["width"]
    out: dict[int, np.ndarray] = {}
    for annotation in data["annotations"]:
        plane = out.setdefault(annotation["object_id"], np.zeros((frames, height, width), bool))
        rle = {"size": annotation["segmentation"]["size"], "counts": annotation["segmentation"]["counts"].encode()}
        plane[annotation["image_id"]] = coco.decode(rle).astype(bool)
    return out


def write_coco_rle(masks: np.ndarray, object_ids: list[int], expression: str, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(coco_rle(masks, object_ids, expression)))
    return path
