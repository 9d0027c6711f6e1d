"""Referring video segmentation: a video + "the dog on the left" -> a mask on every frame, explained.

1. Ground the expression's noun phrase on a few sampled frames (Grounding DINO or a drop-in), at a reduced size on
   a CPU; or, for the words the rules do not read, the whole expression with Florence-2.
2. Resolve the relational words in code on each frame's candidates (relations.py: Grounding DINO ignores
   "left"/"right"); the key frame is where the sampled frames agree on the count, then the best-scoring of those.
3. SAM 2 video propagation from the key frame forward and backward, so every frame gets a mask exactly once.
4. Optionally re-ground every N frames and add objects that entered late, with new ids; re-propagate.
5. Refinement clicks (positive / negative) on any frame are added as prompts on that frame and promoted to
   conditioning frames, so they stick through every later pass (SAM 2 otherwise keeps a click on an already-tracked
   frame as an ordinary output, and the next pass overwrites it).

SAM 2's processor needs torchvision, which the CPU torch cannot have beside it: frames are resized and normalised
here with the processor's own maths (bilinear with antialias to the model's square size, /255, ImageNet mean/std),
and the inference session is built directly. A frame is preprocessed when SAM 2 first reads it and let go once it is
tracked (the key frame and conditioning frames kept), frames stay on the CPU, the vision-feature cache holds one
frame, and per-frame state the tracker never reads back is dropped as it goes: memory does not grow with the video.

Progress is reported after every frame grounded, re-grounded or tracked; the studio's Stop acts there.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.core.cache import ModelCache
from pipelines.core.checks import Progress, noop
from pipelines.core.errors import InputError
from pipelines.segmentation.models import (
    BACKENDS,
    DEFAULT_GROUNDER,
    DEFAULT_TRACKER,
    EXPRESSION_GROUNDERS,
    GROUNDERS,
    TRACKERS,
    WHOLE_EXPRESSION_GROUNDER,
    SegmentationRegistry,
)
from pipelines.segmentation.relations import (
    Candidate,
    Choice,
    Query,
    candidates_for,
    iou,
    noun,
    parse_expression,
    resolve,
)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])
MAX_FRAMES, MAX_SECONDS, MAX_PIXELS = 300, 60.0, 1920 * 1080
MAX_EXPRESSION_CHARS, MAX_OBJECTS = 200, 8
# Shortest / longest edge the grounder sees. On a GPU, Grounding DINO's own inference size (its README's demo and
# configs: RandomResize([800], max_size=1333)); on a CPU 480 px (reference/segmentation.md: ~3x faster than 800).
GROUNDING_SIDE_GPU = (800, 1333)
GROUNDING_SIDE = (480, 853)
KEEP_NEAR = 16                         # non-conditioning outputs kept within this many frames of the current / key


@dataclass(frozen=True)
class Click:
    frame: int
    x: float                           # pixels of the video frame
    y: float
    positive: bool = True
    object_id: int = 1


VDIT_PASSES = ("chunks", "whole")


@dataclass(frozen=True)
class SegmentationRequest:
    frames: np.ndarray                 # (T, H, W, 3) uint8
    expression: str
    fps: float = 8.0
    tracker: str = DEFAULT_TRACKER
    grounder: str = DEFAULT_GROUNDER
    ground_frames: int = 8             # frames sampled for grounding
    reground_every: int = 0            # 0: off; else look for objects that enter late every N frames
    # Grounding DINO's README demo values (IDEA-Research/GroundingDINO, "Demo": BOX_TRESHOLD = 0.35, TEXT_TRESHOLD =
    # 0.25); its drop-ins share its post-processing. Florence-2 has no thresholds (it generates its boxes).
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    clicks: tuple[Click, ...] = ()
    key_frame: int | None = None       # ground only here (a refinement keeps the key frame it had)
    backend: str = "grounding"         # "grounding": grounder + SAM 2; "vdit": VD-IT (vdit/model.py)
    # VD-IT's passes: "chunks" of 36 frames (its Ref-DAVIS protocol, the CUDA kernel's limit there) or the "whole"
    # video in one forward (its Ref-YouTube-VOS protocol: more memory, and its noise normalisation and temporal
    # attention then see every frame, so the masks can differ from the chunked ones).
    vdit_pass: str = "chunks"

    def validate(self) -> None:
        frames = np.asarray(self.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise InputError("The video has no frames we can read.")
        if len(frames) > MAX_FRAMES:
            raise InputError(f"The video has {len(frames)} frames; the studio segments at most {MAX_FRAMES}. "
                             "Trim it or lower its frame rate.")
        if not isinstance(self.expression, str) or not self.expression.strip():
            raise InputError("Say what to segment, e.g. 'the dog on the left'.")
        if len(self.expression) > MAX_EXPRESSION_CHARS:
            raise InputError(f"The expression is {len(self.expression)} characters long; use at most "
                             f"{MAX_EXPRESSION_CHARS}.")
        if self.backend not in BACKENDS:
            raise InputError(f"Unknown backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}.")
        if self.vdit_pass not in VDIT_PASSES:
            raise InputError(f"VD-IT's pass must be one of: {', '.join(VDIT_PASSES)} (not {self.vdit_pass!r}).")
        if self.backend == "vdit" and self.clicks:
            raise InputError("VD-IT takes no refinement clicks (its masks come from the text alone): refine with the "
                             "grounding backend.")
        if self.tracker not in TRACKERS:
            raise InputError(f"Unknown tracker {self.tracker!r}; choose one of: {', '.join(TRACKERS)}.")
        if self.grounder not in GROUNDERS:
            raise InputError(f"Unknown grounder {self.grounder!r}; choose one of: {', '.join(GROUNDERS)}.")
        if not 1 <= self.ground_frames <= 32:
            raise InputError(f"Grounding frames must be between 1 and 32, not {self.ground_frames}.")
        if not 0 <= self.reground_every <= len(frames):
            raise InputError(f"Re-grounding every {self.reground_every} frames does not fit a {len(frames)}-frame "
                             "video.")
        for click in self.clicks:
            if not 0 <= click.frame < len(frames):
                raise InputError(f"A click is on frame {click.frame}, past the video's last frame ({len(frames) - 1}).")
        if self.key_frame is not None and not 0 <= self.key_frame < len(frames):
            raise InputError(f"Key frame {self.key_frame} is past the video's last frame ({len(frames) - 1}).")


@dataclass
class SegmentationResult:
    masks: np.ndarray                  # (objects, T, H, W) bool
    object_ids: list[int]
    key_frame: int
    candidates: dict[int, list[Candidate]]   # grounding candidates per searched frame
    chosen: list[Candidate]            # on the key frame, in object-id order
    reason: str
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    backend: str = "grounding"
    scores: list[float] | None = None  # VD-IT: the picked query's score on each frame
    disagree: bool = False             # the sampled frames disagreed (counts, or which object the words name)
    not_understood: str = ""           # the words the relation rules did not read (the whole-expression grounder did)
    grounder: str = ""                 # the grounder that ran (the whole-expression one when the studio routed there)

    def areas(self) -> list[list[int]]:
        """Mask area in pixels, per object per frame."""
        return [[int(m.sum()) for m in obj] for obj in self.masks]


class SegmentationPipeline:
    def __init__(self, cache: ModelCache, registry: SegmentationRegistry):
        self.cache, self.registry = cache, registry

    def __call__(self, request: SegmentationRequest, progress: Progress = noop) -> SegmentationResult:
        request.validate()
        if request.backend == "vdit":
            return self._vdit(request, progress)
        query, grounder_name, not_understood = read_expression(request.expression, request.grounder)
        whole = grounder_name in EXPRESSION_GROUNDERS
        frames = np.asarray(request.frames)
        models = self.registry.models(grounder_name, request.tracker)
        if not self.cache.holds(models.grounder, models.grounder_processor, models.tracker):
            self.registry.ensure_available(grounder_name, request.tracker)
        timings: dict[str, float] = {}
        progress(0.0, "Loading models")
        start = time.perf_counter()
        with self.cache.use(models.grounder, models.grounder_processor, models.tracker) as (grounder, processor,
                                                                                            tracker):
            timings["load"] = time.perf_counter() - start

            start = time.perf_counter()
            searched = [request.key_frame] if request.key_frame is not None else sample_frames(len(frames),
                                                                                               request.ground_frames)
            phrases = [query.phrase] + ([query.anchor] if query.anchor else [])
            candidates, anchors = {}, {}
            for done, f in enumerate(searched, start=1):
                if whole:                       # Florence-2 reads the whole expression and boxes its referents
                    candidates[f] = ground_expression(grounder, processor, frames[f], request.expression,
                                                      every=query.count != 1)
                else:
                    candidates[f] = ground(grounder, processor, frames[f], query.phrase, request.box_threshold,
                                           request.text_threshold)
                if query.anchor and not whole:  # "the dog left of the cat": the cats too
                    anchors[f] = ground(grounder, processor, frames[f], query.anchor, request.box_threshold,
                                        request.text_threshold)
                # After each frame (seconds each with a real grounder on a CPU): Stop acts here, before tracking.
                progress(done / len(searched), f"Grounding frame {done}/{len(searched)}"
                                               + (f" ({' and '.join(phrases)})" if query.anchor else ""))
            key, choice, agreement = key_frame(_as_read(query, whole), candidates, frames.shape[2],
                                               frames.shape[1], anchors)
            timings["grounding"] = time.perf_counter() - start
            if whole:
                boxed = len(candidates[key])
                choice = replace(choice, reason=(
                    f"{grounder_name} read the whole expression “{request.expression}” on {len(searched)} sampled "
                    f"frame(s); on key frame {key} it boxed {boxed} object{'s' * (boxed != 1)}"
                    + ("." if len(choice.chosen) == boxed else " and the first it named is tracked.")))
            chosen = [candidates[key][i] for i in choice.chosen][:MAX_OBJECTS]
            warnings = [] if len(choice.chosen) <= MAX_OBJECTS else [
                f"{len(choice.chosen)} objects match; the studio tracks the first {MAX_OBJECTS}."]
            warnings += agreement.notes

            start = time.perf_counter()
            prompts = {i + 1: (key, c.box) for i, c in enumerate(chosen)}
            masks = Tracker(tracker, frames, progress).run(prompts, request.clicks, key)
            entered = {}
            while request.reground_every and len(prompts) < MAX_OBJECTS:
                # One newcomer at a time, tracked before looking again: its own mask then covers it on later
                # re-grounding frames, so a moving newcomer is not found twice.
                late = late_object(grounder, processor, frames, request.expression if whole else query.phrase,
                                   request, masks, progress, whole=whole)
                if late is None:
                    break
                new_id = len(prompts) + 1
                prompts[new_id] = entered[new_id] = late
                masks = Tracker(tracker, frames, progress).run(prompts, request.clicks, key)
            if entered:
                warnings.append(f"Re-grounding found {len(entered)} object(s) that enter later: "
                                + ", ".join(f"id {i} on frame {f}" for i, (f, _) in entered.items()) + ".")
            timings["propagation"] = time.perf_counter() - start
        flipped = identity_flips(agreement, candidates, masks, key)
        if flipped:
            warnings.append(flipped)
        order = sorted(masks)
        views = [masks[i] for i in order]
        base = views[0].base
        if base is not None and base.shape == (len(order), *frames.shape[:3]) and all(
                v.base is base and np.shares_memory(v, base[row]) for row, v in enumerate(views)):
            stacked = base                         # the tracker's own array, in id order: no copy
        else:
            stacked = np.empty((len(order), *frames.shape[:3]), bool)
            for row, object_id in enumerate(order):    # moved one object at a time: never two copies of the masks
                stacked[row] = masks.pop(object_id)
        return SegmentationResult(
            masks=stacked, object_ids=order, key_frame=key, candidates=candidates,
            chosen=chosen, reason=choice.reason, timings={k: round(v, 3) for k, v in timings.items()},
            warnings=warnings, disagree=bool(agreement.notes or flipped), not_understood=not_understood,
            grounder=grounder_name,
        )

    def _vdit(self, request: SegmentationRequest, progress: Progress) -> SegmentationResult:
        """VD-IT: the whole clip (chunks of 36 frames) through the frozen video diffusion UNet and the trained head;
        one object, the query whose score averaged over the frames is highest. The latent is sampled with a fixed
        seed, as the original samples it (so a clip always gives the same masks)."""
        from pipelines.segmentation.vdit import model as vdit

        frames = np.asarray(request.frames)
        parts = self.registry.vdit()
        if not self.cache.holds(*parts.all()):
            self.registry.ensure_available(request.grounder, request.tracker, backend="vdit")
        timings: dict[str, float] = {}
        progress(0.0, "Loading VD-IT's models")
        start = time.perf_counter()
        with self.cache.use(*parts.all()) as loaded:
            timings["load"] = time.perf_counter() - start
            models = parts.models(loaded)
            progress(0.1, "VD-IT: reading the clip through the video diffusion model")
            start = time.perf_counter()
            chunk = len(frames) if request.vdit_pass == "whole" else vdit.CHUNK_FRAMES
            out = vdit.segment_clip(models, frames, request.expression, chunk=chunk,
                                    generator=torch.Generator().manual_seed(0))
            timings["vdit"] = time.perf_counter() - start
        scores = [round(float(s), 4) for s in out.scores]
        masks = out.masks.numpy()[None]
        key = int(np.argmax(scores))
        ys, xs = np.nonzero(masks[0, key])
        box = ((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if len(xs)
               else (0.0, 0.0, float(frames.shape[2]), float(frames.shape[1])))
        chosen = [Candidate(box, scores[key], "VD-IT")]
        queries = sorted(set(out.queries))
        reason = (f"VD-IT picked query {', '.join(map(str, queries))} of {models.trained.config.num_queries}: the "
                  f"highest score averaged over the frames ({np.mean(scores):.2f}); its best frame is {key}.")
        warnings = [] if masks.any() else ["VD-IT found no pixel above its 0.5 threshold on any frame."]
        return SegmentationResult(
            masks=masks, object_ids=[1], key_frame=key, candidates={key: chosen}, chosen=chosen, reason=reason,
            timings={k: round(v, 3) for k, v in timings.items()}, warnings=warnings, backend="vdit", scores=scores)


# ----------------------------------------------------------------------------- grounding
def sample_frames(count: int, wanted: int) -> list[int]:
    """`wanted` frames spread evenly over the video, first and last included."""
    taken = min(wanted, count)
    return sorted({round(i * (count - 1) / max(taken - 1, 1)) for i in range(taken)})


@torch.inference_mode()
def ground(model, processor, frame: np.ndarray, phrase: str, box_threshold: float, text_threshold: float,
           ) -> list[Candidate]:
    """Candidate boxes for `phrase` on one frame, in the frame's pixels, best first."""
    height, width = frame.shape[:2]
    side = GROUNDING_SIDE_GPU if model.device.type == "cuda" else GROUNDING_SIDE
    size = {"shortest_edge": side[0], "longest_edge": side[1]}
    if processor.image_processor.size.get("shortest_edge", 800) < GROUNDING_SIDE[0]:
        size = dict(processor.image_processor.size)        # a small (test) processor keeps its own size
    inputs = processor(images=[Image.fromarray(frame)], text=[phrase.lower().strip(" .") + "."], return_tensors="pt",
                       size=size)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    outputs = model(**inputs)
    found = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
        target_sizes=[(height, width)])[0]
    labels = found["text_labels"] if "text_labels" in found else found["labels"]
    candidates = [Candidate(tuple(float(v) for v in box.tolist()), float(score), str(label))
                  for box, score, label in zip(found["boxes"], found["scores"], labels, strict=False)]
    return sorted(candidates, key=lambda c: -c.score)


def read_expression(expression: str, grounder: str) -> tuple[Query, str, str]:
    """(what the relation rules read, the grounder to run, the "not understood" line). Words the rules do not read go
    to the whole-expression grounder when the studio picks the grounder (the default one was asked for), or are
    refused naming them and proposing it when the person chose another phrase grounder; a person who chose Florence-2
    has every expression read by it (the rules still refuse text that is not English: Florence-2 reads English)."""
    try:
        query = parse_expression(expression)
    except InputError as error:
        if grounder not in EXPRESSION_GROUNDERS or "read English" in str(error):
            raise
        return Query(_fallback_phrase(expression), None), grounder, ""   # "the dog in the lower right corner"
    if query.understood() or grounder in EXPRESSION_GROUNDERS:
        return query, grounder, ""
    if grounder == DEFAULT_GROUNDER:
        return query, WHOLE_EXPRESSION_GROUNDER, (f"{query.not_understood()} The whole expression went to "
                                                  f"{WHOLE_EXPRESSION_GROUNDER}, which reads it.")
    raise InputError(query.refusal(expression))


def _fallback_phrase(expression: str) -> str:
    words = [w for w in expression.lower().split() if w.isalpha()]
    return " ".join(words[-2:]) or "object"


def _as_read(query: Query, whole: bool) -> Query:
    """What the key frame resolves: the rules' query, or for a whole-expression grounder its referents as given (all
    of them when the words ask for several, else the first it generated: its likeliest)."""
    if not whole:
        return query
    return Query(query.phrase, None, 1, 0 if query.count != 1 else 1)


@dataclass
class Agreement:
    """What the sampled frames agree on: the number of candidates most of them see, the frames that see it, each
    resolved frame's choice, and sentences saying where they disagree."""

    count: int
    frames: list[int]
    choices: dict[int, Choice]
    notes: list[str]


FLORENCE_MAX_TOKENS = 256     # 4 location tokens and a label per box: room for ~25 boxes
FLORENCE_BEAMS = 3            # the model card's example (num_beams=3)


@torch.inference_mode()
def ground_expression(model, processor, frame: np.ndarray, expression: str, every: bool = False) -> list[Candidate]:
    """Boxes of what the whole `expression` refers to on one frame, from Florence-2, in its order (likeliest first):
    `<OPEN_VOCABULARY_DETECTION>` for one referent, `<CAPTION_TO_PHRASE_GROUNDING>` when the words ask for every one
    of them. Florence-2 gives no scores: each box scores 1.0, so the key frame comes from agreement alone."""
    task = "<CAPTION_TO_PHRASE_GROUNDING>" if every else "<OPEN_VOCABULARY_DETECTION>"
    height, width = frame.shape[:2]
    inputs = processor(text=task + expression.strip(), images=Image.fromarray(frame), return_tensors="pt")
    inputs = {k: v.to(model.device, dtype=model.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
    generated = model.generate(**inputs, max_new_tokens=FLORENCE_MAX_TOKENS, num_beams=FLORENCE_BEAMS, do_sample=False)
    text = processor.batch_decode(generated, skip_special_tokens=False)[0]
    parsed = processor.post_process_generation(text, task=task, image_size=(width, height))[task]
    labels = parsed.get("bboxes_labels", parsed.get("labels", []))
    found = []
    for box, label in zip(parsed.get("bboxes", []), labels, strict=False):
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
        y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
        if x2 - x1 >= 1 and y2 - y1 >= 1:
            found.append(Candidate((x1, y1, x2, y2), 1.0, str(label).strip()))
    return found


def key_frame(query: Query, candidates: dict[int, list[Candidate]], width: int, height: int,
              anchors: dict[int, list[Candidate]] | None = None) -> tuple[int, Choice, Agreement]:
    """The key frame from agreement, not from one score: among the searched frames whose choice resolves, those that
    see the number of candidates most frames see (ties: the larger number; a frame where the grounder missed an
    occluded object sees fewer, and there "the leftmost" can be another object), then the best-scoring of them.
    Raises the most telling InputError when no frame resolves (nothing found, or too few objects for the words)."""
    choices, counts, errors = {}, {}, []
    for frame, found in candidates.items():
        counts[frame] = len(candidates_for(query, found)[0])
        try:
            choices[frame] = resolve(query, found, frame=frame, frame_size=(width, height),
                                     anchors=(anchors or {}).get(frame))
        except InputError as error:
            errors.append((len(found), str(error)))
    if not choices:
        most, message = max(errors)
        raise InputError(message if most else f"No “{query.phrase}” found in the {len(candidates)} frame(s) searched: "
                                              "try other words, or lower the box threshold.")
    tally = Counter(counts[f] for f in choices)
    agreed = max(tally, key=lambda n: (tally[n], n))
    pool = [f for f in choices if counts[f] == agreed]
    key = max(pool, key=lambda f: (choices[f].score, -f))
    notes = []
    if len(set(counts.values())) > 1:
        by_count = {}
        for frame in sorted(counts):
            by_count.setdefault(counts[frame], []).append(frame)
        seen = "; ".join(f"{n} on frame{'s' * (len(fs) > 1)} {', '.join(map(str, fs))}"
                         for n, fs in sorted(by_count.items(), reverse=True))
        notes.append(f"The sampled frames disagree on how many {noun(query.phrase, 2)} there are ({seen}): "
                     f"the key frame {key} is one of the {len(pool)} that see {agreed}, the count most frames agree "
                     "on. Check the key frame, or click to correct.")
    return key, choices[key], Agreement(agreed, pool, choices, notes)


def identity_flips(agreement: Agreement, candidates, masks: dict[int, np.ndarray], key: int) -> str:
    """Whether the words name the tracked objects on the other frames that agreed on the count: there the choice's
    boxes must fall on the masks tracked from the key frame (IoU of the boxes >= 0.3). A sentence naming the frames
    where they name another object ('' when none)."""
    flipped = []
    for frame in agreement.frames:
        if frame == key:
            continue
        choice = agreement.choices[frame]
        tracked = {i: box_of(m[frame]) for i, m in masks.items()}
        for index in choice.chosen:
            box = candidates[frame][index].box
            if not any(t is not None and iou(box, t) >= 0.3 for t in tracked.values()):
                flipped.append(frame)
                break
    if not flipped:
        return ""
    return (f"On frame{'s' * (len(flipped) > 1)} {', '.join(map(str, flipped))} the words pick another object than "
            f"the one tracked from key frame {key} (objects moved, or the frames see them differently): check the "
            "overlay there, or click to correct.")


def late_object(model, processor, frames, phrase, request, masks, progress: Progress = noop, whole: bool = False,
                ) -> tuple[int, tuple] | None:
    """The first (frame, box) of the phrase (or, `whole`, of the expression for Florence-2), on the re-grounding
    frames, that no tracked mask covers. Progress is reported after each frame grounded (so Stop acts between them)."""
    searched = range(0, len(frames), request.reground_every)
    for done, frame in enumerate(searched, start=1):
        tracked = [box_of(m[frame]) for m in masks.values()]
        if whole:
            found = ground_expression(model, processor, frames[frame], phrase, every=True)
        else:
            found = ground(model, processor, frames[frame], phrase, request.box_threshold, request.text_threshold)
        progress(done / len(searched), f"Re-grounding frame {done}/{len(searched)} (objects that enter late)")
        for candidate in found:
            if all(box is None or iou(candidate.box, box) < 0.3 for box in tracked):
                return frame, candidate.box
    return None


def box_of(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(mask)
    return None if len(xs) == 0 else (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


# ----------------------------------------------------------------------------- SAM 2 without its processor
def preprocess(frames: np.ndarray, size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float32, as Sam2VideoProcessor computes it: resize to the model's
    square (bilinear, antialiased), rounded back to 0..255 levels as its uint8 resize does, /255, ImageNet mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False).round().clamp(0, 255)
    return (x / 255.0 - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


class LazyFrames(Mapping):
    """The session's `processed_frames`, made when SAM 2 first reads a frame rather than all up front (12 MB a frame
    at 1024 px in fp32: a whole clip would be gigabytes). The session only takes `len()` (its frame count) and
    `[t]`; `held` is what is in memory now. A released frame read again is made again, the same values."""

    def __init__(self, frames: np.ndarray, size: int, dtype: torch.dtype):
        self.frames, self.size, self.dtype = frames, size, dtype
        self.held: dict[int, torch.Tensor] = {}
        self.made = 0                                    # frames preprocessed so far (re-made ones counted again)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        return iter(range(len(self.frames)))

    def __getitem__(self, frame: int) -> torch.Tensor:
        if frame not in self.held:
            if not 0 <= frame < len(self.frames):
                raise KeyError(frame)
            # One frame at a time, its own tensor: released, its memory is freed.
            self.held[frame] = preprocess(self.frames[frame:frame + 1], self.size)[0].to(self.dtype)
            self.made += 1
        return self.held[frame]

    def release(self, frame: int) -> None:
        self.held.pop(frame, None)


class Tracker:
    """One SAM 2 video session over the whole clip: prompts, both propagation passes, masks per object. Refinement
    clicks can be added after a pass (`click`) and the clip propagated again (`propagate`)."""

    def __init__(self, model, frames: np.ndarray, progress: Progress = noop):
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        self.model, self.size, self.progress = model, model.config.image_size, progress
        self.count, self.height, self.width = frames.shape[:3]
        device, dtype = model.device, model.dtype
        self.session = Sam2VideoInferenceSession(
            video=None, video_height=self.height, video_width=self.width, inference_device=device,
            inference_state_device=device, video_storage_device="cpu", dtype=dtype, max_vision_features_cache_size=1,
        )
        # Preprocessed when first read, and let go once tracked (_prune): memory does not grow with the clip.
        self.session.processed_frames = LazyFrames(frames, self.size, dtype)

    def _points(self, points: list[tuple[float, float]], labels: list[int]) -> dict:
        scale = torch.tensor([self.size / self.width, self.size / self.height])
        coords = torch.tensor(points, dtype=torch.float32) * scale
        return {"point_coords": coords[None, None].to(self.model.device),
                "point_labels": torch.tensor(labels, dtype=torch.int32)[None, None].to(self.model.device)}

    def _upsample(self, pred_masks: torch.Tensor) -> torch.Tensor:
        """(objects, 1, h, w) logits -> (objects, H, W) bool at the video's size."""
        return F.interpolate(pred_masks.float(), (self.height, self.width), mode="bilinear",
                             align_corners=False)[:, 0] > 0

    def _prompt(self, object_id: int, frame: int, points: list, labels: list) -> np.ndarray:
        """Add points for an object on a frame (after any it already has there), run that frame, and keep it as a
        conditioning frame. Returns the object's mask on the frame, (H, W) bool."""
        session = self.session
        index = session.obj_id_to_idx(object_id)
        inputs = self._points(points, labels)
        earlier = session.point_inputs_per_obj[index].get(frame)
        if earlier is not None:          # add_point_inputs replaces: keep the box and the clicks given before
            inputs = {k: torch.cat([earlier[k], inputs[k]], dim=2) for k in inputs}
        session.add_point_inputs(index, frame, inputs)
        session.remove_mask_inputs(index, frame)
        if object_id not in session.obj_with_new_inputs:
            session.obj_with_new_inputs.append(object_id)
        output = self.model(inference_session=session, frame_idx=frame)   # right after its prompt (several frames)
        # A prompt on a frame that was already tracked is stored as an ordinary output, which the next pass
        # overwrites: make it a conditioning frame so it sticks (SAM 2's add_all_frames_to_correct_as_cond).
        outputs = session.output_dict_per_obj[index]
        if frame in outputs["non_cond_frame_outputs"]:
            outputs["cond_frame_outputs"][frame] = outputs["non_cond_frame_outputs"].pop(frame)
        return self._upsample(output.pred_masks)[session.obj_ids.index(object_id)].cpu().numpy()

    @torch.inference_mode()
    def run(self, prompts: dict[int, tuple[int, tuple]], clicks: tuple[Click, ...], key: int) -> dict[int, np.ndarray]:
        """Masks {object id: (T, H, W) bool}: every object's box on its frame (with that frame's clicks for it),
        the remaining clicks on their frames, then forward and backward from the key frame."""
        for object_id, (frame, (x1, y1, x2, y2)) in prompts.items():
            own = [c for c in clicks if c.object_id == object_id and c.frame == frame]
            self._prompt(object_id, frame, [(x1, y1), (x2, y2), *((c.x, c.y) for c in own)],
                         [2, 3, *(1 if c.positive else 0 for c in own)])
        for object_id in sorted({c.object_id for c in clicks}):
            if object_id not in prompts:
                raise InputError(f"A click is for object {object_id}, but only objects "
                                 f"{', '.join(map(str, sorted(prompts)))} are tracked.")
            for frame in sorted({c.frame for c in clicks if c.object_id == object_id} - {prompts[object_id][0]}):
                self.click(*(c for c in clicks if c.object_id == object_id and c.frame == frame))
        return self.propagate(key)

    @torch.inference_mode()
    def click(self, *clicks: Click) -> np.ndarray:
        """Refinement clicks for one object on one frame, tracked already or not: that frame becomes one of the
        object's conditioning frames. Returns the object's new mask there, (H, W) bool."""
        if len({(c.object_id, c.frame) for c in clicks}) != 1:
            raise ValueError("click() takes clicks for one object on one frame")
        object_id, frame = clicks[0].object_id, clicks[0].frame
        if object_id not in self.session.obj_ids:
            raise InputError(f"A click is for object {object_id}, but only objects "
                             f"{', '.join(map(str, self.session.obj_ids))} are tracked.")
        return self._prompt(object_id, frame, [(c.x, c.y) for c in clicks], [1 if c.positive else 0 for c in clicks])

    @torch.inference_mode()
    def propagate(self, key: int) -> dict[int, np.ndarray]:
        """Forward and backward from the key frame over the prompts so far: {object id: (T, H, W) bool}."""
        # One array for every object's masks (the result is these views): the pipeline returns it as it is.
        block = np.zeros((len(self.session.obj_ids), self.count, self.height, self.width), bool)
        masks = {object_id: block[row] for row, object_id in enumerate(self.session.obj_ids)}
        done: set[int] = set()
        for reverse in (False, True):
            for output in self.model.propagate_in_video_iterator(self.session, start_frame_idx=key, reverse=reverse):
                frame = output.frame_idx
                if frame in done:
                    continue                                   # the key frame comes twice: once is enough
                done.add(frame)
                up = self._upsample(output.pred_masks)
                for row, object_id in enumerate(self.session.obj_ids):
                    masks[object_id][frame] = up[row].cpu().numpy()
                self._prune(frame, key)
                self.progress(len(done) / self.count, f"Tracking frame {len(done)}/{self.count}")
        if len(done) != self.count:   # every frame exactly once, or the clip would silently have holes
            raise RuntimeError(f"SAM 2 propagation covered {len(done)} of {self.count} frames")
        return masks

    def _prune(self, frame: int, key: int) -> None:
        """Drop what the tracker never reads back, so memory per frame stays flat: the frame's pixels once it is
        tracked (but the key frame's and conditioning frames': passes start there, clicks were made there),
        full-resolution masks, and ordinary outputs far from both the current frame and the key frame."""
        outputs_per_obj = self.session.output_dict_per_obj.values()
        if frame != key and not any(frame in outputs["cond_frame_outputs"] for outputs in outputs_per_obj):
            self.session.processed_frames.release(frame)
        for outputs in outputs_per_obj:
            for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
                entry = outputs[kind].get(frame)
                if isinstance(entry, dict):
                    entry.pop("high_res_masks", None)
            for old in [f for f in outputs["non_cond_frame_outputs"]
                        if abs(f - frame) > KEEP_NEAR and abs(f - key) > KEEP_NEAR]:
                del outputs["non_cond_frame_outputs"][old]


_EVALUATION_PIPELINES: dict[str, SegmentationPipeline] = {}


def segment_frames(frames: np.ndarray, expression: str, profile: str = "real") -> np.ndarray:
    """(T, H, W) bool: every object the expression selects, as one mask per frame (`python -m studio.evaluate
    segmentation --data`). One pipeline and cache per profile, on the GPU when there is one."""
    if profile not in _EVALUATION_PIPELINES:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        _EVALUATION_PIPELINES[profile] = SegmentationPipeline(ModelCache(device), SegmentationRegistry(profile))
    result = _EVALUATION_PIPELINES[profile](SegmentationRequest(frames=np.asarray(frames), expression=expression))
    return result.masks.any(axis=0)
