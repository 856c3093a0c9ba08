"""Grouped-query attention: which query heads share a key/value head, what that saves,
and what the heads of one group do with the keys they share.

    qkv = layer_qkv(model, ids, layer=2)              # q (1,T,H,D), k, v (1,T,K,D), positions
    probs = attention_probs(qkv)                       # (H, T, T): ops.attention_probs
"""
from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .. import ops, trace
from ..cache import cache_bytes
from ..config import ModelArgs
from . import escape_label


def head_sharing_figure(args: ModelArgs, title: str = "") -> go.Figure:
    """Query heads (top row) wired to the key/value head they read (bottom row)."""
    H, K, G = args.n_heads, args.n_kv_heads, args.n_rep
    fig = go.Figure()
    kv_x = [(j + 0.5) * G - 0.5 for j in range(K)]
    for h in range(H):
        fig.add_scatter(x=[h, kv_x[h // G]], y=[1, 0], mode="lines", line=dict(color="#bbb", width=1),
                        hoverinfo="skip", showlegend=False)
    fig.add_scatter(x=list(range(H)), y=[1] * H, mode="markers", name="query heads",
                    marker=dict(size=12, color=[h // G for h in range(H)], colorscale="Turbo", symbol="circle"),
                    text=[f"query head {h} -> KV head {h // G}" for h in range(H)], hoverinfo="text")
    fig.add_scatter(x=kv_x, y=[0] * K, mode="markers", name="key/value heads",
                    marker=dict(size=22, color=list(range(K)), colorscale="Turbo", symbol="square"),
                    text=[f"KV head {j}: serves query heads {j * G}..{j * G + G - 1}" for j in range(K)],
                    hoverinfo="text")
    fig.update_layout(title=title or f"{H} query heads share {K} key/value heads ({G} per group)",
                      height=260, margin=dict(l=20, r=20, t=50, b=20),
                      xaxis=dict(visible=False), yaxis=dict(visible=False, range=[-0.4, 1.4]))
    return fig


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


def decode_bytes_figure(args: ModelArgs, context: int, bytes_per_element: int = 2) -> go.Figure:
    d = decode_kv_bytes(args, context, bytes_per_element)
    fig = go.Figure(go.Bar(x=list(d), y=[b / 2**20 for b in d.values()],
                           text=[f"{b / 2**20:,.0f} MiB" for b in d.values()], textposition="outside"))
    fig.update_layout(title=f"K/V read per generated token at {context:,} tokens of context (all layers)",
                      yaxis_title="MiB per decode step", height=340, margin=dict(l=50, r=20, t=50, b=40))
    return fig


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


def group_heads_figure(probs: torch.Tensor, pieces: list[str], group: int, n_rep: int) -> go.Figure:
    """Heat maps of the n_rep query heads of one group (they share the same keys)."""
    heads = list(range(group * n_rep, group * n_rep + n_rep))
    fig = make_subplots(rows=1, cols=n_rep, subplot_titles=[f"query head {h}" for h in heads],
                        shared_yaxes=True, horizontal_spacing=0.02)
    labels = [f"{i}:{escape_label(p)}" for i, p in enumerate(pieces)]
    for c, h in enumerate(heads):
        fig.add_heatmap(z=probs[h].tolist(), x=labels, y=labels, coloraxis="coloraxis", row=1, col=c + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(title=f"KV head {group}: {n_rep} query heads, same keys, different patterns "
                            f"(rows: queries, columns: keys)",
                      coloraxis=dict(colorscale="Viridis", colorbar=dict(title="p")), height=360,
                      margin=dict(l=90, r=20, t=70, b=20))
    return fig


@torch.inference_mode()
def gqa_vs_repeated(qkv: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """ops.attention with shared K/V, and the same with K/V repeated to one per query head."""
    q, k, v, pos, W = qkv["q"], qkv["k"], qkv["v"], qkv["positions"], qkv["window"]
    G = q.shape[2] // k.shape[2]
    shared = ops.attention(q, k, v, pos, pos, W)
    repeated = ops.attention(q, k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2), pos, pos, W)
    return shared, repeated


def throughput_figure(rows: list[dict], context: int) -> go.Figure:
    """Tokens/s against batch size at one context: GQA and MHA, rolling buffer and full cache,
    each line ending at the largest batch that fits the cache budget (rows of
    throughput.load_rows)."""
    fig = go.Figure()
    styles = {"gqa": "#3b6fb6", "mha": "#d9534f"}
    for variant in ("gqa", "mha"):
        for kind, dash in (("rolling", "solid"), ("full", "dot")):
            pts = sorted((r["batch"], r["tokens_per_s"]) for r in rows
                         if r["variant"] == variant and r["kind"] == kind and r["context"] == context)
            if not pts:
                continue
            heads = next(r["n_kv_heads"] for r in rows if r["variant"] == variant)
            fig.add_scatter(x=[b for b, _ in pts], y=[t for _, t in pts], mode="lines+markers",
                            name=f"{variant.upper()} ({heads} K/V heads), {kind} cache",
                            line=dict(color=styles[variant], dash=dash))
    fig.update_xaxes(type="log", title="batch (sequences decoded together; each line ends at the largest that fits)")
    fig.update_yaxes(type="log", title="tokens / s")
    fig.update_layout(title=f"decode throughput at {context:,} tokens of context, one cache budget", height=420,
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.25))
    return fig
