"""Checkpoint converters: foreign weight-file layouts -> the diffusers/transformers modules the studio runs.

`lora` holds the format-independent LoRA pieces; `magictime` the MagicTime/AnimateDiff/ms-swift layouts.
"""
