"""RoPE seen from the cache: the score of a query and a key against the query's absolute
position, one line per distance (experiments/rope.py): flat lines."""
from __future__ import annotations

import plotly.graph_objects as go
import torch

from .axes import LABEL_SIZE


def scores_figure(scores: torch.Tensor, distances, positions) -> go.Figure:
    fig = go.Figure()
    for row, d in zip(scores.tolist(), distances):
        fig.add_scatter(x=list(positions), y=[round(v, 6) for v in row], mode="lines", name=f"key {d} back")
    fig.update_layout(title="q · k after RoPE, against the query's position: one flat line per distance",
                      xaxis_title="query position p (the key at p − distance)", yaxis_title="score q · k",
                      height=380, margin=dict(l=60, r=20, t=50, b=50), font=dict(size=LABEL_SIZE),
                      legend=dict(orientation="h", y=-0.25))
    return fig


__all__ = ["scores_figure"]
