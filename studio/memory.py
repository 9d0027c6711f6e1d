"""Process memory on a long-running server: glibc's allocator, told to hand freed memory back.

A call allocates and frees hundreds of MB of tensors (latents, activations, decoded frames). glibc keeps freed
memory for reuse, in one arena per thread that allocated it, and Gradio runs events on whichever of its ~40 worker
threads is free, so RSS climbs with every new thread that has run a call, though the memory is free. Measured with
bench/soak.py (8 clients, all four tabs, tiny profile; RSS since the warm-up):
- as glibc is: +37.8 % after 200 requests, still rising (+6.3 % over the last 79); after gc + malloc_trim: +16.6 %;
- arenas capped at 2: +27.9 % after 200; after 800, +42.6 %, and +11.6 % once trimmed: the cap alone is not it;
- arenas capped and malloc_trim(0) when every endpoint's call ends: +14.8 % after 400 requests and level from the
  63rd on (+4.8 % once trimmed); the server alone (the soak's clients in another process): +7.2 %, level.
  bench/README.md has every run.
malloc_trim walks the heap and returns whole free pages: well under a millisecond here against a call of seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """What MALLOC_ARENA_MAX does, set from inside (the variable is read at start-up, before Python could set it).
    False where there is no glibc."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(-8, arenas) == 1)        # M_ARENA_MAX


def give_back_free_memory() -> bool:
    """malloc_trim(0): free pages go back to the operating system. False where there is no glibc."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)
