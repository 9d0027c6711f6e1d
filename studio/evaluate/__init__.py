"""Offline evaluations of the studio's methods against their papers' protocols, one module per evaluation:

- `safety.py`: SAFREE's attack success rate (ASR) on a prompt set, guarded against unguarded;
- `segmentation.py`: DAVIS's J&F of referring-segmentation masks, or of the segmenter on a dataset folder;
- room for the identity and time-lapse evaluations to come, each a module with `add_parser` and `run_evaluation`.

Run them as `python -m studio.evaluate <what>`; the subcommands are wired in `cli.py`. Open `safety.py` first.
"""
