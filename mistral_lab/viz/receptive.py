"""The receptive field: how far back each layer's output can look, in theory and measured.

    I = analysis.influence_by_layer(model, ids, position)   # (n_layers + 1, T)
    fig = influence_figure(I, position, W)                   # layers x input positions
    fig = reach_figure(I, position, W)                       # measured span vs k (W - 1)
"""
from __future__ import annotations

import math

import plotly.graph_objects as go
import torch

from ..experiments.influence import reach
from ..masks import check_window, receptive_field


def influence_figure(infl: torch.Tensor, position: int, window: int, title: str | None = None) -> go.Figure:
    """Heatmap of log10 influence of input j (x) on output `position` after k blocks (y).

    Exact zeros are left blank (no colour): they are not small, they are absent.
    Black ticks mark the theoretical edge position - k (W - 1)."""
    z = [[round(math.log10(v), 2) if v > 0 else None for v in row.tolist()] for row in infl]
    fig = go.Figure(go.Heatmap(z=z, colorscale="Viridis", colorbar=dict(title="log10 |∂h/∂x|"),
                               hovertemplate="input %{x}, after %{y} layers: 10^%{z:.1f}<extra></extra>"))
    ks = list(range(infl.shape[0]))
    fig.add_scatter(x=[max(position - receptive_field(k, window), 0) - 0.5 for k in ks], y=ks, mode="markers",
                    marker=dict(symbol="line-ns", size=16, line=dict(width=3, color="black")),
                    name="edge: i - k(W-1)")
    fig.update_layout(title=title or f"influence of each input token on position {position}",
                      xaxis_title="input position j", yaxis_title="after k layers", height=330,
                      margin=dict(l=60, r=10, t=50, b=40), legend=dict(x=0, y=1.15, orientation="h"))
    return fig


def reach_figure(infl: torch.Tensor, position: int, window: int) -> go.Figure:
    """Measured reach (positions back with nonzero influence) per layer vs k (W - 1)."""
    ks = list(range(infl.shape[0]))
    fig = go.Figure()
    fig.add_scatter(x=ks, y=[receptive_field(k, window) for k in ks], name="theory k·(W−1)", mode="lines")
    fig.add_scatter(x=ks, y=[reach(row, position) for row in infl], name="measured", mode="markers",
                    marker=dict(size=10))
    fig.update_layout(xaxis_title="layers k", yaxis_title="positions back", height=300,
                      margin=dict(l=60, r=10, t=30, b=40))
    return fig


def theory_rows(n_layers: int, window: int) -> list[tuple[str, int]]:
    """The two readings of the paper's k x W for a model: (label, tokens). The paper's
    reading is this project's receptive field with W + 1 keys per query."""
    check_window(window)
    return [(f"paper: {n_layers} × {window} (W + 1 keys per query)", receptive_field(n_layers, window + 1)),
            (f"this project: {n_layers} × ({window} − 1) (W keys, self included)", receptive_field(n_layers, window))]


def influence_map_figure(infl: torch.Tensor, positions: list[int], layer: int, window: int) -> go.Figure:
    """Rows: chosen output positions i; columns: inputs j; log10 influence after `layer` blocks.
    The band of nonzero entries is exactly layer (W - 1) + 1 wide (blank = exact zero)."""
    z = [[round(math.log10(v), 2) if v > 0 else None for v in row.tolist()] for row in infl]
    fig = go.Figure(go.Heatmap(z=z, y=[str(p) for p in positions], colorscale="Viridis",
                               colorbar=dict(title="log10"),
                               hovertemplate="output %{y}, input %{x}: 10^%{z:.1f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="output position i", type="category")
    fig.update_layout(title=f"after {layer} layers: input j reaches output i iff 0 ≤ i − j ≤ {layer}·(W−1) = "
                            f"{receptive_field(layer, window)}", xaxis_title="input position j", height=380,
                      margin=dict(l=60, r=10, t=50, b=40))
    return fig
