"""Referring video segmentation: a video + "the dog on the left" -> a mask on every frame, explained. Open
`pipeline.py` first (ground on sampled frames, resolve the relation, track with SAM 2); `relations.py` reads "left",
"largest", "second from the right"; `models.py` holds the grounders, trackers and VD-IT's components, real and tiny;
`mask_export.py` the overlay and mask files; `metrics.py` DAVIS's J&F; `synthetic.py` clips with exact masks; `example_clip.py` the
tab's bundled example (two cats and a cup); `vdit/`
the diffusion-feature method (VD-IT, ECCV 2024)."""
