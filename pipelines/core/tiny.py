"""The `tiny` profile's one rule, shared by every method's toy models: random weights that depend on a seed alone.

Each method keeps its own toy models beside its real loaders (`pipelines/<method>/tiny.py`); they all build through
`build`, so an evicted component reloads identically and tests can compare outputs across processes.
"""

from __future__ import annotations

import threading
import zlib

import torch

# torch has one global CPU generator; module constructors draw from it. Building under a lock with a
# forked RNG makes the weights depend on the seed alone, and leaves the caller's RNG untouched.
_RNG_LOCK = threading.Lock()


def seed_of(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def build(cls, seed: int, **config):
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**config)
