"""Decode throughput against batch size, and what grouped-query attention buys.

The paper's claim (section 1): GQA "allows for higher batch sizes, hence higher
throughput". The cache of one sequence costs `ModelArgs.kv_bytes_per_token` a token,
proportional to the K/V heads; under a fixed cache budget the largest batch is

    largest batch = floor(budget / cache_bytes(args, context, rolling=...))

so the same model with n_kv_heads = n_heads (multi-head attention, MHA) fits n_heads /
n_kv_heads times fewer sequences. `run` measures it: for the model's shape (GQA) and the
same shape with MHA, for a rolling buffer and a full cache, at each context, it decodes
batches up to the largest that fits, on the static decode step (static_decode: what
generate runs on a GPU, in a CUDA graph there, eagerly on the CPU), after filling the
cache with random keys and values to the context through the cache's own API
(KVCache.write, next_pos) instead of a long pre-fill.

    python -m mistral_lab bench throughput --out benchmarks/cpu_throughput.json
    python -m mistral_lab bench serve --out runs/gpu/serve.json     (GPU: 7B, batch 1-8; serve.py)

For a notebook (no plotting here):

    rows = throughput.load_rows("benchmarks/cpu_throughput.json")
    # one dict per measurement: variant ("gqa" / "mha"), n_kv_heads, kind ("rolling" /
    # "full"), context, batch, largest_batch, seq_bytes, step_ms, tokens_per_s
    summary = throughput.load_rows(path, "summary")
    # one dict per (kind, context): largest batch and best tokens/s of each variant, ratios

Defaults: on the CPU the shipped model's shape (assets/model, random weights, fp32)
and its 4x-K/V-heads MHA twin, contexts 512/2048/8192, a 64 MiB cache budget, one
thread; on a GPU Mistral 7B's shape in bf16, 8 vs 32 K/V heads, contexts 4K/16K/32K, a
16 GiB budget, the Triton backend.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .. import threads
from ..cache import KVCache, cache_bytes
from ..checkpoints import load
from ..config import ModelArgs, preset
from ..engines.static import StaticDecode
from ..generate import synchronize
from .fixtures import filled_cache, mha, random_model, weight_bytes


def largest_batch(args: ModelArgs, context: int, budget_bytes: int, *, rolling: bool, bytes_per_element: int) -> int:
    """How many sequences at `context` tokens fit a cache of budget_bytes."""
    return budget_bytes // cache_bytes(args, context, rolling=rolling, bytes_per_element=bytes_per_element)


@torch.inference_mode()
def time_decode(model, cache: KVCache, steps: int, warmup: int = 2, engine: str = "static") -> float:
    """Seconds per greedy decode step of every sequence of `cache`, after `warmup` steps.
    The host reads each step's tokens, as generate does (one sync a token). engine:
    "static" (static_decode; a CUDA graph on a GPU) or "model" (Transformer.forward)."""
    B = cache.batch_size
    device = cache.k.device
    token = torch.randint(0, model.args.vocab_size, (B,), generator=torch.Generator().manual_seed(1)).to(device)
    running = torch.ones(B, dtype=torch.bool)
    if engine == "static":
        step = StaticDecode(model, cache, end=int(cache.seq_pos.max()) + warmup + steps)

        def one(t):
            return step(t, running)[0]
    elif engine == "model":
        def one(t):
            return model(t[:, None], cache)[:, -1].argmax(-1)
    else:
        raise ValueError(f"unknown engine {engine!r}: use 'static' or 'model'")
    for _ in range(warmup):
        token = one(token)
        token.tolist()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        token = one(token)
        token.tolist()
    synchronize(device)
    return (time.perf_counter() - t0) / steps


def _batches(top: int, cap: int | None) -> list[int]:
    """Powers of two up to the largest batch, and the largest itself (capped at cap)."""
    top = top if cap is None else min(top, cap)
    out = {top} if top > 0 else set()
    b = 1
    while b < top:
        out.add(b)
        b *= 2
    return sorted(out)


def run(args: ModelArgs, *, contexts=(512, 2048, 8192), budget_bytes: int = 64 * 2**20, dtype=torch.float32,
        device="cpu", backend: str = "torch", kinds=("rolling", "full"), steps: int = 4, warmup: int = 1,
        max_batch: int | None = None, n_threads: int | None = 1, seed: int = 0) -> dict:
    """GQA (args) against MHA (mha(args)) under one cache budget: the largest batch of each
    at each context and cache kind, and the decode tokens/s of batches up to it.
    n_threads: torch threads during the run (threads.limited: None is the policy's)."""
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be a positive number of bytes, got {budget_bytes!r}")
    if args.sliding_window is None and "rolling" in kinds:
        raise ValueError("a model without a sliding window has no rolling buffer: use kinds=('full',)")
    elem = torch.empty((), dtype=dtype).element_size()
    rows, summary = [], []
    with threads.limited(n_threads, kind="all"):
        used = torch.get_num_threads()  # observed, not the policy recomputed
        for variant, a in (("gqa", args), ("mha", mha(args))):
            model = random_model(a, dtype=dtype, device=device, backend=backend, seed=seed)
            for kind in kinds:
                rolling = kind == "rolling"
                for context in contexts:
                    per_seq = cache_bytes(a, context, rolling=rolling, bytes_per_element=elem)
                    top = largest_batch(a, context, budget_bytes, rolling=rolling, bytes_per_element=elem)
                    for B in _batches(top, max_batch):
                        cache = filled_cache(a, B, context, rolling=rolling, room=warmup + steps, dtype=dtype,
                                             device=device, seed=seed)
                        s = time_decode(model, cache, steps, warmup)
                        rows.append(dict(variant=variant, n_kv_heads=a.n_kv_heads, kind=kind, context=context,
                                         batch=B, largest_batch=top, seq_bytes=per_seq, cache_bytes=B * per_seq,
                                         allocated_bytes=cache.nbytes, step_ms=round(s * 1e3, 4),
                                         tokens_per_s=round(B / s, 2),
                                         weight_bytes=weight_bytes(model)))
                        del cache
                    summary.append(dict(variant=variant, kind=kind, context=context, largest_batch=top,
                                        seq_bytes=per_seq))
            del model
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    return dict(what=f"greedy decode of batches up to the largest that a {budget_bytes / 2**20:g} MiB K/V cache "
                     f"holds, GQA ({args.n_kv_heads} K/V heads) vs MHA ({args.n_heads}), on the static decode "
                     f"step after a cache filled to the context; {steps} timed steps after {warmup} warm-up",
                args=args.to_dict(), dtype=str(dtype).replace("torch.", ""), backend=backend,
                budget_bytes=budget_bytes, contexts=list(contexts), threads=used,
                rows=rows, summary=_compare(summary, rows))


def _compare(summary: list[dict], rows: list[dict]) -> list[dict]:
    """One row per (kind, context): each variant's largest batch and best tokens/s, and
    GQA's gains over MHA (None where MHA fits no sequence at all)."""
    out = []
    for kind, context in dict.fromkeys((s["kind"], s["context"]) for s in summary):
        row = dict(kind=kind, context=context)
        for s in summary:
            if (s["kind"], s["context"]) == (kind, context):
                v = s["variant"]
                best = [r["tokens_per_s"] for r in rows if (r["variant"], r["kind"], r["context"]) == (v, kind, context)]
                row[f"{v}_largest_batch"] = s["largest_batch"]
                row[f"{v}_seq_bytes"] = s["seq_bytes"]
                row[f"{v}_best_tokens_per_s"] = max(best) if best else None
        row["batch_ratio"] = row["gqa_largest_batch"] / row["mha_largest_batch"] if row["mha_largest_batch"] else None
        row["throughput_ratio"] = row["gqa_best_tokens_per_s"] / row["mha_best_tokens_per_s"] \
            if row["mha_best_tokens_per_s"] else None
        out.append(row)
    return out


def cpu_defaults() -> dict:
    """The shipped model's shape (assets/model's config; random weights), fp32, one thread."""
    return dict(args=load().args, contexts=(512, 2048, 8192), budget_bytes=64 * 2**20, dtype=torch.float32,
                device="cpu", backend="torch", n_threads=1, steps=16, warmup=2)


def gpu_defaults() -> dict:
    """Mistral 7B's shape in bf16 (8 vs 32 K/V heads), 4K/16K/32K, a 16 GiB cache, Triton."""
    return dict(args=preset("mistral-7b-v0.1"), contexts=(4096, 16384, 32768), budget_bytes=16 * 2**30,
                dtype=torch.bfloat16, device="cuda", backend="triton", n_threads=None, steps=16, warmup=4)


def measure() -> dict:
    """`python -m mistral_lab bench throughput`: the GPU defaults where CUDA is present,
    else the CPU ones; prints the summary."""
    report = run(**(gpu_defaults() if torch.cuda.is_available() else cpu_defaults()))
    if not torch.cuda.is_available():
        report["slice"] = slice_check()
    for s in report["summary"]:
        print(f"  {s['kind']:8} context {s['context']:6}: largest batch GQA {s['gqa_largest_batch']:4} "
              f"MHA {s['mha_largest_batch']:4}; best tokens/s GQA {s['gqa_best_tokens_per_s']} "
              f"MHA {s['mha_best_tokens_per_s']}")
    return report


def slice_check() -> dict:
    """The CPU run's claim about the shipped model is its shape (the weights are random):
    what tests/test_results.py compares with today's assets/model."""
    return {"args": load().args.to_dict()}


def load_rows(path, part: str = "rows") -> list[dict]:
    """The rows (or "summary") of a throughput JSON, each a plain dict, for a notebook to
    plot; the run's environment (date, device, load) is copied into every row as `env_*`."""
    doc = json.loads(Path(path).read_text())
    if doc.get("benchmark") not in ("throughput", "serve"):
        raise ValueError(f"{path} is not a throughput or serve benchmark: write one with "
                         f"python -m mistral_lab bench throughput --out {path}")
    if part not in doc:
        raise ValueError(f"{path} has no {part!r}: choose one of "
                         f"{', '.join(k for k in doc if isinstance(doc[k], list) and doc[k] and isinstance(doc[k][0], dict))}")
    env = {f"env_{k}": v for k, v in doc.get("environment", {}).items() if k in ("date", "device", "cpu", "load_avg_1min")}
    return [{**r, **env} for r in doc[part]]


__all__ = ["cpu_defaults", "gpu_defaults", "largest_batch", "load_rows", "measure", "run", "time_decode"]
