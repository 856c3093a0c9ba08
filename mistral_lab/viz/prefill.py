"""Pre-fill in chunks: the paper's Figure 3 drawn with real tokens, and its memory cost.

    pos = cache_before_chunk(model, ids, chunk=32, index=3)      # slots' positions, real cache
    fig = chunk_figure(pieces, pos, start=96, length=32, window=64)
    ui = chunk_explorer(model, ids, pieces)                       # sliders: chunk size, index
"""
from __future__ import annotations

from contextlib import contextmanager

import plotly.graph_objects as go
import torch

from .. import backends
from ..config import ModelArgs
from ..generate import prefill
from ..masks import mask_for


def cache_before_chunk(model, ids: list[int], chunk: int, index: int) -> list[int]:
    """Positions held by layer 0's rolling buffer just before chunk `index` is pre-filled."""
    cache = model.new_cache()
    if index > 0:
        prefill(model, torch.tensor([ids[: index * chunk]]), cache, chunk_size=chunk)
    return cache.positions(0)


def _label(pieces: list[str], p: int) -> str:
    return f"{pieces[p].replace('▁', '·')} @{p}"


def chunk_figure(pieces: list[str], cache_positions: list[int], start: int, length: int, window: int) -> go.Figure:
    """Rows: the chunk's tokens. Columns: the cache's slots (what they hold), then the chunk.
    Blue: the query sees that key (ml.visible on absolute positions)."""
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
                     tickfont=dict(size=9))
    rstep = max(1, length // 16)
    fig.update_yaxes(autorange="reversed", tickvals=list(range(0, length, rstep)), ticktext=rows[::rstep],
                     tickfont=dict(size=9))
    fig.update_layout(title=f"chunk of {length} tokens at positions {start}–{start + length - 1}: "
                            f"{S} cache slots | the chunk itself", height=460,
                      margin=dict(l=110, r=10, t=50, b=150))
    return fig


def chunk_explorer(model, ids: list[int], pieces: list[str], chunk: int = 32, index: int = 3):
    """Sliders for chunk size and chunk index redrawing chunk_figure from a real cache."""
    import ipywidgets as widgets
    from IPython.display import display

    W = model.args.sliding_window
    size = widgets.IntSlider(value=chunk, min=1, max=2 * W, description="chunk size", continuous_update=False)
    idx = widgets.IntSlider(value=index, min=0, max=(len(ids) - 1) // chunk, description="chunk index",
                              continuous_update=False)
    out = widgets.Output()

    def redraw(_=None):
        start = idx.value * size.value
        length = min(size.value, len(ids) - start)
        with out:
            out.clear_output(wait=True)
            display(chunk_figure(pieces, cache_before_chunk(model, ids, size.value, idx.value), start, length, W))

    def resize(_=None):
        idx.max = (len(ids) - 1) // size.value  # may clamp idx.value, which redraws by itself
        redraw()

    size.observe(resize, "value")
    idx.observe(redraw, "value")
    redraw()
    return widgets.VBox([widgets.HBox([size, idx]), out])


def memory_for_chunk(args: ModelArgs, chunk: int, batch_size: int = 1, bytes_per_element: int = 4) -> dict:
    """Bytes alive during one chunk's attention (reference backend, one layer at a time):
    the score matrix, batch x heads x chunk x (W slots + chunk) in fp32 (softmax runs in
    fp32), and the rolling buffer, W slots x layers x K x D for keys and for values."""
    W = args.sliding_window
    scores = batch_size * args.n_heads * chunk * (W + chunk) * 4
    cache = 2 * args.n_layers * batch_size * W * args.n_kv_heads * args.head_dim * bytes_per_element
    return {"chunk": chunk, "scores": scores, "cache": cache}


@contextmanager
def attention_shapes():
    """Record (q.shape, k.shape) of every reference attention call made inside the block."""
    calls, original = [], backends.ops.attention

    def spy(q, k, v, q_pos, kv_pos, window):
        calls.append((tuple(q.shape), tuple(k.shape)))
        return original(q, k, v, q_pos, kv_pos, window)

    backends.ops.attention = spy
    try:
        yield calls
    finally:
        backends.ops.attention = original


def memory_figure(rows: list[dict], tokens: int) -> go.Figure:
    """Score-matrix and cache bytes (KiB) against chunk size."""
    xs = [r["chunk"] for r in rows]
    fig = go.Figure()
    fig.add_scatter(x=xs, y=[r["scores"] / 1024 for r in rows], name="attention scores (one layer)", mode="lines+markers")
    fig.add_scatter(x=xs, y=[r["cache"] / 1024 for r in rows], name="rolling buffer (all layers)", mode="lines+markers")
    fig.update_layout(title=f"memory during pre-fill of {tokens} tokens vs chunk size", xaxis_type="log",
                      xaxis_title="chunk size (tokens)", yaxis_title="KiB", height=340,
                      margin=dict(l=60, r=10, t=50, b=40))
    return fig
