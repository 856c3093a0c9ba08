"""Attention backends, chosen by name. Each offers the four calls the model makes.

    prefill(q, k, v, positions, window)          one-shot, no cache
    chunk(q, k, v, positions, cache, window)     a pre-fill chunk over [cache + chunk],
                                                 before the chunk is written
    decode(q, positions, cache, window)          one query per sequence, after its key
                                                 is written
    write(cache, k, v, positions)                store the keys and values of positions

q: (B, T, H, D); k, v: (B, T, K, D); positions: (B, T) absolute positions, -1 where a
sequence has no token (padding of a shorter prompt, a sequence that has stopped);
cache: the layer's cache.LayerCache view (keys, values and the position held by each
slot, per sequence). Returns (B, T, H, D). A query with no token (-1) gets zeros.

Instrumentation stays out of the model: inside trace.record(attention=True), the model
hands each layer `for_layer(backend, layer)`, a Traced wrapper that forwards every call
to the real backend and records what it was handed and what it returned.
"""
from __future__ import annotations

from . import ops, trace

BACKENDS = ("torch", "triton")


class TorchBackend:
    """The reference: every call is ops.attention over keys with explicit positions."""

    name = "torch"

    def prefill(self, q, k, v, positions, window):
        return ops.attention(q, k, v, positions, positions, window)

    def chunk(self, q, k, v, positions, cache, window):
        keys, values, key_pos = cache.with_chunk(k, v, positions)  # (B, S + T, K, D)
        return ops.attention(q, keys, values, positions, key_pos, window)

    def decode(self, q, positions, cache, window):
        keys, values, key_pos = cache.readable()
        return ops.attention(q, keys, values, positions, key_pos, window)

    def write(self, cache, k, v, positions):
        cache.write(k, v, positions)


class Traced:
    """A backend that records each attention call of one layer into a trace (trace.py):
    the queries and the keys, values and positions the real backend attended over (in slot
    order, then the chunk), its output, and on request the probabilities, computed by
    ops.attention_probs from those same inputs -- a flash kernel never materialises them,
    so both backends are shown the same way (tests/test_trace.py checks the backend's own
    output equals probs @ v, so the view is not circular)."""

    def __init__(self, inner, tr: "trace.Trace", layer: int):
        self.inner, self.trace, self.layer, self.name = inner, tr, layer, inner.name

    def prefill(self, q, k, v, positions, window):
        out = self.inner.prefill(q, k, v, positions, window)
        self._record("prefill", q, positions, k, v, positions, window, out)
        return out

    def chunk(self, q, k, v, positions, cache, window):
        keys, values, key_pos = cache.with_chunk(k, v, positions)  # a copy, taken before the write
        out = self.inner.chunk(q, k, v, positions, cache, window)
        self._record("chunk", q, positions, keys, values, key_pos, window, out)
        return out

    def decode(self, q, positions, cache, window):
        out = self.inner.decode(q, positions, cache, window)
        self._record("decode", q, positions, *cache.readable(), window, out)
        return out

    def write(self, cache, k, v, positions):
        self.inner.write(cache, k, v, positions)

    def _record(self, kind, q, q_pos, k, v, k_pos, window, out) -> None:
        tr, probs = self.trace, None
        if tr.probs:
            qh, kh = q, k
            if tr.heads is not None:  # only the asked query heads, each with its own K/V head
                G = q.shape[2] // k.shape[2]
                qh, kh = q[:, :, list(tr.heads)], k[:, :, [h // G for h in tr.heads]]
            probs = ops.attention_probs(qh, kh, q_pos, k_pos, window)
        tr.add_attention(self.layer, kind, q_pos, k_pos, probs=probs, q=q, k=k, v=v, out=out)


def for_layer(backend, layer: int):
    """What layer `layer` calls: the backend, or inside a trace that records this layer's
    attention a Traced wrapper around it (one global read when no trace is active)."""
    tr = trace.active()
    if tr is None or not tr.wants_attention(layer):
        return backend
    return Traced(backend, tr, layer)


def get_backend(name: str):
    """'torch' (reference) or 'triton' (kernels; the interpreter on a machine without a GPU)."""
    if name == "torch":
        return TorchBackend()
    if name == "triton":
        from .kernels import triton_backend  # lazy: Triton is optional (no macOS/Windows wheels)

        return triton_backend()
    raise ValueError(f"unknown attention backend {name!r}: use one of {', '.join(BACKENDS)}")
