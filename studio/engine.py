"""What every tab's endpoints share: one model cache, the pipelines, one output folder, publishing a result,
stopping, errors turned into messages, and the ZeroGPU glue.

Each tab's endpoint functions (UI values -> request -> pipeline -> published result; their parameter names are
the API's) live in that tab's own module under studio/tabs/.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import queue
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from pipelines.core import estimate as estimates
from pipelines.core.cache import ModelCache
from pipelines.core.errors import Cancelled, InputError, StudioError
from pipelines.core.estimate import Estimator, prior_seconds, reservation
from pipelines.core.estimate import say as say_estimate
from pipelines.core.video import write_mp4
from pipelines.identity import pipeline as identity_pipeline
from pipelines.identity.faces import FaceAnalyzer
from pipelines.identity.models import LIGHTNING_STEPS, identity_models
from pipelines.identity.pipeline import IdentityPipeline
from pipelines.safety import output_check
from pipelines.safety.guard import DEFAULT_CATEGORIES, SafetyGuard, SafetyOptions
from pipelines.safety.output_check import FrameChecker
from pipelines.sd15.models import STYLES, Registry
from pipelines.sd15.modes import IDENTITY_MODES, TIMELAPSE_MODES
from pipelines.sd15.sampling import uses_cfg
from pipelines.segmentation.models import GROUNDERS, TRACKERS, SegmentationRegistry
from pipelines.segmentation.pipeline import SegmentationPipeline
from pipelines.timelapse import pipeline as timelapse_pipeline
from pipelines.timelapse.models import timelapse_models
from pipelines.timelapse.pipeline import DEFAULT_STYLE, TimelapsePipeline
from studio.memory import give_back_free_memory
from studio.settings import Settings

# Each generating method's work formula: frames through the UNet per denoising step (the time estimate multiplies it
# by this device's measured seconds per frame-pass; pipelines/core/estimate.py knows no method). The Safe generation
# tab runs the time-lapse pipeline.
FRAME_PASSES = {"timelapse": timelapse_pipeline.frame_passes, "identity": identity_pipeline.frame_passes}

try:  # ZeroGPU: attaches a GPU for the duration of a call; a no-op everywhere else.
    import spaces
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    spaces = None


def _reserve(engine: str, pipeline: str, job, report, options: dict | None = None) -> int:
    """run_on_gpu's and stream_on_gpu's `duration` for ZeroGPU (called with their arguments, in the main process):
    the seconds of GPU the call reserves, from this device's calibrated estimate (Engine.gpu_reservation)."""
    return _ENGINES[engine].gpu_reservation(pipeline, [job])


def _reserve_all(engine: str, pipeline: str, jobs, report) -> int:
    """run_all_on_gpu's `duration`: one reservation for every request of the call."""
    return _ENGINES[engine].gpu_reservation(pipeline, list(jobs))


STOPPED = "Stopped before the end; nothing was saved."
PROGRESS_EVERY_S = 0.25          # how often a previewing call's summary line says which step it is on
VDIT_OFF = "VD-IT is off on this server: its ~10 GB of weights are not preloaded (STUDIO_VDIT=1 enables it)."


def gpu(duration):
    """ZeroGPU's decorator (a no-op off Spaces), reserving `duration(*args)` seconds per call."""
    return lambda fn: spaces.GPU(duration=duration)(fn) if spaces is not None else fn


def _build_inputs(component) -> list:
    """Every component `component` is built from, however deep."""
    return [d for dep in component.deps for d in (dep, *_build_inputs(dep))]


class OutputDir:
    """Where generated files go before Gradio copies them to its own cache. Files older than `ttl_s`
    are deleted whenever a new one is made, so they do not pile up over a long-running Space."""

    def __init__(self, root: Path, ttl_s: int):
        self.root, self.ttl_s = Path(root), ttl_s

    def new(self, suffix: str, name: str = "") -> Path:
        """A fresh path for an output. `name`: what the download should be called ("dogs-the-dog-on-the-left-masks"),
        made file-safe and kept unique by a short suffix; without one, a random name."""
        self.root.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - self.ttl_s
        for old in self.root.iterdir():
            if old.is_file() and old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
                      .lower()).strip("-")[:60].rstrip("-")
        return self.root / (f"{slug}-{uuid.uuid4().hex[:6]}{suffix}" if slug else f"{uuid.uuid4().hex}{suffix}")


# ZeroGPU runs a @spaces.GPU function in a forked worker and sends it the arguments by pickling them,
# so a GPU function takes only picklable arguments: engines travel by name and are looked up here, in
# the worker's copy of this process (models are already on cuda there). Off Spaces `gpu` is a no-op.
_ENGINES: dict[str, Engine] = {}
_STOP_FLAGS: dict[str, threading.Event] = {}   # browser session -> "Stop was pressed" for its running call


@dataclass(frozen=True)
class Reporter:
    """Progress for one call (picklable): forwards to gr.Progress, raises Cancelled once Stop was pressed.
    In a ZeroGPU worker the flag is a copy and Stop cannot reach it; Gradio's cancel still ends the call."""

    progress: Any
    session: str | None = None

    def __call__(self, fraction: float, desc: str) -> None:
        flag = _STOP_FLAGS.get(self.session) if self.session else None
        if flag is not None and flag.is_set():
            raise Cancelled("Stopped.")
        self.progress(fraction, desc=desc)


def _run(engine: str, pipeline: str, job, report: Reporter, options: dict | None = None):
    """Out of memory: the cache frees every component this call is not using, and the call runs once more
    (another tab's UNet on the device is the usual cause, and a retry then fits). A second failure reaches
    the person as `user_errors`' message; either way the call's locks were released when it unwound."""
    _ENGINES[engine].size_for_device()
    run = _ENGINES[engine].pipelines[pipeline]
    try:
        return run(job, report, **(options or {}))
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        del error                                   # its traceback holds the failed call's tensors
    _ENGINES[engine].cache.free_memory()
    return run(job, report, **(options or {}))


@gpu(_reserve)
def run_on_gpu(engine: str, pipeline: str, job, report: Reporter, options: dict | None = None):
    """Run one of the engine's pipelines on a request: with its siblings below, the only functions that hold the
    GPU. Picklable arguments only (see above); `options` are the pipeline's keyword arguments besides the request."""
    return _run(engine, pipeline, job, report, options)


@gpu(_reserve_all)
def run_all_on_gpu(engine: str, pipeline: str, jobs, report: Reporter) -> list:
    """Several requests in one GPU call (the Safe tab's guarded and unguarded clip): one reservation and one worker
    start instead of two, and the second clip cannot lose its GPU to another visitor between the two."""
    return [_run(engine, pipeline, job, report) for job in jobs]


@gpu(_reserve)
def stream_on_gpu(engine: str, pipeline: str, job, report: Reporter, options: dict | None = None
                  ) -> Iterator[tuple[str, Any]]:
    """run_on_gpu for a call with a live preview: yields ("preview", (frames, steps done)) and ("progress", "Denoising
    step i/n") while the pipeline runs, then ("result", result); all picklable. The pipeline runs in a thread of this
    process (ZeroGPU's worker, on Spaces: spaces.GPU takes generators) and hands its previews over a queue; when the
    consumer goes away (Stop, a closed page) its next step raises Cancelled in that thread, which unwinds it and its
    locks before this returns."""
    for kind, value in _streamed(engine, pipeline, [job], report, options):
        yield (kind, value[:2] if kind == "preview" else value[0] if kind == "result" else value)


@gpu(_reserve_all)
def stream_all_on_gpu(engine: str, pipeline: str, jobs, report: Reporter) -> Iterator[tuple[str, Any]]:
    """run_all_on_gpu with a live preview (the Safe tab's two clips in one GPU call): as stream_on_gpu, but each
    preview says which request it shows, ("preview", (frames, steps done, index)), and the result is the list."""
    yield from _streamed(engine, pipeline, jobs, report, None)


def _streamed(engine: str, pipeline: str, jobs, report: Reporter, options: dict | None):
    """The requests one after the other in a thread, their previews, progress and results handed over a queue."""
    items: queue.Queue = queue.Queue()
    gone = threading.Event()

    def show(index, frames, done):
        if gone.is_set():
            raise Cancelled("Stopped.")
        items.put(("preview", (frames, done, index)))

    last = [0.0]

    def progress(fraction: float, desc: str) -> None:
        if gone.is_set():                   # every step: a consumer that left stops the call
            raise Cancelled("Stopped.")
        report(fraction, desc)
        # Once a preview is on screen Gradio stops drawing the progress bar over it: the consumer shows the step
        # in its summary instead, a few times a second at most.
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or fraction >= 1:
            last[0] = now
            items.put(("progress", desc))

    def work():
        try:
            items.put(("result", [_run(engine, pipeline, job, progress,
                                       {**(options or {}), "preview": functools.partial(show, index)})
                                  for index, job in enumerate(jobs)]))
        except BaseException as error:   # noqa: B036 - handed to the consumer, which raises it
            items.put(("error", error))

    thread = threading.Thread(target=work, name=f"{pipeline}-call", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "error":
                raise value
            yield kind, value
            if kind == "result":
                return
    finally:
        gone.set()
        thread.join()


def queue_wait_seconds() -> float | None:
    """How long the running Gradio event waited in the queue before a worker took it (None outside a queued
    event). Gradio keeps each event's enqueue time on its Event object but hands functions no public way to it:
    this reads it through the event id Gradio puts in its LocalContext. If a Gradio upgrade moves it, the breakdown
    just lacks the figure (the test of the timing keys would say so)."""
    try:
        from gradio.context import LocalContext

        event = LocalContext.blocks.get()._queue.event_ids_to_events.get(LocalContext.event_id.get())
        return round(max(0.0, time.monotonic() - event.enqueue_time), 3)
    except (AttributeError, LookupError):
        return None


def gpu_runs_ahead() -> int:
    """GPU calls queued or running now, from every tab and visitor (all share concurrency_id "gpu", one at a time):
    what a new run waits behind. Gradio keeps its queue per concurrency id but offers no public count; this reads
    it the way queue_wait_seconds reads the enqueue time, and a Gradio that moves it just makes the line say
    "Running" (0) instead of "Queued behind N"."""
    try:
        from gradio.context import LocalContext

        waiting = LocalContext.blocks.get()._queue.event_queue_per_concurrency_id.get("gpu")
        return 0 if waiting is None else len(waiting.queue) + waiting.current_concurrency
    except (AttributeError, LookupError, TypeError):
        return 0


def is_out_of_memory(error: BaseException) -> bool:
    """A GPU's OutOfMemoryError, or the CPU allocator's RuntimeError (torch has no type for that one)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def enforced_floor(options: SafetyOptions) -> None:
    """In enforced mode the guard may be made stricter (more concepts, a smaller α), never weaker: a call that
    drops a default category, raises α or projects in the order that leaves a toxic residue would count as guarded
    while guarding less. Refused, saying why. (β's tokens and the filter formula cannot shorten the guarded steps
    there: the plan keeps the default guard's t′ when it is later, SafetyGuard._with_default_concepts.)"""
    missing = [c for c in DEFAULT_CATEGORIES if c not in options.categories]
    if missing:
        raise InputError(f"This server enforces the safety guard (STUDIO_SAFETY=enforced): the concepts must include "
                         f"{', '.join(DEFAULT_CATEGORIES)} (missing: {', '.join(missing)}). Add concepts freely.")
    if options.alpha > SafetyOptions.alpha:
        raise InputError(f"This server enforces the safety guard (STUDIO_SAFETY=enforced): α may be at most "
                         f"{SafetyOptions.alpha} (the default; a larger margin flags fewer tokens), "
                         f"not {options.alpha}.")
    if options.projection != SafetyOptions.projection:
        raise InputError(f"This server enforces the safety guard (STUDIO_SAFETY=enforced): the projection is "
                         f"{SafetyOptions.projection!r}, which leaves nothing of a flagged token in the toxic span; "
                         f"{options.projection!r} leaves a residue there.")


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache = ModelCache(settings.device, settings.device_budget, settings.ram_budget)
        self.registry = Registry(settings.profile, settings.dtype, settings.knobs, settings.vae_dtype)
        self.outputs = OutputDir(settings.output_dir, settings.output_ttl_s)
        self.guard = SafetyGuard()                 # one concept-subspace cache for every tab
        self.checker = FrameChecker()
        # Every pipeline, by name: the GPU function finds them here (also in a ZeroGPU worker's copy).
        self.pipelines = {
            "timelapse": TimelapsePipeline(self.cache, self.registry, self.guard),
            "identity": IdentityPipeline(self.cache, self.registry, FaceAnalyzer(), self.guard),
            "segmentation": SegmentationPipeline(self.cache, SegmentationRegistry(settings.profile, settings.dtype)),
        }
        self.estimator = Estimator(settings.calibration_path)
        self.name = f"engine-{uuid.uuid4().hex[:8]}"
        self._sized_in: int | None = None          # the process whose real device sized the cache (ZeroGPU)
        _ENGINES[self.name] = self

    # ----------------------------------------------------------------- how long a run will take
    def _rates_key(self, tab: str, mode=None) -> str:
        s = self.settings
        decoder = "|taesd" if mode is not None and mode.tiny_decoder else ""
        return f"{s.profile}|{self.cache.device}|{s.dtype}|{s.resolution}|{tab}{decoder}"

    def estimate(self, tab: str, steps: int, frames: int, guidance: float, sliding: bool, runs: int = 1,
                 style: str = DEFAULT_STYLE, mode: str = "quality") -> tuple[float | None, str]:
        """(seconds or None, the line shown next to Generate) for a generating run of `tab` ("timelapse" or
        "identity"; the Safe generation tab runs the time-lapse pipeline `runs` times). The fast modes' UNets cost
        what the quality ones do per frame-pass (a merged LoRA, a motion module of the same size), so one set of
        rates serves every mode; the decode rate is the tiny decoder's own. On ZeroGPU the line also says the GPU
        time the call will reserve (or that it cannot fit one). Invalid settings (the UI can hold them for a moment)
        estimate nothing."""
        try:
            modes = TIMELAPSE_MODES if tab == "timelapse" else IDENTITY_MODES
            run_mode = modes[mode]
            passes = FRAME_PASSES[tab](int(frames), uses_cfg(float(guidance)), sliding)
            seconds = self.estimator.seconds(self._rates_key(tab, run_mode), int(steps), passes, int(frames))
            if tab == "timelapse":
                models = timelapse_models(self.registry, style, fast=run_mode.fast)
            else:
                models = identity_models(self.registry, int(steps) if run_mode.fast else None)
        except (TypeError, ValueError, KeyError):
            return None, ""
        seconds = None if seconds is None else seconds * runs
        line = say_estimate(seconds, str(self.cache.device), loading=models.unet not in self.cache,
                            fast_hint=not run_mode.fast)
        if self.settings.zerogpu:
            work = runs * self._generation_seconds(self._rates_key(tab, run_mode), int(steps), passes, int(frames))
            reserved, need = reservation(work, self.settings.gpu_max_s)
            joint = " It reserves" if seconds is None else " ·"     # after a sentence, or after "≈ 40 s on this GPU"
            line += (f"{joint} ≈ {reserved} s of GPU" if need <= self.settings.gpu_max_s else
                     f"{joint} needs ≈ {need} s of GPU, over the {self.settings.gpu_max_s} s a visitor can reserve "
                     f"here: {'try Fast mode or fewer frames' if not run_mode.fast else 'try fewer frames or steps'}")
        return seconds, line

    # ----------------------------------------------------------------- ZeroGPU: reservations and the real device
    def gpu_seconds(self, pipeline: str, job) -> float:
        """This device's estimate of `job`'s GPU work in seconds, loading apart: the rates its earlier runs measured
        (the same the estimate line uses), or before any, the FLOP-based prior (pipelines/core/estimate.py)."""
        if pipeline == "segmentation":
            return self._segmentation_seconds(job)
        run_mode = job.run_mode
        sliding = bool(getattr(job, "keyframes", None))
        passes = FRAME_PASSES[pipeline](job.num_frames, uses_cfg(job.guidance), sliding)
        if job.safety is not None and job.safety.reattention and uses_cfg(job.guidance):
            passes = passes * 3 // 2              # re-attention adds a third, unguarded branch to the batch
        return self._generation_seconds(self._rates_key(pipeline, run_mode), job.steps, passes, job.num_frames)

    def _generation_seconds(self, key: str, steps: int, passes: int, frames: int) -> float:
        """A generating run's seconds from the rates measured under `key`, or the FLOP-based prior before any."""
        seconds = self.estimator.seconds(key, steps, passes, frames)
        return seconds if seconds is not None else prior_seconds(steps, passes, frames, self.settings.resolution)

    @staticmethod
    def _grounded_frames(job) -> int:
        """Frames a segmentation grounds before tracking: its key frame only on a refinement, else the sample."""
        return 1 if job.key_frame is not None else min(job.ground_frames, len(job.frames))

    def _unit_key(self, unit: str) -> str:
        s = self.settings
        return f"{s.profile}|{self.cache.device}|{s.dtype}|segmentation|{unit}"

    def _segmentation_seconds(self, job) -> float:
        frames = len(job.frames)
        rate = lambda unit, prior: self.estimator.rate(self._unit_key(unit)) or prior  # noqa: E731
        if job.backend == "vdit":
            return frames * rate("vdit-frame", estimates.PRIOR_VDIT_FRAME_S)
        grounded = self._grounded_frames(job)
        passes = 1
        if job.reground_every:          # one more search over the clip, and a second tracking pass for a newcomer
            grounded += math.ceil(frames / job.reground_every)
            passes = 2
        return (grounded * rate("ground-frame", estimates.PRIOR_GROUND_FRAME_S)
                + passes * frames * rate("track-frame", estimates.PRIOR_TRACK_FRAME_S))

    def learn_segmentation(self, job, timings: dict) -> None:
        """A finished segmentation's timings refine its per-frame rates (the reservation's inputs)."""
        frames = len(job.frames)
        if job.backend == "vdit":
            self.estimator.record_rate(self._unit_key("vdit-frame"), frames, timings.get("vdit", 0.0))
            return
        self.estimator.record_rate(self._unit_key("ground-frame"), self._grounded_frames(job),
                                   timings.get("grounding", 0.0))
        if not job.reground_every:      # re-grounding mixes searching into propagation: not a clean figure
            self.estimator.record_rate(self._unit_key("track-frame"), frames, timings.get("propagation", 0.0))

    def gpu_reservation(self, pipeline: str, jobs: list) -> int:
        """The seconds of GPU a call running `jobs` reserves on ZeroGPU (`spaces.GPU(duration=...)`), computed the
        same way on every machine: ceil(margin x estimate + overhead) within floor and cap (pipelines/core/estimate.py).
        Off Spaces it is what the call would reserve there, reported in `info["gpu_reservation_s"]`."""
        return self._reservation(pipeline, jobs)[1]

    def _reservation(self, pipeline: str, jobs) -> tuple[float, int, int]:
        """(seconds of work, the reservation, the need) for a call running `jobs`."""
        work = sum(self.gpu_seconds(pipeline, job) for job in jobs)
        return (work, *reservation(work, self.settings.gpu_max_s))

    def reserve(self, pipeline: str, *jobs) -> int:
        """`gpu_reservation`, refusing on ZeroGPU before the GPU is asked for a call that needs more than the longest
        reservation a visitor can get (it would be refused by ZeroGPU or aborted half-way), with the numbers and the
        way out."""
        work, reserved, need = self._reservation(pipeline, jobs)
        if need > self.settings.gpu_max_s and self.settings.zerogpu:
            fast = getattr(jobs[0], "run_mode", None)
            way_out = ("a shorter clip, fewer grounding frames or no re-grounding" if pipeline == "segmentation" else
                       "fewer frames or steps" if fast is not None and fast.fast else "Fast mode or fewer frames")
            raise InputError(f"This needs about {need} s of GPU ({work:.0f} s of work, with this server's margin and "
                             f"start-up), more than the {self.settings.gpu_max_s} s a visitor can reserve on this "
                             f"Space. Try {way_out}.")
        return reserved

    def size_for_device(self) -> None:
        """ZeroGPU: size the cache's device budget from the real device, once per GPU worker. The main process only
        sees an emulated GPU (its size is spaces' configuration, not the slice a call gets), so the budget is taken
        here, in the forked worker, where torch answers for the real device. An explicit STUDIO_DEVICE_BUDGET_GB
        wins."""
        if not self.settings.zerogpu or self._sized_in == os.getpid():
            return
        self._sized_in = os.getpid()
        if self.settings.device_budget is None and self.cache.device.type == "cuda":
            total = torch.cuda.get_device_properties(0).total_memory
            self.cache.device_budget = total - self.settings.working_memory

    @staticmethod
    def actual_seconds(start: float, info: dict) -> float:
        """What the estimate is compared with: the run's seconds since `start`, loading apart (as in the estimate),
        the unguarded comparison's loading too."""
        loading = info["timings"].get("load", 0.0) + info.get("unguarded", {}).get("timings", {}).get("load", 0.0)
        return round(time.perf_counter() - start - loading, 3)

    def learn(self, tab: str, steps: int, frames: int, guidance: float, sliding: bool, timings: dict,
              mode: str = "quality") -> None:
        """A finished run's timings refine the rates the next estimate uses."""
        passes = FRAME_PASSES[tab](frames, uses_cfg(guidance), sliding)
        run_mode = (TIMELAPSE_MODES if tab == "timelapse" else IDENTITY_MODES)[mode]
        self.estimator.record(self._rates_key(tab, run_mode), steps, passes, frames, timings)

    def reachable(self) -> list[tuple]:
        """Every group of components one visible choice can reach: each style in each mode, the identity tab in
        each mode and step count, each grounder and each tracker, the tiny decoder (previews), and VD-IT when it is
        offered. On ZeroGPU all of them are preloaded: a GPU worker keeps nothing it loads."""
        groups = []
        for steps in (None, *LIGHTNING_STEPS):
            m = identity_models(self.registry, steps)
            groups.append((m.tokenizer, m.text_encoder, m.vae, m.unet, m.image_encoder, m.image_processor))
        for style in STYLES:
            for fast in (False, True):
                m = timelapse_models(self.registry, style, fast=fast)
                groups.append((m.tokenizer, m.text_encoder, m.vae, m.unet, m.tiny_vae))
        segmentation = self.pipelines["segmentation"].registry
        for grounder in GROUNDERS:
            m = segmentation.models(grounder=grounder)
            groups.append((m.grounder, m.grounder_processor))
        groups += [(segmentation.models(tracker=tracker).tracker,) for tracker in TRACKERS]
        if self.settings.vdit:
            groups.append(segmentation.vdit().all())
        return groups

    def preload(self) -> None:
        """Load (and place) now what the tabs can reach: on ZeroGPU everything (`reachable`), since each GPU call
        runs in a fork that loses what it loads; elsewhere each tab's defaults (STUDIO_PRELOAD=1). On ZeroGPU a build
        input (a float32 2-D UNet, a motion adapter) is let go as soon as the last component built from it is: RAM then
        holds the results and one build at a time, not every ingredient beside them, and nothing is built later.
        Elsewhere the inputs stay cached (within STUDIO_RAM_BUDGET_GB), so that a mode chosen later (Fast) builds
        from them instead of reading the files again."""
        if self.settings.zerogpu:
            groups = self.reachable()
        else:
            t, i = timelapse_models(self.registry, DEFAULT_STYLE), identity_models(self.registry)
            m = self.pipelines["segmentation"].registry.models()
            groups = [(t.tokenizer, t.text_encoder, t.vae, t.unet), (i.text_encoder, i.unet, i.image_encoder,
                      i.image_processor), (m.grounder, m.grounder_processor, m.tracker)]
        inputs = [{d.key: d for c in group for d in _build_inputs(c)} for group in groups]
        kept = {c.key for group in groups for c in group}
        for number, group in enumerate(groups):
            self.cache.preload(*group)
            if not self.settings.zerogpu:
                continue
            later = {key for needed in inputs[number + 1:] for key in needed}
            for key, component in inputs[number].items():
                if key not in later and key not in kept:
                    self.cache.discard(component)

    # ----------------------------------------------------------------- the safety guard
    @property
    def safety_enforced(self) -> bool:
        return self.settings.safety == "enforced"

    def safety_options(self, safety, options: SafetyOptions | None = None) -> SafetyOptions | None:
        """The guard a call runs with: `options` (the defaults if None) when `safety` is on, None when off.
        In enforced mode asking for it off is refused, never silently ignored."""
        if not isinstance(safety, bool):
            raise InputError(f"safety must be true or false, not {safety!r}.")
        if not safety and self.safety_enforced:
            raise InputError("The safety guard is enforced on this server (STUDIO_SAFETY=enforced) and cannot be "
                             "switched off; call again with safety=true.")
        if safety and options is not None and self.safety_enforced:
            enforced_floor(options)
        if not safety:
            return None
        # Enforced: selection also runs with the default concepts alone (SafetyOptions.enforced), so concepts of a
        # caller's own can add to what is flagged and never dilute it.
        return dataclasses.replace(options or SafetyOptions(), enforced=self.safety_enforced)

    def publish(self, result, queue_wait: float | None = None, **details) -> tuple[str, dict]:
        """Every generating tab's last step: the output check on every frame (flagged frames blurred), the MP4,
        the warnings as toasts, and the info dict the API returns (what every clip has, then the tab's
        `details`). `queue_wait`: the seconds the call waited in Gradio's queue, first in the timings."""
        if queue_wait is not None:
            result.timings = {"queue_wait": queue_wait, **result.timings}
        start = time.perf_counter()
        verdict = self.checker.check(result.frames)
        if verdict.flagged:
            result.frames = output_check.blur_frames(result.frames, verdict.flagged)
            result.warnings.append(
                f"The output check flagged {len(verdict.flagged)} of {len(result.frames)} frames as explicit "
                f"({output_check.MODEL_NAME} ≥ {verdict.threshold}): they are blurred. Try another seed.")
        result.timings["safety_check"] = round(time.perf_counter() - start, 3)
        result.safety = {**result.safety, "mode": self.settings.safety,
                         "output_check": verdict.report(blurred=True)}
        start = time.perf_counter()
        path = write_mp4(result.frames, self.outputs.new(".mp4"), fps=result.fps)
        result.timings["encode_mp4"] = round(time.perf_counter() - start, 3)
        for warning in result.warnings:
            gr.Warning(warning)
        frames, height, width = result.frames.shape[:3]
        info = {"seed": result.seed, "num_frames": int(frames), "fps": result.fps, "size": [int(width), int(height)],
                **details, "prompt_tokens": result.prompt_tokens, "safety": result.safety, "timings": result.timings,
                "warnings": result.warnings, "profile": self.settings.profile}
        return str(path), info

    def call(self, pipeline: str, job, report: Reporter, preview: bool, fps: int,
             options: dict | None = None) -> Iterator[tuple[str, Any]]:
        """A generating endpoint's GPU call: with `preview`, ("preview", (small MP4's path, steps done)) and
        ("progress", "Denoising step i/n") items while it denoises; then ("result", result). Close it
        (contextlib.closing) so that a consumer that stops early stops the call too."""
        if not isinstance(preview, bool):
            raise InputError(f"preview must be true or false, not {preview!r}.")
        if not preview:
            yield "result", run_on_gpu(self.name, pipeline, job, report, options)
            return
        calls = stream_on_gpu(self.name, pipeline, job, report, options)
        try:
            for kind, value in calls:
                if kind == "preview":
                    frames, done = value
                    value = (self._preview_clip(frames, fps), done)
                yield kind, value
        finally:
            calls.close()

    @staticmethod
    def runs_ahead() -> int:
        return gpu_runs_ahead()

    def call_all(self, pipeline: str, jobs, report: Reporter, preview: bool, fps: int) -> Iterator[tuple[str, Any]]:
        """`call` for several requests in one GPU call (the Safe tab's two clips): previews are ("preview", (small
        MP4's path, steps done, index of the request)); the result is the list of results."""
        if not isinstance(preview, bool):
            raise InputError(f"preview must be true or false, not {preview!r}.")
        if not preview:
            yield "result", run_all_on_gpu(self.name, pipeline, jobs, report)
            return
        calls = stream_all_on_gpu(self.name, pipeline, jobs, report)
        try:
            for kind, value in calls:
                if kind == "preview":
                    frames, done, index = value
                    value = (self._preview_clip(frames, fps), done, index)
                yield kind, value
        finally:
            calls.close()

    def _preview_clip(self, frames, fps: int) -> str:
        """A preview is shown to the user too: the same output check as the final clip, before it is written (off
        the GPU thread, beside the denoising it shows)."""
        flagged = self.checker.check(frames).flagged
        if flagged:
            frames = output_check.blur_frames(frames, flagged)
        return str(write_mp4(frames, self.outputs.new(".mp4"), fps=fps))

    # ----------------------------------------------------------------- stopping, progress, errors
    def stop(self, request: gr.Request = None) -> str:
        """Ask this browser session's run to stop, and say so: a running call stops at its next step, a queued one
        before it starts (its flag was armed when it was asked for), and its locks unwind. The page cancels the
        event too (studio/tabs/controls.py says why both). Returns the tab's summary line."""
        flag = _STOP_FLAGS.get(getattr(request, "session_hash", None))
        if flag is not None:
            flag.set()
        gr.Info(STOPPED)
        return f"**{STOPPED}**"

    @staticmethod
    def arm_stop(request: gr.Request | None) -> None:
        """A page's run is asked for (before it queues): a fresh stop flag for its session, so that Stop reaches it
        while it waits in the queue too. Its call's reporter takes this flag."""
        session = getattr(request, "session_hash", None)
        if session:
            _STOP_FLAGS[session] = threading.Event()

    @staticmethod
    def stop_asked(request: gr.Request | None) -> bool:
        flag = _STOP_FLAGS.get(getattr(request, "session_hash", None))
        return flag is not None and flag.is_set()

    @staticmethod
    @contextmanager
    def reporter(request: gr.Request | None, progress: gr.Progress):
        """A Reporter for one call; its session's stop flag (armed by the page, else a fresh one) lives as long as
        the call."""
        session = getattr(request, "session_hash", None)
        flag = _STOP_FLAGS.get(session) if session else None
        if flag is None:
            flag = threading.Event()
            if session:
                _STOP_FLAGS[session] = flag
        if flag.is_set():
            raise Cancelled("Stopped while it waited in the queue.")
        try:
            yield Reporter(progress, session)
        finally:
            if session and _STOP_FLAGS.get(session) is flag:
                del _STOP_FLAGS[session]


@contextmanager
def user_errors():
    """Turn errors a person can act on into `gr.Error` (shown in the UI, sent to API clients as they are).
    Anything else is a bug and keeps its traceback. Wraps every endpoint's whole call."""
    try:
        yield
    except Cancelled as exc:
        raise gr.Error(STOPPED, print_exception=False) from exc
    except StudioError as exc:
        raise gr.Error(str(exc), print_exception=False) from exc
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise gr.Error("The studio ran out of memory, even after freeing every model this call does not use: "
                       "try fewer frames or a shorter clip.", print_exception=False) from exc
    finally:
        give_back_free_memory()     # every endpoint's call ends here: its freed memory goes back (studio/memory.py)


def whole(value):
    """Gradio's Number and Slider send floats; a whole float is the int the user meant, anything else is
    left for validation to refuse with a message."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def preview_markdown(done: int, steps: int, now: str = "") -> str:
    """The summary line while a preview is shown (Gradio draws no progress bar over it: the step is said here)."""
    return (f"**{now or f'Denoising step {done}/{steps}'}** · preview from step {done}: the model's current guess, "
            "through the tiny decoder at half size. The clip sharpens into the final one when denoising ends.")


def previews(calls, steps: int, outputs: int, video_at: int | tuple[int, ...] = 0, summary_at: int = 1):
    """A generating endpoint's updates while its call runs: each preview clip with its summary line, then the step
    reached in that line (only once a preview is on screen: before it, Gradio's progress bar shows the step).
    Yields tuples of `outputs` updates; the call's result is returned (`result = yield from previews(...)`)."""
    shown = None
    for kind, value in calls:
        update = [gr.skip()] * outputs
        if kind == "preview":                # (path, steps done) or, from call_all, (path, steps done, index)
            path, shown, *index = value
            at = video_at[index[0]] if index else video_at
            update[at], update[summary_at] = path, preview_markdown(shown, steps)
        elif kind == "progress" and shown is not None:
            update[summary_at] = preview_markdown(shown, steps, value)
        elif kind == "result":
            return value
        else:
            continue
        yield tuple(update)
    raise RuntimeError("the GPU call ended without a result")


def summary_markdown(info: dict) -> str:
    """Warnings first (a person must see them), then one line on what was made and how long it took."""
    lines = [f"⚠️ {w}" for w in info["warnings"]]
    timings = timings_line(info["timings"])
    if info.get("actual_s") is not None:
        estimated = info.get("estimate_s")
        timings += f"  \n**Took** {info['actual_s']:.1f} s" + (
            f" (estimated {estimated:.1f} s)" if estimated is not None else " (the first run here: now measured)")
    lines.append(
        f"**Seed** {info['seed']} · {info['num_frames']} frames at {info['fps']} fps · "
        f"{info['size'][0]}×{info['size'][1]} · {info['prompt_tokens']} prompt tokens  \n"
        f"{safety_line(info['safety'])}  \n{timings}"
    )
    return "\n\n".join(lines)


def timings_line(timings: dict) -> str:
    """One clip's stage timings: "load 0.2 s · denoise 3.1 s (0.124 s/step) · decode 0.4 s"."""
    return " · ".join(
        f"{stage} {seconds:.2f} s" + (f" ({timings['denoise_per_step']:.3f} s/step)"
                                      if stage == "denoise" and "denoise_per_step" in timings else "")
        for stage, seconds in timings.items() if stage != "denoise_per_step")


def safety_line(safety: dict) -> str:
    """One line on what the guard and the output check did."""
    check = safety.get("output_check", {})
    flagged_frames = len(check.get("flagged_frames", []))
    checked = f"output check: {flagged_frames} of {len(check.get('per_frame', []))} frames flagged"
    if not safety.get("enabled"):
        return f"**Safety** guard off · {checked}"
    tokens = safety["flagged_tokens"]
    guard = (f"{len(tokens)} token{'s' * (len(tokens) != 1)} projected over {safety['guarded_steps_text']}"
             if tokens else "no unsafe token found, prompt unchanged")
    return f"**Safety** {guard} · {checked}"
