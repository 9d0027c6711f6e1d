"""Video Studio: `python app.py` serves on http://127.0.0.1:7860 (Spaces' app_file)."""

import spaces  # noqa: F401  (ZeroGPU: must be imported before anything initialises CUDA)

from studio.__main__ import serve

if __name__ == "__main__":
    serve()
