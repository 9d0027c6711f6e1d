"""The studio's models and maths, without any UI: one package per method, on two shared layers.

    core/          the model cache, hub files, video I/O, errors, request checks, the time estimator
    sd15/          what the SD1.5 tabs share: base loaders, LoRA maths, single-file key accounting, sampling, modes
    timelapse/     MagicTime (time-lapse)            identity/      ID-Animator (identity video)
    safety/        SAFREE (the guard) and the output check
    segmentation/  referring video segmentation (Grounding DINO + SAM 2, and VD-IT in vdit/)

Imports run one way (tests/test_layers.py checks it): `core` uses nothing above it; `sd15` uses `core`; a method uses
`core` and `sd15`, and the generating methods use `safety`, which guards them; no method imports another otherwise.
Nothing here imports Gradio or `studio`.
"""
