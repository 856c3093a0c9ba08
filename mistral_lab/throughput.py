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
    python -m mistral_lab bench serve --out runs/gpu/serve.json     (GPU: 7B, batch 1-8)

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
import os
import time
from pathlib import Path

import torch

from .cache import KVCache, cache_bytes
from .config import ModelArgs, preset
from .files import environment

H100_SXM_TBPS = 3.35  # HBM3 bandwidth of an H100 SXM (NVIDIA's datasheet): the bound a decode step approaches


def mha(args: ModelArgs) -> ModelArgs:
    """The same shape with one K/V head per query head (multi-head attention)."""
    return args.replace(n_kv_heads=args.n_heads)


def largest_batch(args: ModelArgs, context: int, budget_bytes: int, *, rolling: bool, bytes_per_element: int) -> int:
    """How many sequences at `context` tokens fit a cache of budget_bytes."""
    return budget_bytes // cache_bytes(args, context, rolling=rolling, bytes_per_element=bytes_per_element)


def random_model(args: ModelArgs, *, dtype=torch.float32, device="cpu", backend="torch", seed: int = 0):
    """A Transformer of this shape with random weights (N(0, 0.02), norms 1), built
    directly on `device` in `dtype` (a 7B never exists in fp32 on the host)."""
    from .model import Transformer

    with torch.device("meta"):
        model = Transformer(args, backend=backend)
    return _random_weights(model, dtype, device, seed)


def _random_weights(module, dtype, device, seed: int):
    """Materialise a module built on the meta device: matrices N(0, 0.02), norms 1."""
    module = module.to_empty(device=device).to(dtype).eval()
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(1.0) if p.dim() == 1 else p.normal_(0, 0.02, generator=g)
    return module


def weight_bytes(model) -> int:
    """Bytes a decode step streams from the weights: all but the embedding table (one row)."""
    emb = model.tok_embeddings.weight
    return sum(p.numel() * p.element_size() for p in model.parameters()) - emb.numel() * emb.element_size()


def filled_cache(model, batch: int, context: int, *, rolling: bool, room: int = 0, seed: int = 0) -> KVCache:
    """A cache of `batch` sequences that have seen `context` tokens: random keys and values
    at the positions it keeps (a rolling buffer the last W, a full cache all of them),
    written with KVCache.write; next_pos = context. room: extra slots a full cache gets
    for the steps that follow (so it never grows while they are timed)."""
    a = model.args
    p = next(model.parameters())
    kw = dict(dtype=p.dtype, device=p.device)
    if rolling:
        cache = KVCache.rolling(a, batch, **kw)
        held = min(context, cache.capacity)
    else:
        cache = KVCache.full(a, batch, capacity=context + room, **kw)
        held = context
    g = torch.Generator(device=p.device).manual_seed(seed)
    shape = (batch, held, a.n_kv_heads, a.head_dim)
    for layer in range(a.n_layers):
        k = torch.randn(shape, generator=g, device=p.device, dtype=p.dtype)
        v = torch.randn(shape, generator=g, device=p.device, dtype=p.dtype)
        cache.write(layer, k, v, context - held)
        del k, v
    cache.next_pos = context
    return cache


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_decode(model, cache: KVCache, steps: int, warmup: int = 2, engine: str = "static") -> float:
    """Seconds per greedy decode step of every sequence of `cache`, after `warmup` steps.
    The host reads each step's tokens, as generate does (one sync a token). engine:
    "static" (static_decode; a CUDA graph on a GPU) or "model" (Transformer.forward)."""
    from .static_decode import StaticDecode

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
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        token = one(token)
        token.tolist()
    _sync(device)
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
        max_batch: int | None = None, threads: int | None = 1, seed: int = 0) -> dict:
    """GQA (args) against MHA (mha(args)) under one cache budget: the largest batch of each
    at each context and cache kind, and the decode tokens/s of batches up to it.
    threads: torch threads during the run (restored after); None leaves them."""
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be a positive number of bytes, got {budget_bytes!r}")
    if args.sliding_window is None and "rolling" in kinds:
        raise ValueError("a model without a sliding window has no rolling buffer: use kinds=('full',)")
    elem = torch.empty((), dtype=dtype).element_size()
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    rows, summary = [], []
    try:
        env = environment(torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu")
        for variant, a in (("gqa", args), ("mha", mha(args))):
            model = random_model(a, dtype=dtype, device=device, backend=backend, seed=seed)
            for kind in kinds:
                rolling = kind == "rolling"
                for context in contexts:
                    per_seq = cache_bytes(a, context, rolling=rolling, bytes_per_element=elem)
                    top = largest_batch(a, context, budget_bytes, rolling=rolling, bytes_per_element=elem)
                    for B in _batches(top, max_batch):
                        cache = filled_cache(model, B, context, rolling=rolling, room=warmup + steps, seed=seed)
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
    finally:
        torch.set_num_threads(saved)
    return dict(benchmark="throughput",
                what=f"greedy decode of batches up to the largest that a {budget_bytes / 2**20:g} MiB K/V cache "
                     f"holds, GQA ({args.n_kv_heads} K/V heads) vs MHA ({args.n_heads}), on the static decode "
                     f"step after a cache filled to the context; {steps} timed steps after {warmup} warm-up",
                     args=args.to_dict(), dtype=str(dtype).replace("torch.", ""), backend=backend,
                     budget_bytes=budget_bytes, contexts=list(contexts), threads=threads,
                     load_avg_1_5_15min=[round(x, 2) for x in os.getloadavg()],  # how shared the machine was
                     rows=rows, summary=_compare(summary, rows), environment=env)


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
    from . import weights

    return dict(args=weights.load().args, contexts=(512, 2048, 8192), budget_bytes=64 * 2**20, dtype=torch.float32,
                device="cpu", backend="torch", threads=1, steps=16, warmup=2)


def gpu_defaults() -> dict:
    """Mistral 7B's shape in bf16 (8 vs 32 K/V heads), 4K/16K/32K, a 16 GiB cache, Triton."""
    return dict(args=preset("mistral-7b-v0.1"), contexts=(4096, 16384, 32768), budget_bytes=16 * 2**30,
                dtype=torch.bfloat16, device="cuda", backend="triton", threads=None, steps=16, warmup=4)


def main(args) -> dict:
    """`python -m mistral_lab bench throughput|serve`: the GPU defaults where CUDA is
    present, else the CPU ones (serve needs a GPU: the CPU has no graph to show)."""
    if args.what == "serve":
        if not torch.cuda.is_available():
            raise RuntimeError("bench serve times Mistral 7B's shapes in bf16 on a GPU: run it on a CUDA machine "
                               "(scripts/gpu serve)")
        report = serve()
        for r in report["rows"]:
            print(f"  {r['impl']:24} batch {r['batch']:2}  {r['tokens_per_s']:9.1f} tokens/s  "
                  f"{r['achieved_gb_per_s']:7.1f} GB/s ({100 * r['fraction_of_h100_bound']:.0f}% of 3.35 TB/s)")
        return report
    report = run(**(gpu_defaults() if torch.cuda.is_available() else cpu_defaults()))
    for s in report["summary"]:
        print(f"  {s['kind']:8} context {s['context']:6}: largest batch GQA {s['gqa_largest_batch']:4} "
              f"MHA {s['mha_largest_batch']:4}; best tokens/s GQA {s['gqa_best_tokens_per_s']} "
              f"MHA {s['mha_best_tokens_per_s']}")
    return report


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


def serve(args: ModelArgs | None = None, *, batches=(1, 2, 4, 8), context: int = 1024, new_tokens: int = 64,
          dtype=torch.bfloat16, device="cuda", backend: str = "triton", hf: bool = True, seed: int = 0) -> dict:
    """Serving speed at batch 1..8 (default: Mistral 7B's shape, random bf16 weights, a GPU):
    decode tokens/s of the static step (a CUDA graph on a GPU), the readable model
    (Transformer.forward) and Hugging Face generate, in the same run; and the bandwidth
    each reaches: (weight bytes + K/V bytes read) per step / step time, against the
    H100 SXM's 3.35 TB/s. Ours decode from a cache filled to `context`; HF generates
    after a random prompt of `context` tokens (its own random weights of the same
    shape), its decode time = time(new_tokens) - time(1 token)."""
    args = args or preset("mistral-7b-v0.1")
    model = random_model(args, dtype=dtype, device=device, backend=backend, seed=seed)
    elem = torch.empty((), dtype=dtype).element_size()
    wbytes = weight_bytes(model)
    rows = []

    def row(impl, B, s):
        kv = cache_bytes(args, context + new_tokens // 2, rolling=args.sliding_window is not None, batch_size=B,
                         bytes_per_element=elem)
        gbps = (wbytes + kv) / s / 1e9
        rows.append(dict(impl=impl, batch=B, context=context, step_ms=round(s * 1e3, 4),
                         tokens_per_s=round(B / s, 2), weight_bytes=wbytes, kv_bytes_per_step=kv,
                         achieved_gb_per_s=round(gbps, 1),
                         fraction_of_h100_bound=round(gbps / (H100_SXM_TBPS * 1e3), 3)))

    for B in batches:
        for engine in ("static", "model"):
            cache = filled_cache(model, B, context, rolling=args.sliding_window is not None, room=new_tokens + 4)
            row(f"mistral_lab_{engine}", B, time_decode(model, cache, new_tokens, warmup=4, engine=engine))
            del cache
    if hf:
        hf_model = _hf_model(args, dtype, device, seed)
        for B in batches:
            row("transformers_generate", B, _hf_step_seconds(hf_model, args, B, context, new_tokens, device))
        del hf_model
    return dict(benchmark="serve", what=f"greedy decode at batch {list(batches)} after {context} tokens, "
                f"{new_tokens} steps; {'7B' if args == preset('mistral-7b-v0.1') else 'custom'} shape, random "
                f"weights, {str(dtype).replace('torch.', '')}, backend {backend}",
                args=args.to_dict(), bound_tb_per_s=H100_SXM_TBPS, rows=rows,
                environment=environment(torch.cuda.get_device_name() if torch.device(device).type == "cuda"
                                        else "cpu"))


def _hf_model(args: ModelArgs, dtype, device, seed: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(hidden_size=args.dim, num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                           num_key_value_heads=args.n_kv_heads, head_dim=args.head_dim,
                           intermediate_size=args.hidden_dim, rms_norm_eps=args.norm_eps, vocab_size=args.vocab_size,
                           max_position_embeddings=max(args.max_seq_len, 32768), sliding_window=args.sliding_window,
                           rope_theta=args.rope_theta, tie_word_embeddings=False)
    with torch.device("meta"):
        m = MistralForCausalLM(config)
    return _random_weights(m, dtype, device, seed)


@torch.inference_mode()
def _hf_step_seconds(m, args: ModelArgs, B: int, context: int, new_tokens: int, device) -> float:
    ids = torch.randint(0, args.vocab_size, (B, context), generator=torch.Generator().manual_seed(2)).to(device)

    def timed(n):
        _sync(device)
        t = time.perf_counter()
        m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                   pad_token_id=0)
        _sync(device)
        return time.perf_counter() - t

    timed(2)  # warm-up
    return max(timed(new_tokens) - timed(1), 1e-9) / (new_tokens - 1)


__all__ = ["H100_SXM_TBPS", "cpu_defaults", "main", "filled_cache", "gpu_defaults", "largest_batch", "load_rows", "mha",
           "random_model", "run", "serve", "time_decode", "weight_bytes"]
