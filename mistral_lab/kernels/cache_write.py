"""Scatter new keys and values into the rolling buffer: position p goes to slot p mod S.

Same semantics as KVCache.write(layer, k, v, start): k and v (B, T, K, D) are the
positions start .. start+T-1; when T > S only the last S survive (the others would be
overwritten within the same call), and slot_pos[layer, slot] records each position.

One program per (token, sequence) moves the token's K * D keys and K * D values: a
contiguous row of K * D elements in the input and in the slot (the buffer is
(L, B, S, K, D)), so the copy is two coalesced reads and two coalesced writes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import trace
from . import counters
from .swa_attention import interpreting


@triton.jit
def _cache_write_kernel(K_SRC, V_SRC, K_DST, V_DST, SLOT_POS, CTR,
                        stride_sb, stride_st, stride_sh, stride_vsb, stride_vst, stride_vsh,
                        stride_db, stride_ds, stride_dh, stride_vdb, stride_vds, stride_vdh,
                        start, S,
                        HEAD_DIM: tl.constexpr, N_KV_HEADS: tl.constexpr, BLOCK: tl.constexpr,
                        COUNT: tl.constexpr, ELEM_BYTES: tl.constexpr):
    t = tl.program_id(0)
    b = tl.program_id(1)
    pos = start + t
    slot = pos % S
    offs = tl.arange(0, BLOCK)  # flattened (head, d) of one token
    ok = offs < N_KV_HEADS * HEAD_DIM
    h = offs // HEAD_DIM
    d = offs % HEAD_DIM
    # Memory traffic: K * D elements read and written for K, the same for V.
    k = tl.load(K_SRC + b.to(tl.int64) * stride_sb + t * stride_st + h * stride_sh + d, mask=ok)
    v = tl.load(V_SRC + b.to(tl.int64) * stride_vsb + t * stride_vst + h * stride_vsh + d, mask=ok)
    tl.store(K_DST + b.to(tl.int64) * stride_db + slot * stride_ds + h * stride_dh + d, k, mask=ok)
    tl.store(V_DST + b.to(tl.int64) * stride_vdb + slot * stride_vds + h * stride_vdh + d, v, mask=ok)
    tl.store(SLOT_POS + slot, pos.to(tl.int64), mask=b == 0)  # positions are shared by the batch
    if COUNT:
        row = CTR + (t * tl.num_programs(1) + b) * 2  # columns: counters.CACHE_WRITE
        tl.store(row + 0, tl.full([], 1, tl.int64))
        tl.store(row + 1, tl.full([], 2 * N_KV_HEADS * HEAD_DIM * ELEM_BYTES, tl.int64))


def write(cache, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
    """Store k, v (B, T, K, D) of positions start .. start+T-1 into layer `layer` of `cache`."""
    T, S = k.shape[1], cache.capacity
    if T > S:  # only the last S positions survive
        k, v, start, T = k[:, T - S:], v[:, T - S:], start + T - S, S
    tr = trace.active()
    if tr is not None and tr.wants_layer(layer):
        cache._record(tr, layer, start, T)  # the same CacheWrite events as KVCache.write
    dst_k, dst_v, slot_pos = cache.k[layer], cache.v[layer], cache.slot_pos[layer]  # views, written in place
    # Cast on the host as KVCache.write's copy_ does (round to nearest); the kernel only
    # moves bits, which is exact even for bf16 in the interpreter.
    k = k.to(dst_k.dtype)
    v = v.to(dst_v.dtype)
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    B, _, Kh, D = k.shape
    grid = (T, B)
    ctr, count = counters.buffer(grid, len(counters.CACHE_WRITE), k.device)
    _cache_write_kernel[grid](
        k, v, dst_k, dst_v, slot_pos, ctr,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        dst_k.stride(0), dst_k.stride(1), dst_k.stride(2), dst_v.stride(0), dst_v.stride(1), dst_v.stride(2),
        start, S,
        HEAD_DIM=D, N_KV_HEADS=Kh, BLOCK=triton.next_power_of_2(Kh * D), COUNT=count,
        ELEM_BYTES=dst_k.element_size(),
        num_warps=1 if interpreting() else 4,
    )
    if count:
        counters.record("cache_write", counters.CACHE_WRITE, ctr, grid, 1, 1,
                        dict(layer=layer, start=start, T=T, S=S, B=B, K=Kh, D=D))


__all__ = ["write"]
