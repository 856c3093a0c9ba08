"""GPU timings of the kernels against PyTorch's own attention, on the same shapes.

    rows = bench_attention([4096, 8192, 16384, 32768])    # pre-fill, W = 4096
    rows += bench_decode([4096, 32768])                    # one query over the cache

    python -m mistral_lab bench attention|decode --out runs/gpu/attention.json

Every mask here, the peers' included, is masks.visible: FlexAttention gets it as a
mask_mod (window_mask_mod), the dense SDPA peer as masks.window_mask.

Peers (pre-fill): FlexAttention with a sliding-window block mask (compiled), SDPA with
is_causal (the flash kernel: fast, but it attends to the whole past, not the window),
and SDPA with a dense boolean window mask (exact, but O(N^2) memory and work).
Peers (decode): SDPA over the same rolling buffer, SDPA over a full cache of N
positions (what a cache without the window reads), FlexAttention over the full cache
with the window mask.

Throughput counts only the useful work: 4 * H * D flops per visible (query, key)
pair, whatever an implementation computes, so a kernel that skips the tiles outside
the window is not penalised for doing less. Timings: triton.testing.do_bench, median.
Needs a CUDA GPU; the counting functions are plain Python.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from .. import kernels
from ..config import ModelArgs
from ..masks import keys_per_query, visible, visible_pairs, window_mask
from .fixtures import filled_cache


def window_mask_mod(window: int | None, q_offset: int = 0):
    """masks.visible as a FlexAttention mask_mod, for queries at positions q_idx + q_offset
    (a decode step's one query sits at position N - 1, its q_idx is 0)."""
    def mask_mod(b, h, q_idx, kv_idx):
        return visible(q_idx + q_offset, kv_idx, window)

    return mask_mod


def attention_flops(n: int, window: int | None, heads: int, head_dim: int, batch: int = 1) -> int:
    """Useful flops of a pre-fill: QK^T and PV, 2 * D each per visible pair and head."""
    return 4 * batch * heads * head_dim * visible_pairs(n, window)


def decode_flops(n: int, window: int | None, heads: int, head_dim: int, batch: int = 1) -> int:
    """Useful flops of one decode step at position n - 1 (it sees keys_per_query(n - 1, W) keys)."""
    return 4 * batch * heads * head_dim * keys_per_query(n - 1, window)


def one_layer_buffer(n: int, slots: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device="cuda",
                     batch: int = 1):
    """One layer's rolling buffer of `slots` after n tokens (fixtures.filled_cache on a
    one-layer shape): random keys and values at slot = position mod slots. Returns the
    layer's k, v (batch, slots, K, D) and slot positions (slots,) of sequence 0."""
    args = ModelArgs(dim=kv_heads * head_dim, n_layers=1, head_dim=head_dim, hidden_dim=1, n_heads=kv_heads,
                     n_kv_heads=kv_heads, vocab_size=1, sliding_window=slots)
    layer = filled_cache(args, batch, n, rolling=True, dtype=dtype, device=device).layer(0)
    return layer.k, layer.v, layer.pos[0]


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise ValueError("mistral_lab.bench.kernels needs a CUDA GPU (timings in Triton's interpreter mean nothing)")


def _time(fn) -> float:
    from triton.testing import do_bench  # lazy: Triton is optional

    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def _time_graph(fn) -> float | None:
    """Median ms of fn's kernels replayed from a CUDA graph: device time without the
    Python launch overhead (tens of microseconds a call, more than a decode step's
    kernels take). None when fn cannot be captured."""
    from triton.testing import do_bench_cudagraph  # lazy: Triton is optional

    try:
        return do_bench_cudagraph(fn, rep=100, return_mode="median")
    except Exception:  # e.g. a compiled peer that syncs or allocates outside the graph pool
        torch.cuda.synchronize()
        return None


def _sdpa(q, k, v, **kw):
    """SDPA on (B, H, N, D) with K/V heads shared by groups of query heads."""
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1], **kw)


def _add_ratios(rows: list[dict]) -> list[dict]:
    """Each row gets vs = {other impl: other_ms / this_ms} at the same N (> 1: this one is faster)."""
    for row in rows:
        row["vs"] = {o["impl"]: round(o["ms"] / row["ms"], 3) for o in rows
                     if o is not row and o["ms"] is not None and row["ms"] is not None}
    return rows


def bench_attention(n_list, window: int | None = 4096, heads: int = 32, kv_heads: int = 8, head_dim: int = 128,
                    dtype: torch.dtype = torch.bfloat16, batch: int = 1, dense_max_n: int = 16384) -> list[dict]:
    """Pre-fill attention over sequences of each length in n_list; one row per (N, impl)."""
    _require_cuda()
    backend = kernels.triton_backend()  # compiled kernels (CUDA present)
    flex = torch.compile(flex_attention, dynamic=False)
    out = []
    for n in n_list:
        q = torch.randn(batch, n, heads, head_dim, device="cuda", dtype=dtype)
        k = torch.randn(batch, n, kv_heads, head_dim, device="cuda", dtype=dtype)
        v = torch.randn(batch, n, kv_heads, head_dim, device="cuda", dtype=dtype)
        pos = torch.arange(n, device="cuda")
        qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # (B, heads, N, D)
        block_mask = create_block_mask(window_mask_mod(window), None, None, n, n, device="cuda")
        impls = {
            "triton_swa": lambda: backend.prefill(q, k, v, pos, window),
            "flex_window": lambda: flex(qt, kt, vt, block_mask=block_mask, enable_gqa=True),
            "sdpa_causal": lambda: _sdpa(qt, kt, vt, is_causal=True),
        }
        if n <= dense_max_n:
            dense = window_mask(n, window, device="cuda")
            impls["sdpa_dense_mask"] = lambda: _sdpa(qt, kt, vt, attn_mask=dense)
        # Correct first: our output against FlexAttention's on the same inputs.
        ours = impls["triton_swa"]().transpose(1, 2).float()
        err = ((ours - impls["flex_window"]().float()).norm() / ours.norm()).item()
        flops = attention_flops(n, window, heads, head_dim, batch)
        rows = []
        for name, fn in impls.items():
            ms = _time(fn)
            rows.append(dict(kind="prefill", N=n, impl=name, ms=ms, tflops=flops / ms / 1e9,
                             window=window, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                             dtype=str(dtype).replace("torch.", ""), batch=batch))
        rows[0]["rel_err_vs_flex"] = err
        out += _add_ratios(rows)
        del q, k, v, qt, kt, vt
        torch.cuda.empty_cache()
    return out


def bench_decode(n_list=(4096, 32768), window: int | None = 4096, heads: int = 32, kv_heads: int = 8,
                 head_dim: int = 128, dtype: torch.dtype = torch.bfloat16, batch: int = 1) -> list[dict]:
    """One decode step at position N - 1; one row per (N, impl)."""
    _require_cuda()
    kernels.triton_backend()  # compiled kernels (CUDA present), imported in order
    from ..kernels.decode_attention import decode_attention  # lazy: imports Triton, after the backend decided

    flex = torch.compile(flex_attention, dynamic=False)
    elem = torch.finfo(dtype).bits // 8
    out = []
    for n in n_list:
        S = n if window is None else min(window, n)  # the rolling buffer after n tokens
        p = n - 1
        q = torch.randn(batch, 1, heads, head_dim, device="cuda", dtype=dtype)
        ck, cv, cache_pos = one_layer_buffer(n, S, kv_heads, head_dim, dtype, batch=batch)  # every slot filled
        position = torch.tensor([p], device="cuda")
        fk = torch.randn(batch, kv_heads, n, head_dim, device="cuda", dtype=dtype)  # a full cache
        fv = torch.randn(batch, kv_heads, n, head_dim, device="cuda", dtype=dtype)
        qt = q.transpose(1, 2).contiguous()  # (B, H, 1, D)
        rk, rv = ck.transpose(1, 2).contiguous(), cv.transpose(1, 2).contiguous()

        impls = {
            "triton_decode": lambda: decode_attention(q, ck, cv, cache_pos, position, window),
            "sdpa_rolling": lambda: _sdpa(qt, rk, rv),
            "sdpa_full_cache": lambda: _sdpa(qt, fk, fv),
        }
        try:
            block_mask = create_block_mask(window_mask_mod(window, q_offset=p), None, None, 1, n, device="cuda")
            flex(qt, fk, fv, block_mask=block_mask, enable_gqa=True)
            impls["flex_window_full_cache"] = lambda: flex(qt, fk, fv, block_mask=block_mask, enable_gqa=True)
        except Exception:  # flex's decode path depends on the torch version: leave it out
            pass
        ours = impls["triton_decode"]().transpose(1, 2).float()
        err = ((ours - impls["sdpa_rolling"]().float()).norm() / ours.norm()).item()
        flops = decode_flops(n, window, heads, head_dim, batch)
        kv_bytes = 2 * batch * S * kv_heads * head_dim * elem  # the fewest bytes: each visible key once
        rows = []
        for name, fn in impls.items():
            # A decode step is microseconds of device work: time it replayed from a CUDA
            # graph (how a serving loop runs it); ms_eager keeps the Python launch cost.
            eager = _time(fn)
            graph = _time_graph(fn)
            ms = graph if graph is not None else eager
            rows.append(dict(kind="decode", N=n, impl=name, ms=ms, ms_eager=eager, timing="cuda_graph"
                             if graph is not None else "eager", tflops=flops / ms / 1e9,
                             gbps_min_bytes=kv_bytes / ms / 1e6, window=window, heads=heads, kv_heads=kv_heads,
                             head_dim=head_dim, dtype=str(dtype).replace("torch.", ""), batch=batch))
        rows[0]["rel_err_vs_sdpa"] = err
        out += _add_ratios(rows)
    return out


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'kind':8} {'N':>6} {'impl':24} {'ms':>9} {'TFLOP/s':>8}  vs"]
    for r in rows:
        vs = " ".join(f"{k}={v:g}" for k, v in r.get("vs", {}).items())
        eager = f"  (eager {r['ms_eager']:.4f} ms)" if "ms_eager" in r else ""
        lines.append(f"{r['kind']:8} {r['N']:>6} {r['impl']:24} {r['ms']:9.4f} {r['tflops']:8.2f}  {vs}{eager}")
    return "\n".join(lines)


def measure(what: str) -> dict:
    """`python -m mistral_lab bench attention|decode`: Mistral 7B's attention shapes (Table 1:
    32 query / 8 KV heads, head_dim 128, W = 4096), bf16, batch 1 (docs/ARCHITECTURE.md)."""
    _require_cuda()
    rows = bench_attention([4096, 8192, 16384, 32768]) if what == "attention" else bench_decode([4096, 32768])
    print(format_rows(rows))
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    return {"device": torch.cuda.get_device_name(), "rows": clean}  # NaN as null: JSON has no NaN


__all__ = ["attention_flops", "bench_attention", "bench_decode", "decode_flops", "measure", "one_layer_buffer",
           "visible_pairs", "window_mask_mod"]
