"""The Triton kernels seen from inside: one instrumented launch, and the counts it must report.

    call, out, ref = traced_swa_prefill(n=256, window=64)   # interpreter on a CPU
    expected_counts(call) == {k: call.totals[k] for k in expected_counts(call)}
"""
from __future__ import annotations

import math

import torch

from .. import kernels, ops, trace
from ..masks import visible_pairs


def traced_swa_prefill(n: int = 256, window: int = 64, heads: int = 8, kv_heads: int = 2, head_dim: int = 32,
                       block: int = 16, seed: int = 0):
    """Run the sliding-window pre-fill kernel once on random q/k/v inside a trace.
    Returns (KernelCall, kernel output, ops.attention output)."""
    ok, why = kernels.available()
    if not ok:
        raise kernels.TritonUnavailable(why)
    interpreting = kernels.use_interpreter_if_no_gpu(force=True)  # before the kernel module loads
    from ..kernels import swa_attention  # lazy: imports Triton, after the interpreter decision above

    g = torch.Generator().manual_seed(seed)
    dev = "cpu" if interpreting else "cuda"
    q = torch.randn(1, n, heads, head_dim, generator=g).to(dev)
    k = torch.randn(1, n, kv_heads, head_dim, generator=g).to(dev)
    v = torch.randn(1, n, kv_heads, head_dim, generator=g).to(dev)
    pos = torch.arange(n, device=dev)
    with trace.record() as t:
        out = swa_attention.swa_prefill(q, k, v, pos, window, block_m=block, block_n=block)
    return t.kernel_calls[-1], out, ops.attention(q, k, v, pos, pos, window)


def expected_counts(call) -> dict:
    """The counters a window-skipping kernel must report, from the shapes alone."""
    m = call.meta
    T, W, D, H, K, B = m["T"], m["window"], m["D"], m["H"], m["K"], m["B"]
    BM, BN, G = call.block_m, call.block_n, H // K
    elem = 4 if "float32" in m["dtype"] else 2
    tiles = skipped = 0
    for i in range(math.ceil(T / BM)):
        m0, m1 = i * BM, min(i * BM + BM, T) - 1
        lo, hi = max(0, m0 - W + 1) // BN, math.ceil((m1 + 1) / BN)
        tiles, skipped = tiles + hi - lo, skipped + lo
    progs = B * K
    return dict(tiles=progs * tiles, skipped=progs * skipped,
                kv_bytes=progs * tiles * BN * D * 2 * elem,  # every tile is full when BN divides T
                flops=progs * tiles * 4 * D * (BM * G) * BN,
                visible_pairs=B * H * visible_pairs(T, W))
