"""What the overhead benches share: their options, the same-frames check, interleaved timing, the report."""

import argparse
import cProfile
import pstats
import statistics
import sys
import time

import numpy as np
import torch


def arguments(description: str, steps: int, frames_help: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of each, after one warm-up each")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--frames", type=int, default=16, help=frames_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default). On a busy "
                        "machine use 1: torch's thread pool stalls badly when other processes share the cores")
    parser.add_argument("--profile", action="store_true", help="also cProfile one call of each and print the top")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def same_frames_or_exit(ours: np.ndarray, theirs: np.ndarray) -> None:
    if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
        diff = np.abs(ours.astype(int) - theirs.astype(int)).max() if ours.shape == theirs.shape else "n/a"
        sys.exit(f"FAIL: studio frames {ours.shape} differ from bare diffusers {theirs.shape} (max |diff| {diff})")
    print(f"frames identical: {ours.shape} {ours.dtype}")


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(run_studio, run_bare, repeats: int) -> tuple[list, list[float]]:
    """(whatever run_studio returned each time, bare seconds). Who goes first alternates, so neither always
    runs on a warmer (or busier) machine."""
    studio, bare = [], []
    for i in range(repeats):
        if i % 2:
            bare.append(seconds(run_bare))
        studio.append(run_studio())
        if not i % 2:
            bare.append(seconds(run_bare))
    return studio, bare


def report(studio_s: list[float], bare_s: list[float]) -> float:
    """Print the table; return studio median / bare median."""
    print(f"{'call':<10}{'median s':>10}{'min s':>10}{'max s':>10}")
    for name, xs in (("studio", studio_s), ("bare", bare_s)):
        print(f"{name:<10}{statistics.median(xs):>10.3f}{min(xs):>10.3f}{max(xs):>10.3f}")
    if max(studio_s + bare_s) > 1.5 * min(studio_s + bare_s):
        print("warning: timings vary by more than 1.5x (a busy machine?); try --threads 1 or more --repeats")
    return statistics.median(studio_s) / statistics.median(bare_s)


def profile(calls: dict, top: int = 20) -> None:
    for name, fn in calls.items():
        profiler = cProfile.Profile()
        profiler.runcall(fn)
        print(f"\n--- cProfile: {name} (cumulative, top {top})")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)
