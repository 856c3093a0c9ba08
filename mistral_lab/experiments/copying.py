"""Does a model copy from its context? The loss of a span at its first and second occurrence.

    r = copy_losses(model, stream, span_len=16, distances=[16, 32, 64], random_ids=True)
    r["first"], r["second"]      # nats/token at each distance d; first - second = what copying saves
    copy_gain(model, stream, random_ids=False, span_len=24)   # d = span_len: repeated at once

The probe writes a span into held-out text and again d tokens later (d from the start
of one occurrence to the start of the other), and returns the mean loss of the span's
tokens at each occurrence. The first token of each occurrence is left out: nothing in
the span predicts it. The span is the text itself at a random place (random_ids=False)
or uniform random ids (which can only be predicted by copying).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.repeats import FIRST_ID


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
