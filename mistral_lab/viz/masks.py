"""Attention masks as pictures: causal vs sliding window, and the W vs W + 1 readings.

    fig = masks_figure(n=24, window=6)        # three heatmaps side by side
    ui = mask_explorer()                      # sliders for n and W
"""
from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..masks import paper_window_mask, visible_pairs, window_mask
from ..tokens import is_id
from .widgets import controls


def pair_counts(n: int, window: int) -> dict:
    """(query, key) pairs computed by each mask, counted from the masks and by formula
    (masks.visible_pairs)."""
    return {
        "causal": int(window_mask(n, None).sum()),
        "causal_formula": visible_pairs(n, None),
        "window": int(window_mask(n, window).sum()),
        "window_formula": visible_pairs(n, window),
    }


def _heat(mask: torch.Tensor, name: str) -> go.Heatmap:
    return go.Heatmap(z=mask.int().tolist(), colorscale=[[0, "#f4f4f4"], [1, "#3b6fb6"]], showscale=False,
                      zmin=0, zmax=1, xgap=1, ygap=1, name=name,
                      hovertemplate="query %{y}, key %{x}: %{z}<extra>" + name + "</extra>")


def masks_figure(n: int = 24, window: int = 6) -> go.Figure:
    """Causal | this project's window (W keys) | the paper's W + 1 reading, for n tokens."""
    masks = [("causal", window_mask(n, None)),
             (f"window W={window}: (p-W, p]", window_mask(n, window)),
             (f"paper reading: [p-W, p]", paper_window_mask(n, window))]
    titles = [f"{name}<br>{int(m.sum())} pairs" for name, m in masks]
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.04)
    for c, (name, m) in enumerate(masks, start=1):
        fig.add_trace(_heat(m, name), row=1, col=c)
        fig.update_yaxes(autorange="reversed", row=1, col=c, title_text="query position" if c == 1 else None)
        fig.update_xaxes(title_text="key position", row=1, col=c)
    fig.update_layout(height=360, margin=dict(l=50, r=10, t=60, b=40))
    return fig


def pair_counts_figure(n_max: int = 512, window: int = 64) -> go.Figure:
    """Computed (q, k) pairs against sequence length: n(n+1)/2 vs about n W."""
    ns = list(range(1, n_max + 1, max(1, n_max // 128)))
    causal = [visible_pairs(n, None) for n in ns]
    win = [visible_pairs(n, window) for n in ns]
    fig = go.Figure()
    fig.add_scatter(x=ns, y=causal, name="causal: n(n+1)/2")
    fig.add_scatter(x=ns, y=win, name=f"window W={window}: ~ n·W")
    fig.update_layout(title="attention pairs to compute", xaxis_title="tokens n", yaxis_title="(query, key) pairs",
                      height=340, margin=dict(l=60, r=10, t=50, b=40))
    return fig


def mask_explorer(n: int = 24, window: int = 6):
    """Sliders for n and W redrawing masks_figure."""
    for what, value, lo, hi in (("n", n, 2, 64), ("window", window, 1, 32)):  # a slider would clamp it silently
        if not (is_id(value) and lo <= value <= hi):
            raise ValueError(f"{what} must be an integer in {lo}..{hi} (the slider's range), got {value!r}")
    n_slider = widgets.IntSlider(value=n, min=2, max=64, description="n tokens", continuous_update=False)
    w_slider = widgets.IntSlider(value=window, min=1, max=32, description="window W", continuous_update=False)
    return controls(masks_figure, n=n_slider, window=w_slider)
