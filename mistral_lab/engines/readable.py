"""The readable engine: each decode step is Transformer.forward on one token per sequence."""
from __future__ import annotations

import torch

from .. import trace
from ..cache import KVCache
from ..sampling import Sampler


def inference_only() -> str | None:
    """Why a packed engine cannot run now, or None: it does not record into a trace (the
    readable model is what trace.record() records) and it runs without autograd."""
    if trace.active() is not None:
        return "a trace is recording, and the readable model is what it records"
    if torch.is_grad_enabled():
        return "it runs without autograd (inside torch.inference_mode() or no_grad())"
    return None


class ModelStep:
    """step(token (B,), running (B,) host bools) -> (next token (B,), its log-probability (B,))."""

    def __init__(self, model, cache: KVCache, sampler: Sampler):
        self.model, self.cache, self.sampler = model, cache, sampler

    def __call__(self, token: torch.Tensor, running: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool(running.all()):
            logits = self.model(token[:, None], self.cache)[:, -1]
        else:  # a stopped sequence gets no token: length 0, so position -1 (not written, not attended)
            alive = running.to(token.device)
            logits = self.model(torch.where(alive, token, 0)[:, None], self.cache, lengths=running.long())[:, -1]
        return self.sampler(logits)


__all__ = ["ModelStep", "inference_only"]
