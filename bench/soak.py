"""Soak: K gradio_client clients x M requests each, over every tab's endpoint, against one tiny-profile server.

The studio is launched in-process on 127.0.0.1 (as tests/conftest.py does) with its output folder and
GRADIO_TEMP_DIR in a fresh temporary folder, so the files it leaves behind can be counted. Each client rotates
through /timelapse, /identity, /safe_generate and /segment with cheap settings (1-2 steps, 8 frames); every tenth
request is a deliberately bad one (an empty prompt or expression), which must come back as the studio's error
message. Every client also makes the same /timelapse call (same prompt and seed) once, and the frames must be
identical across clients. After --max-seconds no new request is issued and the figures are printed.

    .venv/bin/python bench/soak.py [--clients 8] [--requests 200] [--max-seconds 600]

Last line: `soak_unexpected_errors: <n>` (exit 1 when n > 0).
"""

# The suite's smoke run (tests/test_benches.py): the smallest settings, and the `name: value` figures it
# must print, each with a number. A bench without these fails the suite.
SMOKE_ARGS = ["--clients", "2", "--requests", "2", "--max-seconds", "60"]
FIGURES = ("soak_unexpected_errors",)

import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Before anything imports huggingface_hub or gradio (the studio's modules are imported inside the functions): no
# hub, no analytics, Gradio's files in a folder of our own.
ROOT_TMP = Path(tempfile.mkdtemp(prefix="studio-soak-"))
# gradio_client downloads each result through a fresh folder in the system temp directory and leaves that folder
# behind, empty (gradio_client/client.py, `secrets.token_hex(20)`): one per file. Those the soak's clients leave are
# removed at the end (`remove_client_leftovers`); what was there before is not touched.
TEMP_BEFORE = set(os.listdir(tempfile.gettempdir()))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["GRADIO_TEMP_DIR"] = str(ROOT_TMP / "gradio")
os.environ["GRADIO_EXAMPLES_CACHE"] = str(ROOT_TMP / "examples")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PHOTO = REPO / "assets" / "examples" / "astronaut.jpg"
ENDPOINTS = ("/timelapse", "/identity", "/safe_generate", "/segment")
FRAMES = 8
BAD_EVERY = 10                      # request i of a client is a bad one when i % BAD_EVERY == BAD_EVERY - 1
PROBE_INDEX = 1                     # each client's second request is the same-seed /timelapse probe
PROBE = dict(prompt="a seed grows into a sunflower", steps=2, num_frames=FRAMES, seed=4242)
# What one good request publishes into the output folder (the guarded clip only: compare=False).
OUTPUT_FILES = {"/timelapse": 1, "/identity": 1, "/safe_generate": 1, "/segment": 3}


@dataclass
class Record:
    client: int
    endpoint: str
    seconds: float
    outcome: str                    # "ok", "expected" (a bad request refused with its message) or "unexpected"
    message: str = ""


def proc_status(field: str) -> int:
    """A number from /proc/self/status (VmRSS in kB, Threads, ...); -1 where there is none."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return -1


def rss_mib() -> float:
    return proc_status("VmRSS") / 1024


def rss_trimmed_mib() -> float | None:
    """RSS after a full collection and glibc's malloc_trim(0): what is still live once the allocator hands back the
    free memory it keeps (None where there is no glibc). A leak stays; allocator retention goes."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss_mib()


def files_in(folder: Path) -> tuple[int, float, Counter]:
    """(number of files, MiB, files per suffix) under a folder, recursively."""
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return len(files), sum(p.stat().st_size for p in files) / 2**20, Counter(p.suffix or "(none)" for p in files)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(endpoint: str, seed: int, bad: bool, video: str) -> tuple[dict, str | None]:
    """(keyword arguments of a predict call, the error message a bad one must get, or None for a good one)."""
    from gradio_client import handle_file

    if endpoint == "/timelapse":
        kwargs = dict(prompt="" if bad else f"ice melting, take {seed}", steps=1 + seed % 2, num_frames=FRAMES,
                      seed=seed)
        return kwargs, "Write a prompt" if bad else None
    if endpoint == "/identity":
        kwargs = dict(photos=[handle_file(str(PHOTO))], prompt="" if bad else "an astronaut on the moon", steps=1,
                      num_frames=FRAMES, seed=seed)
        return kwargs, "Write a prompt" if bad else None
    if endpoint == "/safe_generate":
        kwargs = dict(prompt="" if bad else "a village at night", steps=1, num_frames=FRAMES, compare=False, seed=seed)
        return kwargs, "Write a prompt" if bad else None
    kwargs = dict(video=handle_file(video), expression="" if bad else "the circle on the left", box_threshold=0.05)
    return kwargs, "Say what to segment" if bad else None


def downloaded(result, folder: Path) -> list[Path]:
    """The files of a result that the client downloaded into `folder`."""
    values = result if isinstance(result, (tuple, list)) else (result,)
    return [Path(v) for v in values if isinstance(v, str) and v.startswith(f"{folder}{os.sep}") and Path(v).is_file()]


def client_loop(number: int, url: str, args, deadline: float, records: list, probes: dict, lock) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from pipelines.core.video import read_video

    folder = ROOT_TMP / "client" / str(number)
    try:
        client = Client(url, verbose=False, download_files=str(folder), analytics_enabled=False)
    except Exception as error:              # a client that cannot connect is a finding, not a crash
        with lock:
            records.append(Record(number, "connect", 0.0, "unexpected", f"{type(error).__name__}: {error}"))
        return
    for i in range(args.requests):
        if time.monotonic() >= deadline:
            break
        endpoint = ENDPOINTS[(number + i) % len(ENDPOINTS)]
        probe = i == PROBE_INDEX
        bad = not probe and i % BAD_EVERY == BAD_EVERY - 1
        if probe:
            endpoint, kwargs, expected = "/timelapse", dict(PROBE), None
        else:
            kwargs, expected = request(endpoint, seed=number * 100_000 + i, bad=bad, video=args.video)
        start = time.perf_counter()
        outcome, message, seconds = "ok", "", None
        try:
            job = client.submit(api_name=endpoint, **kwargs)
            result = job.result(timeout=args.request_timeout)
            seconds = time.perf_counter() - start
            files = downloaded(result, folder)
            if expected:
                outcome, message = "unexpected", f"a bad request succeeded (wanted an error with {expected!r})"
            elif result[-1].get("num_frames") != FRAMES:
                outcome, message = "unexpected", f"info num_frames {result[-1].get('num_frames')} != {FRAMES}"
            elif probe:
                probes[number] = read_video(files[0])[0]
            for path in files:                     # the client's copies are not what this soak counts
                path.unlink(missing_ok=True)
        except AppError as error:
            ok = expected is not None and expected in str(error)
            outcome, message = ("expected" if ok else "unexpected"), f"AppError: {error}"
        except Exception as error:              # every other failure is counted and reported
            outcome, message = "unexpected", f"{type(error).__name__}: {error}"
        seconds = seconds if seconds is not None else time.perf_counter() - start
        with lock:
            records.append(Record(number, endpoint, seconds, outcome, message))


def clients_in_child(url: str, args, deadline: float) -> tuple[list, dict]:
    """--clients-process: the client threads in a process of their own, so the server's RSS is the server's."""
    records: list[Record] = []
    probes: dict[int, np.ndarray] = {}
    lock = threading.Lock()
    threads = [threading.Thread(target=client_loop, args=(n, url, args, deadline, records, probes, lock),
                                daemon=True, name=f"soak-client-{n}") for n in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic() + args.request_timeout + 5))
    with lock:
        return list(records), dict(probes)


def warm_up(url: str, video: str) -> float:
    """One good call of each endpoint (loads every model), sequentially; returns the seconds it took."""
    from gradio_client import Client

    start = time.perf_counter()
    client = Client(url, verbose=False, download_files=str(ROOT_TMP / "client" / "warm-up"), analytics_enabled=False)
    for endpoint in ENDPOINTS:
        kwargs, _ = request(endpoint, seed=0, bad=False, video=video)
        client.predict(api_name=endpoint, **kwargs)
    return time.perf_counter() - start


def percentiles(seconds: list[float]) -> str:
    if not seconds:
        return "p50 -, p95 -"
    p50, p95 = np.percentile(seconds, [50, 95])
    return f"p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(seconds):.2f} s"


def remove_client_leftovers() -> None:
    """The empty download folders gradio_client left in the system temp directory during this run (see TEMP_BEFORE)."""
    temp = Path(tempfile.gettempdir())
    for name in set(os.listdir(temp)) - TEMP_BEFORE:
        folder = temp / name
        if re.fullmatch(r"[0-9a-f]{40}", name) and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="wall limit from the script's start: after it no new request is issued "
                        "(in-flight ones finish, each within --request-timeout)")
    parser.add_argument("--request-timeout", type=float, default=180.0, help="seconds to wait for one result")
    parser.add_argument("--clients-process", action="store_true",
                        help="run the clients in a child process: RSS and threads are then the server's alone")
    parser.add_argument("--keep", action="store_true", help=f"keep the temporary folder ({ROOT_TMP})")
    parser.add_argument("--arenas", type=int, default=2,
                        help="glibc malloc arenas, as `python -m studio` sets them (0: glibc's default, 8 per core)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds       # the whole run, start-up and warm-up included
    if args.arenas:
        from studio.memory import limit_malloc_arenas

        print(f"malloc arenas capped at {args.arenas}: {limit_malloc_arenas(args.arenas)}")
    rss_start, threads_start = rss_mib(), proc_status("Threads")

    from pipelines.core.video import write_mp4
    from pipelines.segmentation.synthetic import make_video
    from studio.demo import build_demo, launch_kwargs
    from studio.engine import Engine
    from studio.settings import Settings

    outputs, gradio_tmp = ROOT_TMP / "outputs", Path(os.environ["GRADIO_TEMP_DIR"])
    (ROOT_TMP / "input").mkdir(parents=True)
    args.video = str(write_mp4(make_video(frames=FRAMES).frames, ROOT_TMP / "input" / "clip.mp4", fps=8))
    engine = Engine(Settings(profile="tiny", device="cpu", dtype="float32", resolution=64, output_dir=outputs,
                             calibration_path=ROOT_TMP / "calibration.json"))
    demo = build_demo(engine)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            quiet=True, **launch_kwargs(engine.settings))
    records: list[Record] = []
    probes: dict[int, np.ndarray] = {}
    lock = threading.Lock()
    try:
        print(f"server {url} · {args.clients} clients x {args.requests} requests · max {args.max_seconds:.0f} s · "
              f"temp {ROOT_TMP}", flush=True)
        warm_seconds = warm_up(url, args.video)
        rss_warm, threads_warm = rss_mib(), proc_status("Threads")
        before_outputs, before_gradio = files_in(outputs), files_in(gradio_tmp)
        print(f"warm-up (one call per endpoint, loads the models): {warm_seconds:.1f} s", flush=True)

        start = time.monotonic()
        if args.clients_process:
            import multiprocessing

            pool = multiprocessing.get_context("spawn").Pool(1)
            pending = pool.apply_async(clients_in_child, (url, args, deadline))
            running = lambda: not pending.ready()  # noqa: E731
        else:
            threads = [threading.Thread(target=client_loop, args=(n, url, args, deadline, records, probes, lock),
                                        daemon=True, name=f"soak-client-{n}") for n in range(args.clients)]
            for thread in threads:
                thread.start()
            running = lambda: any(thread.is_alive() for thread in threads)  # noqa: E731
        # Wait for the clients (in-flight requests get their own timeout past the deadline), sampling RSS as they go.
        give_up = deadline + args.request_timeout + 10
        samples = [(0, rss_warm)]
        every = max(5.0, args.max_seconds / 12)
        while running() and time.monotonic() < give_up:
            time.sleep(1.0)
            if time.monotonic() - start >= every * len(samples):   # a child's requests are counted at its end
                samples.append((int(time.monotonic() - start) if args.clients_process else len(records), rss_mib()))
        wall = time.monotonic() - start
        if args.clients_process:
            stuck = 0 if pending.ready() else args.clients
            if pending.ready():
                got_records, got_probes = pending.get()
                records.extend(got_records)
                probes.update(got_probes)
            pool.terminate()
        else:
            stuck = sum(thread.is_alive() for thread in threads)
        rss_end, threads_end = rss_mib(), proc_status("Threads")
        rss_trimmed = rss_trimmed_mib()
        after_outputs, after_gradio = files_in(outputs), files_in(gradio_tmp)
        stats = engine.cache.stats()
        tracked = {str(Path(f).resolve()) for files in demo.temp_file_sets for f in files}
        untracked = [(p.relative_to(gradio_tmp), p.stat().st_size) for p in gradio_tmp.rglob("*")
                     if p.is_file() and str(p.resolve()) not in tracked]
    finally:
        closer = threading.Thread(target=demo.close, daemon=True)     # a bounded close: it must not hang
        closer.start()
        closer.join(timeout=20)

    with lock:
        done = list(records)
    counts = Counter(r.outcome for r in done)
    by_endpoint = defaultdict(list)
    for r in done:
        by_endpoint[r.endpoint].append(r)
    print(f"\n{len(done)} requests in {wall:.1f} s: {len(done) / wall:.2f} requests/s"
          f"{' (stopped at --max-seconds)' if len(done) < args.clients * args.requests else ''}"
          f"{f'; {stuck} client threads still running' if stuck else ''}")
    print(f"outcomes: ok {counts['ok']}, expected errors {counts['expected']}, unexpected {counts['unexpected']}")
    print(f"latency (queue wait included), all: {percentiles([r.seconds for r in done])}")
    print(f"{'endpoint':<16}{'n':>6}{'ok':>6}{'exp':>6}{'unexp':>6}   latency of good requests")
    for endpoint in ENDPOINTS:
        rs = by_endpoint.get(endpoint, [])
        c = Counter(r.outcome for r in rs)
        good = [r.seconds for r in rs if r.outcome == "ok"]
        print(f"{endpoint:<16}{len(rs):>6}{c['ok']:>6}{c['expected']:>6}{c['unexpected']:>6}   {percentiles(good)}")
    unexpected = [r for r in done if r.outcome == "unexpected"]
    for r in unexpected[:5]:
        print(f"  unexpected: client {r.client} {r.endpoint} after {r.seconds:.2f} s: {r.message[:400]}")
    if len(unexpected) > 5:
        print(f"  ... and {len(unexpected) - 5} more ({Counter(r.message[:80] for r in unexpected).most_common(3)})")

    good_published = sum(OUTPUT_FILES[r.endpoint] for r in done if r.outcome == "ok")
    ttl = engine.settings.output_ttl_s
    print(f"\ntemp files (after warm-up -> end; both folders keep a file for {ttl} s, so a soak shorter than that "
          "only adds):")
    for name, before, after in (("output dir", before_outputs, after_outputs),
                                ("GRADIO_TEMP_DIR", before_gradio, after_gradio)):
        per_request = (after[1] - before[1]) / max(1, counts["ok"])
        kinds = ", ".join(f"{suffix} {n}" for suffix, n in sorted((after[2] - before[2]).items()))
        print(f"  {name + ':':<17}{before[0]} -> {after[0]} files, {before[1]:.1f} -> {after[1]:.1f} MiB "
              f"(new: {kinds or 'none'}; {per_request * 1024:.0f} KiB per good request, "
              f"~{per_request * counts['ok'] / wall * ttl:.0f} MiB per {ttl} s at this rate)")
    new_outputs = after_outputs[0] - before_outputs[0]
    print(f"  output files new / published by good requests: {new_outputs} / {good_published}")
    print(f"  GRADIO_TEMP_DIR files that Gradio's delete_cache does not track (never deleted): {len(untracked)}"
          + "".join(f"\n    {name} ({size} bytes)" for name, size in untracked[:3]))
    print(f"temp_within_bound: {new_outputs <= good_published and not untracked}")
    print(f"model cache: loads {stats['loads']}, hits {stats['hits']}, offloads {stats['offloads']}, "
          f"drops {stats['drops']}")
    unit, last = ("seconds", int(wall)) if args.clients_process else ("requests", len(done))
    trace = samples + [(last, rss_end)] if samples[-1][0] != last else samples[:-1] + [(last, rss_end)]
    print(f"RSS while running ({unit} done: MiB): " + ", ".join(f"{n}: {mib:.0f}" for n, mib in trace))
    half = min(trace, key=lambda sample: abs(sample[0] - last / 2))
    growth = 100 * (rss_end - rss_warm) / rss_warm
    print(f"RSS: start {rss_start:.0f} MiB, after warm-up {rss_warm:.0f} MiB, end {rss_end:.0f} MiB: "
          f"growth {growth:+.1f} % since warm-up ({100 * (rss_end - rss_start) / rss_start:+.0f} % since start; "
          f"{100 * (rss_end - half[1]) / half[1]:+.1f} % over the last {last - half[0]} {unit})")
    print(f"OS threads in the process: start {threads_start}, after warm-up {threads_warm}, end {threads_end} "
          + ("(the server alone: the clients ran in a child process)" if args.clients_process else
             "(the soak's own clients included)"))
    if rss_trimmed is not None:
        print(f"RSS at the end after gc + malloc_trim(0): {rss_trimmed:.0f} MiB: "
              f"{100 * (rss_trimmed - rss_warm) / rss_warm:+.1f} % since warm-up (the rest was free memory glibc kept)")
    frames = list(probes.values())
    same = len(frames) >= 2 and all(np.array_equal(frames[0], f) for f in frames[1:])
    print(f"same-seed /timelapse probes compared: {len(frames)} clients")
    print(f"same_seed_same_frames: {same}")
    print(f"soak_unexpected_errors: {len(unexpected)}", flush=True)
    return 1 if unexpected else 0


if __name__ == "__main__":
    try:
        code = main()
    finally:
        if "--keep" not in sys.argv:
            shutil.rmtree(ROOT_TMP, ignore_errors=True)
        remove_client_leftovers()
    sys.exit(code)
