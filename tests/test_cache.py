"""The model cache: sharing, eviction, locking, concurrency — on small real modules."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from pipelines.core import tiny as core_tiny
from pipelines.core.cache import Component, ModelCache, module_nbytes
from pipelines.sd15.models import Registry
from pipelines.timelapse.models import timelapse_models


def linear(seed: int, size: int = 64) -> torch.nn.Linear:
    return core_tiny.build(torch.nn.Linear, seed, in_features=size, out_features=size)   # weights depend on seed only


def counted(key: str, seed: int, calls: list, delay: float = 0.0) -> Component:
    def load():
        calls.append(key)
        time.sleep(delay)
        return linear(seed)

    return Component(key, load)


LAYER_BYTES = module_nbytes(linear(0))


def test_two_pipelines_asking_for_the_same_component_share_one_object():
    cache = ModelCache("cpu")
    first, second = timelapse_models(Registry("tiny"), "ToonYou"), timelapse_models(Registry("tiny"), "ToonYou")
    assert first.text_encoder is not second.text_encoder      # two separate descriptions ...
    with cache.use(first.text_encoder, first.tokenizer) as (te1, tok1):
        pass
    with cache.use(second.text_encoder, second.tokenizer) as (te2, tok2):
        pass
    assert te1 is te2 and tok1 is tok2                         # ... one object each
    stats = cache.stats()
    assert stats["loads"] == 2 and stats["misses"] == 2 and stats["hits"] == 2


def test_components_that_differ_get_their_own_entries():
    cache = ModelCache("cpu")
    toon, real = timelapse_models(Registry("tiny"), "ToonYou"), timelapse_models(Registry("tiny"), "Realistic Vision")
    assert toon.tokenizer == real.tokenizer and toon.unet != real.unet
    with cache.use(toon.unet, real.unet) as (a, b):
        assert a is not b
        assert not torch.equal(a.conv_in.weight, b.conv_in.weight)


def test_evicted_component_reloads_and_gives_the_same_output():
    calls: list[str] = []
    cache = ModelCache("cpu", ram_budget=int(1.5 * LAYER_BYTES))   # room for one layer
    a, b = counted("a", 1, calls), counted("b", 2, calls)
    x = torch.randn(3, 64)
    with cache.use(a) as (layer,):
        before = layer(x)
    with cache.use(b):
        pass
    assert a not in cache and b in cache and cache.stats()["drops"] == 1
    with cache.use(a) as (layer,):
        torch.testing.assert_close(layer(x), before, rtol=0, atol=0)
    assert calls == ["a", "b", "a"]


def test_locked_component_is_never_evicted():
    calls: list[str] = []
    cache = ModelCache("cpu", ram_budget=int(1.5 * LAYER_BYTES))
    a, b = counted("a", 1, calls), counted("b", 2, calls)
    with cache.use(a) as (held,):
        with cache.use(b):                      # does not fit beside a, but a is in use
            assert a in cache and b in cache
        assert cache.stats()["over_budget"] >= 1
        assert held.weight.shape == (64, 64)
    with cache.use(counted("c", 3, calls)):     # now a is free and the least recently used
        pass
    assert a not in cache


def test_least_recently_used_goes_first():
    calls: list[str] = []
    cache = ModelCache("cpu", ram_budget=int(2.5 * LAYER_BYTES))
    a, b, c = (counted(k, i, calls) for i, k in enumerate("abc"))
    for component in (a, b, a, c):             # b is now the coldest
        with cache.use(component):
            pass
    assert a in cache and c in cache and b not in cache


def test_concurrent_requests_load_a_component_once():
    calls: list[str] = []
    cache = ModelCache("cpu")
    slow = counted("slow", 1, calls, delay=0.3)
    results, errors = [], []

    def worker():
        try:
            with cache.use(slow) as (layer,):
                results.append(layer)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors
    assert calls == ["slow"]
    assert len(results) == 6 and all(r is results[0] for r in results)


def test_use_is_exclusive_while_held():
    cache = ModelCache("cpu")
    comp = counted("x", 1, [])
    entered = threading.Event()
    order: list[str] = []

    def second():
        entered.wait(5)
        with cache.use(comp):
            order.append("second")

    t = threading.Thread(target=second)
    t.start()
    with cache.use(comp):
        entered.set()
        time.sleep(0.2)
        order.append("first")
    t.join(timeout=5)
    assert order == ["first", "second"]


def test_a_failed_load_leaves_the_cache_consistent():
    attempts = []

    def broken():
        attempts.append(1)
        raise OSError("disk on fire")

    cache = ModelCache("cpu")
    component = Component("broken", broken)
    for _ in range(2):
        with pytest.raises(OSError, match="disk on fire"):
            with cache.use(component):
                pass
    assert len(attempts) == 2 and component not in cache
    assert cache.stats()["load_errors"] == 2 and cache.stats()["components"] == []


def test_dependencies_load_through_the_cache_and_stay_shared():
    calls: list[str] = []
    base = counted("base", 1, calls)
    derived_a = Component("a", lambda b: torch.nn.Sequential(linear(5), b), deps=(base,))
    derived_b = Component("b", lambda b: torch.nn.Sequential(linear(6), b), deps=(base,))
    cache = ModelCache("cpu")
    with cache.use(derived_a, derived_b) as (a, b):
        assert a[1] is b[1]
    assert calls == ["base"]


def test_stats_report_bytes_by_device():
    cache = ModelCache("cpu")
    with cache.use(counted("a", 1, [])):
        stats = cache.stats()
    assert stats["bytes_by_device"] == {"cpu": LAYER_BYTES}
    assert stats["components"][0] == {"key": "a", "device": "cpu", "bytes": LAYER_BYTES, "locked": True}


def test_dependencies_are_built_where_they_are_not_placed_on_the_device():
    placed = []

    class Recording(ModelCache):
        def _place(self, entries):
            placed.extend(e.key for e in entries)

    base = counted("base", 1, [])
    derived = Component("derived", lambda b: torch.nn.Sequential(linear(5), b), deps=(base,))
    with Recording("cpu").use(derived):
        pass
    assert placed == ["derived"]
