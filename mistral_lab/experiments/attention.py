"""Real attention probabilities on long text, kept as bands: N x W per head, never N x N.

    bands = attention_bands(model, ids)                   # every layer and head, N x W each
    rows = sink_summary(bands)                            # per head: BOS, oldest key, self, previous
    print(summary_table(rows))

Built only on the trace (trace.record(probs=True) around a pre-fill, then
Trace.attention_band), so it works on either backend and on any checkpoint. Memory: the
text is pre-filled one chunk at a time, each chunk in its own trace, so the dense
probabilities held at once are one chunk's (chunk x keys per head); what is kept is the
band, N x W per head. viz/attention.py draws it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import trace
from ..config import check_bytes
from ..generate import prefill
from ..tokens import id_list, is_id

NO_WINDOW_WIDTH = 512  # band width for a model without a window: the twin's training length


@dataclass(frozen=True)
class AttentionBands:
    """probs[l, h, i, d] = p(query at positions[i] -> key at positions[i] - d), for the layers
    and heads listed (probs is indexed by their order here, not by their ids).

    width: the band's columns; = window for a model with one. window None: full attention,
    the band is cut at `width` and the mass beyond it is 1 - the row's sum."""

    probs: torch.Tensor  # (layers, heads, N, width)
    positions: torch.Tensor  # (N,) query positions, ascending
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    width: int
    window: int | None
    n_rep: int  # query heads per K/V head: head h reads K/V head h // n_rep

    def band(self, layer: int, head: int) -> torch.Tensor:
        """(N, width) band of one layer and head, by their ids."""
        for what, value, ids in (("layer", layer, self.layers), ("head", head, self.heads)):
            if not (is_id(value) and value in ids):
                other = f", or compute the bands with {what}s=[{value!r}, ...]" if is_id(value) and value >= 0 else ""
                raise ValueError(f"{what} {value!r} is not in these bands ({what}s {_ids_text(ids)}): "
                                 f"pick one of them{other}")
        return self.probs[self.layers.index(layer), self.heads.index(head)]


def _ids_text(ids: tuple[int, ...]) -> str:
    """(0, 1, 2, 3) -> '0..3'; (0, 5) -> '0, 5'."""
    if len(ids) > 2 and list(ids) == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}..{ids[-1]}"
    return ", ".join(map(str, ids))


def _band_width(window: int | None, width: int | None, n: int) -> int:
    if window is not None:
        if width not in (None, window):
            raise ValueError(f"a model with a window has a band of exactly W = {window} keys, got width={width}")
        return window
    return width or min(NO_WINDOW_WIDTH, n)


@torch.inference_mode()
def attention_bands(model, ids, layers=None, heads=None, chunk_size: int | None = None, *,
                    width: int | None = None, dtype=torch.float32) -> AttentionBands:
    """Banded attention probabilities of `model` pre-filling `ids` (a list or a 1-D tensor).

    layers / heads: which layers and query heads (default: all). With a window the band is
    W wide: everything a query sees. Without one (sliding_window None, e.g. the full-
    attention twin in assets/model-full) `width` chooses the band (default min(512, N), the
    twin's training length): keys further back than width - 1 are not kept, and the row
    sums say how much mass went there. chunk_size (default W, or 64 without a window) sets
    the memory of one chunk's trace: layers x heads x chunk x keys x 4 bytes; the result
    does not depend on it (a chunked pre-fill computes the same attention).
    """
    args = model.args
    ids = torch.tensor(id_list(ids, "attention_bands' token ids"), dtype=torch.long).reshape(1, -1)
    N = ids.shape[1]
    if N == 0:
        raise ValueError("attention_bands needs at least one token id")
    layers = tuple(range(args.n_layers)) if layers is None else trace.check_ids("layers", layers)
    heads = tuple(range(args.n_heads)) if heads is None else trace.check_ids("heads", heads)
    trace.Trace(layers=frozenset(layers), heads=heads).check_model(args.n_layers, args.n_heads)
    if width is not None and not (is_id(width) and width > 0):
        raise ValueError(f"width must be a positive number of key positions, got {width!r}")
    W = _band_width(args.sliding_window, width, N)
    if chunk_size is not None and not (is_id(chunk_size) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size!r}")
    chunk = chunk_size or args.sliding_window or 64
    itemsize = torch.tensor([], dtype=dtype).element_size()
    check_bytes(len(layers) * len(heads) * N * W * itemsize, f"the bands of {len(layers)} layers x {len(heads)} "
                f"heads x {N} tokens x {W} keys", fix="ask for fewer layers, heads or tokens")
    probs = torch.zeros(len(layers), len(heads), N, W, dtype=dtype)
    cache = model.new_cache()
    device = next(model.parameters()).device
    for start in range(0, N, chunk):
        # one trace per chunk: a long text never holds more than one chunk's dense probabilities
        with trace.record(layers=layers, probs=True, heads=heads) as t:
            prefill(model, ids[:, start:start + chunk].to(device), cache, chunk_size=chunk)
        for li, layer in enumerate(layers):
            for hi, head in enumerate(heads):
                pos, band = t.attention_band(layer, head, window=W)
                probs[li, hi, pos] = band.to(dtype)
    return AttentionBands(probs, torch.arange(N), layers, heads, W, args.sliding_window, args.n_rep)


def profile(band: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(width,) mean probability at each distance d, over the queries that have a key d back
    (positions >= d): the first queries of a text cannot look far, and counting their
    zeros would make every head look short-sighted."""
    d = torch.arange(band.shape[1])
    has_key = positions[:, None] >= d[None, :]
    return (band * has_key).sum(0) / has_key.sum(0).clamp(min=1)


def _mean(x: torch.Tensor) -> float:
    return float(x.float().mean()) if x.numel() else math.nan


def _reach(rows: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """Per row: the smallest distance d whose band[0..d] holds `mass` of the probability."""
    return (rows.cumsum(1) < mass).sum(1).clamp(max=rows.shape[1] - 1)


def sink_summary(bands: AttentionBands) -> list[dict]:
    """One dict per (layer, head), means over query positions (position 0 = BOS, as
    tok.encode puts it first):

    bos: mass on position 0 while it is in the band (queries 1 .. width-1);
    bos_x: the same against a uniform head's share, p(BOS) x (keys seen): 1 = no sink;
    oldest: mass on distance W - 1, the oldest key in the buffer, once BOS has left it
        (queries >= W; NaN without a window: BOS never leaves);
    oldest_x: the same x W (1 = a uniform head's share);
    self, previous: mass at distance 0 and 1 (profile);
    reach90: distance back holding 90% of the mass, over queries that see a full band;
    beyond: mass outside the band (0 with a window: the band is everything a query sees).
    """
    pos, W = bands.positions, bands.width
    early_i = torch.nonzero((pos >= 1) & (pos < W)).flatten()  # queries with BOS in their band
    full = pos >= W - 1
    rows = []
    for li, layer in enumerate(bands.layers):
        for hi, head in enumerate(bands.heads):
            b = bands.probs[li, hi].float()
            prof = profile(b, pos)
            on_bos = b[early_i, pos[early_i]]
            oldest = b[pos >= W, W - 1] if bands.window is not None else b[:0, 0]  # none: NaN
            rows.append(dict(
                layer=layer, head=head, kv_head=head // bands.n_rep,
                bos=_mean(on_bos), bos_x=_mean(on_bos * (pos[early_i] + 1)),
                oldest=_mean(oldest), oldest_x=_mean(oldest) * W,
                self=float(prof[0]), previous=float(prof[1]) if W > 1 else math.nan,
                reach90=_mean(_reach(b[full])),
                beyond=_mean(1 - b.sum(1)) if bands.window is None else 0.0))
    return rows


def summary_table(rows: list[dict], columns=("bos", "bos_x", "oldest", "oldest_x", "self", "previous",
                                             "reach90")) -> str:
    """sink_summary's rows as fixed-width text, one line per head."""
    lines = [f"{'layer':>5} {'head':>4} {'kv':>3} " + " ".join(f"{c:>8}" for c in columns)]
    for r in rows:
        cells = " ".join(f"{r[c]:8.1f}" if c in ("reach90", "bos_x", "oldest_x") else f"{r[c]:8.3f}" for c in columns)
        lines.append(f"{r['layer']:>5} {r['head']:>4} {r['kv_head']:>3} {cells}")
    return "\n".join(lines)


def plan(args, tokens: int, budget_bytes: int) -> tuple[int, tuple[int, ...]]:
    """(tokens, layers) of an attention view that fits budget_bytes of bands (fp32, every
    head): all layers when they fit, else evenly spaced ones (first and last kept), and
    fewer tokens only when not even one layer fits."""
    width = args.sliding_window or min(NO_WINDOW_WIDTH, tokens)
    per_layer = args.n_heads * tokens * width * 4
    n_layers = max(1, min(args.n_layers, budget_bytes // max(per_layer, 1)))
    if budget_bytes < per_layer:  # not one layer: fewer tokens, at least two windows' worth when possible
        tokens = max(1, budget_bytes // (args.n_heads * width * 4))
    if n_layers >= args.n_layers:
        return tokens, tuple(range(args.n_layers))
    step = (args.n_layers - 1) / max(n_layers - 1, 1)
    return tokens, tuple(sorted({round(i * step) for i in range(n_layers)}))
