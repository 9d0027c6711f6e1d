"""ModelCache: the one place that loads, shares, places and evicts weights.

Every tab asks the cache for *components* (a text encoder, a VAE, a UNet with a LoRA merged in) by what
they are, never by who wants them. Two tabs that name the same component get the same object, loaded
once. A component that differs in any way that changes its weights (another merged adapter, another
dtype) has another key and so is another entry.

Placement has two tiers, as in InvokeAI's cache: the execution device (a GPU) and CPU RAM.
- Components load to CPU first, then move to the execution device when a call uses them.
- The device tier has a budget that leaves working memory free for activations (attention over 16
  frames at 512 px needs several GB that no component accounts for). When a component needs room, the
  least-recently-used *unlocked* components are moved back to CPU, and dropped when RAM is over its own
  budget too. On a CPU-only machine the two tiers are the same RAM, so eviction means dropping.
- A component in use is locked (`with cache.use(...)`) and is never moved or dropped mid-call.

Trade-offs recorded here:
- Components are handed out *exclusively* (one holder at a time). diffusers mutates the modules it is
  given (FreeNoise swaps transformer blocks, adapters set scales on attention processors), so two calls
  sharing a module at once would race. On one GPU the calls run one at a time anyway, so this costs
  nothing in throughput; the alternative (copy-on-use) costs a full UNet copy per call.
- When every resident component is locked and a new one still does not fit, we load over budget and
  count it (`over_budget`) instead of failing: a slower call beats a refused one, and the statistic
  makes it visible. An out-of-memory error from the device is still possible and surfaces as such.
- Moving a component between devices happens under the cache's lock: simple, and the cost (about a
  second for a UNet) is small next to a denoising call. Loading from disk does *not* hold it, so one
  slow load does not stall calls that only need resident components.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Component:
    """What to load, and how. Equality and hashing use `key` only: the key *is* the identity.

    `load` builds the object on CPU from its dependencies (already loaded, locked and passed in the
    order of `deps`). Keep `key` complete: everything that changes the weights belongs in it.
    """

    key: str
    load: Callable[..., Any] = field(compare=False, repr=False)
    deps: tuple[Component, ...] = field(default=(), compare=False, repr=False)


class _Entry:
    __slots__ = ("key", "obj", "nbytes", "device", "pins", "mutex", "last_used", "ready", "error")

    def __init__(self, key: str):
        self.key = key
        self.obj: Any = None
        self.nbytes = 0
        self.device = torch.device("cpu")
        self.pins = 0                      # holders + waiters; > 0 means never evict
        self.mutex = threading.RLock()     # exclusive use (see module docstring)
        self.last_used = 0.0
        self.ready = threading.Event()     # set when loading finished (successfully or not)
        self.error: BaseException | None = None


def module_nbytes(obj: Any) -> int:
    """Bytes of parameters and buffers; 0 for objects that hold no tensors (tokenizers, configs)."""
    if not isinstance(obj, torch.nn.Module):
        return 0
    tensors = list(obj.parameters()) + list(obj.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _move(obj: Any, device: torch.device) -> None:
    if isinstance(obj, torch.nn.Module):
        obj.to(device)


class ModelCache:
    """Thread-safe LRU cache of model components with a device budget and a RAM budget (bytes)."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        device_budget: int | None = None,
        ram_budget: int | None = None,
    ):
        self.device = torch.device(device)
        self.device_budget = device_budget
        self.ram_budget = ram_budget
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._stats = dict(hits=0, misses=0, loads=0, load_errors=0, offloads=0, drops=0, over_budget=0, oom_frees=0)
        self._load_seconds = 0.0
        _CACHES.add(self)

    # ----------------------------------------------------------------- public API
    @contextmanager
    def use(self, *components: Component, place: bool = True) -> Iterator[tuple[Any, ...]]:
        """Load (if needed), lock and place `components` on the execution device; yield the objects.

        The same component named twice is yielded twice (locks are re-entrant). `place=False` locks them
        where they are: dependencies are only read on CPU while building what needs them.
        """
        entries: list[_Entry] = []
        try:
            for component in components:
                entries.append(self._pin_loaded(component))
            with ExitStack() as stack:
                # A fixed order of acquisition (by key) makes two calls asking for overlapping sets
                # wait for each other instead of deadlocking.
                for entry in sorted({e.key: e for e in entries}.values(), key=lambda e: e.key):
                    stack.enter_context(entry.mutex)
                if place:
                    with self._lock:
                        self._place(entries)
                yield tuple(e.obj for e in entries)
        finally:
            with self._lock:
                now = time.monotonic()
                for entry in entries:
                    entry.pins -= 1
                    entry.last_used = now

    def get(self, component: Component) -> Any:
        """Load `component` (to CPU) without locking it: for preloading and for tests."""
        entry = self._pin_loaded(component)
        with self._lock:
            entry.pins -= 1
        return entry.obj

    def preload(self, *components: Component) -> None:
        """Load and place on the execution device now (ZeroGPU wants weights on `cuda` at start-up)."""
        with self.use(*components):
            pass

    def discard(self, component: Component) -> int:
        """Drop `component` now if it is loaded and nobody holds it (a build input whose last consumer is built, so
        that a preload does not keep every fp32 ingredient beside the fp16 results). Returns the bytes let go."""
        with self._lock:
            entry = self._entries.get(component.key)
            if entry is None or not entry.ready.is_set() or entry.error is not None or entry.pins > 0:
                return 0
            freed = entry.nbytes
            self._drop(entry)
            return freed

    def free_memory(self) -> int:
        """After an out-of-memory error: every unlocked component leaves the execution device (to CPU; on a
        CPU-only machine it is dropped), and the allocator returns its cached blocks. Returns bytes freed.
        The next call reloads or re-places what it needs: slower, but it may now fit."""
        with self._lock:
            victims = self._evictable(self.device.type)
            freed = sum(e.nbytes for e in victims)
            for entry in victims:
                if self.device.type == "cpu":
                    self._drop(entry)
                else:
                    self._offload(entry)
            self._stats["oom_frees"] += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.warning("out of memory: freed %.1f MB of unlocked components", freed / 2**20)
        return freed

    def stats(self) -> dict[str, Any]:
        """Counters and current residency, for the System panel, tests and benchmarks."""
        with self._lock:
            entries = [e for e in self._entries.values() if e.ready.is_set() and e.error is None]
            by_device: dict[str, int] = {}
            for e in entries:
                by_device[str(e.device)] = by_device.get(str(e.device), 0) + e.nbytes
            return {
                **self._stats,
                "load_seconds": round(self._load_seconds, 3),
                "device": str(self.device),
                "device_budget": self.device_budget,
                "ram_budget": self.ram_budget,
                "bytes_by_device": by_device,
                "components": [
                    {"key": e.key, "device": str(e.device), "bytes": e.nbytes, "locked": e.pins > 0}
                    for e in sorted(entries, key=lambda e: -e.last_used)
                ],
            }

    def holds(self, *components: Component) -> bool:
        """Every one of `components` is loaded. What a call checks before asking whether its files are on disk: on
        ZeroGPU the hub's blobs are deleted once their tensors are packed for the GPU, so the weights of a preloaded
        model are here and no longer there, and "missing" would send the call to download them again."""
        return all(component in self for component in components)

    def __contains__(self, component: Component) -> bool:
        with self._lock:
            entry = self._entries.get(component.key)
            return entry is not None and entry.ready.is_set() and entry.error is None

    def _reset_after_fork(self) -> None:
        """In a forked child only the forking thread exists. A lock another thread held at the fork would stay held
        for ever there (nobody is left to release it), and ZeroGPU runs every GPU call in such a fork, made while
        other tabs' threads may be inside the cache. So the child gets fresh locks and events; an entry another
        thread was still loading can never finish here and is forgotten; pins held by other threads are gone with
        them (the forking thread holds none: GPU calls take their components inside the fork)."""
        self._lock = threading.RLock()
        for key, entry in list(self._entries.items()):
            if not entry.ready.is_set() or entry.error is not None:
                del self._entries[key]
                continue
            entry.mutex = threading.RLock()
            entry.ready = threading.Event()
            entry.ready.set()
            entry.pins = 0

    # ----------------------------------------------------------------- loading
    def _pin_loaded(self, component: Component) -> _Entry:
        """Return the entry for `component`, loaded and pinned (pins += 1). Loads at most once at a time."""
        while True:
            with self._lock:
                entry = self._entries.get(component.key)
                if entry is None:
                    entry = self._entries[component.key] = _Entry(component.key)
                    entry.pins = 1
                    self._stats["misses"] += 1
                    loader = True
                else:
                    entry.pins += 1
                    loader = False
                    self._stats["hits"] += 1  # resident, or being loaded by another call: shared either way
            if loader:
                self._load(entry, component)
                return entry
            entry.ready.wait()
            if entry.error is None:
                return entry
            # The load we waited for failed; it removed its entry. Try ourselves (and fail the same way,
            # with our own traceback, if the cause persists).
            with self._lock:
                entry.pins -= 1

    def _load(self, entry: _Entry, component: Component) -> None:
        start = time.monotonic()
        try:
            if component.deps:
                # Dependencies stay where they are (on CPU unless a call placed them): building on CPU
                # keeps the device free for calls, at the price of a slower first load.
                with self.use(*component.deps, place=False) as deps:
                    obj = component.load(*deps)
            else:
                obj = component.load()
            _move(obj, torch.device("cpu"))   # everything enters the cache on CPU
        except BaseException as exc:
            with self._lock:
                entry.error = exc
                entry.pins -= 1
                self._stats["load_errors"] += 1
                del self._entries[entry.key]
            entry.ready.set()
            raise
        with self._lock:
            entry.obj = obj
            entry.nbytes = module_nbytes(obj)
            entry.last_used = time.monotonic()
            self._stats["loads"] += 1
            self._load_seconds += time.monotonic() - start
            entry.ready.set()
            self._fit_ram(extra=0)
        logger.info("loaded %s (%.1f MB) in %.2fs", entry.key, entry.nbytes / 2**20, time.monotonic() - start)

    # ----------------------------------------------------------------- placement (hold self._lock)
    def _resident(self, device_type: str) -> list[_Entry]:
        return [e for e in self._entries.values()
                if e.ready.is_set() and e.error is None and e.device.type == device_type]

    def _used(self, device_type: str) -> int:
        return sum(e.nbytes for e in self._resident(device_type))

    def _evictable(self, device_type: str) -> list[_Entry]:
        """Unlocked residents of a tier, least recently used first."""
        return sorted((e for e in self._resident(device_type) if e.pins == 0), key=lambda e: e.last_used)

    def _place(self, entries: list[_Entry]) -> None:
        if self.device.type == "cpu":
            return  # one tier: loading already fitted RAM
        moving = {e.key: e for e in entries if e.device != self.device}
        needed = sum(e.nbytes for e in moving.values())
        if self.device_budget is not None:
            for victim in self._evictable(self.device.type):
                if self._used(self.device.type) + needed <= self.device_budget:
                    break
                self._offload(victim)
            if self._used(self.device.type) + needed > self.device_budget:
                self._stats["over_budget"] += 1
                logger.warning("device budget exceeded: every resident component is in use")
        for entry in moving.values():
            _move(entry.obj, self.device)
            entry.device = self.device

    def _offload(self, entry: _Entry) -> None:
        """Device -> CPU when RAM has room (after dropping colder CPU entries), else drop."""
        if self._fit_ram(extra=entry.nbytes):
            _move(entry.obj, torch.device("cpu"))
            entry.device = torch.device("cpu")
            self._stats["offloads"] += 1
        else:
            self._drop(entry)

    def _fit_ram(self, extra: int) -> bool:
        """Drop unlocked CPU entries (LRU first) until `extra` more bytes fit. False if they cannot."""
        if self.ram_budget is None:
            return True
        for victim in self._evictable("cpu"):
            if self._used("cpu") + extra <= self.ram_budget:
                break
            self._drop(victim)
        if self._used("cpu") + extra > self.ram_budget:
            if extra == 0:
                self._stats["over_budget"] += 1
            return False
        return True

    def _drop(self, entry: _Entry) -> None:
        del self._entries[entry.key]
        entry.obj = None
        self._stats["drops"] += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


_CACHES: weakref.WeakSet[ModelCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_CACHES):
        cache._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
