"""What the benchmarks run on: models of any shape with random weights, caches filled to a
context without a long pre-fill, and the same shape in Hugging Face's MistralForCausalLM.

    model = random_model(preset("mistral-7b-v0.1"), dtype=torch.bfloat16, device="cuda")
    cache = filled_cache(model.args, batch=8, context=4096, rolling=True, dtype=..., device=...)
    hf = hf_model(args, torch.bfloat16, "cuda")       # the peer, from checkpoints.layouts.hf_config
"""
from __future__ import annotations

import os

import torch

from ..cache import KVCache
from ..checkpoints.layouts import hf_config
from ..config import ModelArgs
from ..model import Transformer


def mha(args: ModelArgs) -> ModelArgs:
    """The same shape with one K/V head per query head (multi-head attention)."""
    return args.replace(n_kv_heads=args.n_heads)


def random_weights(module, dtype, device, seed: int = 0):
    """Materialise a module built on the meta device: matrices N(0, 0.02), norms 1, built
    directly on `device` in `dtype` (a 7B never exists in fp32 on the host)."""
    module = module.to_empty(device=device).to(dtype).eval()
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(1.0) if p.dim() == 1 else p.normal_(0, 0.02, generator=g)
    return module


def random_model(args: ModelArgs, *, dtype=torch.float32, device="cpu", backend="torch", seed: int = 0) -> Transformer:
    """A Transformer of this shape with random weights (random_weights)."""
    with torch.device("meta"):
        model = Transformer(args, backend=backend)
    return random_weights(model, dtype, device, seed)


def hf_model(args: ModelArgs, dtype, device, seed: int = 0, *, max_positions: int = 32768):
    """Hugging Face's MistralForCausalLM of the same shape, random weights (random_weights);
    its config is checkpoints.layouts.hf_config, what save_hf writes."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import MistralConfig, MistralForCausalLM  # lazy: transformers is a test/bench-only dependency

    config = hf_config(args.replace(max_seq_len=max(args.max_seq_len, max_positions)), dtype)
    with torch.device("meta"):
        m = MistralForCausalLM(MistralConfig(**config))
    return random_weights(m, dtype, device, seed)


def weight_bytes(model) -> int:
    """Bytes a decode step streams from the weights: all but the embedding table (one row)."""
    emb = model.tok_embeddings.weight
    return sum(p.numel() * p.element_size() for p in model.parameters()) - emb.numel() * emb.element_size()


def filled_cache(args: ModelArgs, batch: int, context: int, *, rolling: bool, room: int = 0,
                 dtype=torch.float32, device="cpu", seed: int = 0) -> KVCache:
    """A cache of `batch` sequences that have seen `context` tokens: random keys and values
    at the positions it keeps (a rolling buffer the last W, a full cache all of them),
    written with KVCache.write; next_pos = context. room: extra slots a full cache gets
    for the steps that follow (so it never grows while they are timed)."""
    kw = dict(dtype=dtype, device=device)
    if rolling:
        cache = KVCache.rolling(args, batch, **kw)
        held = min(context, cache.capacity)
    else:
        cache = KVCache.full(args, batch, capacity=context + room, **kw)
        held = context
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (batch, held, args.n_kv_heads, args.head_dim)
    for layer in range(args.n_layers):
        k = torch.randn(shape, generator=g, device=device, dtype=dtype)
        v = torch.randn(shape, generator=g, device=device, dtype=dtype)
        cache.write(layer, k, v, context - held)
        del k, v
    cache.next_pos = context
    return cache


__all__ = ["filled_cache", "hf_model", "mha", "random_model", "random_weights", "weight_bytes"]
