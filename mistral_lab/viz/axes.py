"""Axes that read well: log ticks at 1-2-5 (never plotly's "100 5 2 10 5 2 1"), and marks
(a vertical line with its label) that land where they should on a log axis.

    log_axis(fig, "y", values=[...])          # type log, ticks and labels from the data's range
    mark(fig, x=63, text="W - 1 = 63", log=True)  # the line at x, its label at log10(x)

Why mark exists: plotly places a shape on a log axis at its data value but an annotation
at log10 of it, so the label of `add_vline(x=63, annotation_text=...)` on a log axis lands
at 10^63 and stretches the axis there.
"""
from __future__ import annotations

import math

LABEL_SIZE = 13  # at least the notebook's body text (JupyterLab's default is 13-14 px)


def _label(v: float) -> str:
    if v >= 1000:
        k = v / 1000
        return f"{k:g}k" if k < 1000 else f"{v / 1e6:g}M"
    return f"{v:g}"


def log_ticks(lo: float, hi: float, max_ticks: int = 9) -> list[float]:
    """Tick values for a log axis over [lo, hi]: 1, 2, 5 x 10^k, thinned to decades when too many."""
    if not (lo > 0 and hi > 0):
        raise ValueError(f"a log axis needs positive values, got {lo}..{hi}")
    lo, hi = min(lo, hi), max(lo, hi)
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    inside = [t for t in ticks if lo / 1.0001 <= t <= hi * 1.0001]
    if len(inside) < 2:  # a range inside one 1-2-5 step: the neighbours that frame it
        below = [t for t in ticks if t <= lo][-1:]
        above = [t for t in ticks if t >= hi][:1]
        inside = below + inside + above
    if len(inside) > max_ticks:
        inside = [t for t in inside if abs(math.log10(t) - round(math.log10(t))) < 1e-9] or inside[::3]
    return sorted(set(round(t, 12) for t in inside))


def log_axis(fig, axis: str = "y", values=None, *, row=None, col=None, title: str | None = None, **where):
    """Make `axis` ("x" or "y") logarithmic with readable ticks over `values` (default: the
    positive data of the figure's traces on that axis). where: e.g. secondary_y=True."""
    if values is None:
        values = [v for tr in fig.data for v in (getattr(tr, axis) or []) if isinstance(v, (int, float)) and v > 0]
    update = fig.update_xaxes if axis == "x" else fig.update_yaxes
    kw = dict(type="log", tickfont=dict(size=LABEL_SIZE))
    if values:
        ticks = log_ticks(min(values), max(values))
        kw.update(tickvals=ticks, ticktext=[_label(t) for t in ticks], minor=dict(showgrid=False))
    if title is not None:
        kw["title_text"] = title
    update(row=row, col=col, **where, **kw)
    return fig


def mark(fig, x: float, text: str, *, log: bool = False, dash: str = "dot", color: str = "gray",
         row="all", col=1, position: str = "top"):
    """A vertical line at x with its label: the line through every row, the label at the top,
    at log10(x) when the x axis is logarithmic (plotly reads annotation x there as an exponent)."""
    fig.add_vline(x=x, line_dash=dash, line_color=color, row=row, col=col)
    fig.add_annotation(x=math.log10(x) if log else x, y=1.0, xref="x", yref="paper", text=text, showarrow=False,
                       xanchor="left" if position == "top" else "right", yanchor="bottom",
                       font=dict(size=LABEL_SIZE - 1, color=color))
    return fig


__all__ = ["LABEL_SIZE", "log_axis", "log_ticks", "mark"]
