"""Identity-preserving video (ID-Animator): 1-4 photos of one person + a prompt -> a clip of that person. Open
`pipeline.py` first; `faces.py` finds, aligns and checks the faces (dlib, offline); `models.py` composes the face
adapter on the shared SD1.5 base; `convert.py` maps `animator.ckpt` onto diffusers' IP-Adapter and PEFT LoRA;
`tiny.py` makes a toy `animator.ckpt`."""
