"""Chunked pre-fill measured: what the cache holds before a chunk, the shapes each
attention call saw, and the memory one chunk's attention needs.

    pos = cache_before_chunk(model, ids, chunk=32, index=3)   # positions in layer 0's slots
    with attention_shapes() as shapes: ml.prefill(...)        # (q.shape, k.shape) per call
    memory_for_chunk(args, chunk=64)                          # score matrix and cache bytes
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .. import trace
from ..cache import cache_bytes
from ..config import ModelArgs
from ..generate import prefill


def cache_before_chunk(model, ids: list[int], chunk: int, index: int) -> list[int]:
    """Positions held by layer 0's rolling buffer just before chunk `index` is pre-filled."""
    cache = model.new_cache()
    if index > 0:
        prefill(model, torch.tensor([ids[: index * chunk]]), cache, chunk_size=chunk)
    return cache.positions(0)


def memory_for_chunk(args: ModelArgs, chunk: int, batch_size: int = 1, bytes_per_element: int = 4) -> dict:
    """Bytes alive during one chunk's attention (reference backend, one layer at a time):
    the score matrix, batch x heads x chunk x (W slots + chunk) in fp32 (softmax runs in
    fp32), and the rolling buffer once full (cache.cache_bytes of W tokens, all layers)."""
    W = args.sliding_window
    if W is None:
        raise ValueError("memory_for_chunk needs a sliding window: a full-attention cache grows with the text")
    scores = batch_size * args.n_heads * chunk * (W + chunk) * 4
    cache = cache_bytes(args, W, rolling=True, batch_size=batch_size, bytes_per_element=bytes_per_element)
    return {"chunk": chunk, "scores": scores, "cache": cache}


@contextmanager
def attention_shapes():
    """(q.shape, k.shape) of every attention call made inside the block, from a trace:
    q (B, T, H, D) and the keys it attended over (B, S, K, D), filled when the block ends."""
    shapes = []
    with trace.record(qkv=True) as t:
        yield shapes
    shapes.extend((tuple(c.q.shape), tuple(c.k.shape)) for c in t.attention)
