"""The attention view: where a trained model's heads put their probability on long real text.

    bands = attention_bands(model, ids)        # experiments/attention.py: N x W per head
    fig = attention_figure(bands, layer=2, head=5, pieces=tok.pieces(ids))
    ui = attention_explorer(bands, pieces=tok.pieces(ids))  # layer, head, query-range controls
"""
from __future__ import annotations

import math

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..experiments.attention import AttentionBands, profile
from . import escape_label
from .axes import log_axis
from .widgets import controls

MAX_ROWS = 600  # query rows stored in a saved figure: 600 x 64 values keep a notebook small
HOVER_CELLS = 20_000  # per-cell hover text (tokens) only below this many cells, for the same reason


def _piece(pieces, p: int) -> str:
    return escape_label(pieces[p].replace("▁", "·"))


def _rows(bands: AttentionBands, query_range, max_rows: int):
    """(selected row indices, shown row indices): the queries in query_range, and every
    k-th of them so that at most max_rows are drawn."""
    pos = bands.positions
    lo, hi = query_range if query_range is not None else (int(pos[0]), int(pos[-1]))
    sel = torch.nonzero((pos >= lo) & (pos <= hi)).flatten()
    stride = max(1, math.ceil(len(sel) / max_rows))
    return sel, sel[::stride], stride


def attention_figure(bands: AttentionBands, layer: int, head: int, pieces: list[str] | None = None,
                     query_range: tuple[int, int] | None = None, max_rows: int = MAX_ROWS,
                     title: str | None = None) -> go.Figure:
    """Top: the band as a heatmap, x = distance back (0 .. width-1), y = query position
    (down the text). Bottom: the mean probability at each distance (profile), on a log
    scale, plus the mass on BOS (position 0) for the queries that still see it.

    Why distance on x: both panels then share the x axis, so a column of the heatmap sits
    above its mean; the window's edge (W - 1) is one vertical line through both, and
    N >> W rows scroll down the page like the text. At most max_rows query rows are
    drawn (every k-th, said in the title); the bottom panel uses every selected row.
    Blank cells: no key at that distance (before position 0), not a zero probability.
    """
    band, pos = bands.band(layer, head), bands.positions
    sel, shown, stride = _rows(bands, query_range, max_rows)
    W = bands.width
    b = band[shown].float()
    exists = pos[shown][:, None] >= torch.arange(W)[None, :]
    z = [[round(v, 3) if ok else None for v, ok in zip(r, e)] for r, e in zip(b.tolist(), exists.tolist())]
    y = pos[shown].tolist()
    vals = b[exists]
    zmax = max(float(vals.quantile(0.99)) if vals.numel() else 1.0, 1e-3)  # colours not spent on one spike
    heat = dict(z=z, x=list(range(W)), y=y, colorscale="Viridis", zmin=0, zmax=zmax,
                colorbar=dict(title="p", len=0.7, y=1, yanchor="top"))
    if pieces is not None and len(y) * W <= HOVER_CELLS:
        heat["text"] = [[f"query {p} {_piece(pieces, p)} → key {p - d} {_piece(pieces, p - d)}" if p >= d else ""
                         for d in range(W)] for p in y]
        heat["hovertemplate"] = "%{text}<br>distance %{x}: p = %{z}<extra></extra>"
    else:
        heat["hovertemplate"] = "query %{y}, key %{y} − %{x}: p = %{z}<extra></extra>"

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.05)
    fig.add_trace(go.Heatmap(**heat), row=1, col=1)
    prof = profile(band[sel].float(), pos[sel])
    fig.add_scatter(x=list(range(W)), y=[round(float(v), 5) for v in prof], mode="lines+markers",
                    marker=dict(size=4), name="mean p at this distance", row=2, col=1)
    bos = sel[(pos[sel] >= 1) & (pos[sel] < W)]  # queries that still have BOS in their band
    if len(bos):
        fig.add_scatter(x=pos[bos].tolist(), y=[round(float(v), 5) for v in band[bos, pos[bos]]],
                        mode="markers", marker=dict(size=5, symbol="x", color="#d9534f"),
                        name="p on BOS (position 0), query at this distance", row=2, col=1)
    edge = (f"window edge: distance W−1 = {W - 1}, the oldest key in the buffer" if bands.window is not None
            else f"band edge: distance {W - 1} (no window: keys further back are cut from the view)")
    fig.add_vline(x=W - 1, line=dict(color="#d9534f", dash="dash"), row="all", col=1)
    fig.add_annotation(x=W - 1, y=1.0, xref="x", yref="paper", text=edge, showarrow=False,
                       xanchor="right", yanchor="bottom", font=dict(size=11, color="#d9534f"))
    if pieces is not None:  # token ticks down the side, escaped: plotly reads <s> as HTML
        step = max(1, len(y) // 24)
        fig.update_yaxes(tickvals=y[::step], ticktext=[f"{p} {_piece(pieces, p)}" for p in y[::step]], row=1, col=1)
    fig.update_yaxes(autorange="reversed", title_text="query position", row=1, col=1)
    profile_values = [v for tr in fig.data[1:] for v in tr.y if v and v > 0]
    log_axis(fig, "y", profile_values, row=2, col=1, title="mean p")
    fig.update_xaxes(title_text="distance back (query position − key position)", row=2, col=1)
    shown_note = f", 1 query in {stride} shown ({len(shown)} of {len(sel)})" if stride > 1 else ""
    fig.update_layout(title=title or f"layer {layer}, head {head} (K/V head {head // bands.n_rep}): "
                                     f"queries {int(pos[sel[0]])}–{int(pos[sel[-1]])}{shown_note}",
                      height=640, margin=dict(l=110, r=20, t=70, b=50),
                      legend=dict(orientation="h", x=0, y=-0.12))
    return fig


def attention_explorer(bands: AttentionBands, pieces: list[str] | None = None, layer: int | None = None,
                       head: int | None = None, query_range: tuple[int, int] | None = None,
                       max_rows: int = MAX_ROWS):
    """Layer and head selectors and a query-position range over attention_figure. A redraw
    only slices the precomputed bands: no model call when a control moves."""
    pos = bands.positions
    first, last = int(pos[0]), int(pos[-1])
    bands.band(bands.layers[0] if layer is None else layer, bands.heads[0] if head is None else head)  # named error
    lay = widgets.Dropdown(options=list(bands.layers), value=bands.layers[0] if layer is None else layer,
                           description="layer", layout=widgets.Layout(width="150px"))
    hd = widgets.Dropdown(options=[(f"{h} (K/V {h // bands.n_rep})", h) for h in bands.heads],
                          value=bands.heads[0] if head is None else head, description="head",
                          layout=widgets.Layout(width="190px"))
    rng = widgets.IntRangeSlider(value=query_range or (first, last), min=first, max=last,
                                 description="queries", continuous_update=False,
                                 layout=widgets.Layout(width="60%"))
    return controls(lambda layer, head, queries: attention_figure(bands, layer, head, pieces, queries, max_rows),
                    layer=lay, head=hd, queries=rng)
