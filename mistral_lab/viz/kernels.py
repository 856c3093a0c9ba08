"""The Triton kernels seen from inside: tile maps from their own counters, and the committed
GPU benchmarks (ours and the peers measured in the same run) from their JSON.

    call = traced_swa_prefill(n=256, window=64)   # experiments/kernels.py: one instrumented launch
    tile_map_figure(call)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from .axes import log_axis

# One name and one colour per method in every plot: our JSON's impl keys are shown under
# the names the peers' numbers use, so the same method looks the same in both figures.
METHOD_NAMES = {
    "triton_swa": "Triton sliding window (ours)",
    "flex_window": "FlexAttention sliding window",
    "sdpa_causal": "SDPA causal (flash)",
    "sdpa_dense_mask": "SDPA + dense window mask",
}
METHOD_COLOURS = {
    "Triton sliding window (ours)": "#d62728",
    "FlexAttention sliding window": "#1f77b4",
    "SDPA causal (flash)": "#2ca02c",
    "SDPA + dense window mask": "#9467bd",
}


def tokens_tick(n: int) -> str:
    """A sequence length as people say it: 4096 -> '4K', 32768 -> '32K', 1000 -> '1,000'."""
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else f"{n:,}"


def tile_map_figure(call) -> go.Figure:
    """Query blocks x key blocks: computed tiles, causal tiles skipped (before the window), future."""
    first, last = call.per_program["first_block"][:, 0], call.per_program["last_block"][:, 0]
    nq, nk = len(first), int(math.ceil(call.meta["T"] / call.block_n))
    kb = np.arange(nk)
    z = np.where((kb[None] >= first[:, None]) & (kb[None] <= last[:, None]), 2,
                 np.where(kb[None] < first[:, None], 1, 0))
    colors = [[0, "#f4f4f4"], [0.33, "#f4f4f4"], [0.34, "#f6b26b"], [0.66, "#f6b26b"], [0.67, "#3d85c6"], [1, "#3d85c6"]]
    fig = go.Figure(go.Heatmap(z=z.tolist(), zmin=0, zmax=2, colorscale=colors, xgap=1, ygap=1,
                               colorbar=dict(tickvals=[0.33, 1, 1.67], ticktext=["future", "skipped", "computed"])))
    t = call.totals
    # Two short lines: one long line is cut at the figure's 520 px.
    fig.update_layout(title=f"swa_prefill tile map: {t['tiles']} computed, {t['skipped']} skipped<br>"
                            f"<sup>N = {call.meta['T']}, W = {call.meta['window']}, "
                            f"{call.block_m}x{call.block_n} tiles</sup>",
                      xaxis_title="key block", yaxis_title="query block (program)", height=440, width=520,
                      yaxis=dict(autorange="reversed"), margin=dict(l=50, r=20, t=70, b=40))
    return fig


KERNEL_BENCHMARKS = ("attention", "decode")  # `bench attention|decode`: the results this module plots


def load_benchmarks(folder) -> list[dict]:
    """Rows of every committed kernel benchmark (benchmarks/*.json written by `python -m
    mistral_lab bench attention|decode --out`), each with its file, device and commit."""
    rows = []
    for p in sorted(Path(folder).glob("*.json")):
        doc = json.loads(p.read_text())
        if doc.get("benchmark") not in KERNEL_BENCHMARKS:  # other results have rows of their own kind
            continue
        for r in doc.get("rows", []):
            rows.append({**r, "device": doc.get("device"), "file": p.name, "commit": doc.get("commit")})
    return rows


def prefill_bench_figure(rows: list[dict], title: str) -> go.Figure:
    """ms against N for each implementation (rows: dicts with N, impl, ms), named and
    coloured by METHOD_NAMES / METHOD_COLOURS."""
    fig = go.Figure()
    for impl in dict.fromkeys(r["impl"] for r in rows):
        pts = sorted((r["N"], r["ms"]) for r in rows if r["impl"] == impl and r.get("ms") is not None)
        name = METHOD_NAMES.get(impl, impl)
        fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=name, mode="lines+markers",
                        line=dict(color=METHOD_COLOURS.get(name)))
    ns = sorted({r["N"] for r in rows})
    fig.update_layout(title=dict(text=title, font=dict(size=15)),
                      xaxis=dict(title="sequence length N (tokens)", type="log", tickvals=ns,
                                 ticktext=[tokens_tick(n) for n in ns]),
                      yaxis=dict(title="ms (log)"), height=420,
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0),
                      margin=dict(l=50, r=20, t=50, b=40))
    return log_axis(fig, "y")


def benchmark_summary(rows: list[dict]) -> str:
    """The committed GPU timings as text: pre-fill ms per N and implementation, with the
    speedup of the window kernel over causal flash (SDPA), then the decode step."""
    lines = []
    pre = [r for r in rows if r.get("kind") == "prefill"]
    if pre:
        impls = list(dict.fromkeys(r["impl"] for r in pre))
        lines.append(f"pre-fill, {pre[0]['device']}, {pre[0]['dtype']}, W={pre[0]['window']}, "
                     f"{pre[0]['heads']}/{pre[0]['kv_heads']} heads, head_dim {pre[0]['head_dim']} (ms)")
        lines.append(f"{'N':>6} " + " ".join(f"{i:>16}" for i in impls) + "   causal/ours")
        for n in sorted({r["N"] for r in pre}):
            by = {r["impl"]: r["ms"] for r in pre if r["N"] == n}
            cells = " ".join(f"{by[i]:16.3f}" if by.get(i) is not None else f"{'-':>16}" for i in impls)
            ratio = by.get("sdpa_causal", float("nan")) / by["triton_swa"] if "triton_swa" in by else float("nan")
            lines.append(f"{n:>6} {cells}   {ratio:10.2f}x")
    dec = [r for r in rows if r.get("kind") == "decode"]
    if dec:
        lines.append("")
        lines.append(f"decode, one step at position N-1 ({dec[0].get('timing', 'eager')} timing, microseconds)")
        for r in dec:
            lines.append(f"{r['N']:>6} {r['impl']:>24} {1000 * r['ms']:8.1f} us  "
                         f"{r['gbps_min_bytes']:7.0f} GB/s of the fewest bytes")
    return "\n".join(lines)


def speed_figure(r: dict) -> go.Figure:
    """Seconds per pre-fill against length, window vs full attention (experiments/speed.py),
    with the window W marked: the lines part where full attention starts doing more work."""
    fig = go.Figure()
    fig.add_scatter(x=r["lengths"], y=r["full_s"], mode="lines+markers", name="full attention (a full cache)",
                    line=dict(color=METHOD_COLOURS["SDPA causal (flash)"]))
    fig.add_scatter(x=r["lengths"], y=r["window_s"], mode="lines+markers", name=f"sliding window, W = {r['window']}",
                    line=dict(color=METHOD_COLOURS["Triton sliding window (ours)"]))
    fig.update_layout(title="pre-fill time on this machine, through the package's own attention",
                      xaxis_title="tokens pre-filled", yaxis_title="seconds", height=400,
                      margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.25))
    log_axis(fig, "x")
    log_axis(fig, "y")
    fig.add_vline(x=r["window"], line_dash="dot", line_color="gray")
    fig.add_annotation(x=math.log10(r["window"]), y=1.0, xref="x", yref="paper", text=f"W = {r['window']}",
                       showarrow=False, xanchor="left", yanchor="bottom")
    return fig
