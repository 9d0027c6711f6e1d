"""VD-IT (ECCV 2024): referring segmentation read off a frozen text-to-video diffusion UNet (ModelScope). `model.py`
holds the trained parts and the maths around the frozen models (open it first); `convert.py` maps the authors'
checkpoint onto it; `tiny.py` builds the whole method at toy size."""
