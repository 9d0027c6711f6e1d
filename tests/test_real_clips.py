"""Real footage as phones and editors write it, made here with PyAV and FFmpeg: a display-rotated clip comes back
as a player shows it, a clip that changes size mid-stream or is too long is refused with a message, and a
variable-frame-rate clip keeps its duration."""

from __future__ import annotations

import subprocess
from fractions import Fraction

import av
import imageio_ffmpeg
import numpy as np
import pytest

from pipelines.core.errors import InputError
from pipelines.core.video import read_clip, read_video, write_mp4

CAPS = dict(max_frames=300, max_seconds=60.0, max_pixels=1920 * 1080)


def marked_frames(count: int = 6, height: int = 48, width: int = 64) -> np.ndarray:
    """Grey frames with a white block at the top left: where it lands says how a clip was turned."""
    frames = np.full((count, height, width, 3), 90, np.uint8)
    frames[:, :12, :20] = 255
    return frames


def ffmpeg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], capture_output=True,
                          check=True, timeout=60)


def rotated(tmp_path, degrees: int):
    """The clip with a display matrix turning it `degrees` counter-clockwise (FFmpeg's -display_rotation, as a
    phone held upright writes 90 or 270), the coded pictures untouched; and FFmpeg's own autorotated decode of it,
    what a player shows."""
    source = write_mp4(marked_frames(), tmp_path / "source.mp4")
    path = tmp_path / f"rotated{degrees}.mp4"
    ffmpeg("-display_rotation:v:0", str(degrees), "-i", str(source), "-c", "copy", str(path))
    shown = ffmpeg("-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-").stdout
    height, width = (64, 48) if degrees % 180 else (48, 64)
    return path, np.frombuffer(shown, np.uint8).reshape(-1, height, width, 3)


@pytest.mark.parametrize("degrees, corner", [(90, "bottom left"), (-90, "top right"), (180, "bottom right")])
def test_a_display_rotated_clip_is_read_as_a_player_shows_it(tmp_path, degrees, corner):
    path, shown = rotated(tmp_path, degrees)
    details: dict = {}
    frames, fps = read_clip(path, **CAPS, details=details)
    assert frames.shape == shown.shape and details["rotation"] == degrees % 360
    assert np.abs(frames.astype(int) - shown).max() <= 40 and np.abs(frames.astype(int) - shown).mean() < 1.5
    ys, xs = np.nonzero(frames[0, ..., 0] > 200)
    h, w = frames.shape[1:3]
    where = ("top" if ys.mean() < h / 2 else "bottom") + " " + ("left" if xs.mean() < w / 2 else "right")
    assert where == corner


def test_the_segment_endpoint_answers_in_the_viewers_orientation(client, tmp_path):
    """The overlay, the key frame and "left/right" are all in display orientation: a portrait phone clip (coded
    landscape, 90° in its display matrix) comes back portrait."""
    from gradio_client import handle_file

    path, shown = rotated(tmp_path, 90)
    overlay, key_image, *_, info = client.predict(video=handle_file(str(path)), expression="the block",
                                                  box_threshold=0.05, api_name="/segment")
    frames, _, _ = read_video(overlay)
    assert frames.shape[1:3] == shown.shape[1:3] == (64, 48)
    assert info["size"] == [48, 64] and info["source"]["rotation"] == 90


def test_a_clip_that_changes_size_mid_stream_is_refused_naming_both_sizes(tmp_path):
    """Two MPEG-TS segments of different sizes joined, as a stream that switches resolution is."""
    parts = []
    for k, (h, w) in enumerate([(48, 64), (64, 96)]):
        mp4 = write_mp4(marked_frames(4, h, w), tmp_path / f"part{k}.mp4")
        ts = tmp_path / f"part{k}.ts"
        ffmpeg("-i", str(mp4), "-c", "copy", "-f", "mpegts", str(ts))
        parts.append(ts.read_bytes())
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(parts))
    with pytest.raises(InputError, match=r"joined.ts changes size mid-stream, from 64×48 to 96×64 at frame 4"):
        read_clip(joined, **CAPS)


def test_a_clip_over_the_frame_cap_is_refused_from_its_container_before_decoding(tmp_path, monkeypatch):
    path = write_mp4(marked_frames(12), tmp_path / "long.mp4")
    decoded = []
    real = av.container.InputContainer.decode

    def counting(self, *args, **kwargs):
        for frame in real(self, *args, **kwargs):
            decoded.append(frame)
            yield frame

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    with pytest.raises(InputError, match="long.mp4 has 12 frames; the studio segments at most 10"):
        read_clip(path, max_frames=10, max_seconds=60.0, max_pixels=1920 * 1080)
    assert decoded == []


def write_variable_rate(path, times: list[float]) -> None:
    """An H.264 MP4 whose frames come at the given times (seconds), in a millisecond time base."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(marked_frames(1)[0] // (1 + k % 2), format="rgb24").reformat(
                format="yuv420p")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_variable_frame_rate_clip_keeps_its_duration_and_says_so(tmp_path):
    """Frames at 10 fps, then 30 fps, then 10 again: 8.2 s of video. Shown at one constant rate, the overlay lasts
    as long as the source (the stream's average rate would have re-timed it)."""
    times = [*np.arange(0, 3, 0.1), *np.arange(3, 5, 1 / 30), *np.arange(5, 8.2, 0.1)]
    path = tmp_path / "vfr.mp4"
    write_variable_rate(path, times)
    details: dict = {}
    frames, fps = read_clip(path, **CAPS, details=details)
    assert len(frames) == len(times) and details["variable_rate"]
    duration = times[-1] - times[0] + 0.1                          # the last frame shows one typical interval
    assert details["duration_s"] == pytest.approx(duration, abs=1e-3) and fps == pytest.approx(len(times) / duration, rel=1e-4)
    shown, shown_fps, _ = read_video(write_mp4(frames, tmp_path / "overlay.mp4", fps=fps))
    assert len(shown) / shown_fps == pytest.approx(duration, abs=1 / fps)
    constant = write_mp4(marked_frames(16), tmp_path / "constant.mp4", fps=12)
    again: dict = {}
    assert read_clip(constant, **CAPS, details=again)[1] == 12 and not again["variable_rate"]


def test_a_truncated_clip_keeps_the_frames_that_decode_and_nothing_after_them(tmp_path):
    """The container still says 24 frames, the data stops early: the clip is the frames that decode, each what
    PyAV decodes, and no unfilled rows after them."""
    frames = np.random.default_rng(0).integers(0, 255, (24, 48, 64, 3), np.uint8)   # noise: the data outweighs the index
    whole = write_mp4(frames, tmp_path / "whole.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:int(whole.stat().st_size * 0.6)])
    with av.open(str(cut)) as container:
        said = container.streams.video[0].frames
        decoded = []
        try:
            for frame in container.decode(video=0):
                decoded.append(frame.to_ndarray(format="rgb24"))
        except Exception:          # the cut: what decoded before it stays
            pass
    assert said == 24 and 0 < len(decoded) < 24
    clip, _ = read_clip(cut, **CAPS)
    assert clip.shape == (len(decoded), 48, 64, 3) and np.array_equal(clip, np.stack(decoded))
