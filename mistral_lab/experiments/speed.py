"""What the window saves in time, measured on this machine: a pre-fill of growing length with
the model's window against the same weights under full attention.

    r = window_vs_full(model, ids, lengths=[64, 128, ..., 4096])
    r["window_s"], r["full_s"]      # median seconds per length, round-robin
    r["window_pairs"], r["full_pairs"]   # the (query, key) pairs each must visit

Both go through this package's own attention (the torch backend) chunk by chunk: with the
window a chunk attends over the W slots of the rolling buffer, without it over every earlier
position of a full cache, so the work of one grows linearly with the length and of the
other quadratically. Below about W tokens they are the same computation.
"""
from __future__ import annotations

import statistics
import time

import torch

from ..generate import prefill, synchronize
from ..masks import visible_pairs
from ..model import Transformer


def full_attention_copy(model) -> Transformer:
    """The same weights with no window (a model never trained so: for timing only)."""
    p = next(model.parameters())
    full = Transformer(model.args.replace(sliding_window=None)).to(device=p.device, dtype=p.dtype)
    full.load_state_dict(model.state_dict())
    return full.eval()


def _prefill_seconds(model, ids: torch.Tensor, chunk: int) -> float:
    cache = model.new_cache()
    t0 = time.perf_counter()
    prefill(model, ids, cache, chunk_size=chunk)
    synchronize(ids.device)
    return time.perf_counter() - t0


def window_vs_full(model, ids, lengths, *, repeats: int = 3) -> dict:
    """Median seconds to pre-fill ids[:n] for each n, with the window and without (module docstring)."""
    W = model.args.sliding_window
    if W is None:
        raise ValueError("this model has no window: there is nothing to compare full attention with")
    full = full_attention_copy(model)
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1).to(next(model.parameters()).device)
    times = {("window", n): [] for n in lengths} | {("full", n): [] for n in lengths}
    _prefill_seconds(model, ids[:, :W], W)  # warm-up
    for _ in range(repeats):  # round-robin: a drift of the machine hits both alike
        for n in lengths:
            times[("window", n)].append(_prefill_seconds(model, ids[:, :n], W))
            times[("full", n)].append(_prefill_seconds(full, ids[:, :n], W))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"lengths": list(lengths), "window": W,
            "window_s": [round(med[("window", n)], 4) for n in lengths],
            "full_s": [round(med[("full", n)], 4) for n in lengths],
            "window_pairs": [visible_pairs(n, W) for n in lengths],
            "full_pairs": [visible_pairs(n, None) for n in lengths]}


__all__ = ["full_attention_copy", "window_vs_full"]
