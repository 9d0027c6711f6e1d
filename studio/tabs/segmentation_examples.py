"""The Referring segmentation tab's bundled example: a clip of two cats and a cup (made from scikit-image's CC0
photos by `pipelines/segmentation/example_clip.py`) and the expressions to try on it, as rows for a gr.Examples
(inputs: the video, the expression). Layout-free: the tab places it."""

from __future__ import annotations

from pathlib import Path

from pipelines.segmentation.example_clip import EXPRESSIONS, FILE_NAME

EXAMPLE_CLIP = Path(__file__).parents[2] / "assets" / "examples" / FILE_NAME   # 24 frames, 320×240, 8 fps
EXAMPLES = [[str(EXAMPLE_CLIP), expression] for expression in EXPRESSIONS]
