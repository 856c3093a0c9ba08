"""The rolling buffer over time, from a trace of cache writes.

    with ml.trace.record(layers=[0]) as t:
        out = ml.generate(model, prompt, 256)
    H = buffer_history(t.cache_writes, W)        # (steps, W): position held by each slot
    fig = buffer_heatmap(H, t.cache_writes)
    ui = buffer_scrubber(H, tok.pieces(out.tokens))
"""
from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from . import escape_label
from .axes import LABEL_SIZE
from .widgets import controls


def buffer_history(writes, capacity: int, layer: int = 0) -> torch.Tensor:
    """(steps, capacity) long tensor: row t = positions held by the slots after the t-th write."""
    held = [-1] * capacity
    rows = []
    for w in writes:
        if w.layer != layer:
            continue
        held[w.slot] = w.position
        rows.append(list(held))
    return torch.tensor(rows, dtype=torch.long)


def buffer_heatmap(history: torch.Tensor, writes, layer: int = 0, max_side: int = 256) -> go.Figure:
    """Time step x slot, coloured by the position held, white where the slot is still
    empty (no value: nothing is drawn on the white background); overwrites marked with x.
    A buffer larger than max_side steps or slots (the 7B's 4096) is drawn at every k-th
    step and slot, said in the title, so a saved notebook stays small."""
    rs = max(1, -(-history.shape[0] // max_side))
    cs = max(1, -(-history.shape[1] // max_side))
    shown = history[::rs, ::cs]
    z = [[p if p >= 0 else None for p in row] for row in shown.tolist()]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(0, history.shape[1], cs)), y=list(range(0, history.shape[0], rs)),
                               colorscale="Turbo", colorbar=dict(title="position held<br>(white: empty)"),
                               hovertemplate="step %{y}, slot %{x}: position %{z}<extra></extra>"))
    ow = [(t, w.slot) for t, w in enumerate(w for w in writes if w.layer == layer) if w.evicted >= 0]
    drawn = [(t, s) for t, s in ow if t % rs == 0 and s % cs == 0]
    fig.add_scatter(x=[s for _, s in drawn], y=[t for t, _ in drawn], mode="markers", name="overwrite",
                    marker=dict(symbol="x", size=4, color="black"))
    fig.update_yaxes(autorange="reversed", title_text="write step (= position written)")
    fig.update_xaxes(title_text="slot")
    sampled = "" if rs == cs == 1 else f" (every {rs}th step and {cs}th slot drawn)"
    fig.update_layout(title=f"the cache of layer {layer}: {history.shape[1]} slots, {len(ow)} overwrites{sampled}",
                      height=480, plot_bgcolor="white", margin=dict(l=60, r=10, t=50, b=40), legend=dict(x=0, y=1.08, orientation="h"))
    return fig


def slots_figure(history: torch.Tensor, pieces: list[str], step: int, per_row: int = 8, max_slots: int = 128) -> go.Figure:
    """The buffer after write `step`: one cell per slot with the token and position it holds
    (blue, darker the newer), white where the slot is still empty. Eight slots a row, so
    that every label is set at the notebook's body size (axes.LABEL_SIZE)."""
    S = min(history.shape[1], max_slots)  # a 4096-slot buffer: its first max_slots slots, said in the title
    row = history[step].tolist()[:S]
    n_rows = -(-S // per_row)
    z, text = [], []
    for r in range(n_rows):
        zr, tr = [], []
        for c in range(per_row):
            s = r * per_row + c
            p = row[s] if s < S else -1
            zr.append(None if p < 0 else (1.0 if p == step else 0.3 + 0.6 * p / max(step, 1)))
            tr.append("" if p < 0 else f"{escape_label(pieces[p].replace('▁', '·'))}<br>@{p}")
        z.append(zr)
        text.append(tr)
    fig = go.Figure(go.Heatmap(z=z, text=text, texttemplate="%{text}", showscale=False, colorscale="Blues",
                               zmin=0, zmax=1.15, xgap=2, ygap=2, hoverinfo="skip",
                               textfont=dict(size=LABEL_SIZE)))  # zmax > 1: the newest cell stays light enough to read
    fig.update_yaxes(autorange="reversed", tickvals=list(range(n_rows)), tickfont=dict(size=LABEL_SIZE),
                     ticktext=[f"slots {r * per_row}–{r * per_row + per_row - 1}" for r in range(n_rows)])
    fig.update_xaxes(showticklabels=False)
    first = "" if S == history.shape[1] else f"; slots 0–{S - 1} of {history.shape[1]}"
    fig.update_layout(title=f"after writing position {step} into slot {step % history.shape[1]} "
                            f"(darkest = newest, white = empty{first})",
                      height=80 + 48 * n_rows, plot_bgcolor="white", margin=dict(l=100, r=10, t=40, b=10))
    return fig


def buffer_scrubber(history: torch.Tensor, pieces: list[str], step: int | None = None):
    """A slider over write steps redrawing slots_figure."""
    last = history.shape[0] - 1
    slider = widgets.IntSlider(value=last if step is None else step, min=0, max=last, description="step",
                               continuous_update=False, layout=widgets.Layout(width="90%"))
    return controls(lambda step: slots_figure(history, pieces, step), step=slider)
