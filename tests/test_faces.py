"""Face detection, alignment and identity on a real portrait (skimage's public-domain astronaut photo)."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.transform import SimilarityTransform

from pipelines.core.errors import InputError, WeightsError
from pipelines.identity import faces as faces_module
from pipelines.identity.faces import (
    ARCFACE_TEMPLATE_112,
    MAX_PHOTO_PIXELS,
    FaceAnalyzer,
    alignment_matrix,
    face_distance,
    face_similarity,
    identity_warnings,
    load_photo,
)

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def face(analyzer, astronaut):
    face, notes = analyzer.photo_face(astronaut, 1)
    assert notes == []
    return face


def shrink(image: np.ndarray, factor: float) -> np.ndarray:
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def test_the_astronaut_face_is_found_with_a_box_around_it(analyzer, astronaut, face):
    assert len(analyzer.faces(astronaut)) == 1
    x1, y1, x2, y2 = face.box
    assert 165 < x1 < 190 and 65 < y1 < 90 and 80 < x2 - x1 < 110 and 80 < y2 - y1 < 110
    assert face.score > faces_module.HOG_MIN_SCORE
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    assert x1 < left_eye[0] < nose[0] < right_eye[0] < x2 and mouth_left[0] < mouth_right[0]
    assert y1 < left_eye[1] < nose[1] < mouth_left[1] < y2


def test_hog_false_positives_on_the_suit_are_not_faces(analyzer, astronaut):
    tilted = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((220, 120), 10, 1), (512, 512))
    rects, scores, _ = faces_module._models().detector.run(cv2.resize(tilted, (1024, 1024)), 0, 0.2)
    assert len(rects) >= 2 and sorted(scores)[-2] > 0.3   # HOG alone: the face and a confident patch of suit
    found = analyzer.faces(tilted)
    assert len(found) == 1 and 150 < found[0].box[0] < 200 and found[0].box[1] < 120


def test_alignment_puts_the_eyes_on_the_arcface_template(face):
    matrix = alignment_matrix(face.landmarks)
    placed = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    eye_errors = np.linalg.norm(placed[:2] - ARCFACE_TEMPLATE_112[:2], axis=1)
    # Measured 3.5 and 3.2 px: her broad smile puts the mouth corners 7 px wider than the template's, and the
    # five-point least squares shares that error out. A neutral dlib mean face fits to within 0.6 px.
    assert (eye_errors <= 4.0).all(), eye_errors
    reference = SimilarityTransform.from_estimate(face.landmarks, ARCFACE_TEMPLATE_112)   # insightface norm_crop
    np.testing.assert_allclose(matrix, reference.params[:2], atol=1e-3)


def test_alignment_recovers_a_known_similarity_exactly():
    angle, scale, shift = np.deg2rad(17), 2.5, np.array([300.0, 120.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = ARCFACE_TEMPLATE_112 @ rotation.T + shift
    matrix = alignment_matrix(landmarks)
    np.testing.assert_allclose(landmarks @ matrix[:, :2].T + matrix[:, 2], ARCFACE_TEMPLATE_112, atol=1e-3)


def test_the_crop_is_the_aligned_face_for_the_image_encoder(analyzer, astronaut, face):
    assert face.crop.shape == (224, 224, 3) and face.crop.dtype == np.uint8
    mirrored = analyzer.faces(np.fliplr(astronaut))[0]
    # The template is near-symmetric, so the mirror photo's crop is the crop mirrored (a misplaced crop is not).
    assert np.abs(face.crop.astype(int) - mirrored.crop[:, ::-1]).mean() < 12
    assert np.abs(face.crop.astype(int) - face.crop.mean()).mean() > 40


def test_the_crop_is_insightface_norm_crop_then_a_bicubic_resize(astronaut):
    """ID-Animator's preprocessing computed independently: skimage's similarity estimate (what insightface's
    estimate_norm uses), a bilinear warp to 112 px with black outside the photo (norm_crop's borderValue=0.0),
    then PIL's bicubic resize to 224 (its app's `load_image(crop).resize((224, 224))`). A face at the photo's
    corner, so the crop reaches past the edges."""
    photo = np.ascontiguousarray(astronaut[:300, :300])
    landmarks = ARCFACE_TEMPLATE_112 * 0.6 + np.float32([-10, -15])       # a small face, half outside the photo
    matrix = SimilarityTransform.from_estimate(landmarks, ARCFACE_TEMPLATE_112).params[:2]
    reference = cv2.warpAffine(photo, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0.0)
    reference = np.asarray(Image.fromarray(reference).resize((224, 224), Image.Resampling.BICUBIC))
    crop = faces_module.aligned_crop(photo, landmarks)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert np.abs(crop.astype(int) - reference).max() <= 1                # least squares vs Umeyama: same fit
    assert (crop[:40, :40] == 0).all()                                     # outside the photo: black, not smeared
    assert crop[150:, 150:].mean() > 20                                     # inside: the photo


def test_the_photo_matches_itself_and_its_mirror_and_a_recrop(analyzer, astronaut, face):
    again = analyzer.faces(astronaut.copy())[0].embedding
    assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
    assert face_distance(face.embedding, again) < 1e-4 and face_similarity(face.embedding, again) > 0.99
    mirrored = analyzer.faces(np.fliplr(astronaut))[0].embedding
    x1, y1, x2, y2 = face.box
    recropped = shrink(astronaut[y1 - 70:y2 + 120, x1 - 90:x2 + 90], 0.8)
    recrop = analyzer.faces(recropped)[0].embedding
    assert 0.05 < face_distance(face.embedding, mirrored) < 0.35      # measured 0.23
    assert 0.01 < face_distance(face.embedding, recrop) < 0.3         # measured 0.10
    assert identity_warnings([face.embedding, mirrored, recrop]) == []


def test_similarity_is_one_minus_distance_floored_at_zero():
    a = np.zeros(128, np.float32)
    assert face_similarity(a, a + np.eye(128, dtype=np.float32)[0] * 0.25) == pytest.approx(0.75)
    assert face_similarity(a, a + np.eye(128, dtype=np.float32)[0] * 1.4) == 0.0


def test_identity_warnings_name_each_pair_of_different_looking_photos():
    base, u, v = np.eye(128, dtype=np.float32)[:3] * [[0.5], [1.0], [1.0]]
    embeddings = [base, base + 0.3 * u, base + 0.74 * v]   # 1–2: 0.30, 1–3: 0.74, 2–3: 0.80
    assert identity_warnings(embeddings) == [
        "Photos 1 and 3 may show different people (face distance 0.74; the same person is usually under 0.6)",
        "Photos 2 and 3 may show different people (face distance 0.80; the same person is usually under 0.6)",
    ]
    assert identity_warnings([base, base + 0.59 * u]) == [] and identity_warnings([base]) == []


@pytest.mark.parametrize("image", [np.full((300, 400, 3), 128, np.uint8), data.coffee()], ids=["gray", "coffee"])
def test_a_photo_without_a_face_is_refused(analyzer, image):
    with pytest.raises(InputError) as refused:
        analyzer.photo_face(image, 2)
    assert str(refused.value) == "No face found in photo 2 — use a photo where the face is clearly visible"
    assert analyzer.frame_embedding(image) is None


def test_a_face_too_small_is_refused_but_still_measured_in_frames(analyzer, astronaut):
    tiny = shrink(astronaut, 96 / 512)
    width = analyzer.faces(tiny)[0].width
    assert 10 < width < 25   # found (17 px): the message can say "too small", not "no face"
    with pytest.raises(InputError) as refused:
        analyzer.photo_face(tiny, 2)
    assert str(refused.value) == (f"The face in photo 2 is only {width} px wide — use a photo where the face is "
                                  "at least 64 px wide")
    assert analyzer.frame_embedding(tiny).shape == (128,)


def test_of_two_faces_the_largest_is_used_with_a_note(analyzer, astronaut, face):
    group = np.zeros((512, 768, 3), np.uint8)
    group[:, 256:] = astronaut
    group[:256, :256] = shrink(astronaut, 0.5)
    chosen, notes = analyzer.photo_face(group, 3)
    assert notes == ["Photo 3 shows 2 faces; using the largest"]
    assert chosen.box[0] > 256 and chosen.width > 80
    assert face_distance(chosen.embedding, face.embedding) < 0.1
    assert np.array_equal(analyzer.frame_embedding(group), chosen.embedding)


def test_models_load_lazily_and_calls_from_threads_agree(analyzer, astronaut, face):
    code = "import sys, pipelines.identity.faces as f; assert f._MODELS is None and 'dlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(analyzer.frame_embedding, [astronaut] * 4))
    assert all(np.array_equal(result, face.embedding) for result in results)
    assert face_distance(analyzer.frame_embedding(astronaut / 255.0), face.embedding) < 0.01   # float frames


def test_missing_model_files_say_what_to_install(monkeypatch):
    monkeypatch.setattr(faces_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="shape_predictor_68_face_landmarks.dat.*pip install face-recognition-m"):
        faces_module._model_folder()


def test_a_file_that_is_not_an_image_is_refused(tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("these are my notes, not a photo")
    with pytest.raises(InputError, match=r"^Photo 2 is not an image we can read \(.+\)\.$"):
        load_photo(notes, 2)
    with pytest.raises(InputError, match=r"^Photo 1 is not an image we can read \(.+\)\.$"):
        load_photo(tmp_path / "missing.jpg", 1)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width×height but holds no pixels: decoding it would fail, reading its header does not."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def test_a_photo_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    with pytest.raises(InputError) as refused:
        load_photo(png_header_only(tmp_path / "huge.png", 8000, 6000), 2)
    assert str(refused.value) == "Photo 2 is 8000×6000 (48 megapixels): use a photo under 40 megapixels."
    with pytest.raises(InputError, match="^Photo 1 is too large to open safely: use a photo under 40 megapixels.$"):
        load_photo(png_header_only(tmp_path / "bomb.png", 20000, 20000), 1)   # PIL's own bomb check fires
    assert MAX_PHOTO_PIXELS == 40_000_000


def test_photos_become_upright_rgb(tmp_path, astronaut):
    gray = Image.fromarray(astronaut).convert("L")
    gray.save(tmp_path / "gray.png")
    loaded = load_photo(tmp_path / "gray.png", 1)
    assert loaded.shape == (512, 512, 3) and loaded.dtype == np.uint8
    assert np.array_equal(loaded[..., 0], np.asarray(gray)) and np.array_equal(loaded[..., 0], loaded[..., 2])

    rgba = np.dstack([astronaut, np.full((512, 512), 255, np.uint8)])
    rgba[:10, :10, 3] = 0   # a transparent corner becomes white, not black
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    loaded = load_photo(tmp_path / "rgba.png", 1)
    assert loaded.shape == (512, 512, 3) and (loaded[:10, :10] == 255).all()
    assert np.array_equal(loaded[10:, 10:], astronaut[10:, 10:])

    exif = Image.Exif()
    exif[0x0112] = 6   # "rotate 90° clockwise to display"
    Image.fromarray(astronaut[:, :400]).save(tmp_path / "phone.jpg", exif=exif)
    assert load_photo(tmp_path / "phone.jpg", 1).shape == (400, 512, 3)

    assert load_photo(np.asarray(gray), 1).shape == (512, 512, 3)
    assert load_photo(Image.fromarray(astronaut), 1).shape == (512, 512, 3)
