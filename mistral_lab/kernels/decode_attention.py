"""Decode attention over the rolling buffer, split across programs (flash-decoding).

Same contract as backends.TorchBackend.decode, on the layer's tensors: q (B, 1, H, D) one
query per sequence at `position` ((B, 1), or (1,) shared; already written into the
buffer; -1: a sequence that has stopped, which reads nothing and gets zeros), cache_k and
cache_v (B, S, K, D) in slot order, cache_pos (S,) or (B, S) absolute positions (-1: empty).

Why split. One query per sequence leaves B * K programs if each program owns a KV
head: at batch 1 that is 8 programs for Mistral 7B on a GPU with 132 multiprocessors,
and decode is bound by reading the buffer. So the visible positions are cut into
NUM_SPLITS runs, one program each (grid = (NUM_SPLITS, B * K)); each writes a partial
(max m, sum l, unnormalised acc) per query head, and a second small kernel combines
them: out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s with M = max_s m_s.

Which slots. The query at p sees positions [max(p - W + 1, 0), p]; position x lives in
slot x mod S, so these are one run of consecutive slots wrapping at most once. Only
that run is read (for a full-length buffer with S = W that is every slot; for a longer
full cache, only the last W). The mask is masks.visible on cache_pos, never on slot
indices, so empty slots (-1) are never attended.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from . import counters
from .attend import LOG2E, _attend_tile, _empty_state, _program, _visible
from .launch import batch_positions, check_window, dot_settings, interpreting, overridden, prepare


@triton.jit
def _decode_split_kernel(Q, CK, CV, CPOS, POS, MID_O, MID_ML, CTR,
                         stride_pb, stride_cpb, stride_qb, stride_qh,
                         stride_ckb, stride_ckt, stride_ckh,
                         stride_cvb, stride_cvt, stride_cvh,
                         S, n_kv_heads, n_heads, window, qk_scale,
                         NUM_SPLITS: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                         WINDOWED: tl.constexpr, COUNT: tl.constexpr, ELEM_BYTES: tl.constexpr,
                         DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    split, pid_bk, b, kh = _program(n_kv_heads)

    # The G query heads of this KV group, padded to ROWS >= 16 rows for tl.dot.
    rows = tl.arange(0, ROWS)
    row_ok = rows < GROUP
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = tl.load(Q + b.to(tl.int64) * stride_qb + (kh * GROUP + rows)[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    p = tl.load(POS + b.to(tl.int64) * stride_pb).to(tl.int32)
    CPOS = CPOS + b.to(tl.int64) * stride_cpb

    # Visible positions [lo, p], cut into NUM_SPLITS runs of whole tiles.
    if WINDOWED:
        lo = tl.maximum(p - window + 1, 0)
    else:
        lo = p * 0
    lo = tl.maximum(lo, p - S + 1)  # at most S positions: each slot at most once
    n = p + 1 - lo
    per_split = tl.cdiv(tl.cdiv(n, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, p + 1)

    acc, m_i, l_i, n_tiles, kv_bytes, flops, n_visible = _empty_state(ROWS, BLOCK_D)
    CK_ptr = CK + b.to(tl.int64) * stride_ckb + kh * stride_ckh
    CV_ptr = CV + b.to(tl.int64) * stride_cvb + kh * stride_cvh
    for s0 in range(start, end, BLOCK_N):
        p_it = s0 + tl.arange(0, BLOCK_N)
        it_ok = p_it < end
        slot = p_it % S
        k_pos = tl.load(CPOS + slot, mask=it_ok, other=-1)
        # Memory traffic: BLOCK_N * D elements of K and of V, read once for all G heads.
        k = tl.load(CK_ptr + slot[:, None] * stride_ckt + d[None, :], mask=it_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(CV_ptr + slot[:, None] * stride_cvt + d[None, :], mask=it_ok[:, None] & d_ok[None, :], other=0.0)
        vis = _visible(p, k_pos, window, WINDOWED) & it_ok
        vis2 = vis[None, :] & (rows >= 0)[:, None]  # (ROWS, BLOCK_N)
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, k, v, vis2, qk_scale, True, DOT_F32, PRECISION)
        if COUNT:
            n_k = tl.minimum(end - s0, BLOCK_N).to(tl.int64)
            n_tiles += 1
            kv_bytes += n_k * (2 * HEAD_DIM * ELEM_BYTES)
            flops += n_k * (4 * HEAD_DIM * GROUP)
            n_visible += tl.sum(vis.to(tl.int64)) * GROUP

    # Partials, one per (batch, head, split): unnormalised acc, and (m, l) in base 2.
    h = kh * GROUP + rows
    mid = (b.to(tl.int64) * n_heads + h) * NUM_SPLITS + split  # (ROWS,)
    tl.store(MID_O + mid[:, None] * BLOCK_D + d[None, :], acc, mask=row_ok[:, None])
    tl.store(MID_ML + mid * 2, m_i, mask=row_ok)
    tl.store(MID_ML + mid * 2 + 1, l_i, mask=row_ok)
    if COUNT:
        row = CTR + (split * tl.num_programs(1) + pid_bk) * 7  # columns: counters.DECODE
        tl.store(row + 0, n_tiles)
        tl.store(row + 1, tl.where(split == 0, S - n, 0).to(tl.int64))  # slots never read
        tl.store(row + 2, kv_bytes)
        tl.store(row + 3, flops)
        tl.store(row + 4, n_visible)
        tl.store(row + 5, tl.where(start < end, start, -1).to(tl.int64))
        tl.store(row + 6, tl.where(start < end, end - 1, -1).to(tl.int64))


@triton.jit
def _decode_combine_kernel(MID_O, MID_ML, O, stride_ob, stride_oh, n_heads,
                           NUM_SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
                           HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program per (batch, head): reads NUM_SPLITS partials (tiny), writes D outputs."""
    pid = tl.program_id(0)
    b = pid // n_heads
    h = pid % n_heads
    s = tl.arange(0, SPLITS_P2)
    s_ok = s < NUM_SPLITS
    d = tl.arange(0, BLOCK_D)
    base = pid.to(tl.int64) * NUM_SPLITS + s
    m = tl.load(MID_ML + base * 2, mask=s_ok, other=float("-inf"))
    l = tl.load(MID_ML + base * 2 + 1, mask=s_ok, other=0.0)
    acc = tl.load(MID_O + base[:, None] * BLOCK_D + d[None, :], mask=s_ok[:, None], other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # a stopped sequence: no split saw a key
    w = tl.math.exp2(m - m_max)  # splits that saw nothing have m = -inf: weight 0
    den = tl.sum(l * w, 0)
    out = tl.sum(acc * w[:, None], 0) / tl.where(den == 0.0, 1.0, den)  # no key at all: zeros
    tl.store(O + b.to(tl.int64) * stride_ob + h * stride_oh + d, out.to(O.dtype.element_ty), mask=d < HEAD_DIM)


@functools.lru_cache(maxsize=None)
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def decode_blocks(n_slots: int, n_programs: int, dtype: torch.dtype) -> dict:
    """BLOCK_N and the number of splits, from the device and the slots to read."""
    if interpreting():
        block_n = 16
        return dict(BLOCK_N=block_n, NUM_SPLITS=max(1, min(4, triton.cdiv(n_slots, block_n))), num_warps=1, num_stages=1)
    # Decode moves bytes: many small programs keep the most loads in flight. Swept on an
    # H100 (scripts/gpu_tune.py, bf16, 4096 slots, 8 KV heads, CUDA-graph timing):
    # 32-key tiles, 64 splits, 4 warps took 8.5 us; 64-key tiles and 32 splits 10.5 us.
    block_n = 16 if dtype == torch.float32 else 32  # fp32: FMA dots, keep registers in check
    tiles = triton.cdiv(n_slots, block_n)
    sms = _sm_count(torch.cuda.current_device())
    # About four programs per SM, at least two tiles per split.
    splits = max(1, min(triton.cdiv(tiles, 2), triton.cdiv(4 * sms, n_programs), 64))
    return dict(BLOCK_N=block_n, NUM_SPLITS=splits, num_warps=4, num_stages=2)


def decode_attention(q, cache_k, cache_v, cache_pos, position, window,
                     *, block_n: int | None = None, num_splits: int | None = None, num_warps: int | None = None):
    """One query per sequence over the buffer: the kernel version of TorchBackend.decode.
    block_n / num_splits / num_warps override the device's config (tests, scripts/gpu_tune.py)."""
    check_window(window)
    B, T, H, D = q.shape
    if T != 1:
        raise ValueError(f"decode takes one query per sequence, got {T}")
    S, Kh = cache_k.shape[1], cache_k.shape[2]
    if H % Kh:
        raise ValueError(f"{H} query heads cannot be grouped over {Kh} key/value heads")
    out_dtype, elem_bytes = q.dtype, cache_k.element_size()
    q, cache_k, cache_v = prepare(q), prepare(cache_k), prepare(cache_v)
    G = H // Kh
    cfg = overridden(decode_blocks(min(S, window or S), B * Kh, q.dtype), BLOCK_N=block_n, NUM_SPLITS=num_splits,
                     num_warps=num_warps)
    splits, BLOCK_D = cfg["NUM_SPLITS"], max(16, triton.next_power_of_2(D))
    mid_o = torch.empty((B, H, splits, BLOCK_D), dtype=torch.float32, device=q.device)
    mid_ml = torch.empty((B, H, splits, 2), dtype=torch.float32, device=q.device)
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grid = (splits, B * Kh)
    ctr, count = counters.buffer(grid, len(counters.DECODE), q.device)
    dot_f32, precision = dot_settings(q.dtype)
    position = batch_positions(position.reshape(-1, 1) if position.dim() == 2 else position.reshape(-1)[:1], B, q.device)
    cache_pos = batch_positions(cache_pos, B, q.device)
    _decode_split_kernel[grid](
        q, cache_k, cache_v, cache_pos, position, mid_o, mid_ml, ctr,
        position.stride(0), cache_pos.stride(0), q.stride(0), q.stride(2),
        cache_k.stride(0), cache_k.stride(1), cache_k.stride(2),
        cache_v.stride(0), cache_v.stride(1), cache_v.stride(2),
        S, Kh, H, window or 0, LOG2E / math.sqrt(D),
        NUM_SPLITS=splits, GROUP=G, ROWS=max(16, triton.next_power_of_2(G)),
        HEAD_DIM=D, BLOCK_D=BLOCK_D, BLOCK_N=cfg["BLOCK_N"],
        WINDOWED=window is not None, COUNT=count, ELEM_BYTES=elem_bytes,
        DOT_F32=dot_f32, PRECISION=precision,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    _decode_combine_kernel[(B * H,)](
        mid_o, mid_ml, o, o.stride(0), o.stride(2), H,
        NUM_SPLITS=splits, SPLITS_P2=triton.next_power_of_2(splits), HEAD_DIM=D, BLOCK_D=BLOCK_D,
        num_warps=1 if interpreting() else 4,
    )
    if count:
        counters.record("decode_attention", counters.DECODE, ctr, grid, 1, cfg["BLOCK_N"],
                        dict(B=B, H=H, K=Kh, D=D, S=S, window=window, splits=splits, dtype=str(out_dtype)))
    return o.to(out_dtype)


__all__ = ["decode_attention"]
