"""SAM 2 tracking in the studio against a bare transformers SAM 2 run: same masks, speed, memory per frame.

Both use the SAME tiny Sam2VideoModel (one ModelCache, tiny profile), the same synthetic video
(pipelines/segmentation/synthetic.py, exact masks), the same box prompt on a mid-video key frame (the target's exact box), the
same preprocessing (pipelines.segmentation.preprocess) and a Sam2VideoInferenceSession built with the same arguments.
The studio is `Tracker(model, frames).run({1: (key, box)}, (), key)`: it prunes state as it goes. The bare run
is written out below as transformers documents it: box as two points labelled 2 and 3, `model(..., frame_idx=key)`,
`propagate_in_video_iterator` forward then reverse from the key frame, bilinear upsampling, `> 0`; it keeps
everything.
  1. the masks must be identical (else exit 1; the number of differing pixels is printed);
  2. both are timed (one warm-up each, interleaved repeats), frames per second and the ratio of medians;
  3. memory: the tensor bytes the session holds (outputs per object, prompts, the vision-feature cache, and the
     preprocessed frames held), sampled after every frame, peak over the run, for a video of --memory-frames and a
     10x longer one of the same size, studio and bare. Exit 1 if the studio's peak on the longer video is more than
     1.10x the shorter one's: memory must not grow with the video (so its memory per frame of video falls ~10x).
  4. the whole call's peak RSS, decode -> segment -> export (overlay MP4, masks zip, COCO RLE), each length in a
     fresh process, the models loaded and the peak reset first: what is over the clip's own bytes (its decoded
     frames and one copy of its masks) must not grow with its length. Exit 1 if that overhead on the 10x longer clip
     is more than 1.5x the shorter one's plus 32 MiB (the exports made whole-clip float32 copies: ~12x the frames).

    .venv/bin/python bench/segmentation.py [--repeats 7] [--frames 16] [--memory-frames 80] [--size 96 128]
                                           [--threads 1] [--profile]

Last line: `segment_overhead_ratio: <studio median / bare median>` (goal <= 1.10).
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
# --memory-frames 56 (and 560): about the shortest whose memory checks pass (the outputs kept near the current and
# the key frame must reach their bound); the default is 80.
SMOKE_ARGS = ["--repeats", "1", "--frames", "4", "--memory-frames", "56", "--size", "48", "48", "--call-size", "48", "48",
              "--threads", "1"]
FIGURES = ("segment_overhead_ratio",)

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse
import inspect
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _harness as harness
import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

from pipelines.core.cache import ModelCache
from pipelines.segmentation.models import SegmentationRegistry
from pipelines.segmentation.pipeline import KEEP_NEAR, Tracker, preprocess
from pipelines.segmentation.synthetic import make_video

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=7, help="timed runs of each, after one warm-up each")
parser.add_argument("--frames", type=int, default=16, help="frames of the timed video")
parser.add_argument("--memory-frames", type=int, default=5 * KEEP_NEAR, help="frames of the memory check's shorter "
                    "video (it also runs one 10x as long); the default is long enough for the outputs the tracker "
                    f"keeps (within {KEEP_NEAR} frames of the current and the key frame) to reach their bound")
parser.add_argument("--size", type=int, nargs=2, default=[96, 128], metavar=("HEIGHT", "WIDTH"),
                    help="video frame size in pixels (the model's own input stays its square size)")
parser.add_argument("--seed", type=int, default=0, help="the synthetic video's seed")
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default). On a busy "
                    "machine use 1: torch's thread pool stalls badly when other processes share the cores")
parser.add_argument("--profile", action="store_true", help="also cProfile one run of each and print the top")
parser.add_argument("--call-size", type=int, nargs=2, default=[180, 320], metavar=("HEIGHT", "WIDTH"),
                    help="frame size of the whole-call memory check (4.)")
parser.add_argument("--whole-call", type=int, default=0, help=argparse.SUPPRESS)   # the child of check 4.
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
    if each is not None:     # after each frame is tracked, before the tracker lets go of what it will not read again
        prune = tracker._prune

        def sampled(frame: int, key: int) -> None:
            each(tracker.session)
            prune(frame, key)

        tracker._prune = sampled
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


def frame_bytes(session) -> int:
    """The preprocessed frames the session holds: the studio's LazyFrames' `held` (made when read, let go once
    tracked); the bare session's dict of views of the whole preprocessed clip (counted once)."""
    frames = session.processed_frames
    return tensor_bytes(getattr(frames, "held", frames), set())


def memory(run, frames: np.ndarray, key: int, box) -> dict:
    """Peaks over the run, sampled after every frame: tracking state + preprocessed frames held (the memory figure),
    each part apart, and the output entries kept."""
    peak = {"total": 0, "state": 0, "frames": 0, "kept": 0}

    def sample(session):
        state, held = state_bytes(session), frame_bytes(session)
        kept = sum(len(entries) for outputs in session.output_dict_per_obj.values() for entries in outputs.values())
        for name, value in (("total", state + held), ("state", state), ("frames", held), ("kept", kept)):
            peak[name] = max(peak[name], value)

    run(frames, key, box, each=sample)
    return peak


# ----------------------------------------------------------------------------- 4., the child: one whole call
def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def whole_call(count: int, size) -> None:
    """Decode -> segment -> export one synthetic clip of `count` frames; print baseline, peak and the clip's bytes."""
    import ctypes
    import json
    import tempfile

    from pipelines.core.video import read_clip, write_mp4
    from pipelines.segmentation import mask_export
    from pipelines.segmentation import pipeline as segmentation
    from pipelines.segmentation.pipeline import SegmentationPipeline, SegmentationRequest

    segmentation.MAX_FRAMES = max(segmentation.MAX_FRAMES, count)     # the bench goes past the studio's cap
    folder = Path(tempfile.mkdtemp(prefix="segment-call-"))
    clip = make_video(frames=count, size=tuple(size), seed=args.seed)
    path = write_mp4(clip.frames, folder / "clip.mp4", fps=8)
    del clip
    run = SegmentationPipeline(ModelCache("cpu"), SegmentationRegistry("tiny"))
    warm = make_video(frames=4, size=tuple(size), seed=args.seed).frames
    run(SegmentationRequest(frames=warm, expression="the block", box_threshold=0.05, text_threshold=0.05))
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:      # the kernel's high-water mark restarts from here
        f.write("5")
    baseline = rss_now()
    frames, fps = read_clip(path, max_frames=count, max_seconds=1e9, max_pixels=10**8)
    result = run(SegmentationRequest(frames=frames, expression="the block", fps=fps, box_threshold=0.05,
                                     text_threshold=0.05))
    write_mp4(mask_export.overlay_frames(frames, result.masks, result.object_ids), folder / "overlay.mp4", fps=fps)
    mask_export.masks_zip(result.masks, result.object_ids, folder / "masks.zip")
    mask_export.write_coco_rle(result.masks, result.object_ids, "the block", folder / "masks.json")
    # VmHWM, not getrusage's ru_maxrss: a child keeps its parent's ru_maxrss across exec, and the reset above only
    # lowers the address space's own high-water mark.
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"baseline": baseline, "peak": peak, "clip": frames.nbytes + result.masks.nbytes,
                      "objects": len(result.object_ids)}))
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()


if args.whole_call:
    whole_call(args.whole_call, args.call_size)
    sys.exit(0)


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

# ----------------------------------------------------------------------------- 3. memory, short and 10x longer
lengths = (args.memory_frames, 10 * args.memory_frames)
figures = {}
for count in lengths:
    clip = video if count == args.frames else make_video(frames=count, size=(height, width), seed=args.seed)
    clip_key = count // 2
    clip_box = target_box(clip, clip_key)
    for name, run in (("studio", studio), ("bare", bare)):
        figures[name, count] = memory(run, clip.frames, clip_key, clip_box)
frame_kb = 3 * SIZE * SIZE * model.dtype.itemsize / 1024
print(f"memory, peak over the run (tensor bytes the session holds, sampled after every frame): tracking state "
      f"(outputs per object, prompts, vision-feature cache) + preprocessed frames held ({frame_kb:.0f} KB a frame):")
print(f"{'run':<8}{'frames':>8}{'peak KB':>10}{'KB/frame':>10}{'state KB':>10}{'frames KB':>11}{'held':>6}"
      f"{'outputs kept':>14}")
for (name, count), m in figures.items():
    print(f"{name:<8}{count:>8}{m['total'] / 1024:>10.1f}{m['total'] / 1024 / count:>10.2f}{m['state'] / 1024:>10.1f}"
          f"{m['frames'] / 1024:>11.1f}{m['frames'] / 1024 / frame_kb:>6.0f}{m['kept']:>14}")
short, long = lengths
grown = {}
for name in ("studio", "bare"):
    grown[name] = figures[name, long]["total"] / figures[name, short]["total"]
    print(f"  {name}: {long} frames hold {grown[name]:.2f}x the memory of {short} frames; memory per frame of video "
          f"x{grown[name] * short / long:.2f}")
flat = grown["studio"] <= 1.10
print(f"studio memory {'stays flat' if flat else 'GROWS'} with video length (goal: at most 1.10x for 10x the frames; "
      f"at most {figures['studio', long]['kept']} of {long} frames' outputs and "
      f"{figures['studio', long]['frames'] / 1024 / frame_kb:.0f} preprocessed frames held; bare keeps "
      f"{figures['bare', long]['kept']} and {figures['bare', long]['frames'] / 1024 / frame_kb:.0f})")
if not flat:
    print(f"FAIL: the studio's peak memory grows {grown['studio']:.2f}x over the {long}-frame video (goal <= 1.10x)")

# ----------------------------------------------------------------------------- 4. the whole call's peak RSS
import json  # noqa: E402
import subprocess  # noqa: E402

calls = {}
for count in lengths:
    done = subprocess.run([sys.executable, __file__, "--whole-call", str(count), "--call-size", *map(str, args.call_size),
                           "--seed", str(args.seed), "--threads", str(args.threads)],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode:
        sys.exit(f"FAIL: the whole-call run of {count} frames failed:\n{done.stderr[-2000:]}")
    calls[count] = json.loads(done.stdout.strip().splitlines()[-1])
MIB = 2**20
print(f"whole call (decode -> segment -> export: overlay MP4, masks zip, COCO RLE), {args.call_size[0]}x"
      f"{args.call_size[1]} frames, peak RSS over the loaded models, each in a fresh process:")
print(f"{'frames':>8}{'objects':>9}{'clip MiB':>10}{'peak - base MiB':>17}{'overhead MiB':>14}")
overhead = {}
for count, c in calls.items():
    overhead[count] = (c["peak"] - c["baseline"] - c["clip"]) / MIB
    print(f"{count:>8}{c['objects']:>9}{c['clip'] / MIB:>10.1f}{(c['peak'] - c['baseline']) / MIB:>17.1f}"
          f"{overhead[count]:>14.1f}")
call_flat = overhead[long] <= 1.5 * max(overhead[short], 0) + 32
print(f"the whole call's overhead over the clip's own bytes {'stays flat' if call_flat else 'GROWS'}: "
      f"{overhead[short]:.1f} MiB at {short} frames, {overhead[long]:.1f} MiB at {long} (goal: at most 1.5x + 32 MiB)")
if not call_flat:
    print("FAIL: the whole call's memory grows with the clip beyond its own bytes")

print(f"segment_overhead_ratio: {ratio:.3f}")
if not flat or not call_flat:
    sys.exit(1)
