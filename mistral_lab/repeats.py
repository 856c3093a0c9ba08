"""Repeated spans: the data mix that teaches a model to copy, and the probe that measures it.

A model "uses its context" when a span it has seen before costs it less the second time.
Shakespeare alone rarely repeats a span inside one training sequence, so a model trained
on it learns almost no copying (measured on the first shipped model: a 24-token span of
held-out text repeated at once cost 3.94 then 3.79 nats/token; 16 random ids 11.88 then
11.90). The mix below puts repeats into a fraction of the training sequences:

    x = add_repeats(crop, rng, vocab_size, source=train_tokens)   # in place, numpy

A span of L tokens (8..48) is written at some position a and again at a + d: a copy of
the text somewhere else in the corpus (half the spans) or uniform random token ids (the
other half: those can only be predicted by copying). The distance d is log-uniform from
L to the end of the sequence, so every scale is drawn as often: d < W, W <= d <= k(W-1)
and d beyond it. The SWA model and its full-attention twin train on the very same data:
what differs between them is only whether a path of attention reaches d.

The probe (copy_losses) writes a span into held-out text and again d tokens later, and
returns the mean loss of the span's tokens at each occurrence. The first token of each
occurrence is left out: nothing in the span predicts it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# the mix: spans per row drawn in 1..MAX_SPANS, lengths in SPAN_LEN, half of them random ids;
# one mixed row in BLOCK_SHARE is a block repeated to the row's end instead
MAX_SPANS = 16
SPAN_LEN = (8, 64)
RANDOM_SHARE = 0.5
BLOCK_SHARE = 0.25
BLOCK_LEN = (16, 128)
FIRST_ID = 3  # random ids skip <unk>, <s>, </s>


def _span(rng, L: int, vocab_size: int, source: np.ndarray) -> np.ndarray:
    """L uniform random ids (RANDOM_SHARE of the time) or L tokens of text from elsewhere."""
    if rng.random() < RANDOM_SHARE:
        return rng.integers(FIRST_ID, vocab_size, L)
    s = int(rng.integers(0, len(source) - L))
    return source[s:s + L]


def _log_uniform(rng, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def add_repeats(row: np.ndarray, rng: np.random.Generator, vocab_size: int, source: np.ndarray) -> np.ndarray:
    """Write repeats into `row` (1-D token ids), in place; returns it. Either (BLOCK_SHARE
    of rows) text, then a block of L tokens repeated to the end (period d = L), or 1..MAX_SPANS
    spans each repeated once at its own distance. Spans never overlap one another (a later
    span would break an earlier repeat)."""
    T = len(row)
    if T < 2 * BLOCK_LEN[0]:
        return row  # too short to hold a span twice
    if rng.random() < BLOCK_SHARE:
        L = _log_uniform(rng, BLOCK_LEN[0], min(BLOCK_LEN[1], T // 2))
        a = int(rng.integers(0, T // 2 - L + 1))
        block = _span(rng, L, vocab_size, source)
        row[a:] = np.resize(block, T - a)  # the block, again and again
        return row
    used = np.zeros(T, dtype=bool)
    for _ in range(int(rng.integers(1, MAX_SPANS + 1))):
        L = int(rng.integers(SPAN_LEN[0], SPAN_LEN[1] + 1))
        if 2 * L > T:
            break
        d = _log_uniform(rng, L, T - L)
        a = int(rng.integers(0, T - d - L + 1))
        span = _span(rng, L, vocab_size, source)
        where = np.r_[a:a + L, a + d:a + d + L]
        if used[where].any():
            continue  # this draw is skipped, not retried: the rng's use stays simple to follow
        row[where] = np.concatenate([span, span])
        used[where] = True
    return row


def copy_losses(model, text: np.ndarray | list[int], span_len: int, distances, *, random_ids: bool, n: int = 32,
                seed: int = 0, context: int = 32, bos_id: int = 1) -> dict:
    """Loss of a span's first and second occurrence at each distance d (the second starts d
    tokens after the first; d >= span_len). The span is the text itself at a random place
    of `text` (random_ids=False) or span_len uniform random ids written there; `context`
    tokens of text come before it, and the text that follows it fills the gap.

    Returns {"distance": [...], "first": [...], "second": [...]} in nats per token, means
    over n spans (the same places at every d), the first token of each occurrence left out.
    """
    text = np.asarray(text, dtype=np.int64)
    rng = np.random.default_rng(seed)
    V = model.args.vocab_size
    distances = [int(d) for d in distances]
    if min(distances) < span_len:
        raise ValueError(f"distances must be >= span_len = {span_len} (the repeat starts after the span)")
    need = context + max(distances) + span_len
    if len(text) <= need:
        raise ValueError(f"the text ({len(text)} tokens) is shorter than context + distance + span = {need}")
    starts = rng.integers(0, len(text) - need, n)
    spans = [rng.integers(FIRST_ID, V, span_len) if random_ids else None for _ in range(n)]
    device = next(model.parameters()).device
    out = {"distance": distances, "first": [], "second": []}
    for d in distances:
        rows = []
        for s, span in zip(starts, spans):
            piece = text[s:s + context + d + span_len].copy()  # context, span, filler, repeat
            if span is not None:
                piece[context:context + span_len] = span
            piece[context + d:context + d + span_len] = piece[context:context + span_len]
            rows.append(np.r_[bos_id, piece])
        ids = torch.from_numpy(np.stack(rows)).to(device)
        with torch.inference_mode():
            logp = torch.log_softmax(model(ids[:, :-1]).float(), dim=-1)
            nll = -logp.gather(-1, ids[:, 1:, None])[..., 0].cpu()  # nll[:, t] predicts ids[:, t + 1]
        # token j of the span (j >= 1) sits at ids index 1 + context + j, predicted by nll column context + j
        first = nll[:, context + 1:context + span_len]
        second = nll[:, context + d + 1:context + d + span_len]
        out["first"].append(round(float(first.mean()), 4))
        out["second"].append(round(float(second.mean()), 4))
    return out


def copy_gain(model, text, *, random_ids: bool, span_len: int = 16, n: int = 32, seed: int = 0) -> float:
    """Nats per token saved on a span repeated right after itself (d = span_len)."""
    r = copy_losses(model, text, span_len, [span_len], random_ids=random_ids, n=n, seed=seed)
    return r["first"][0] - r["second"][0]
