"""Attention backends, chosen by name. Each offers the three calls the model makes.

    prefill(q, k, v, positions, window)                         one-shot, no cache
    chunk(q, k, v, positions, cache_k, cache_v, cache_pos, window)
                                                                a pre-fill chunk over
                                                                [cache + chunk], before
                                                                the chunk is written
    decode(q, cache_k, cache_v, cache_pos, position, window)    one query per sequence,
                                                                after its key is written

q: (B, T, H, D); k, v: (B, T, K, D); cache_k, cache_v: (B, S, K, D) in slot order;
cache_pos: (S,) absolute positions (-1 empty); positions: (T,). Returns (B, T, H, D).
"""
from __future__ import annotations

import torch

from . import ops


class TorchBackend:
    """The reference: every call is ops.attention over keys with explicit positions."""

    name = "torch"

    def prefill(self, q, k, v, positions, window):
        return ops.attention(q, k, v, positions, positions, window)

    def chunk(self, q, k, v, positions, cache_k, cache_v, cache_pos, window):
        keys = torch.cat((cache_k, k), dim=1)  # (B, S + T, K, D)
        values = torch.cat((cache_v, v), dim=1)
        return ops.attention(q, keys, values, positions, torch.cat((cache_pos, positions)), window)

    def decode(self, q, cache_k, cache_v, cache_pos, position, window):
        return ops.attention(q, cache_k, cache_v, position, cache_pos, window)


def get_backend(name: str):
    """'torch' (reference) or 'triton' (kernels; the interpreter on a machine without a GPU)."""
    if name == "torch":
        return TorchBackend()
    if name == "triton":
        from .kernels import triton_backend  # imported lazily: Triton is optional

        return triton_backend()
    raise ValueError(f"unknown attention backend {name!r}: use 'torch' or 'triton'")
