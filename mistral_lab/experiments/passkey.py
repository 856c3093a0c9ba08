"""The retrieval probe's accuracy against the distance d of the passkey (data/passkey.py).

    accuracy_by_distance(ml.load("assets/passkey"))   # {"distance", "accuracy", "chance", "bound", ...}
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.passkey import MAX_DISTANCE, N_VALUES, VALUE0, sample
from ..masks import receptive_field


def answer_logits(model, x: torch.Tensor) -> torch.Tensor:
    """The model's logits over the value ids at the query position: (n, N_VALUES)."""
    logits = model(x.to(next(model.parameters()).device))[:, -1].float()
    return logits[:, VALUE0:VALUE0 + N_VALUES]


@torch.no_grad()
def accuracy_by_distance(model, distances=None, n: int = 256, seed: int = 0) -> dict:
    """{"distance": [...], "accuracy": [...], "chance": 1/N_VALUES, "bound": k(W-1)}:
    the share of n sequences at each distance whose most likely value is the passkey."""
    was = model.training
    model.eval()
    distances = list(range(1, MAX_DISTANCE + 1)) if distances is None else [int(d) for d in distances]
    rng = np.random.default_rng(seed)
    acc = []
    for d in distances:
        x, v, _ = sample(rng, n, d)
        pred = answer_logits(model, x).argmax(-1).cpu() + VALUE0
        acc.append(round(float((pred == v).float().mean()), 4))
    model.train(was)
    W = model.args.sliding_window
    return {"distance": distances, "accuracy": acc, "n": n, "chance": 1 / N_VALUES, "window": W,
            "bound": None if W is None else receptive_field(model.args.n_layers, W)}
