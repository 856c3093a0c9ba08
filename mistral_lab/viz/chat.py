"""Mistral 7B Instruct v0.1's chat format, token by token, checked against mistral-common.

    ids = encode_chat(tok, messages, system_prompt=GUARDRAIL_PROMPT)
    tokens_figure(tok, ids)        # experiments/chat.py checks ids against mistral-common
"""
from __future__ import annotations

import plotly.graph_objects as go

from . import escape_label


def tokens_figure(tok, ids, title: str = "", per_row: int = 16) -> go.Figure:
    """The ids as a grid of boxes: the piece (with '▁' for a space) over its id; markers in red."""
    pieces = tok.pieces(ids)
    special = {"<s>", "</s>", "▁[", "INST", "]", "[/", "▁[/"}
    xs, ys, text, color = [], [], [], []
    for i, (t, p) in enumerate(zip(ids, pieces)):
        xs.append(i % per_row)
        ys.append(i // per_row)
        text.append(f"{escape_label(p)}<br><sub>{t}</sub>")
        color.append("#e06666" if p in special else "#9fc5e8")
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="markers+text", text=text, textposition="middle center",
                               marker=dict(symbol="square", size=44, color=color), hoverinfo="skip"))
    rows = max(ys) + 1 if ys else 1
    fig.update_layout(title=title or f"{len(ids)} tokens", height=70 + 52 * rows, showlegend=False,
                      xaxis=dict(visible=False, range=[-0.6, per_row - 0.4]),
                      yaxis=dict(visible=False, autorange="reversed"), margin=dict(l=10, r=10, t=40, b=10))
    return fig
