"""Scatter new keys and values into the rolling buffer: position p goes to slot p mod S.

Same semantics as cache.LayerCache.write(k, v, positions): k and v (B, T, K, D) are the
keys and values of positions (B, T), each sequence with its own; a position of -1
(padding, a stopped sequence) is not written; when a sequence brings more than S
positions only its last S survive (the others would be overwritten within the same
call); slot_pos[b, slot] records each position written.

One program per (token, sequence) moves the token's K * D keys and K * D values: a
contiguous row of K * D elements in the input and in the slot (the buffer is
(B, S, K, D) per layer), so the copy is two coalesced reads and two coalesced writes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import counters
from .launch import batch_positions, interpreting


@triton.jit
def _cache_write_kernel(K_SRC, V_SRC, K_DST, V_DST, SLOT_POS, POS, LAST, CTR,
                        stride_sb, stride_st, stride_sh, stride_vsb, stride_vst, stride_vsh,
                        stride_db, stride_ds, stride_dh, stride_vdb, stride_vds, stride_vdh,
                        stride_spb, stride_pb, S,
                        HEAD_DIM: tl.constexpr, N_KV_HEADS: tl.constexpr, BLOCK: tl.constexpr,
                        COUNT: tl.constexpr, ELEM_BYTES: tl.constexpr):
    t = tl.program_id(0)
    b = tl.program_id(1)
    pos = tl.load(POS + b.to(tl.int64) * stride_pb + t)
    last = tl.load(LAST + b)
    write = (pos >= 0) & (pos > last - S)  # a real token that survives this call
    slot = tl.where(write, pos % S, 0)
    offs = tl.arange(0, BLOCK)  # flattened (head, d) of one token
    ok = (offs < N_KV_HEADS * HEAD_DIM) & write
    h = offs // HEAD_DIM
    d = offs % HEAD_DIM
    # Memory traffic: K * D elements read and written for K, the same for V.
    k = tl.load(K_SRC + b.to(tl.int64) * stride_sb + t * stride_st + h * stride_sh + d, mask=ok)
    v = tl.load(V_SRC + b.to(tl.int64) * stride_vsb + t * stride_vst + h * stride_vsh + d, mask=ok)
    tl.store(K_DST + b.to(tl.int64) * stride_db + slot * stride_ds + h * stride_dh + d, k, mask=ok)
    tl.store(V_DST + b.to(tl.int64) * stride_vdb + slot * stride_vds + h * stride_vdh + d, v, mask=ok)
    tl.store(SLOT_POS + b.to(tl.int64) * stride_spb + slot, pos, mask=write)
    if COUNT:
        row = CTR + (t * tl.num_programs(1) + b) * 2  # columns: counters.CACHE_WRITE
        n = write.to(tl.int64)
        tl.store(row + 0, n)
        tl.store(row + 1, n * (2 * N_KV_HEADS * HEAD_DIM * ELEM_BYTES))


def cache_write(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                dst_k: torch.Tensor, dst_v: torch.Tensor, slot_pos: torch.Tensor, *, layer: int | None = None) -> None:
    """Store k, v (B, T, K, D) of positions (B, T) into one layer's buffer: dst_k, dst_v
    (B, S, K, D) and slot_pos (B, S), written in place (views of the cache)."""
    B, T, Kh, D = k.shape
    S = dst_k.shape[1]
    positions = batch_positions(positions, B, k.device)
    last = positions.max(dim=1).values.contiguous()  # each sequence's newest position
    # Cast on the host as a tensor assignment does (round to nearest); the kernel only
    # moves bits, which is exact even for bf16 in the interpreter.
    k = k.to(dst_k.dtype)
    v = v.to(dst_v.dtype)
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    grid = (T, B)
    ctr, count = counters.buffer(grid, len(counters.CACHE_WRITE), k.device)
    _cache_write_kernel[grid](
        k, v, dst_k, dst_v, slot_pos, positions, last, ctr,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        dst_k.stride(0), dst_k.stride(1), dst_k.stride(2), dst_v.stride(0), dst_v.stride(1), dst_v.stride(2),
        slot_pos.stride(0), positions.stride(0), S,
        HEAD_DIM=D, N_KV_HEADS=Kh, BLOCK=triton.next_power_of_2(Kh * D), COUNT=count,
        ELEM_BYTES=dst_k.element_size(),
        num_warps=1 if interpreting() else 4,
    )
    if count:
        counters.record("cache_write", counters.CACHE_WRITE, ctr, grid, 1, 1,
                        dict(layer=layer, T=T, S=S, B=B, K=Kh, D=D))


__all__ = ["cache_write"]
