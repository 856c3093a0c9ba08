"""Instrumentation: collect what the cache, the attention and the kernels did, for plots.

    with mistral_lab.trace.record() as t:
        generate(model, prompt, 100)
    t.cache_writes   # every slot write: layer, slot, position written, position evicted

    with mistral_lab.trace.record(layers=[3], probs=True, heads=[0, 5]) as t:
        prefill(model, ids, model.new_cache())
    t.attention      # one AttentionCall per attention call of layer 3
    t.attention_band(layer=3, head=5)   # (positions, (N, W) probabilities): the window's band

What is recorded is opt-in and costs nothing when off: `active()` returns None outside
a block, and instrumented code skips its recording branch (one global lookup).

Attention probabilities. A flash kernel (backend='triton') never materialises them, so
the trace computes them with ops.attention_probs from the q and the keys that the
backend was handed for that call (after RoPE, in slot order): the same inputs, on either
backend. tests/test_trace.py checks that each backend's output equals these
probabilities times the values, so the view is not circular.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .masks import visible
from .tokens import is_id


@dataclass(frozen=True)
class CacheWrite:
    layer: int
    slot: int
    position: int  # absolute position written into the slot
    evicted: int  # absolute position that the slot held before, -1 if it was empty
    seq: int = 0  # which sequence of the batch


@dataclass(frozen=True)
class AttentionCall:
    """One attention call of one layer, as the backend saw it.

    kind: "prefill" (no cache), "chunk" (a pre-fill chunk over [cache + chunk]) or
    "decode" (one query per sequence over the buffer, after its write).
    q_pos (B, Tq) and k_pos (B, Tk): absolute positions of the queries and of the keys in
    the order the backend read them (slot order, then the chunk); -1 = padding or an
    empty slot. probs (B, heads, Tq, Tk) fp32 when asked for; q, k, v (after RoPE) and
    the backend's output out (B, Tq, H, D) when asked for.
    """

    layer: int
    kind: str
    q_pos: torch.Tensor
    k_pos: torch.Tensor
    heads: tuple | None = None
    probs: torch.Tensor | None = None
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    out: torch.Tensor | None = None


@dataclass
class Trace:
    layers: frozenset[int] | None = None  # record only these layers (None: all)
    attention_calls: bool = False  # keep an AttentionCall per call
    probs: bool = False  # ... with its attention probabilities (memory: B x heads x Tq x Tk)
    qkv: bool = False  # ... with the q, k, v the backend was handed
    heads: tuple | None = None  # the query heads whose probabilities are kept (None: all)
    cache_writes: list[CacheWrite] = field(default_factory=list)
    attention: list[AttentionCall] = field(default_factory=list)
    kernel_calls: list = field(default_factory=list)  # filled by mistral_lab.kernels

    def check_model(self, n_layers: int, n_heads: int) -> None:
        """The layers and heads asked for exist in the model that runs (called by its forward)."""
        for what, ids, n in (("layers", self.layers, n_layers), ("heads", self.heads, n_heads)):
            bad = sorted(i for i in (ids or ()) if i >= n)
            if bad:
                raise ValueError(f"trace.record({what}=...): {bad[0]} is not one of this model's {what} "
                                 f"(0..{n - 1}): pass ids in 0..{n - 1}, or None for all")

    def wants_layer(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def wants_attention(self, layer: int) -> bool:
        return self.attention_calls and self.wants_layer(layer)

    @property
    def overwrites(self) -> list[CacheWrite]:
        return [w for w in self.cache_writes if w.evicted >= 0]

    def add_attention(self, layer: int, kind: str, q_pos, k_pos, *, probs=None, q=None, k=None, v=None,
                      out=None) -> None:
        """Called by backends.Traced with what it handed the real backend (k, v: all keys
        read), what that returned, and the probabilities when this trace asked for them."""
        kept = [x.detach().clone() if self.qkv else None for x in (q, k, v, out)]
        # copies: the cache's tensors are views that later writes overwrite
        self.attention.append(AttentionCall(layer, kind, q_pos.to("cpu", copy=True), k_pos.to("cpu", copy=True),
                                            self.heads, None if probs is None else probs.cpu(), *kept))

    def calls(self, layer: int) -> list[AttentionCall]:
        return [c for c in self.attention if c.layer == layer]

    def attention_band(self, layer: int, head: int, seq: int = 0, window: int | None = None):
        """The probabilities of one head, one row per query position, one column per key
        distance: band[i, j] = p(query at positions[i] -> key at positions[i] - j).

        At most W columns with a window (W keys are visible), so a 16K-token view is
        16K x W, not 16K x 16K. Returns (positions (N,), band (N, width)) as tensors,
        queries in position order; the width is W, or the longest distance seen.
        """
        rows, cols, vals, qs = [], [], [], []
        for c in self.calls(layer):
            if c.probs is None:
                raise ValueError("this trace holds no attention probabilities: record(probs=True)")
            if c.heads is not None and head not in c.heads:
                raise ValueError(f"head {head!r} was not recorded (heads={list(c.heads)}): "
                                 f"record(heads=[..., {head!r}]), or heads=None for all")
            if not is_id(head) or (c.heads is None and not 0 <= head < c.probs.shape[1]):
                raise ValueError(f"head must be a query head id in 0..{c.probs.shape[1] - 1}, got {head!r}")
            h = head if c.heads is None else list(c.heads).index(head)
            p = c.probs[seq, h]  # (Tq, Tk)
            qp, kp = c.q_pos[seq], c.k_pos[seq]
            # keys the query could see (masks.visible without a window: the band's width cuts it) and did weigh
            ok = (qp[:, None] >= 0) & visible(qp[:, None], kp[None, :], None) & (p > 0)
            i, j = torch.nonzero(ok, as_tuple=True)
            rows.append(qp[i])
            cols.append(qp[i] - kp[j])
            vals.append(p[i, j])
            qs.append(qp[qp >= 0])
        if not qs:
            raise ValueError(f"no attention call of layer {layer} was recorded: record(layers=[{layer}], probs=True)")
        positions = torch.unique(torch.cat(qs))  # sorted
        rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
        width = window or (int(cols.max()) + 1 if cols.numel() else 1)
        band = torch.zeros(len(positions), width)
        keep = cols < width
        band[torch.searchsorted(positions, rows[keep]), cols[keep]] = vals[keep]
        return positions, band


_active: Trace | None = None


def check_ids(what: str, ids) -> tuple[int, ...]:
    """Layer or head ids as given to record: integers >= 0 (checked against the model when
    it runs), at least one; a float, bool or string is refused, never cast."""
    if isinstance(ids, (str, bytes)) or is_id(ids):
        raise ValueError(f"trace.record({what}=...) takes a list of ids, got {ids!r}: e.g. {what}=[0]")
    items = list(ids.tolist() if isinstance(ids, torch.Tensor) else ids)
    if not items:
        raise ValueError(f"trace.record({what}=[]) would record nothing: pass some ids, or None for all")
    for i in items:
        if not is_id(i) or int(i) < 0:
            raise ValueError(f"trace.record({what}=...): {i!r} is not a {what[:-1]} id (an integer >= 0)")
    return tuple(int(i) for i in items)


def active() -> Trace | None:
    return _active


@contextmanager
def record(layers=None, *, attention: bool = False, probs: bool = False, qkv: bool = False, heads=None):
    """Record cache writes (and kernel counters) made inside the block; with attention=True
    also each attention call's positions, with probs=True its probabilities (implies
    attention), with qkv=True the q, k, v it was handed. heads limits the probabilities
    kept to those query heads."""
    global _active
    outer = _active
    chosen = {what: None if ids is None else check_ids(what, ids) for what, ids in (("layers", layers), ("heads", heads))}
    _active = Trace(layers=None if layers is None else frozenset(chosen["layers"]),
                    attention_calls=attention or probs or qkv, probs=probs, qkv=qkv, heads=chosen["heads"])
    try:
        yield _active
    finally:
        _active = outer
