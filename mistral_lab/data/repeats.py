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

The probe that measures copying is experiments/copying.py.
"""
from __future__ import annotations

import math

import numpy as np

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
