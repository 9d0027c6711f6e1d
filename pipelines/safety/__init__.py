"""Safe generation: SAFREE (ICLR 2025), a training-free guard over the SD1.x text path that every generating tab runs
through (`guard.py`: open it first), and the output check, an offline NSFW classifier over every generated frame and
reference photo (`output_check.py`). It uses `core` only, so the generating methods can import it."""
