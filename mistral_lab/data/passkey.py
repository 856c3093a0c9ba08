"""The retrieval probe: a tiny Mistral-architecture model that must fetch a passkey d tokens back.

    python -m mistral_lab passkey train --out runs/passkey   # training/probe.py
    python -m mistral_lab passkey eval --model assets/passkey  # experiments/passkey.py

A sequence is noise with one passkey in it, then a question:

    <s> n n n ... KEY v n n n ... n n QUERY -> v
                      ^ value      ^ the query, d positions after v

n: filler ids drawn at random; v: one of N_VALUES value ids; KEY marks it; the model
is trained (loss on the answer only) to predict v after QUERY. Nothing else in the
sequence says what v is, so the answer is right more often than chance (1 / N_VALUES)
only if information from v reaches the query's position through the layers.

With a window of W keys and k layers it can travel at most k(W - 1) positions back
(masks.receptive_field): for the preset "passkey" (W = 16, 4 layers) that is 60. Beyond
it no path of the computation connects v to the prediction, which is then exactly the
same whatever v is: accuracy is chance, by construction. Inside one window the query
can read v directly. In between, the model must relay v through the filler positions,
a layer at a time; how far it learns to do so is what notebook 09 measures. The
distance d is drawn uniformly from 1 to SEQ_LEN - 3 in training, so every distance is
asked for equally.
"""
from __future__ import annotations

import numpy as np
import torch

BOS, KEY, QUERY = 1, 3, 4
N_FILLER, N_VALUES = 16, 16
FILLER0 = 5  # filler ids 5..20
VALUE0 = FILLER0 + N_FILLER  # value ids 21..36
SEQ_LEN = 160  # tokens the model reads: the query is the last one
MAX_DISTANCE = SEQ_LEN - 3  # KEY at 1 at the earliest (after BOS), v at 2, the query at SEQ_LEN - 1


def sample(rng: np.random.Generator, n: int, distance: int | np.ndarray | None = None):
    """n sequences (n, SEQ_LEN) with their answers (n,) and distances (n,). distance:
    one for all, one per sequence, or None (uniform in 1..MAX_DISTANCE)."""
    q = SEQ_LEN - 1
    d = rng.integers(1, MAX_DISTANCE + 1, n) if distance is None else np.broadcast_to(np.asarray(distance), (n,))
    if d.min() < 1 or d.max() > MAX_DISTANCE:
        raise ValueError(f"distance must lie in 1..{MAX_DISTANCE}, got {int(d.min())}..{int(d.max())}")
    x = rng.integers(FILLER0, FILLER0 + N_FILLER, (n, SEQ_LEN))
    v = rng.integers(VALUE0, VALUE0 + N_VALUES, n)
    rows = np.arange(n)
    x[:, 0], x[:, q] = BOS, QUERY
    x[rows, q - d] = v
    x[rows, q - d - 1] = KEY
    return torch.from_numpy(x), torch.from_numpy(v), torch.from_numpy(np.array(d))
