"""The SD1.5 family, shared by the time-lapse and identity tabs (and the Safe tab through the time-lapse).

`models.py` first: the `Registry` (profile, dtypes, knobs) and the components both tabs share (tokenizer, the style
checkpoints' CLIP text encoder, VAE and 2-D UNet, TAESD). Beside it: `single_file.py` (every key of a single-file
checkpoint accounted for), `lora.py` (LoRA maths and merging), `motion_norm.py` (motion modules normalising per frame),
`sampling.py` (the AnimateDiff plumbing: a pipeline per call, step reports, previews, decoding), `modes.py` (Quality
and Fast), `knobs.py` (dtypes and speed set-up) and `tiny.py` (the family's toy models)."""
