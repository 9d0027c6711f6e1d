"""Metamorphic time-lapse (MagicTime, TPAMI 2025): a prompt -> a clip of a metamorphosis, with keyframed stages for
longer clips (FreeNoise windows). Open `pipeline.py` first (the request, the checks, the sampling); `models.py` composes
MagicTime's adapters on the SD1.5 base; `convert.py` reads MagicTime's weight files; `tiny.py` makes toy ones."""
