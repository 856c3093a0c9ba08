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

Shared by chunk_attention.py, which runs the same loops over a chunk's own keys.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import counters

LOG2E = 1.4426950408889634  # scores are kept in base 2: exp(x) = exp2(x * log2(e))


# ---------------------------------------------------------------------------------
# Launch configuration, chosen from the device (shared by every attention kernel).
# ---------------------------------------------------------------------------------

def interpreting() -> bool:
    """True when the @triton.jit functions of this module run in Triton's interpreter."""
    return type(_swa_prefill_kernel).__name__ == "InterpretedFunction"


def dot_settings(dtype: torch.dtype) -> tuple[bool, str]:
    """(upcast operands to fp32 before tl.dot, input precision of an fp32 dot).

    The interpreter's tl.dot is a numpy matmul that mishandles bf16, so it always gets
    fp32 operands. On a GPU fp16/bf16 go to the tensor cores as they are; an fp32 model
    asks for 'ieee' (true fp32) rather than Triton's default tf32 (10-bit mantissa), so
    that backend='triton' reproduces backend='torch' token for token.
    """
    return interpreting() or dtype == torch.float32, "ieee"


def prefill_blocks(group_p2: int, head_dim: int, dtype: torch.dtype) -> dict:
    """BLOCK_M (queries per program), BLOCK_N (keys per tile), num_warps, num_stages."""
    if interpreting():
        # Small tiles: the interpreter pays per numpy op, whatever its size, and small
        # blocks make the window edges and the skipping visible at test sizes.
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    if dtype == torch.float32:
        # True-fp32 dots run on the FMA units, not the tensor cores, and hold far more
        # registers: smaller tiles (sm_90 ptxas, D = 128: 64x16 tiles spill ~260 bytes,
        # 64x32 ~640, 128x32 ~6.8 KB). A correctness path, not a fast one. (bf16/fp16 at
        # 128x64: wgmma, 237 registers, no spill.)
        return dict(BLOCK_M=max(1, 64 // group_p2), BLOCK_N=16, num_warps=8, num_stages=2)
    rows = 128  # score-tile rows = BLOCK_M * G: 128 rows = two m64 wgmma tiles on Hopper
    block_m = max(1, rows // group_p2)
    big = rows * max(head_dim, 16) >= 128 * 128
    return dict(BLOCK_M=block_m, BLOCK_N=64, num_warps=8 if big else 4, num_stages=3 if head_dim <= 128 else 2)


def check_window(window) -> None:
    if window is not None and (not isinstance(window, int) or window <= 0):
        raise ValueError(f"window must be a positive number of keys or None (full causal attention), got {window!r}")


def prepare(x: torch.Tensor) -> torch.Tensor:
    """Last dimension contiguous (the kernels assume d-stride 1); bf16 upcast in the interpreter."""
    if interpreting() and x.dtype == torch.bfloat16:
        x = x.float()  # the interpreter's bf16 is broken (docs/ARCHITECTURE.md, Tolerances)
    return x if x.stride(-1) == 1 else x.contiguous()


def check_consecutive(positions: torch.Tensor) -> None:
    """The kernels find the window's key blocks by index: each row's positions must be
    p0, p0+1, ..., then only padding (-1) -- the right-padding of a ragged batch.

    Checked only where it costs no device synchronisation (positions on the CPU).
    """
    if positions.device.type == "cpu" and positions.shape[-1] > 1:
        p = positions.reshape(-1, positions.shape[-1])
        step_ok = (p[:, 1:] - p[:, :-1] == 1) | (p[:, 1:] < 0)
        pad_ok = (p[:, :-1] >= 0) | (p[:, 1:] < 0)  # once padding starts, it stays
        if not bool((step_ok & pad_ok).all()):
            raise ValueError("the triton backend needs consecutive positions (p0, p0+1, ...) within a call, "
                             "padding (-1) only at the end of a row")


def batch_positions(positions: torch.Tensor, B: int, device) -> torch.Tensor:
    """(B, N) int64 contiguous positions on `device`: a shared (N,) row is repeated per sequence."""
    positions = positions.to(device=device, dtype=torch.int64)
    if positions.dim() == 1:
        positions = positions.expand(B, -1)
    return positions.contiguous()


# ---------------------------------------------------------------------------------
# Shared device functions.
# ---------------------------------------------------------------------------------

@triton.jit
def _empty_state(ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """The online softmax before any key (acc = 0, max = -inf, sum = 0) and the four
    counters at zero: acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible."""
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    zero = tl.zeros([], dtype=tl.int64)
    return acc, m_i, l_i, zero, zero, zero, zero


@triton.jit
def _visible(q_pos, k_pos, window, WINDOWED: tl.constexpr):
    """masks.visible on broadcastable position tensors, composed with AND: causal, a filled
    slot (k_pos >= 0: empty slots and padding are -1), inside the window."""
    vis = (k_pos <= q_pos) & (k_pos >= 0)
    if WINDOWED:
        vis = vis & (k_pos > q_pos - window)
    return vis


@triton.jit
def _attend_tile(acc, m_i, l_i, q, k, v, mask, qk_scale,
                 MASKED: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """One step of the online softmax: fold a (BLOCK_N, D) key/value tile into the state.

    acc (ROWS, D) fp32, m_i and l_i (ROWS,) fp32 in base-2 units. A row may have no
    visible key in this tile (a query near the end of the block meeting the window's
    lower edge): its max stays -inf, and m_use keeps exp2 away from (-inf) - (-inf).
    """
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (ROWS, BLOCK_N)
    if MASKED:
        s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    alpha = tl.math.exp2(m_i - m_use)  # rescales what was accumulated under the old max
    p = tl.math.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attend_key_blocks(acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible,
                       q, q_pos, row_ok, n_rows, K_ptr, V_ptr, POS, stride_kt, stride_vt,
                       n_keys, window, qk_scale, lo, hi,
                       MASKED: tl.constexpr, WINDOWED: tl.constexpr, COUNT: tl.constexpr,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                       ELEM_BYTES: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """Stream key blocks lo .. hi-1 of a contiguous key sequence (K_ptr, V_ptr at key 0)."""
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    for blk in range(lo, hi):
        kn = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        if MASKED:
            # Edge tile: keys past the end are not loaded; the predicate decides the rest.
            k_ok = kn < n_keys
            k_pos = tl.load(POS + kn, mask=k_ok, other=-1)
            k = tl.load(K_ptr + kn[:, None] * stride_kt + d[None, :], mask=k_ok[:, None] & d_ok[None, :], other=0.0)
            v = tl.load(V_ptr + kn[:, None] * stride_vt + d[None, :], mask=k_ok[:, None] & d_ok[None, :], other=0.0)
            vis = _visible(q_pos[:, None], k_pos[None, :], window, WINDOWED) & k_ok[None, :]
        else:
            # Interior tile: every key is visible to every query of the program, no mask.
            # Memory traffic: BLOCK_N * D elements of K and of V, read once for G heads.
            k = tl.load(K_ptr + kn[:, None] * stride_kt + d[None, :], mask=d_ok[None, :], other=0.0)
            v = tl.load(V_ptr + kn[:, None] * stride_vt + d[None, :], mask=d_ok[None, :], other=0.0)
            vis = row_ok[:, None]  # unused
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k, v, vis, qk_scale, MASKED, DOT_F32, PRECISION)
        if COUNT:
            n_k = tl.minimum(n_keys - blk * BLOCK_N, BLOCK_N).to(tl.int64)
            n_tiles += 1
            kv_bytes += n_k * (2 * HEAD_DIM * ELEM_BYTES)
            flops += n_k * n_rows * (4 * HEAD_DIM)
            if MASKED:
                n_visible += tl.sum((vis & row_ok[:, None]).to(tl.int64))
            else:
                n_visible += n_k * n_rows
    return acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible


@triton.jit
def _attend_window(acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible,
                   q, q_pos, row_ok, n_rows, K_ptr, V_ptr, POS, stride_kt, stride_vt,
                   n_keys, window, qk_scale, m0, m1,
                   WINDOWED: tl.constexpr, COUNT: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                   ELEM_BYTES: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """Queries m0..m1 (indices into the same sequence as the keys) over their window.

    Visits key blocks [lo, hi) only, in three runs: masked lower edge [lo, full_lo),
    unmasked interior [full_lo, full_hi), masked diagonal [full_hi, hi).
    """
    hi = (m1 + BLOCK_N) // BLOCK_N  # one past the block holding key m1 (causal end)
    full_hi = (m0 + 1) // BLOCK_N  # blocks whose last key is <= m0: past for every query
    if WINDOWED:
        lo = tl.maximum(m0 - window + 1, 0) // BLOCK_N  # block holding the oldest key m0 sees
        full_lo = (tl.maximum(m1 - window + 1, 0) + BLOCK_N - 1) // BLOCK_N  # first block m1 sees whole
    else:
        lo = m0 * 0
        full_lo = m0 * 0
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.maximum(tl.minimum(full_hi, hi), full_lo)
    acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible = _attend_key_blocks(
        acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible, q, q_pos, row_ok, n_rows, K_ptr, V_ptr, POS,
        stride_kt, stride_vt, n_keys, window, qk_scale, lo, full_lo,
        True, WINDOWED, COUNT, HEAD_DIM, BLOCK_D, BLOCK_N, ELEM_BYTES, DOT_F32, PRECISION)
    acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible = _attend_key_blocks(
        acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible, q, q_pos, row_ok, n_rows, K_ptr, V_ptr, POS,
        stride_kt, stride_vt, n_keys, window, qk_scale, full_lo, full_hi,
        False, WINDOWED, COUNT, HEAD_DIM, BLOCK_D, BLOCK_N, ELEM_BYTES, DOT_F32, PRECISION)
    acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible = _attend_key_blocks(
        acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible, q, q_pos, row_ok, n_rows, K_ptr, V_ptr, POS,
        stride_kt, stride_vt, n_keys, window, qk_scale, full_hi, hi,
        True, WINDOWED, COUNT, HEAD_DIM, BLOCK_D, BLOCK_N, ELEM_BYTES, DOT_F32, PRECISION)
    return acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible, lo, hi


@triton.jit
def _load_query_rows(Q, POS, b, kh, stride_qb, stride_qt, stride_qh, T, m0,
                     GROUP: tl.constexpr, GROUP_P2: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, DOT_F32: tl.constexpr):
    """The (BLOCK_M * GROUP_P2, D) query tile: row r = query m0 + r // GROUP_P2, head r % GROUP_P2
    of key/value group kh. For a contiguous q the G heads of a query are adjacent:
    each query contributes G * D contiguous elements."""
    rows = tl.arange(0, BLOCK_M * GROUP_P2)
    t = m0 + rows // GROUP_P2
    g = rows % GROUP_P2
    row_ok = (t < T) & (g < GROUP)
    d = tl.arange(0, BLOCK_D)
    q_ptrs = Q + b.to(tl.int64) * stride_qb + t[:, None] * stride_qt + (kh * GROUP + g)[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & (d < HEAD_DIM)[None, :], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    q_pos = tl.load(POS + t, mask=t < T, other=0)
    return q, q_pos, t, g, row_ok


@triton.jit
def _store_rows(O, acc, l_i, b, kh, t, g, row_ok, stride_ob, stride_ot, stride_oh,
                GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # only padding rows have l = 0; they are not stored
    out = acc / l_safe[:, None]
    d = tl.arange(0, BLOCK_D)
    o_ptrs = O + b.to(tl.int64) * stride_ob + t[:, None] * stride_ot + (kh * GROUP + g)[:, None] * stride_oh + d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & (d < HEAD_DIM)[None, :])


# ---------------------------------------------------------------------------------
# The pre-fill kernel and its launcher.
# ---------------------------------------------------------------------------------

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
    pid_m = tl.program_id(0)
    pid_bk = tl.program_id(1)
    b = pid_bk // n_kv_heads
    kh = pid_bk % n_kv_heads
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



def prefill_launch(q, Kh, block_m, block_n, counter_names, num_warps=None, num_stages=None):
    """What both pre-fill launchers set up: head grouping, tile config (with test and
    tuning overrides), output, grid (query blocks x batch*KV heads), counters, dot precision."""
    B, T, H, D = q.shape
    if H % Kh:
        raise ValueError(f"{H} query heads cannot be grouped over {Kh} key/value heads")
    G = H // Kh
    G_P2 = triton.next_power_of_2(G)
    cfg = prefill_blocks(G_P2, D, q.dtype)
    if block_m is not None:
        cfg["BLOCK_M"] = block_m
    if block_n is not None:
        cfg["BLOCK_N"] = block_n
    if num_warps is not None:
        cfg["num_warps"] = num_warps
    if num_stages is not None:
        cfg["num_stages"] = num_stages
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grid = (triton.cdiv(T, cfg["BLOCK_M"]), B * Kh)
    ctr, count = counters.buffer(grid, len(counter_names), q.device)
    dot_f32, precision = dot_settings(q.dtype)
    return G, G_P2, cfg, o, grid, ctr, count, dot_f32, precision

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
