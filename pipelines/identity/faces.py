"""Faces in reference photos and generated frames: detection, ArcFace alignment, an identity embedding.

Everything runs offline on the CPU with dlib and the models shipped by `face_recognition_models`: the HOG
detector proposes faces, the MMOD CNN detector confirms them, the 68-point shape predictor places landmarks
and the ResNet gives a 128-d face descriptor. The aligned crop follows ID-Animator (insightface `norm_crop` to
112×112 on the ArcFace 5-point template, then resize to 224) without its faults: no face, a face too small and
several faces each give a message, not a crash or an arbitrary pick.
"""

from __future__ import annotations

import importlib.util
import itertools
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
from PIL import Image, ImageOps

from pipelines.core.errors import InputError, WeightsError

MAX_PHOTO_PIXELS = 40_000_000   # decompression bombs refused
MIN_FACE_PX = 64                # smaller faces are refused with a message
SAME_PERSON_DISTANCE = 0.6      # dlib's own threshold on the descriptor's L2 distance

# Detection is two dlib models. HOG proposes: fast, but it scores suit folds and fabric as faces. Measured on
# skimage's astronaut (108 variants: 32–182 px faces, roll ±20°, mirrored) and 19 faceless skimage photos (171
# variants), false proposals scored up to 0.65 and real faces down to −0.09: no HOG threshold separates them.
# So every proposal over HOG_MIN_SCORE (all 108 faces) is confirmed by the MMOD CNN on a small patch (~65 ms):
# it confirmed all 108 faces (confidence ≥ 1.04) and none of the 162 false proposals (only the cameraman's
# half-hidden face in skimage's `camera`, which is a face).
HOG_MIN_SCORE = -0.2
CNN_FACE_PX, CNN_PATCH_PX = 90, 144   # the candidate face's size in the CNN's patch (its window is 80 px)
# HOG's window is 80 px: photos are resampled so the long side is 1024–2048 px, which finds faces down to
# ~17 px in a 96 px photo (so "too small" can be said) and bounds the time on large photos.
DETECT_SIDE = (1024, 2048)

ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)   # left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right, 112×112 crop)
CROP_SIZE = 224


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]   # x1, y1, x2, y2 in the photo
    score: float                     # HOG detector score (the CNN only confirms)
    landmarks: np.ndarray            # (5, 2) float32, ArcFace order, photo coordinates
    crop: np.ndarray                 # (224, 224, 3) uint8 RGB aligned crop
    embedding: np.ndarray            # (128,) float32

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]


def load_photo(path_or_array, number: int) -> np.ndarray:
    """A reference photo as RGB uint8 (H, W, 3), upright as the camera meant it. `number` is 1-based.

    The size is read from the header and refused before any pixel is decoded, so a small file that
    inflates to gigabytes never reaches memory.
    """
    if isinstance(path_or_array, np.ndarray):   # already decoded: only the size rule applies
        image = _rgb(path_or_array)
        _check_size(image.shape[1], image.shape[0], number)
        return image
    try:
        if isinstance(path_or_array, Image.Image):
            return _decode(path_or_array, number)
        with Image.open(path_or_array) as image:
            return _decode(image, number)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"Photo {number} is too large to open safely: use a photo under "
                         f"{MAX_PHOTO_PIXELS / 1e6:.0f} megapixels.") from None
    except Exception as error:   # PIL raises many kinds for broken or foreign files
        raise InputError(f"Photo {number} is not an image we can read ({error}).") from None


def _check_size(width: int, height: int, number: int) -> None:
    if width * height > MAX_PHOTO_PIXELS:
        raise InputError(f"Photo {number} is {width}×{height} ({width * height / 1e6:.0f} megapixels): use a photo "
                         f"under {MAX_PHOTO_PIXELS / 1e6:.0f} megapixels.")


def _decode(image: Image.Image, number: int) -> np.ndarray:
    """Size check on the header, then decode, EXIF rotation and RGB (transparent areas become white)."""
    _check_size(*image.size, number)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return np.asarray(image.convert("RGB"))


class FaceAnalyzer:
    """Faces in RGB uint8 images. The dlib models are loaded on first use and shared by every analyzer."""

    def faces(self, image: np.ndarray) -> list[Face]:
        """Every face (HOG proposals the CNN confirms), largest first: the largest is the one a person means."""
        image = _rgb(image)
        with _LOCK:   # dlib's models keep scratch buffers: one call at a time
            models = _models()
            return [_describe(models, image, box, score) for box, score in _detect(models, image)]

    def photo_face(self, image: np.ndarray, number: int) -> tuple[Face, list[str]]:
        """The face to use from reference photo `number`, and notes for the person (several faces)."""
        found = self.faces(image)
        if not found:
            raise InputError(f"No face found in photo {number} — use a photo where the face is clearly visible")
        face = found[0]
        if face.width < MIN_FACE_PX:
            raise InputError(f"The face in photo {number} is only {face.width} px wide — use a photo where the "
                             f"face is at least {MIN_FACE_PX} px wide")
        notes = [f"Photo {number} shows {len(found)} faces; using the largest"] if len(found) > 1 else []
        return face, notes

    def frame_embedding(self, frame: np.ndarray) -> np.ndarray | None:
        """The largest face's embedding in a generated frame, or None when no face is found (any size)."""
        frame = _rgb(frame)
        with _LOCK:
            models = _models()
            boxes = _detect(models, frame)
            return _describe(models, frame, *boxes[0]).embedding if boxes else None


def face_distance(a: np.ndarray, b: np.ndarray) -> float:
    """L2 distance between dlib descriptors: same person usually < 0.6 (≈ 0.2–0.4), different ≈ 0.7–0.9."""
    return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


def face_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """max(0, 1 − L2): same person ≈ 0.8, different ≈ 0.2–0.3; the 0.6 L2 threshold is similarity 0.4.

    Not on the ArcFace cosine scale papers report (FaceSim-Arc 0.3–0.6): compare runs with each other only.
    """
    return max(0.0, 1.0 - face_distance(a, b))


def identity_warnings(embeddings: list[np.ndarray]) -> list[str]:
    """One warning per pair of reference photos that look like different people (numbers are 1-based)."""
    warnings = []
    for (i, a), (j, b) in itertools.combinations(enumerate(embeddings, start=1), 2):
        distance = face_distance(a, b)
        if distance > SAME_PERSON_DISTANCE:
            warnings.append(f"Photos {i} and {j} may show different people (face distance {distance:.2f}; "
                            f"the same person is usually under {SAME_PERSON_DISTANCE:g})")
    return warnings


def alignment_matrix(landmarks: np.ndarray) -> np.ndarray:
    """(2, 3) similarity transform taking the 5 landmarks onto the 112×112 ArcFace template.

    Least squares over all five points, as insightface's norm_crop (skimage SimilarityTransform) computes it:
    x' = a·x − b·y + tx, y' = b·x + a·y + ty.
    """
    x, y = np.asarray(landmarks, np.float64).T
    one, zero = np.ones_like(x), np.zeros_like(x)
    rows = np.concatenate([np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)])
    target = np.concatenate([ARCFACE_TEMPLATE_112[:, 0], ARCFACE_TEMPLATE_112[:, 1]])
    a, b, tx, ty = np.linalg.lstsq(rows, target, rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def aligned_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """ID-Animator's encoder input: insightface's norm_crop to 112×112 (bilinear warp, black outside the photo),
    then PIL's bicubic resize to 224×224, as its app does (`load_image(crop).resize((224, 224))`). Its JPEG
    round trip between the two (it saves the crop to disk first) is not copied: that only adds artefacts."""
    crop = cv2.warpAffine(image, alignment_matrix(landmarks), (112, 112), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.asarray(Image.fromarray(crop).resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BICUBIC))


def _rgb(image: np.ndarray) -> np.ndarray:
    """Grey, RGBA and float [0, 1] arrays as contiguous RGB uint8, the only layout dlib accepts."""
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.floating):
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image.dtype != np.uint8:
        raise InputError(f"Expected 8-bit or float [0, 1] pixels, got {image.dtype}.")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise InputError(f"Expected an RGB image, got an array of shape {image.shape}.")
    image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    return np.ascontiguousarray(image)


def _detect(models, image: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
    """Confirmed faces as (box in photo pixels, HOG score), largest first."""
    height, width = image.shape[:2]
    long_side = max(height, width)
    scale = min(max(long_side, DETECT_SIDE[0]), DETECT_SIDE[1]) / long_side
    work = image if scale == 1 else cv2.resize(
        image, (round(width * scale), round(height * scale)),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    rects, scores, _ = models.detector.run(work, 0, HOG_MIN_SCORE)
    found = []
    for rect, score in zip(rects, scores):
        box = (max(0, round(rect.left() / scale)), max(0, round(rect.top() / scale)),
               min(width, round(rect.right() / scale)), min(height, round(rect.bottom() / scale)))
        if box[2] > box[0] and box[3] > box[1] and _confirmed(models, work, rect):
            found.append((box, float(score)))
    return sorted(found, key=lambda item: (-(item[0][2] - item[0][0]) * (item[0][3] - item[0][1]), -item[1]))


def _confirmed(models, work: np.ndarray, rect) -> bool:
    """Whether the CNN finds a face where HOG proposed one, in a patch with that face CNN_FACE_PX wide."""
    zoom, centre = CNN_FACE_PX / max(rect.width(), 1), rect.dcenter()
    shift = CNN_PATCH_PX / 2 - zoom * np.array([centre.x, centre.y])
    patch = cv2.warpAffine(work, np.float32([[zoom, 0, shift[0]], [0, zoom, shift[1]]]), (CNN_PATCH_PX,) * 2)
    middles = [found.rect.dcenter() for found in models.cnn(patch, 0)]
    return any(max(abs(m.x - CNN_PATCH_PX / 2), abs(m.y - CNN_PATCH_PX / 2)) < CNN_FACE_PX / 3 for m in middles)


def _describe(models, image: np.ndarray, box: tuple[int, int, int, int], score: float) -> Face:
    """Landmarks, aligned crop and descriptor for one detected box, all on the full-resolution photo."""
    import dlib

    shape = models.predictor(image, dlib.rectangle(*box))
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    landmarks = np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])
    embedding = np.asarray(models.encoder.compute_face_descriptor(image, shape), dtype=np.float32)
    return Face(box, score, landmarks, aligned_crop(image, landmarks), embedding)


_LOCK = threading.RLock()
_MODELS: SimpleNamespace | None = None


def _models() -> SimpleNamespace:
    """dlib's two detectors, 68-point predictor and descriptor network, loaded once (call with _LOCK held)."""
    global _MODELS
    if _MODELS is None:
        try:
            import dlib
        except ImportError as error:
            raise WeightsError(f"Face analysis needs dlib (pip install dlib-bin): {error}") from None
        folder = _model_folder()
        _MODELS = SimpleNamespace(
            detector=dlib.get_frontal_face_detector(),
            cnn=dlib.cnn_face_detection_model_v1(str(folder / "mmod_human_face_detector.dat")),
            predictor=dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat")),
            encoder=dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat")),
        )
    return _MODELS


def _model_folder() -> Path:
    """The .dat files of face_recognition_models, found without importing it (it imports pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    folder = Path(spec.origin).parent / "models" if spec and spec.origin else None
    needed = ("mmod_human_face_detector.dat", "shape_predictor_68_face_landmarks.dat",
              "dlib_face_recognition_resnet_model_v1.dat")
    missing = [name for name in needed if folder is None or not (folder / name).is_file()]
    if missing:
        raise WeightsError(f"Face analysis needs {', '.join(missing)} from the face-recognition-models package "
                           f"(pip install face-recognition-models); looked in {folder or 'no installed package'}.")
    return folder
