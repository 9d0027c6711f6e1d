"""Offline evaluations of the studio's methods against their papers' protocols, one module per tab:

- `identity.py`: face similarity to the reference over a batch run (`--run DIR`), the studio's dlib measure;
- `timelapse.py`: CLIP score, metamorphic amplitude and temporal coherence over a batch run (`clip.py`);
- `safety.py`: SAFREE's attack success rate (ASR) on a prompt set, guarded against unguarded (`--prompts`), or over
  a batch run of the Safe tab with what the guard costs benign prompts (`--run`);
- `segmentation.py`: DAVIS's J&F of referring-segmentation masks, of the segmenter on a dataset folder, or of a
  batch run over one;
- `report.py`: reading a batch run (`python -m studio.batch`) and writing scores.csv, report.md and report.html.

Run them as `python -m studio.evaluate <what>`; the subcommands are wired in `cli.py`. Open `safety.py` first.
"""
