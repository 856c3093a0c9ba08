"""Serving speed on a GPU: the 7B's decode at batch 1-8, the static graph step against the
readable model and Hugging Face generate, with the bandwidth each reaches.

    python -m mistral_lab bench serve --out runs/gpu/serve.json     (scripts/gpu serve)

A decode step at small batch streams every weight once: the bound is
(weight bytes + K/V bytes read) / the device's memory bandwidth.
"""
from __future__ import annotations

import time

import torch

from ..cache import cache_bytes
from ..config import ModelArgs, preset
from ..generate import synchronize
from . import fixtures
from .fixtures import filled_cache, random_model, weight_bytes
from .throughput import time_decode

# Memory bandwidth (TB/s) by device name, from the vendors' datasheets: what a decode step approaches.
BANDWIDTH_TBPS = {"H100 80GB HBM3": 3.35, "H100 SXM": 3.35, "H100 PCIe": 2.0, "H100 NVL": 3.9, "H200": 4.8,
                  "A100-SXM4-80GB": 2.039, "A100-SXM4-40GB": 1.555, "A100 80GB PCIe": 1.935, "L4": 0.3}


def device_bandwidth(name: str) -> float | None:
    """TB/s of the device named `name` (torch.cuda.get_device_name()), None when not listed."""
    for key, tbps in sorted(BANDWIDTH_TBPS.items(), key=lambda kv: -len(kv[0])):
        if key in name:
            return tbps
    return None


def measure() -> dict:
    """`python -m mistral_lab bench serve`: serve() at the 7B's shape; prints each row."""
    report = serve()
    bound = report["bound_tb_per_s"]
    for r in report["rows"]:
        share = "" if r["fraction_of_bound"] is None else f" ({100 * r['fraction_of_bound']:.0f}% of {bound} TB/s)"
        print(f"  {r['impl']:24} batch {r['batch']:2}  {r['tokens_per_s']:9.1f} tokens/s  "
              f"{r['achieved_gb_per_s']:7.1f} GB/s{share}")
    return report


def serve(args: ModelArgs | None = None, *, batches=(1, 2, 4, 8), context: int = 1024, new_tokens: int = 64,
          dtype=torch.bfloat16, device="cuda", backend: str = "triton", hf: bool = True, seed: int = 0) -> dict:
    """Serving speed at batch 1..8 (default: Mistral 7B's shape, random bf16 weights, a GPU):
    decode tokens/s of the static step (a CUDA graph on a GPU), the readable model
    (Transformer.forward) and Hugging Face generate, in the same run; and the bandwidth
    each reaches: (weight bytes + K/V bytes read) per step / step time, against the
    device's memory bandwidth (device_bandwidth). Ours decode from a cache filled to `context`; HF generates
    after a random prompt of `context` tokens (its own random weights of the same
    shape), its decode time = time(new_tokens) - time(1 token)."""
    if not torch.cuda.is_available() and torch.device(device).type == "cuda":
        raise ValueError("bench serve times Mistral 7B's shapes in bf16 on a GPU: run it on a CUDA machine "
                         "(scripts/gpu serve)")
    args = args or preset("mistral-7b-v0.1")
    model = random_model(args, dtype=dtype, device=device, backend=backend, seed=seed)
    elem = torch.empty((), dtype=dtype).element_size()
    wbytes = weight_bytes(model)
    name = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu"
    bound = device_bandwidth(name)
    rows = []

    def row(impl, B, s):
        kv = cache_bytes(args, context + new_tokens // 2, rolling=args.sliding_window is not None, batch_size=B,
                         bytes_per_element=elem)
        gbps = (wbytes + kv) / s / 1e9
        rows.append(dict(impl=impl, batch=B, context=context, step_ms=round(s * 1e3, 4),
                         tokens_per_s=round(B / s, 2), weight_bytes=wbytes, kv_bytes_per_step=kv,
                         achieved_gb_per_s=round(gbps, 1),
                         fraction_of_bound=None if bound is None else round(gbps / (bound * 1e3), 3)))

    for B in batches:
        for engine in ("static", "model"):
            cache = filled_cache(args, B, context, rolling=args.sliding_window is not None, room=new_tokens + 4,
                                 dtype=dtype, device=device)
            row(f"mistral_lab_{engine}", B, time_decode(model, cache, new_tokens, warmup=4, engine=engine))
            del cache
    if hf:
        hf_model = fixtures.hf_model(args, dtype, device, seed)
        for B in batches:
            row("transformers_generate", B, _hf_step_seconds(hf_model, args, B, context, new_tokens, device))
        del hf_model
    return dict(what=f"greedy decode at batch {list(batches)} after {context} tokens, "
                f"{new_tokens} steps; {'7B' if args == preset('mistral-7b-v0.1') else 'custom'} shape, random "
                f"weights, {str(dtype).replace('torch.', '')}, backend {backend}",
                args=args.to_dict(), device=name, bound_tb_per_s=bound, rows=rows)


@torch.inference_mode()
def _hf_step_seconds(m, args: ModelArgs, B: int, context: int, new_tokens: int, device) -> float:
    ids = torch.randint(0, args.vocab_size, (B, context), generator=torch.Generator().manual_seed(2)).to(device)

    def timed(n):
        synchronize(device)
        t = time.perf_counter()
        m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                   pad_token_id=0)
        synchronize(device)
        return time.perf_counter() - t

    timed(2)  # warm-up
    return max(timed(new_tokens) - timed(1), 1e-9) / (new_tokens - 1)


__all__ = ["BANDWIDTH_TBPS", "device_bandwidth", "measure", "serve"]
