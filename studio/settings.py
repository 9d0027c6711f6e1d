"""Every knob of the studio, read once from the environment (the CLI sets the same variables)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.sd15.knobs import COMPILE_MODES, DTYPES, PROFILES, Knobs

DEFAULT_OUTPUT_DIR = Path(tempfile.gettempdir()) / "video-studio"
SAFETY_MODES = ("on", "enforced")
DEFAULT_CALIBRATION = Path.home() / ".cache" / "video-studio" / "calibration.json"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default).strip()


def _gib(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(float(value) * 2**30) if value else None


def _on_zerogpu() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


@dataclass(frozen=True)
class Settings:
    profile: str = "real"
    device: str = "cpu"
    dtype: str = "float32"
    resolution: int = 512                 # the profile's default; tiny uses 64
    device_budget: int | None = None      # bytes of weights allowed on the device (None: total - reserve)
    ram_budget: int | None = None         # bytes of weights allowed in RAM (None: no limit)
    preload: bool = False                 # load weights at start-up (ZeroGPU wants them on cuda then)
    output_dir: Path = field(default_factory=lambda: DEFAULT_OUTPUT_DIR)
    output_ttl_s: int = 3600              # generated files older than this are deleted
    host: str = "127.0.0.1"
    port: int = 7860
    safety: str = "on"                    # "on": guarded by default, a call may switch it off; "enforced": never off
    # One GPU serves everyone: calls wait in one queue. A bounded queue answers "busy" at once instead of making
    # the 40th visitor wait half an hour; 16 waiting calls of ~30 s each is about the longest wait worth keeping.
    queue_size: int = 16
    max_upload_mb: int = 200              # a 60 s 1080p clip at a generous bitrate is ~100 MB; photos far less
    # This machine's measured speed (pipelines/core/estimate.py), kept across restarts; not in output_dir (cleaned hourly).
    calibration_path: Path = field(default_factory=lambda: DEFAULT_CALIBRATION)
    knobs: Knobs = field(default_factory=Knobs)   # channels-last, torch.compile, VAE tiling (pipelines/sd15/knobs.py)
    vae_dtype: str | None = None          # the VAEs' own dtype (None: `dtype`)
    # Hugging Face Spaces ZeroGPU (SPACES_ZERO_GPU): every GPU call runs in a forked worker that keeps nothing it
    # loads, so everything a visible choice can reach is preloaded, and each call reserves GPU time (studio/engine.py).
    zerogpu: bool = False
    vdit: bool = True                     # the VD-IT backend is offered (on ZeroGPU only with STUDIO_VDIT=1: ~10 GB)
    working_memory: int = 8 * 2**30       # bytes of the device kept free for activations (the budget's reserve)
    # The longest GPU reservation a call may ask for on ZeroGPU, in seconds of `duration`: an anonymous visitor's
    # whole daily quota is 120 s, and ZeroGPU schedules `duration` x 1.5 on its default half RTX Pro 6000 (the
    # `duration_factor` of spaces' configs.json), so 80 s is the most such a visitor can be granted.
    gpu_max_s: int = 80
    mcp: bool = True                      # also serve every tab as an MCP tool at /gradio_api/mcp/ (STUDIO_MCP=0: off)

    @classmethod
    def from_env(cls) -> Settings:
        profile = _env("STUDIO_PROFILE", "real")
        if profile not in PROFILES:
            raise SystemExit(f"STUDIO_PROFILE must be one of {', '.join(PROFILES)}, not {profile!r}")
        device = _env("STUDIO_DEVICE", "") or _default_device()
        # On a GPU, float16 for every tab. The originals differ: ID-Animator's inference script runs fp16,
        # MagicTime's release runs fp32. fp16 halves the weights (both tabs' motion UNets then fit next to each
        # other) and runs about twice as fast on tensor cores; SD1.5-family UNets and VAEs are routinely run
        # in fp16. STUDIO_DTYPE=float32 gives MagicTime's own precision. On CPU float32 (CPU fp16 kernels are
        # slow or missing).
        # On a CPU with bf16 instructions (AMX / AVX-512 BF16), bfloat16 for the real profile: a full-size UNet step
        # and the Lightning clip ran 2.05x faster (bench/gpu.py --knobs, 128 px), an epsilon prediction moved by 1.4 %
        # (what fp16 costs on a GPU). The VAE stays float32 there: in bf16 it shifted a decoded gradient by up to 11
        # grey levels (10.7 % of pixels by more than 2: banding), and decoding is a few percent of a run. The tiny
        # profile stays float32 (its outputs are compared exactly).
        dtype = _env("STUDIO_DTYPE", "") or (
            "float16" if device.startswith("cuda") else
            "bfloat16" if profile == "real" and _cpu_has_bf16() else "float32")
        if dtype not in DTYPES:
            raise SystemExit(f"STUDIO_DTYPE must be one of {', '.join(DTYPES)}, not {dtype!r}")
        vae_dtype = _env("STUDIO_VAE_DTYPE", "") or (
            "float32" if dtype == "bfloat16" and not device.startswith("cuda") else dtype)
        if vae_dtype not in DTYPES:
            raise SystemExit(f"STUDIO_VAE_DTYPE must be one of {', '.join(DTYPES)}, not {vae_dtype!r}")
        resolution = int(_env("STUDIO_RESOLUTION", "64" if profile == "tiny" else "512"))
        safety = _env("STUDIO_SAFETY", "on")
        if safety not in SAFETY_MODES:
            raise SystemExit(f"STUDIO_SAFETY must be one of {', '.join(SAFETY_MODES)}, not {safety!r}")
        compile_mode = _env("STUDIO_COMPILE", "off")
        if compile_mode not in COMPILE_MODES:
            raise SystemExit(f"STUDIO_COMPILE must be one of {', '.join(COMPILE_MODES)}, not {compile_mode!r}")
        if compile_mode == "torch" and _on_zerogpu():
            # ZeroGPU hands each call a GPU in a fresh worker: a just-in-time compile would be paid on every call.
            raise SystemExit("STUDIO_COMPILE=torch does not pay off on ZeroGPU (each call runs in a fresh worker "
                             "that would compile again); leave it off there.")
        knobs = Knobs(
            channels_last=_env("STUDIO_CHANNELS_LAST", "1" if device.startswith("cuda") else "0") == "1",
            compile=compile_mode, vae_tiling=_env("STUDIO_VAE_TILING", "0") == "1",
        )
        zerogpu = _on_zerogpu()
        working_memory = int(float(_env("STUDIO_WORKING_MEMORY_GB", "8")) * 2**30)
        device_budget = _gib("STUDIO_DEVICE_BUDGET_GB")
        if device_budget is None and device.startswith("cuda") and not zerogpu:
            # On ZeroGPU the main process sees an emulated GPU whose size is not the one calls get: the budget is
            # taken inside the GPU worker, from the real device (Engine.size_for_device).
            device_budget = _cuda_total() - working_memory
        return cls(
            profile=profile,
            device=device,
            dtype=dtype,
            resolution=resolution,
            device_budget=device_budget,
            ram_budget=_gib("STUDIO_RAM_BUDGET_GB"),
            preload=_env("STUDIO_PRELOAD", "1" if _on_zerogpu() else "0") == "1",
            output_dir=Path(_env("STUDIO_OUTPUT_DIR", str(DEFAULT_OUTPUT_DIR))),
            host=_env("STUDIO_HOST", _env("GRADIO_SERVER_NAME", "127.0.0.1")),
            port=int(_env("STUDIO_PORT", _env("GRADIO_SERVER_PORT", "7860"))),
            safety=safety,
            queue_size=int(_env("STUDIO_QUEUE_SIZE", "16")),
            max_upload_mb=int(_env("STUDIO_MAX_UPLOAD_MB", "200")),
            calibration_path=Path(_env("STUDIO_CALIBRATION", str(DEFAULT_CALIBRATION))),
            knobs=knobs,
            vae_dtype=vae_dtype,
            zerogpu=zerogpu,
            vdit=_env("STUDIO_VDIT", "0" if zerogpu else "1") == "1",
            working_memory=working_memory,
            gpu_max_s=int(_env("STUDIO_GPU_MAX_S", "80")),
            mcp=_env("STUDIO_MCP", "1") == "1",
        )


def _cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() or _on_zerogpu() else "cpu"


def _cuda_total() -> int:
    import torch

    return torch.cuda.get_device_properties(0).total_memory
