"""Video in and out. One writer for the whole studio: H.264 / yuv420p MP4 that every browser plays."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) floats in [0, 1] -> uint8, rounding as image libraries do."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_mp4(frames, path: str | Path, fps: float = 8, crf: int = 18) -> Path:
    """Write (T, H, W, 3) uint8 frames as H.264 (yuv420p, +faststart) at `fps` (a fractional rate is kept: a clip
    read at 14.3 fps plays as long as its source). `frames` may also be an iterable of (H, W, 3) frames, written as
    they come: an export made frame by frame is never held whole.

    The encoder runs as an ffmpeg subprocess (imageio-ffmpeg's bundled binary) rather than in-process
    through PyAV: in a process that has just run torch, in-process libx264 produced a different
    bitstream for the same frames now and then (stale memory read somewhere in the encode path), and
    same seed => same file is a promise the studio makes. A fresh process costs ~50 ms.

    yuv420p halves chroma resolution, so odd sizes are padded by one edge pixel (repeated) rather than
    refused: the picture keeps every source pixel.
    """
    import imageio_ffmpeg

    if isinstance(frames, (np.ndarray, list, tuple)):
        frames = to_uint8(np.asarray(frames))
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
            raise ValueError(f"expected frames shaped (T, H, W, 3), got {frames.shape}")
    stream = iter(frames)
    first = next(stream, None)
    if first is None:
        raise ValueError("expected frames shaped (T, H, W, 3), got none")
    first = to_uint8(np.asarray(first))
    if first.ndim != 3 or first.shape[-1] != 3:
        raise ValueError(f"expected frames shaped (H, W, 3), got {first.shape}")
    height, width = first.shape[:2]
    pad_h, pad_w = height % 2, width % 2
    path = Path(path)
    writer = imageio_ffmpeg.write_frames(
        str(path), (width + pad_w, height + pad_h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
        output_params=["-crf", str(crf), "-preset", "medium", "-movflags", "+faststart"],
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in itertools.chain([first], stream):
            frame = to_uint8(np.asarray(frame))
            if frame.shape[:2] != (height, width):
                raise ValueError(f"every frame must be {width}x{height}, not {frame.shape[1]}x{frame.shape[0]}")
            if pad_h or pad_w:
                frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
    return path


def read_video(path: str | Path) -> tuple[np.ndarray, float, str]:
    """(frames (T, H, W, 3) uint8, fps, codec name) of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate), stream.codec_context.name


VFR_SPREAD = 0.1     # frame intervals spread more than this around their median: a variable frame rate


def read_clip(path: str | Path, max_frames: int, max_seconds: float, max_pixels: int,
              details: dict | None = None) -> tuple[np.ndarray, float]:
    """(frames (T, H, W, 3) uint8 in display orientation, fps) of an uploaded video, refused with a message a person
    can act on when it is not a video, has no video stream or no frame, is over the caps (checked on the header
    before decoding where the container says, and again while decoding: headers can lie), or changes size mid-stream.

    - Rotation: a phone's display matrix (90°, 180°, 270°) is applied, so the frames are what a player shows, and
      "left" is the viewer's left.
    - Timing: `fps` is the frame count over the clip's duration from its timestamps, so the studio's output lasts as
      long as the source; a variable frame rate is shown at that constant rate (same duration), and said.
    `details`, if given, is filled with what a person may want to know: rotation, duration_s, variable_rate."""
    from pipelines.core.errors import InputError

    name = Path(path).name
    try:
        container = av.open(str(path))
    except Exception as error:   # PyAV raises several kinds for files that are not media
        raise InputError(f"{name} is not a video we can read ({type(error).__name__}).") from None
    with container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
            raise InputError(f"{name} has no video stream (it holds {kinds}): upload a video file.")
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            # FFmpeg reads a photo as a one-frame "video"; a person who uploads one has picked the wrong file.
            raise InputError(f"{name} is a still image ({container.streams.video[0].codec_context.name}), not a "
                             "video: upload a video clip.")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise InputError(f"{name} is {width}×{height}; the studio takes videos up to {max_pixels / 1e6:.1f} "
                             "megapixels a frame (1080p). Downscale it first.")
        seconds = float(stream.duration * stream.time_base) if stream.duration else (
            container.duration / av.time_base if container.duration else None)
        if seconds is not None and seconds > max_seconds:
            raise InputError(f"{name} is {seconds:.0f} s long; the studio segments at most {max_seconds:.0f} s. "
                             "Trim it first.")
        if stream.frames and stream.frames > max_frames:       # the container's count: refused before decoding
            raise InputError(f"{name} has {stream.frames} frames; the studio segments at most {max_frames}. "
                             "Trim it or lower its frame rate.")
        # Frames go into one array sized from the container's count when it gives one (a list, then a stack, would
        # hold the clip twice); frames past that count, or all of them when there is none, into `extra`.
        clip, extra, times, rotation, size = None, [], [], 0, None
        try:
            for frame in container.decode(stream):
                decoded = len(times)
                if decoded == max_frames:
                    raise InputError(f"{name} has more than {max_frames} frames; the studio segments at most "
                                     f"{max_frames}. Trim it or lower its frame rate.")
                if size is None:
                    size, rotation = (frame.width, frame.height), int(round((frame.rotation or 0) / 90)) % 4
                elif (frame.width, frame.height) != size:
                    raise InputError(f"{name} changes size mid-stream, from {size[0]}×{size[1]} to "
                                     f"{frame.width}×{frame.height} at frame {decoded}: re-encode it at one size "
                                     "(e.g. ffmpeg -i in.mp4 -vf scale=W:H out.mp4).")
                picture = frame.to_ndarray(format="rgb24")
                picture = np.rot90(picture, rotation) if rotation else picture
                if clip is None and stream.frames:
                    clip = np.empty((stream.frames, *picture.shape), np.uint8)
                if clip is not None and decoded < len(clip):
                    clip[decoded] = picture
                else:
                    extra.append(np.ascontiguousarray(picture))
                times.append(None if frame.time is None else float(frame.time))
        except InputError:
            raise
        except Exception as error:
            if not times:
                raise InputError(f"{name} could not be decoded ({type(error).__name__}): the file may be "
                                 "corrupt.") from None
            # a truncated file: keep what decoded
        average = float(stream.average_rate or 8)
    if not times:
        raise InputError(f"{name} has no frames we can decode.")
    fps, variable, duration = _timing(times, average)
    if details is not None:
        details.update(rotation=rotation * 90, duration_s=round(duration, 3), variable_rate=variable)
    if clip is None:
        return np.stack(extra), fps
    clip = clip[:len(times) - len(extra)]                      # a container that overcounted: the frames decoded
    return (np.concatenate([clip, np.stack(extra)]) if extra else clip), fps


def _timing(times: list[float | None], average: float) -> tuple[float, bool, float]:
    """(frames per second over the clip's duration, whether the rate varies, duration in seconds). The duration is
    the span of the timestamps plus one typical interval (the last frame shows that long); without usable
    timestamps, the stream's average rate."""
    stamps = [t for t in times if t is not None]
    if len(stamps) != len(times) or len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return average, False, len(times) / average
    intervals = np.diff(np.array(stamps))
    typical = float(np.median(intervals))
    variable = bool(typical > 0 and np.max(np.abs(intervals - typical)) > VFR_SPREAD * typical)
    duration = stamps[-1] - stamps[0] + typical
    fps = len(times) / duration
    return (average if abs(fps - average) < 1e-3 * average else round(fps, 3)), variable, duration
