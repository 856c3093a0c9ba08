"""Device functions shared by the three attention kernels (swa_attention, chunk_attention,
decode_attention): the online softmax over key tiles (FlashAttention-2's running max m,
running sum l and fp32 accumulator, in base 2), the one visibility predicate
(masks.visible as @triton.jit), and the window's walk over key blocks in three runs --
masked lower edge, unmasked interior, masked causal diagonal.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # scores are kept in base 2: exp(x) = exp2(x * log2(e))


@triton.jit
def _program(n_kv_heads):
    """(program_id 0, program_id 1, sequence b, key/value head kh): axis 1 runs over
    batch x KV heads in every attention kernel, axis 0 over query blocks or splits."""
    pid0 = tl.program_id(0)
    pid_bk = tl.program_id(1)
    return pid0, pid_bk, pid_bk // n_kv_heads, pid_bk % n_kv_heads


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

