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
"""
from __future__ import annotations

from . import ops

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


def get_backend(name: str):
    """'torch' (reference) or 'triton' (kernels; the interpreter on a machine without a GPU)."""
    if name == "torch":
        return TorchBackend()
    if name == "triton":
        from .kernels import triton_backend  # imported lazily: Triton is optional

        return triton_backend()
    raise ValueError(f"unknown attention backend {name!r}: use one of {', '.join(BACKENDS)}")
