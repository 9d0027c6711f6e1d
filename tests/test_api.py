"""The studio over HTTP: a launched server and a real gradio_client, as an API user sees it."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client.exceptions import AppError

from pipelines.core.video import read_video


def frames_of(result) -> np.ndarray:
    frames, fps, codec = read_video(result[0])
    assert codec == "h264" and fps == 8
    return frames


def test_timelapse_returns_a_playable_h264_mp4_with_the_requested_frames(client):
    result = client.predict(prompt="ice melting", api_name="/timelapse")
    import av

    with av.open(result[0]) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(stream)) == 16
    info = result[-1]
    assert info["seed"] == 0 and info["num_frames"] == 16 and info["size"] == [64, 64]
    assert {"load", "denoise", "decode", "encode_mp4"} <= set(info["timings"])
    assert info["prompt_tokens"] > 0 and info["warnings"] == []


def test_keyframes_through_the_api(client):
    result = client.predict(prompt="a rose", keyframes="0: a closed rose bud\n24: a rose in full bloom",
                            num_frames=32, steps=3, api_name="/timelapse")
    assert frames_of(result).shape == (32, 64, 64, 3)
    assert result[-1]["keyframes"] == {"0": "a closed rose bud", "24": "a rose in full bloom"}


def test_same_seed_gives_identical_frames_another_seed_different_ones(client):
    call = lambda seed: frames_of(client.predict(prompt="a seed grows", steps=3, seed=seed, api_name="/timelapse"))  # noqa: E731
    first, again, other = call(123), call(123), call(124)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_long_prompt_warning_reaches_the_user(client):
    prompt = " ".join(f"stage{i}" for i in range(60))      # 3 tokens each ("stage", "1", "2"): 180 tokens
    result = client.predict(prompt=prompt, steps=2, api_name="/timelapse")
    assert result[1].startswith("⚠️") and "dropped" in result[1]
    (warning,) = result[-1]["warnings"]
    dropped = warning.split("“", 1)[1]                     # the first dropped words, then how many more
    assert dropped.startswith("stage") and dropped.endswith("more words)”")


@pytest.mark.parametrize("arguments, message", [
    (dict(prompt=""), "Write a prompt"),
    (dict(prompt="ice", num_frames=200), "200 is greater than maximum value 64"),
    (dict(prompt="ice", num_frames=32), "needs keyframes"),
    (dict(prompt="ice", keyframes="zero: bud"), "does not parse"),
    (dict(prompt="ice", keyframes="0: bud\n40: bloom"), "past the last frame"),
    (dict(prompt="ice", steps=0), "0 is less than minimum value 1"),
    (dict(prompt="ice", seed=-1), "-1 is less than minimum value 0"),
])
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, server_outputs, arguments, message):
    before = sorted(server_outputs.glob("*")) if server_outputs.exists() else []
    with pytest.raises(AppError, match=message):
        client.predict(api_name="/timelapse", **arguments)
    after = sorted(server_outputs.glob("*")) if server_outputs.exists() else []
    assert after == before                                   # nothing written for a refused call
    assert client.predict(prompt="still here", steps=1, api_name="/timelapse")[-1]["num_frames"] == 16


def test_system_endpoint_reports_the_cache(client):
    client.predict(prompt="warm", steps=1, api_name="/timelapse")
    summary, table, keys = client.predict(api_name="/system")
    assert "tiny" in summary and "**loads**" in summary
    assert table["headers"] == ["component", "from", "adapters", "device", "MiB", "in use"]
    motion = next(row for row in table["data"] if row[0] == "motion UNet (float32)" and "magic_adapter_s" in row[2])
    assert motion[1] == "RealisticVisionV60B1_v51VAE.safetensors, motion_module.ckpt"
    assert motion[2] == "magic_adapter_s.ckpt ×4, magic_adapter_t" and motion[3] == "cpu"
    assert any(k.startswith("tiny|unet-motion|") for k in keys) and any("clip-text" in k for k in keys)


def test_stop_interrupts_the_running_call_of_that_session_only(server):
    from types import SimpleNamespace

    from pipelines.core.errors import Cancelled
    from studio.engine import _STOP_FLAGS

    engine, _ = server
    mine, other = SimpleNamespace(session_hash="mine"), SimpleNamespace(session_hash="other")
    with engine.reporter(mine, lambda *a, **k: None) as report_mine, \
            engine.reporter(other, lambda *a, **k: None) as report_other:
        engine.stop(mine)
        with pytest.raises(Cancelled):
            report_mine(0.5, "Denoising step 2/4")
        report_other(0.5, "Denoising step 2/4")     # another browser's call goes on
    assert "mine" not in _STOP_FLAGS and "other" not in _STOP_FLAGS   # nothing kept once the calls end


def test_the_gpu_call_takes_only_picklable_arguments(server):
    """ZeroGPU pickles a @spaces.GPU function's arguments into its GPU worker; an unpicklable one fails there."""
    import pickle

    import gradio as gr

    from pipelines.timelapse.pipeline import TimelapseRequest
    from studio.engine import Reporter, run_on_gpu

    engine, _ = server
    job = TimelapseRequest(prompt="ice", steps=1, width=64, height=64)
    arguments = pickle.loads(pickle.dumps((engine.name, "timelapse", job, Reporter(gr.Progress(track_tqdm=True), "s"))))
    result = run_on_gpu(*arguments[:3], Reporter(lambda *a, **k: None))
    assert result.frames.shape == (16, 64, 64, 3)
    pickle.dumps(result)                              # and the result travels back


def test_generated_clips_are_shown_as_results_not_upload_boxes(client):
    """An output video that is also an event's input ("Segment this clip") would default to an upload box
    ("Drop Video Here"); every result video says it is not one."""
    outputs = ("timelapse-video", "identity-video", "safety-guarded", "safety-unguarded", "segmentation-video")
    props = {c["props"].get("elem_id"): c["props"] for c in client.config["components"]}
    assert all(props[name]["interactive"] is False for name in outputs), {n: props[n].get("interactive")
                                                                           for n in outputs}
    assert props["segmentation-input"].get("interactive") is not False          # the one video you upload


def test_whole_number_parameters_are_typed_as_integers_and_steps_default_to_the_mode(client):
    """view_api() is what a client reads first: frames, steps and seeds are integers there, not floats, and steps and
    guidance are optional (left out: the mode's own, see tests/test_fast_modes.py)."""
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for api_name, whole in (("/timelapse", ("num_frames", "steps", "seed")), ("/identity", ("num_frames", "steps")),
                            ("/safe_generate", ("num_frames", "steps", "seed")),
                            ("/segment", ("ground_frames", "reground_every"))):
        parameters = {p["parameter_name"]: p for p in endpoints[api_name]["parameters"]}
        for name in whole:
            assert parameters[name]["type"]["type"] == "integer", (api_name, name, parameters[name]["type"])
        if "steps" in parameters:
            assert parameters["steps"]["parameter_has_default"] and parameters["steps"]["parameter_default"] is None
            assert parameters["guidance"]["parameter_default"] is None
