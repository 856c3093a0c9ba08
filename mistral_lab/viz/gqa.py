"""Grouped-query attention: which query heads share a key/value head, what that saves,
and what the heads of one group do with the keys they share.

    qkv = layer_qkv(model, ids, layer=2)    # experiments/gqa.py: q (1,T,H,D), k, v (1,T,K,D), positions
    group_heads_figure(attention_probs(qkv), pieces, group=0, n_rep=4)
"""
from __future__ import annotations

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..config import ModelArgs
from ..experiments.gqa import decode_kv_bytes
from . import escape_label
from .axes import log_axis


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


def decode_bytes_figure(args: ModelArgs, context: int, bytes_per_element: int = 2) -> go.Figure:
    d = decode_kv_bytes(args, context, bytes_per_element)
    fig = go.Figure(go.Bar(x=list(d), y=[b / 2**20 for b in d.values()],
                           text=[f"{b / 2**20:,.0f} MiB" for b in d.values()], textposition="outside"))
    fig.update_layout(title=f"K/V read per generated token at {context:,} tokens of context (all layers)",
                      yaxis_title="MiB per decode step", height=340, margin=dict(l=50, r=20, t=50, b=40))
    return fig


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
    log_axis(fig, "x", title="batch (sequences decoded together; each line ends at the largest that fits)")
    log_axis(fig, "y", title="tokens / s")
    fig.update_layout(title=f"decode throughput at {context:,} tokens of context, one cache budget", height=420,
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.25))
    return fig
