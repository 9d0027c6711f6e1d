"""SAM 2 tracking in the studio against a bare transformers SAM 2 run: same masks, speed, memory per frame.

Both use the SAME tiny Sam2VideoModel (one ModelCache, tiny profile), the same synthetic video
(pipelines/synthetic.py, exact masks), the same box prompt on a mid-video key frame (the target's exact box), the
same preprocessing (pipelines.segmentation.preprocess) and a Sam2VideoInferenceSession built with the same arguments.
The studio is `Tracker(model, frames).run({1: (key, box)}, (), key)`: it prunes state as it goes. The bare run
is written out below as transformers documents it: box as two points labelled 2 and 3, `model(..., frame_idx=key)`,
`propagate_in_video_iterator` forward then reverse from the key frame, bilinear upsampling, `> 0`; it keeps
everything.
  1. the masks must be identical (else exit 1; the number of differing pixels is printed);
  2. both are timed (one warm-up each, interleaved repeats), frames per second and the ratio of medians;
  3. tracking state per frame: the tensor bytes the session holds (outputs per object, prompts, the vision-feature
     cache; the preprocessed frames apart), sampled after every frame, peak over the run, for a short video
     (--frames) and a 10x longer one of the same size, studio and bare.

    .venv/bin/python bench/segmentation.py [--repeats 7] [--frames 16] [--size 96 128] [--threads 1] [--profile]

Last line: `segment_overhead_ratio: <studio median / bare median>` (goal <= 1.10).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import inspect
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness
import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

from pipelines.cache import ModelCache
from pipelines.segmentation import Tracker, preprocess
from pipelines.segmentation_models import SegmentationRegistry
from pipelines.synthetic import make_video

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=7, help="timed runs of each, after one warm-up each")
parser.add_argument("--frames", type=int, default=16, help="frames of the timed video; the memory check also runs "
                    "a video 10x as long")
parser.add_argument("--size", type=int, nargs=2, default=[96, 128], metavar=("HEIGHT", "WIDTH"),
                    help="video frame size in pixels (the model's own input stays its square size)")
parser.add_argument("--seed", type=int, default=0, help="the synthetic video's seed")
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default). On a busy "
                    "machine use 1: torch's thread pool stalls badly when other processes share the cores")
parser.add_argument("--profile", action="store_true", help="also cProfile one run of each and print the top")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

model = ModelCache("cpu").get(SegmentationRegistry("tiny").models().tracker)
SIZE = model.config.image_size            # the square SAM 2 was built for (TINY_TRACKER_SIZE)
# Tracker(model, frames) reads that size from the model; an older Tracker took it: Tracker(model, frames, size).
SIZE_ARG = (SIZE,) if "size" in inspect.signature(Tracker).parameters else ()


def target_box(video, frame: int) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(video.masks["target"][frame])
    if len(xs) == 0:
        sys.exit(f"FAIL: the target is not visible on key frame {frame}; try another --seed or --frames")
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


# ----------------------------------------------------------------------------- the two callers
def studio(frames: np.ndarray, key: int, box, each=None) -> np.ndarray:
    tracker = Tracker(model, frames, *SIZE_ARG)
    if each is not None:                      # called after each frame is tracked (and pruned)
        tracker.progress = lambda *_: each(tracker.session)
    return tracker.run({1: (key, box)}, (), key)[1]


@torch.inference_mode()
def bare(frames: np.ndarray, key: int, box, each=None) -> np.ndarray:
    """transformers' SAM 2 video API without the processor (it needs torchvision), nothing pruned."""
    count, height, width = frames.shape[:3]
    session = Sam2VideoInferenceSession(
        video=preprocess(frames, SIZE), video_height=height, video_width=width, inference_device=model.device,
        inference_state_device=model.device, video_storage_device="cpu", dtype=model.dtype,
        max_vision_features_cache_size=1,
    )
    index = session.obj_id_to_idx(1)
    x1, y1, x2, y2 = box
    points = torch.tensor([[x1, y1], [x2, y2]], dtype=torch.float32) * torch.tensor([SIZE / width, SIZE / height])
    session.add_point_inputs(index, key, {"point_coords": points[None, None].to(model.device),
                                          "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32).to(model.device)})
    session.remove_mask_inputs(index, key)
    session.obj_with_new_inputs.append(1)
    model(inference_session=session, frame_idx=key)
    masks = np.zeros((count, height, width), bool)
    for reverse in (False, True):
        for output in model.propagate_in_video_iterator(session, start_frame_idx=key, reverse=reverse):
            up = F.interpolate(output.pred_masks.float(), (height, width), mode="bilinear", align_corners=False)
            masks[output.frame_idx] = (up[:, 0] > 0)[0].cpu().numpy()
            if each is not None:
                each(session)
    return masks


# ----------------------------------------------------------------------------- tensor bytes a session holds
def tensor_bytes(obj, seen: set) -> int:
    """Bytes of the distinct tensor storages in nested dicts / lists / tuples (a view counts its whole storage)."""
    if isinstance(obj, torch.Tensor):
        if obj.numel() == 0:
            return 0
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


def state_bytes(session) -> int:
    """The tracking state: outputs per object (memories, pointers, masks), prompts, the vision-feature cache."""
    return tensor_bytes([session.output_dict_per_obj, session.point_inputs_per_obj, session.mask_inputs_per_obj,
                         session.cache._vision_features], set())


def memory(run, frames: np.ndarray, key: int, box) -> dict:
    """Peak tracking-state bytes and output entries kept over the run (sampled after every frame), and the bytes
    of preprocessed frames still held at the end (distinct storages: a view keeps its whole storage alive)."""
    peak, kept, last = [0], [0], [None]

    def sample(session):
        peak[0] = max(peak[0], state_bytes(session))
        kept[0] = max(kept[0], sum(len(entries) for outputs in session.output_dict_per_obj.values()
                                   for entries in outputs.values()))
        last[0] = session

    run(frames, key, box, each=sample)
    return {"peak": peak[0], "kept": kept[0], "frames_left": tensor_bytes(last[0].processed_frames, set())}


# ----------------------------------------------------------------------------- 1. same masks (also the warm-up)
height, width = args.size
video = make_video(frames=args.frames, size=(height, width), seed=args.seed)
key = args.frames // 2
box = target_box(video, key)
ours, theirs = studio(video.frames, key, box), bare(video.frames, key, box)
differ = int((ours != theirs).sum())
if ours.shape != theirs.shape or differ:
    sys.exit(f"FAIL: studio masks {ours.shape} differ from bare transformers {theirs.shape} in {differ} pixels "
             f"of {ours.size}")
print(f"masks identical: {ours.shape} {ours.dtype}, 0 differing pixels; key frame {key}, box "
      f"({', '.join(f'{v:g}' for v in box)}); {100 * ours.mean():.1f}% of pixels in the mask (random weights)")
if not ours.any() or ours.all():
    print("warning: the masks are all empty or all full, so 'identical' says little")

# ----------------------------------------------------------------------------- 2. time, interleaved
studio_s, bare_s = harness.interleaved(lambda: harness.seconds(lambda: studio(video.frames, key, box)),
                                       lambda: bare(video.frames, key, box), args.repeats)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.frames} frames at {height}x{width} "
      f"(model input {SIZE}x{SIZE}), one object, {args.repeats} repeats")
ratio = harness.report(studio_s, bare_s)
for name, xs in (("studio", studio_s), ("bare", bare_s)):
    print(f"  {name:<8}{args.frames / statistics.median(xs):>8.1f} frames/s")
if args.profile:
    harness.profile({"studio": lambda: studio(video.frames, key, box), "bare": lambda: bare(video.frames, key, box)})

# ----------------------------------------------------------------------------- 3. tracking state per frame
lengths = (args.frames, 10 * args.frames)
figures = {}
for count in lengths:
    clip = video if count == args.frames else make_video(frames=count, size=(height, width), seed=args.seed)
    clip_key = count // 2
    clip_box = target_box(clip, clip_key)
    for name, run in (("studio", studio), ("bare", bare)):
        figures[name, count] = memory(run, clip.frames, clip_key, clip_box)
frame_kb = 3 * SIZE * SIZE * model.dtype.itemsize / 1024
print(f"tracking state, peak over the run (tensor bytes the session keeps: outputs per object, prompts, vision-feature "
      f"cache; sampled after every frame); frames held at the end apart ({frame_kb:.0f} KB a preprocessed frame):")
print(f"{'run':<8}{'frames':>8}{'peak KB':>10}{'KB/frame':>10}{'outputs kept':>14}{'frames held KB':>16}")
for (name, count), m in figures.items():
    print(f"{name:<8}{count:>8}{m['peak'] / 1024:>10.1f}{m['peak'] / 1024 / count:>10.2f}{m['kept']:>14}"
          f"{m['frames_left'] / 1024:>16.1f}")
short, long = lengths
per_frame = {}
for name in ("studio", "bare"):
    grown = figures[name, long]["peak"] / figures[name, short]["peak"]
    per_frame[name] = grown * short / long
    print(f"  {name}: {long} frames hold {grown:.2f}x the state of {short} frames: x{per_frame[name]:.2f} per frame")
print(f"studio state per frame {'stays flat' if per_frame['studio'] <= 1.05 else 'GROWS'} with length (at most "
      f"{figures['studio', long]['kept']} of {long} frames' outputs kept; bare keeps "
      f"{figures['bare', long]['kept']})")
held = figures["studio", long]["frames_left"] / 1024
if held > 1.5 * frame_kb:
    print(f"note: the studio empties each tracked frame but the key frame, yet {held:.0f} KB of frames "
          f"({held / frame_kb:.0f} frames) are still held at the end: the session's frames are views of one "
          "preprocessed tensor, and the key frame's view keeps all of it alive")

print(f"segment_overhead_ratio: {ratio:.3f}")
