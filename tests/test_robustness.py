"""Hostile input on every API endpoint: generated malformed values for every parameter, each answered with a
clear message (or, for odd but legal values, a result), and a good request after every parameter's cases still
answers. The cases come from each parameter's type in the server's own API description, so a new parameter or
endpoint is fuzzed without anyone writing its cases."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from pipelines.core.checks import MAX_TEXT_CHARS
from pipelines.core.video import write_mp4
from pipelines.segmentation.synthetic import make_video
from tests.conftest import ROOT

PHOTO = ROOT / "assets" / "examples" / "astronaut.jpg"
GENERIC = ("upstream Gradio app has raised an exception", "Traceback", "Error(", "NoneType")
MAX_MESSAGE_CHARS = 600


# ----------------------------------------------------------------------------- files a hostile client sends
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 40_000) -> bytes:
    """A 100-byte PNG whose header declares side² pixels (1.6 gigapixels for 40,000): decoding it would take
    4.8 GB. Only its header may ever be read."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Corrupt, mislabelled, empty and oversized files, plus the good ones."""
    folder = tmp_path_factory.mktemp("hostile")
    clip = write_mp4(make_video(frames=8, size=(64, 64)).frames, folder / "clip.mp4", fps=8)
    rng = np.random.default_rng(0)
    made = {
        "clip.mp4": clip.read_bytes(),
        "random.png": rng.bytes(4096),
        "random.mp4": rng.bytes(4096),
        "empty.png": b"",
        "empty.mp4": b"",
        "text.png": b"a photo, honestly\n" * 20,
        "bomb.png": bomb_png(),
        "bomb_as_video.mp4": bomb_png(),
        "clip_as_photo.png": clip.read_bytes(),
        "photo_as_video.mp4": PHOTO.read_bytes(),
        "truncated.mp4": clip.read_bytes()[: len(clip.read_bytes()) // 3],
        "truncated.jpg": PHOTO.read_bytes()[:2000],
        "notes.txt": b"not media\n",
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in made}


# ----------------------------------------------------------------------------- cases from parameter types
def _strings() -> list:
    return [
        "x" * (MAX_TEXT_CHARS + 1),                 # over the limit
        "漢字🙂" * (MAX_TEXT_CHARS // 3 + 1),          # over the limit in characters, far more in bytes
        "a\x00b\x07c\x1b[2J\u202e\ufeff",           # control characters, bidi override, BOM
        "../../../../etc/passwd",                   # path-like text is text
        "🙂🎞️ ünïcödé 测试",
        "",
    ]


WRONG_TYPES = [12, 3.5, True, ["a", "b"], {"a": 1}]


def cases_for(parameter: dict, files: dict[str, Path], first_text: bool = True) -> list[tuple[str, object, bool]]:
    """(description, value, must_fail) for one parameter of the server's API description. Odd but legal texts
    (each one a whole generation) go to an endpoint's first text parameter only; every text gets the rest."""
    kind = parameter["python_type"]["type"]
    out: list[tuple[str, object, bool]] = [("None", None, parameter["parameter_has_default"] is False)]
    numbers = ("abc", "1e3", 1e308, -1e308, 2**70, -(2**70), [1], {"v": 1})   # NaN and ±inf: raw HTTP, below
    if kind == "str":
        out += [(f"text {s[:12]!r}…", s, len(s) > MAX_TEXT_CHARS) for s in _strings()
                if first_text or len(s) > MAX_TEXT_CHARS]
        out += [(f"type {type(v).__name__}", v, True) for v in WRONG_TYPES[:1] + WRONG_TYPES[3:]]
    elif kind in ("float", "int"):
        out += [(repr(v), v, True) for v in numbers]
        out += [("-1", -1, kind == "int")]
        if kind == "int":
            out += [("1.5", 1.5, True)]
    elif kind == "bool":
        out += [(repr(v), v, True) for v in ("yes", 2, [True], {"a": 1})]
    elif kind.startswith("Literal["):
        out += [(repr(v), v, True) for v in ("not one of them", 0, ["x"], "")]
    elif kind.startswith("list[Literal["):
        out += [(repr(v), v, True) for v in ("nudity", ["not one of them"], [1], {"a": 1})]
    elif kind == "filepath":
        out += [(f"plain string {v!r}", v, True) for v in ("clip.mp4", "/etc/passwd", "https://example.com/a.mp4")]
        out += [(f"type {type(v).__name__}", v, True) for v in (12, ["a"], {"path": 3})]
        # content decides, not the name: a real clip named .png is a clip
        out += [(name, handle_file(str(path)), name != "clip_as_photo.png") for name, path in files.items()
                if name != "clip.mp4"]
    elif kind == "list[filepath]":
        out += [("[]", [], True), ("plain string", "photo.png", True), ("[plain string]", ["photo.png"], True),
                ("[12]", [12], True), ("5 photos", [handle_file(str(PHOTO))] * 5, True)]
        out += [(f"[{name}]", [handle_file(str(path))], True) for name, path in files.items()]
    else:
        raise AssertionError(f"no cases for parameter type {kind!r}: add them here")
    return out


GOOD = {
    "/identity_faces": dict(photos=[PHOTO]),
    "/identity": dict(photos=[PHOTO], prompt="a person smiling", num_frames=8, steps=1, seed=1),
    "/timelapse": dict(prompt="ice melting", num_frames=8, steps=1, seed=1),
    "/safe_generate": dict(prompt="a cat", num_frames=8, steps=1, seed=1, compare=False),
    "/segment": dict(video="clip.mp4", expression="the block"),
    "/segment_refine": dict(video="clip.mp4", expression="the block", clicks="[]"),
    "/system": dict(),
}


def _good(api_name: str, files: dict[str, Path]) -> dict:
    def file(value):
        if isinstance(value, Path):
            return handle_file(str(value))
        return handle_file(str(files[value])) if value == "clip.mp4" else value

    return {k: [file(p) for p in v] if isinstance(v, list) else file(v) for k, v in GOOD[api_name].items()}


def _outcome(client, api_name: str, arguments: dict) -> tuple[bool, str]:
    """(accepted, the error's message). The face preview reports problems in its notes, not as errors: there a
    note with ⚠️ counts as refusing the value, and no photos at all is an empty preview."""
    try:
        result = client.predict(**arguments, api_name=api_name)
    except AppError as error:
        return False, str(error)
    if api_name == "/identity_faces" and "⚠️" in result[1]:
        return False, result[1]
    return True, ""


def _unclear(message: str) -> str | None:
    if not message.strip() or message.strip() in ("None", "null", "Error"):
        return "no message"
    if len(message) > MAX_MESSAGE_CHARS:
        return f"a {len(message)}-character message"
    hits = [g for g in GENERIC if g in message]
    return f"a generic message ({hits[0]})" if hits else None


def test_every_endpoint_is_fuzzed(client):
    """The list below is the server's: an endpoint added without good arguments here fails this test."""
    assert set(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == set(GOOD)


@pytest.mark.parametrize("api_name", sorted(GOOD))
def test_malformed_values_get_a_clear_message_and_the_next_request_answers(client, server, files, api_name):
    engine, _ = server
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"][api_name]
    problems, tried = [], 0
    no_photos = api_name == "/identity_faces"          # an empty preview is the answer to no photos
    for parameter in endpoint["parameters"]:
        name = parameter["parameter_name"]
        first_text = parameter is next((p for p in endpoint["parameters"] if p["python_type"]["type"] == "str"), None)
        for description, value, must_fail in cases_for(parameter, files, first_text):
            tried += 1
            ok, message = _outcome(client, api_name, {**_good(api_name, files), name: value})
            if ok and must_fail and not (no_photos and description in ("None", "[]")):
                problems.append(f"{name}={description}: accepted")
            elif not ok and (why := _unclear(message)):
                problems.append(f"{name}={description}: {why}: {message[:160]!r}")
        ok, message = _outcome(client, api_name, _good(api_name, files))
        if not ok:
            problems.append(f"after the {name} cases the good request failed: {message[:160]!r}")
    assert not any(c["locked"] for c in engine.cache.stats()["components"]), "a lock outlived its call"
    assert tried >= 5 * len(endpoint["parameters"]), f"only {tried} cases generated"
    assert not problems, f"{len(problems)} of {tried} cases on {api_name}:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------- below gradio_client: raw HTTP
def _raw_call(url: str, api_name: str, body: bytes | str) -> tuple[int, str]:
    """POST /gradio_api/call/<name>, then read the event stream; (HTTP status, the error's message or '')."""
    response = httpx.post(f"{url}gradio_api/call/{api_name}", content=body,
                          headers={"content-type": "application/json"}, timeout=30)
    if response.status_code != 200:
        return response.status_code, response.text
    stream = httpx.get(f"{url}gradio_api/call/{api_name}/{response.json()['event_id']}", timeout=60).text
    if "event: error" not in stream:
        return 200, ""
    data = stream.split("event: error", 1)[1].split("data:", 1)[1].strip().splitlines()[0]
    return 200, str((json.loads(data) or {}).get("error"))


def _raw_values(client, api_name: str, **overrides) -> list:
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"][api_name]
    values = []
    for p in endpoint["parameters"]:
        values.append(overrides.get(p["parameter_name"], p["parameter_default"]))
    return values


SERVER_PATHS = ["/etc/passwd", str(ROOT / "README.md"), "../../etc/hostname", str(PHOTO)]


@pytest.mark.parametrize("path", SERVER_PATHS)
@pytest.mark.parametrize("api_name, parameter, wrap", [
    ("segment", "video", lambda f: f), ("segment", "video", lambda f: {"video": f}),
    ("identity", "photos", lambda f: [f]), ("identity_faces", "photos", lambda f: [f]),
])
def test_a_file_on_the_server_cannot_be_read_through_the_api(server, client, api_name, parameter, wrap, path):
    """A FileData naming a path on the server (not one uploaded through Gradio) is refused, with a message."""
    _, url = server
    payload = wrap({"path": path, "meta": {"_type": "gradio.FileData"}})
    values = _raw_values(client, f"/{api_name}", **{parameter: payload, "prompt": "a person", "expression": "x"})
    status, message = _raw_call(url, api_name, json.dumps({"data": values}))
    assert status == 200 and message, f"{path} was read"
    assert "not uploaded" in message or "not a" in message.lower() or "takes an uploaded file" in message, message


@pytest.mark.parametrize("body", [
    "{", "[]", "null", '{"data": 3}', '{"data": []}', '{"data": ["a"]}', '{"data": null}', '"' + "x" * 100_000 + '"',
    '{"data": [' + ",".join(["1"] * 50) + "]}",
])
def test_malformed_request_bodies_get_an_answer_not_a_hang(server, client, body):
    _, url = server
    status, message = _raw_call(url, "timelapse", body)
    assert status in (200, 400, 422) and message, (status, message)
    assert client.predict(api_name="/system") is not None     # still serving


def _upload(url: str, path: Path) -> dict:
    with path.open("rb") as f:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, f)}, timeout=30)
    return {"path": response.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


@pytest.mark.parametrize("api_name", sorted(GOOD))
def test_nan_and_infinity_are_refused_on_every_number(server, client, files, api_name):
    """JSON has no NaN or Infinity, so gradio_client cannot send them; Python's json writes them anyway, and a
    careless server compares NaN as in range. Sent raw, every number of every endpoint refuses them."""
    _, url = server
    uploaded = {"photos": lambda: [_upload(url, PHOTO)], "video": lambda: _upload(url, files["clip.mp4"])}
    good = {k: uploaded[k]() if k in uploaded else v for k, v in GOOD[api_name].items()}
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"][api_name]
    numbers = [p["parameter_name"] for p in endpoint["parameters"] if p["python_type"]["type"] in ("float", "int")]
    problems = []
    for name in numbers:
        for value in (math.nan, math.inf, -math.inf):
            values = _raw_values(client, api_name, **{**good, name: value})
            status, message = _raw_call(url, api_name.lstrip("/"), json.dumps({"data": values}))
            if not message or _unclear(message):
                problems.append(f"{name}={value}: {status} {message[:160]!r}")
    assert not problems, "\n".join(problems)


def test_five_uploads_of_a_photo_leave_no_stray_files_in_gradios_folder(client):
    """Gradio's File component opened an empty NamedTemporaryFile(delete=False) per uploaded file and never used
    it: bench/soak.py found one 0-byte file (and one open descriptor) left per photo. Same photo five times: the
    upload itself is stored once (by content hash), its face crop once, nothing else."""
    import os

    folder = Path(os.environ["GRADIO_TEMP_DIR"])
    listing = lambda: {p for p in folder.rglob("*") if p.is_file()}  # noqa: E731
    before = listing()
    for _ in range(5):
        client.predict(photos=[handle_file(str(PHOTO))], api_name="/identity_faces")
    new = listing() - before
    assert [p.name for p in new if p.stat().st_size == 0] == []
    assert len(new) <= 2, sorted(p.name for p in new)
