"""Sliding-window pre-fill attention: a flash-attention kernel that never visits a tile
outside the window.

Same contract as `ops.attention(q, k, v, positions, positions, window)`:
q (B, T, H, D), k and v (B, T, K, D), positions (T,) or (B, T): each row consecutive,
optionally followed by padding (-1) in a ragged batch. Returns (B, T, H, D).

Work decomposition. One program owns BLOCK_M consecutive queries of one sequence and
*all G query heads of one key/value head* (grid = (cdiv(T, BLOCK_M), B * K)). The G
heads are folded into the rows of the score tile (row = query * G_P2 + head), so each
K/V tile is read once per group instead of G times, and K/V are never repeated in
memory (GQA for free). The program then streams key blocks with an online softmax
(running max m, running sum l, fp32 accumulator), as in FlashAttention-2.

Which key blocks. Queries [m0, m1] see keys in (m0 - W, m1] and nothing else, so the
loop runs over the key blocks lo .. hi-1 with lo = max(0, m0 - W + 1) // BLOCK_N and
hi = cdiv(m1 + 1, BLOCK_N). Blocks before lo are never loaded: the cost per query is
O(W), not O(T). Inside that range only the edge blocks (the window's lower edge and
the causal diagonal) need a mask; the blocks in between are wholly visible to every
query of the program and skip the mask arithmetic. The mask is masks.visible on the
absolute positions: key <= query, key > query - W, key >= 0.

The loops live in attend.py, shared with chunk_attention.py, which runs them over a
chunk's own keys; tile sizes and checks are in launch.py.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import counters
from .attend import LOG2E, _attend_window, _program, _empty_state, _load_query_rows, _store_rows
from .launch import batch_positions, check_consecutive, check_window, interpreting, prefill_launch, prepare  # noqa: F401


@triton.jit
def _swa_prefill_kernel(Q, K, V, O, POS, CTR,
                        stride_pb, stride_qb, stride_qt, stride_qh,
                        stride_kb, stride_kt, stride_kh,
                        stride_vb, stride_vt, stride_vh,
                        stride_ob, stride_ot, stride_oh,
                        T, n_kv_heads, window, qk_scale,
                        GROUP: tl.constexpr, GROUP_P2: tl.constexpr,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        WINDOWED: tl.constexpr, COUNT: tl.constexpr, ELEM_BYTES: tl.constexpr,
                        DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    pid_m, pid_bk, b, kh = _program(n_kv_heads)
    m0 = pid_m * BLOCK_M
    m1 = tl.minimum(m0 + BLOCK_M, T) - 1  # last real query of this program
    POS = POS + b.to(tl.int64) * stride_pb  # this sequence's positions

    # Q tile: read once, stays in registers for the whole key loop.
    q, q_pos, t, g, row_ok = _load_query_rows(Q, POS, b, kh, stride_qb, stride_qt, stride_qh, T, m0,
                                              GROUP, GROUP_P2, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_F32)
    ROWS: tl.constexpr = BLOCK_M * GROUP_P2
    acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible = _empty_state(ROWS, BLOCK_D)
    n_rows = ((m1 - m0 + 1) * GROUP).to(tl.int64)

    K_ptr = K + b.to(tl.int64) * stride_kb + kh * stride_kh
    V_ptr = V + b.to(tl.int64) * stride_vb + kh * stride_vh
    acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible, lo, hi = _attend_window(
        acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible, q, q_pos, row_ok, n_rows, K_ptr, V_ptr, POS,
        stride_kt, stride_vt, T, window, qk_scale, m0, m1,
        WINDOWED, COUNT, HEAD_DIM, BLOCK_D, BLOCK_N, ELEM_BYTES, DOT_F32, PRECISION)

    _store_rows(O, acc, l_i, b, kh, t, g, row_ok, stride_ob, stride_ot, stride_oh, GROUP, HEAD_DIM, BLOCK_D)
    if COUNT:
        # One row per program, columns in counters.PREFILL order.
        row = CTR + (pid_m * tl.num_programs(1) + pid_bk) * 7
        tl.store(row + 0, n_tiles)
        tl.store(row + 1, lo.to(tl.int64))  # causal key blocks before the window: never loaded
        tl.store(row + 2, kv_bytes)
        tl.store(row + 3, flops)
        tl.store(row + 4, n_visible)
        tl.store(row + 5, lo.to(tl.int64))
        tl.store(row + 6, (hi - 1).to(tl.int64))





def swa_prefill(q, k, v, positions, window, *, block_m: int | None = None, block_n: int | None = None,
                num_warps: int | None = None, num_stages: int | None = None):
    """Sliding-window attention of a whole sequence: the kernel version of ops.attention.

    q (B, T, H, D), k and v (B, T, K, D), positions (T,) consecutive; window None = causal.
    block_m / block_n / num_warps / num_stages override the device's tile config (tests
    and scripts/gpu_tune.py use them).
    """
    check_window(window)
    check_consecutive(positions)
    B, T, H, D = q.shape
    Kh = k.shape[2]
    out_dtype, elem_bytes = q.dtype, k.element_size()  # bytes counted as a GPU would read them
    q, k, v = prepare(q), prepare(k), prepare(v)
    G, G_P2, cfg, o, grid, ctr, count, dot_f32, precision = prefill_launch(
        q, Kh, block_m, block_n, counters.PREFILL, num_warps, num_stages)
    positions = batch_positions(positions, B, q.device)
    _swa_prefill_kernel[grid](
        q, k, v, o, positions, ctr,
        positions.stride(0), q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        T, Kh, window or 0, LOG2E / math.sqrt(D),
        GROUP=G, GROUP_P2=G_P2, HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        WINDOWED=window is not None, COUNT=count, ELEM_BYTES=elem_bytes,
        DOT_F32=dot_f32, PRECISION=precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if count:
        counters.record("swa_prefill", counters.PREFILL, ctr, grid, cfg["BLOCK_M"], cfg["BLOCK_N"],
                        dict(B=B, T=T, H=H, K=Kh, D=D, window=window, dtype=str(out_dtype)))
    return o.to(out_dtype)


__all__ = ["swa_prefill"]
