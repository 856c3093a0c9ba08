"""Instrumentation: collect what the cache and kernels did, for plots.

    with mistral_lab.trace.record() as t:
        generate(model, prompt, 100)
    t.cache_writes   # every slot write: layer, slot, position written, position evicted

When no trace is active, `active()` returns None and instrumented code skips the
recording branch: model code stays clean and pays one global lookup.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CacheWrite:
    layer: int
    slot: int
    position: int  # absolute position written into the slot
    evicted: int  # absolute position that the slot held before, -1 if it was empty


@dataclass
class Trace:
    layers: frozenset[int] | None = None  # record only these layers (None: all)
    cache_writes: list[CacheWrite] = field(default_factory=list)
    kernel_calls: list = field(default_factory=list)  # filled by mistral_lab.kernels

    def wants_layer(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    @property
    def overwrites(self) -> list[CacheWrite]:
        return [w for w in self.cache_writes if w.evicted >= 0]


_active: Trace | None = None


def active() -> Trace | None:
    return _active


@contextmanager
def record(layers=None):
    """Record cache writes (and kernel counters) made inside the block."""
    global _active
    outer = _active
    _active = Trace(layers=None if layers is None else frozenset(layers))
    try:
        yield _active
    finally:
        _active = outer
