"""Figures of notebook 09, "what the window really remembers", from experiments.context_use.sweep's
JSON (or the same dicts measured live by experiments/): SWA model vs its full-attention twin.

    r = json.load(open("benchmarks/context_use.json"))
    context_figure(r); copy_figure(r, "copy_random"); passkey_figure(r["passkey"]); position_figure(r)
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..masks import receptive_field
from .axes import log_axis, mark

NAMES = {"swa": "SWA model (W = {W})", "full": "full-attention twin",
         "full_through_window": "twin run with a window of {W} (never trained so)"}
COLORS = {"swa": "#1f77b4", "full": "#d62728", "full_through_window": "#ff7f0e"}


def _name(key: str, r: dict) -> str:
    return NAMES[key].format(W=r["window"])


def _marks(fig: go.Figure, r: dict, *, train_len: bool = False, axis_max=None, log: bool = False) -> None:
    """Vertical lines at W - 1, k(W - 1) (and the training length), labelled (axes.mark)."""
    W, field = r["window"], receptive_field(r["n_layers"], r["window"])
    lines = [(W - 1, f"W - 1 = {W - 1}", "dot"), (field, f"k(W - 1) = {field}", "dash")]
    if train_len:
        lines.append((r["train_seq_len"], f"trained on {r['train_seq_len']}", "dashdot"))
    for x, text, dash in lines:
        if axis_max is None or x <= axis_max:
            mark(fig, x, text, log=log, dash=dash, row=None, col=None)


def _layout(fig: go.Figure, title: str, x: str, y: str, *, logx: bool = True) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=460, margin=dict(l=60, r=20, t=70, b=50),
                      legend=dict(orientation="h", x=0, y=-0.2, yanchor="top"))  # below: never over a curve
    if logx:
        log_axis(fig, "x")
    return fig


def context_figure(r: dict, keys=("swa", "full", "full_through_window")) -> go.Figure:
    """Loss of a token given only the c tokens before it, against c."""
    fig = go.Figure()
    for key in keys:
        if key in r:
            d = r[key]["loss_by_context"]
            fig.add_scatter(x=d["context"], y=d["loss"], mode="lines+markers", name=_name(key, r),
                            line_color=COLORS[key])
    _marks(fig, r, axis_max=max(r["swa"]["loss_by_context"]["context"]), log=True)
    return _layout(fig, "Loss against the context given (held-out text)", "tokens of context given (c)",
                   "loss, nats/token")


def copy_figure(r: dict, kind: str = "copy_random", keys=("swa", "full")) -> go.Figure:
    """Loss of a span's second occurrence against its distance d from the first (first
    occurrence dashed): below the dashed line, the model copies."""
    what = {"copy_random": "random token ids", "copy_text": "held-out text"}[kind]
    fig = go.Figure()
    for key in keys:
        d = r[key][kind]
        fig.add_scatter(x=d["distance"], y=d["second"], mode="lines+markers", name=f"{_name(key, r)}: repeat",
                        line_color=COLORS[key])
        fig.add_scatter(x=d["distance"], y=d["first"], mode="lines", name=f"{_name(key, r)}: first time",
                        line=dict(color=COLORS[key], dash="dash"))
    _marks(fig, r)
    return _layout(fig, f"A span of {what} seen again d tokens later: does it cost less?",
                   "distance d between the two occurrences", "loss on the span, nats/token", logx=False)


def passkey_figure(p: dict, horizon: float | None = 1.5) -> go.Figure:
    """The probe's accuracy against d, with chance, W - 1, k(W - 1) and (horizon x W)."""
    fig = go.Figure()
    fig.add_scatter(x=p["distance"], y=p["accuracy"], mode="lines", name="probe accuracy", line_color=COLORS["swa"])
    fig.add_hline(y=p["chance"], line_dash="dot", line_color="gray", annotation_text=f"chance 1/{round(1 / p['chance'])}",
                  annotation_position="bottom right")
    W = p["window"]
    fig.add_vline(x=W - 1, line_dash="dot", line_color="gray", annotation_text=f"W - 1 = {W - 1}",
                  annotation_position="top")
    if p["bound"] is not None:
        fig.add_vline(x=p["bound"], line_dash="dash", line_color="black", annotation_text=f"k(W - 1) = {p['bound']}",
                      annotation_position="top right")
    if horizon is not None:
        fig.add_vline(x=horizon * W, line_dash="dashdot", line_color="purple",
                      annotation_text=f"{horizon} W", annotation_position="bottom left")
    fig.update_yaxes(range=[0, 1.05])
    return _layout(fig, "Passkey retrieval against the distance d back (the probe model: W = 16, 4 layers)",
                   "distance d from the passkey to the question", "accuracy", logx=False)


def position_figure(r: dict, keys=("swa", "full", "full_through_window")) -> go.Figure:
    """Mean loss per range of positions of one long sequence (log axis)."""
    fig = go.Figure()
    for key in keys:
        d = r[key]["loss_by_position"]
        mid = [(a + b) / 2 for a, b in zip(d["start"], d["end"])]
        fig.add_scatter(x=mid, y=d["loss"], mode="lines+markers", name=_name(key, r), line_color=COLORS[key],
                        text=[f"positions {a:,}-{b - 1:,}" for a, b in zip(d["start"], d["end"])])
    mark(fig, r["train_seq_len"], f"trained on {r['train_seq_len']} tokens", log=True, dash="dashdot", row=None,
         col=None)
    return _layout(fig, "Loss against position in one long sequence (held-out text)", "position (log)",
                   "mean loss in the range, nats/token")
