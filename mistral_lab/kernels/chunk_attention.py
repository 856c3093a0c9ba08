"""Chunked pre-fill attention: the queries of a chunk over [rolling buffer + the chunk].

Same contract as backends.TorchBackend.chunk, on the layer's tensors: q (B, T, H, D),
k and v (B, T, K, D) the chunk's own keys and values, positions (T,) or (B, T) = p0 ..
p0+T-1 per sequence (then -1 padding in a ragged batch), cache_k and cache_v
(B, S, K, D) in slot order, cache_pos (S,) or (B, S) the absolute position of each slot
(-1: empty). Called *before* the chunk is written, so the buffer holds positions < p0.

The buffer is read in place: no torch.cat with the chunk, no copy that un-rotates it.
Position p lives in slot p mod S (the rolling buffer's rule; a full cache has slot = p).
A program of queries m0..m1 can only see buffered positions in [p0 + m0 - W + 1, p0),
at most W - 1 of them, which are the consecutive slots (lo mod S), (lo+1) mod S, ...
wrapping once at the end of the buffer. The program walks exactly that run of slots in
tiles of BLOCK_N positions; every other slot is never loaded. The mask is
masks.visible on the position *stored* in each slot (cache_pos), so an empty slot
(-1) or a slot holding another position than expected is masked, never misread.
Then the program walks the chunk's own keys with the pre-fill loops of swa_attention
(window edge, unmasked interior, causal diagonal).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import counters
from .attend import LOG2E, _attend_tile, _attend_window, _program, _empty_state, _load_query_rows, _store_rows, _visible
from .launch import batch_positions, check_consecutive, check_window, prefill_launch, prepare


@triton.jit
def _chunk_attention_kernel(Q, K, V, CK, CV, CPOS, POS, O, CTR,
                            stride_pb, stride_cpb,
                            stride_qb, stride_qt, stride_qh,
                            stride_kb, stride_kt, stride_kh,
                            stride_vb, stride_vt, stride_vh,
                            stride_ckb, stride_ckt, stride_ckh,
                            stride_cvb, stride_cvt, stride_cvh,
                            stride_ob, stride_ot, stride_oh,
                            T, S, n_kv_heads, window, qk_scale,
                            GROUP: tl.constexpr, GROUP_P2: tl.constexpr,
                            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            WINDOWED: tl.constexpr, COUNT: tl.constexpr, ELEM_BYTES: tl.constexpr,
                            DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    pid_m, pid_bk, b, kh = _program(n_kv_heads)
    m0 = pid_m * BLOCK_M
    m1 = tl.minimum(m0 + BLOCK_M, T) - 1
    POS = POS + b.to(tl.int64) * stride_pb  # this sequence's positions and slots' positions
    CPOS = CPOS + b.to(tl.int64) * stride_cpb

    q, q_pos, t, g, row_ok = _load_query_rows(Q, POS, b, kh, stride_qb, stride_qt, stride_qh, T, m0,
                                              GROUP, GROUP_P2, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_F32)
    ROWS: tl.constexpr = BLOCK_M * GROUP_P2
    acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible = _empty_state(ROWS, BLOCK_D)
    n_rows = ((m1 - m0 + 1) * GROUP).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM

    # ---- 1. The rolling buffer, in place: positions [c_lo, p0), slot = position mod S.
    p0 = tl.load(POS).to(tl.int32)  # -1 when this sequence has no token in the chunk: reads nothing
    if WINDOWED:
        c_lo = tl.maximum(p0 + m0 - window + 1, 0)  # oldest position query m0 can see
    else:
        c_lo = p0 * 0
    c_lo = tl.maximum(c_lo, p0 - S)  # never more than S positions: each slot at most once
    c_hi = tl.maximum(p0, c_lo)
    CK_ptr = CK + b.to(tl.int64) * stride_ckb + kh * stride_ckh
    CV_ptr = CV + b.to(tl.int64) * stride_cvb + kh * stride_cvh
    for start in range(c_lo, c_hi, BLOCK_N):
        p_it = start + tl.arange(0, BLOCK_N)  # the positions this tile expects
        it_ok = p_it < c_hi
        slot = p_it % S  # consecutive slots, wrapping at most once per tile
        k_pos = tl.load(CPOS + slot, mask=it_ok, other=-1)  # what the slot actually holds
        # Memory traffic: BLOCK_N * D elements of K and of V (one row per slot), for G heads.
        k = tl.load(CK_ptr + slot[:, None] * stride_ckt + d[None, :], mask=it_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(CV_ptr + slot[:, None] * stride_cvt + d[None, :], mask=it_ok[:, None] & d_ok[None, :], other=0.0)
        vis = _visible(q_pos[:, None], k_pos[None, :], window, WINDOWED) & it_ok[None, :]
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k, v, vis, qk_scale, True, DOT_F32, PRECISION)
        if COUNT:
            n_k = tl.minimum(c_hi - start, BLOCK_N).to(tl.int64)
            n_tiles += 1
            kv_bytes += n_k * (2 * HEAD_DIM * ELEM_BYTES)
            flops += n_k * n_rows * (4 * HEAD_DIM)
            n_visible += tl.sum((vis & row_ok[:, None]).to(tl.int64))
    n_cache_tiles = n_tiles

    # ---- 2. The chunk's own keys: the pre-fill loops (keys indexed 0..T-1 like the queries).
    K_ptr = K + b.to(tl.int64) * stride_kb + kh * stride_kh
    V_ptr = V + b.to(tl.int64) * stride_vb + kh * stride_vh
    acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible, lo, hi = _attend_window(
        acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible, q, q_pos, row_ok, n_rows, K_ptr, V_ptr, POS,
        stride_kt, stride_vt, T, window, qk_scale, m0, m1,
        WINDOWED, COUNT, HEAD_DIM, BLOCK_D, BLOCK_N, ELEM_BYTES, DOT_F32, PRECISION)

    _store_rows(O, acc, l_i, b, kh, t, g, row_ok, stride_ob, stride_ot, stride_oh, GROUP, HEAD_DIM, BLOCK_D)
    if COUNT:
        row = CTR + (pid_m * tl.num_programs(1) + pid_bk) * 10  # columns: counters.CHUNK
        tl.store(row + 0, n_tiles)
        tl.store(row + 1, lo.to(tl.int64))
        tl.store(row + 2, kv_bytes)
        tl.store(row + 3, flops)
        tl.store(row + 4, n_visible)
        tl.store(row + 5, lo.to(tl.int64))
        tl.store(row + 6, (hi - 1).to(tl.int64))
        tl.store(row + 7, n_cache_tiles)
        tl.store(row + 8, c_lo.to(tl.int64))
        tl.store(row + 9, c_hi.to(tl.int64))


def chunk_attention(q, k, v, positions, cache_k, cache_v, cache_pos, window,
                    *, block_m: int | None = None, block_n: int | None = None):
    """A pre-fill chunk over [rolling buffer + chunk]: the kernel version of TorchBackend.chunk."""
    check_window(window)
    check_consecutive(positions)
    B, T, H, D = q.shape
    S, Kh = cache_k.shape[1], cache_k.shape[2]
    out_dtype, elem_bytes = q.dtype, cache_k.element_size()
    q, k, v, cache_k, cache_v = (prepare(x) for x in (q, k, v, cache_k, cache_v))
    G, G_P2, cfg, o, grid, ctr, count, dot_f32, precision = prefill_launch(q, Kh, block_m, block_n, counters.CHUNK)
    positions = batch_positions(positions, B, q.device)
    cache_pos = batch_positions(cache_pos, B, q.device)
    _chunk_attention_kernel[grid](
        q, k, v, cache_k, cache_v, cache_pos, positions, o, ctr,
        positions.stride(0), cache_pos.stride(0),
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        cache_k.stride(0), cache_k.stride(1), cache_k.stride(2),
        cache_v.stride(0), cache_v.stride(1), cache_v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        T, S, Kh, window or 0, LOG2E / math.sqrt(D),
        GROUP=G, GROUP_P2=G_P2, HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        WINDOWED=window is not None, COUNT=count, ELEM_BYTES=elem_bytes,
        DOT_F32=dot_f32, PRECISION=precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if count:
        counters.record("chunk_attention", counters.CHUNK, ctr, grid, cfg["BLOCK_M"], cfg["BLOCK_N"],
                        dict(B=B, T=T, H=H, K=Kh, D=D, S=S, window=window, dtype=str(out_dtype)))
    return o.to(out_dtype)


__all__ = ["chunk_attention"]
