"""The cache's memory measured on a real run: cache.nbytes after every chunk of a pre-fill.

    run = measure_prefill(model, ids, full=False)     # a rolling buffer; full=True: a full cache
    run.tokens, run.nbytes                            # bytes allocated after each chunk
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from . import progress


@dataclass
class PrefillRun:
    """What one chunked pre-fill did: cache bytes after each chunk, final logits, time."""
    label: str
    tokens: list = field(default_factory=list)  # tokens seen after each chunk
    nbytes: list = field(default_factory=list)  # cache.nbytes after each chunk
    capacity: int = 0
    logits: torch.Tensor | None = None  # of the last token, (vocab,)
    seconds: float = 0.0


@torch.inference_mode()
def measure_prefill(model, ids, *, full: bool, chunk: int | None = None, show_progress: bool = True) -> PrefillRun:
    """Pre-fill ids (a list) chunk by chunk into a fresh cache, recording cache.nbytes after each.
    progress: a bar counting tokens, with the rate and the time left."""
    chunk = chunk or model.args.sliding_window
    x = torch.tensor([ids])
    cache = model.new_cache(full=full)
    run = PrefillRun("full cache" if full else "rolling buffer")
    bar = progress(total=len(ids), desc=run.label, unit="tok", disable=not show_progress)
    t0 = time.perf_counter()
    for i in range(0, len(ids), chunk):
        logits = model(x[:, i:i + chunk], cache, last_only=True)
        run.tokens.append(min(i + chunk, len(ids)))
        run.nbytes.append(cache.nbytes)
        bar.update(run.tokens[-1] - bar.n)
    run.seconds = time.perf_counter() - t0
    bar.close()
    run.logits, run.capacity = logits[0, -1], cache.capacity
    return run
