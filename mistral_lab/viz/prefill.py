"""Pre-fill in chunks: the paper's Figure 3 drawn with real tokens, and its memory cost.

    pos = cache_before_chunk(model, ids, chunk=32, index=3)      # experiments/prefill.py: a real cache
    fig = chunk_figure(pieces, pos, start=96, length=32, window=64)
    ui = chunk_explorer(model, ids, pieces)                       # sliders: chunk size, index
"""
from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots
import torch

from ..experiments.prefill import cache_before_chunk
from ..masks import mask_for
from ..tokens import id_list, is_id
from . import escape_label
from .axes import LABEL_SIZE, log_axis
from .widgets import controls


def _label(pieces: list[str], p: int) -> str:
    return f"{escape_label(pieces[p].replace('▁', '·'))} @{p}"


def chunk_figure(pieces: list[str], cache_positions: list[int], start: int, length: int, window: int | None,
                 size: int | None = None) -> go.Figure:
    """Rows: the chunk's tokens. Columns: the cache's slots (what they hold), then the chunk.
    Blue: the query sees that key (ml.visible on absolute positions). size: the chunk size
    asked for, when this chunk is the last and shorter (the text ran out)."""
    q = torch.arange(start, start + length)
    kv = torch.cat((torch.tensor(cache_positions), q))
    mask = mask_for(q, kv, window).int()  # (length, slots + length)
    S = len(cache_positions)
    cols = [f"slot {s}: " + ("empty" if p < 0 else _label(pieces, p)) for s, p in enumerate(cache_positions)]
    cols += [f"chunk: {_label(pieces, int(p))}" for p in q]
    rows = [_label(pieces, int(p)) for p in q]
    z = mask.tolist()
    for r in range(length):  # shade the chunk's own block lighter than the cache block
        for c in range(S, S + length):
            z[r][c] = 0.6 * z[r][c]
    # (no per-cell hover labels: they would make the figure too big to travel through a widget)
    fig = go.Figure(go.Heatmap(z=z, x=list(range(len(cols))), y=list(range(length)),
                               colorscale=[[0, "#f4f4f4"], [0.6, "#8fb3e0"], [1, "#3b6fb6"]],
                               zmin=0, zmax=1, showscale=False, xgap=1, ygap=1,
                               hovertemplate=f"query {start}+%{{y}}, column %{{x}}<extra></extra>"))
    fig.add_vline(x=S - 0.5, line_color="black")
    step = max(1, len(cols) // 24)
    fig.update_xaxes(tickvals=list(range(0, len(cols), step)), ticktext=cols[::step], tickangle=-60,
                     tickfont=dict(size=LABEL_SIZE - 2))
    rstep = max(1, length // 16)
    fig.update_yaxes(autorange="reversed", tickvals=list(range(0, length, rstep)), ticktext=rows[::rstep],
                     tickfont=dict(size=LABEL_SIZE - 2))
    cut = f" (the last chunk: only {length} of {size} tokens remain)" if size and length < size else ""
    fig.update_layout(title=f"chunk at positions {start}–{start + length - 1}{cut}:<br>"
                            f"<sup>{S} cache slots | the chunk's {length} tokens</sup>", height=480,
                      margin=dict(l=110, r=10, t=50, b=150))
    return fig


def chunk_explorer(model, ids: list[int], pieces: list[str], chunk: int = 32, index: int = 3):
    """Sliders for chunk size and chunk index redrawing chunk_figure from a real cache."""
    W = model.args.sliding_window
    ids = id_list(ids)
    if not ids:
        raise ValueError("chunk_explorer needs at least one token id")
    top = 2 * (W or chunk)
    if not (is_id(chunk) and 1 <= chunk <= top):
        raise ValueError(f"chunk must be a chunk size in 1..{top} (up to 2W), got {chunk!r}")
    if not (is_id(index) and index >= 0):
        raise ValueError(f"index must be a chunk index >= 0, got {index!r}")
    index = min(index, (len(ids) - 1) // chunk)  # the last chunk when the text is shorter
    size = widgets.IntSlider(value=chunk, min=1, max=top, description="chunk size", continuous_update=False)
    idx = widgets.IntSlider(value=index, min=0, max=(len(ids) - 1) // chunk, description="chunk index",
                            continuous_update=False)

    def clamp(change):  # observed before the redraw: the index slider's range follows the chunk size
        idx.max = (len(ids) - 1) // change["new"]

    size.observe(clamp, "value")

    def draw(size: int, index: int):
        start = index * size
        return chunk_figure(pieces, cache_before_chunk(model, ids, size, index), start,
                            min(size, len(ids) - start), W, size)

    return controls(draw, size=size, index=idx)


def memory_figure(rows: list[dict], tokens: int) -> go.Figure:
    """Score-matrix and cache bytes (KiB, left) and the forward passes the pre-fill takes
    (right) against chunk size: what a small chunk saves and what it costs."""
    xs = [r["chunk"] for r in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(x=xs, y=[r["scores"] / 1024 for r in rows], name="attention scores (one layer)", mode="lines+markers")
    fig.add_scatter(x=xs, y=[r["cache"] / 1024 for r in rows], name="rolling buffer (all layers)", mode="lines+markers")
    fig.add_scatter(x=xs, y=[-(-tokens // c) for c in xs], name="forward passes (right axis)", mode="lines+markers",
                    line=dict(dash="dot"), secondary_y=True)
    log_axis(fig, "x")
    log_axis(fig, "y", [v for tr in fig.data[:2] for v in tr.y], secondary_y=False)
    log_axis(fig, "y", [-(-tokens // c) for c in xs], secondary_y=True, title="forward passes")
    fig.update_layout(title=f"memory and passes of a pre-fill of {tokens} tokens against chunk size",
                      xaxis_title="chunk size (tokens)", yaxis_title="KiB", height=380,
                      margin=dict(l=60, r=60, t=50, b=40), legend=dict(orientation="h", y=-0.25))
    return fig
