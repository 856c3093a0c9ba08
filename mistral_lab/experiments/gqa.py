"""Grouped-query attention measured: one layer's real q, k, v, the probabilities of the
heads that share a K/V head, GQA against K/V repeated, and the bytes a decode step reads.

    qkv = layer_qkv(model, ids, layer=2)     # q (1,T,H,D), k, v (1,T,K,D), positions, window
    probs = attention_probs(qkv)              # (H, T, T)
    shared, repeated = gqa_vs_repeated(qkv)   # equal: GQA is MHA with K/V copied
"""
from __future__ import annotations

import torch

from .. import ops, trace
from ..cache import cache_bytes
from ..config import ModelArgs


def decode_kv_bytes(args: ModelArgs, context: int, bytes_per_element: int = 2) -> dict:
    """Bytes of K and V one decode step reads (all layers, batch 1) for MHA, GQA (args), MQA.

    A step attends over every key its cache holds: the rolling buffer's min(context, W)
    positions, which is what cache.cache_bytes counts, for each number of KV heads."""
    def read(kv_heads: int) -> int:
        return cache_bytes(args.replace(n_kv_heads=kv_heads), context, rolling=True,
                           bytes_per_element=bytes_per_element)

    return {f"MHA ({args.n_heads} KV heads)": read(args.n_heads),
            f"GQA ({args.n_kv_heads} KV heads)": read(args.n_kv_heads),
            "MQA (1 KV head)": read(1)}


@torch.inference_mode()
def layer_qkv(model, ids, layer: int) -> dict:
    """q (1,T,H,D), k, v (1,T,K,D) after RoPE, positions and window, exactly as one layer of a
    real forward pass (no cache) hands them to its attention backend (read from a trace)."""
    with trace.record(layers=[layer], qkv=True) as t:
        model(torch.tensor([ids]))
    (call,) = t.calls(layer)
    return dict(q=call.q, k=call.k, v=call.v, positions=call.q_pos[0], window=model.args.sliding_window)


@torch.inference_mode()
def attention_probs(qkv: dict) -> torch.Tensor:
    """(H, T, T) attention probabilities of the layer: ops.attention_probs, the softmax that
    ops.attention multiplies the values by."""
    pos = qkv["positions"]
    return ops.attention_probs(qkv["q"], qkv["k"], pos, pos, qkv["window"])[0]


@torch.inference_mode()
def gqa_vs_repeated(qkv: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """ops.attention with shared K/V, and the same with K/V repeated to one per query head."""
    q, k, v, pos, W = qkv["q"], qkv["k"], qkv["v"], qkv["positions"], qkv["window"]
    G = q.shape[2] // k.shape[2]
    shared = ops.attention(q, k, v, pos, pos, W)
    repeated = ops.attention(q, k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2), pos, pos, W)
    return shared, repeated
