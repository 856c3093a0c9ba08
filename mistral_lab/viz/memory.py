"""KV-cache memory: full cache vs rolling buffer, by formula and measured on a real run.

    fig = bytes_vs_tokens_figure(ml.preset("mistral-7b-v0.1"))      # 0 -> 32k tokens
    run = measure_prefill(model, ids, full=False)     # experiments/memory.py: nbytes after each chunk
    fig = measured_figure([run_rolling, run_full])
"""
from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go

from ..cache import cache_bytes
from ..config import ModelArgs
from ..tokens import is_id
from .axes import log_axis
from .widgets import controls

GIB = 2**30


def bytes_vs_tokens_figure(args: ModelArgs, max_tokens: int = 32768, window: int | None = None,
                           bytes_per_element: int = 2, points: int = 257) -> go.Figure:
    """Cache size (GiB) against tokens seen, full vs rolling, from ml.cache_bytes."""
    if not (is_id(max_tokens) and max_tokens > 0):
        raise ValueError(f"max_tokens must be a positive number of tokens, got {max_tokens!r}")
    if window is not None:
        args = args.replace(sliding_window=window)
    xs = [round(i * max_tokens / (points - 1)) for i in range(points)]
    full = [cache_bytes(args, n, rolling=False, bytes_per_element=bytes_per_element) / GIB for n in xs]
    roll = [cache_bytes(args, n, rolling=True, bytes_per_element=bytes_per_element) / GIB for n in xs]
    fig = go.Figure()
    fig.add_scatter(x=xs, y=full, name="full cache (one slot per token)")
    fig.add_scatter(x=xs, y=roll, name=f"rolling buffer (W = {args.sliding_window} slots)")
    fig.update_layout(title=f"K/V cache, batch 1, {8 * bytes_per_element}-bit values: "
                            f"{full[-1]:.2f} GiB vs {roll[-1]:.2f} GiB at {max_tokens:,} tokens",
                      xaxis_title="tokens in the context", yaxis_title="GiB", height=380,
                      margin=dict(l=50, r=20, t=50, b=40), legend=dict(x=0.02, y=0.98))
    return fig


def memory_explorer(args: ModelArgs, max_tokens: int = 32768):
    """A slider for the window W (in slots) redrawing bytes_vs_tokens_figure."""
    w0 = args.sliding_window or 4096
    slider = widgets.IntSlider(value=w0, min=512, max=max_tokens, step=512, description="W (slots)",
                               continuous_update=False, layout=widgets.Layout(width="60%"))
    return controls(lambda window: bytes_vs_tokens_figure(args, max_tokens, window=window), window=slider)


def measured_figure(runs, args: ModelArgs | None = None, bytes_per_element: int = 4) -> go.Figure:
    """Measured cache.nbytes (MiB) against tokens for each PrefillRun, with the formula dotted.
    Log y: the rolling buffer is hundreds of times smaller than the full cache, and on a
    linear axis its line would lie on zero."""
    fig = go.Figure()
    for r in runs:
        fig.add_scatter(x=r.tokens, y=[b / 2**20 for b in r.nbytes], name=f"{r.label} (measured)", mode="lines")
    if args is not None:
        n = max(r.tokens[-1] for r in runs)
        step = max(1, n // 256)
        xs = list(range(step, n + 1, step))  # from one step, not 0: log y has no zero
        fig.add_scatter(x=xs, y=[cache_bytes(args, t, rolling=False, bytes_per_element=bytes_per_element) / 2**20
                                 for t in xs], name="tokens x bytes per token", line=dict(dash="dot"))
    fig.update_layout(title="cache.nbytes during a chunked pre-fill",
                      xaxis_title="tokens pre-filled", yaxis=dict(title="MiB allocated for K and V (log)"),
                      height=420, margin=dict(l=50, r=20, t=50, b=40),
                      legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))  # below: no line under it
    return log_axis(fig, "y")
