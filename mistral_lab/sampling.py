"""Choosing the next token from the logits: greedy, temperature, top-k, top-p (nucleus).

    sampler = Sampler(batch_size=2, temperature=0.8, top_p=0.95, seed=0)
    token, logprob = sampler(logits)          # logits (B, vocab) -> (B,) ids, (B,) log p

Every sequence of a batch draws from its own generator, seeded with the same seed, so
row b of a seeded batch draws exactly what that prompt alone draws with that seed (the
batch changes nothing but the speed). Greedy (temperature 0) draws nothing.

`filtered_logits` is the one definition of the filters, shared with the static decode
step (engines/static.py), which draws on the device with the exponential race.
"""
from __future__ import annotations

import math

import torch


def check_sampling(temperature, top_k, top_p, seed=None) -> None:
    """One line per bad setting, before any work: finite temperature >= 0, integer top_k
    >= 1, top_p in (0, 1], an integer seed in [0, 2**63)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")


def filtered_logits(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """logits / temperature (> 0) in fp32, -inf outside the top_k tokens and outside the
    nucleus of top_p. Device ops only (no host sync), so a CUDA graph can hold it."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        p = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop_sorted = (p.cumsum(dim=-1) - p) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from logits (B, vocab): greedy at temperature 0, else sampled
    from the softmax at that temperature, restricted to the top_k tokens and to the
    smallest set whose probability reaches top_p. One generator for the whole batch."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filtered_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[..., 0]


class Sampler:
    """The sampling settings of one generation, with one generator per sequence."""

    def __init__(self, batch_size: int = 1, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, device="cpu"):
        check_sampling(temperature, top_k, top_p, seed)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.greedy = temperature == 0
        # seed None: torch's global generator, shared by the rows (nothing to reproduce)
        self.generators = None if seed is None else [torch.Generator(device=device).manual_seed(seed)
                                                     for _ in range(batch_size)]

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,) next tokens from logits (B, vocab)."""
        if self.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(filtered_logits(logits, self.temperature, self.top_k, self.top_p), dim=-1)
        if self.generators is None:
            return torch.multinomial(probs, 1)[:, 0]
        return torch.cat([torch.multinomial(probs[b:b + 1], 1, generator=g)[:, 0]
                          for b, g in enumerate(self.generators)])

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(next tokens (B,), their log-probabilities under the unfiltered logits (B,))."""
        token = self.pick(logits)
        return token, torch.log_softmax(logits.float(), dim=-1).gather(-1, token[:, None])[:, 0]

    def exponential_(self, noise: torch.Tensor) -> torch.Tensor:
        """Fill noise (B, vocab) with Exp(1) draws, each row from its sequence's generator:
        argmax(probs / noise) is then a draw from probs (the static step's race)."""
        if self.generators is None:
            return noise.exponential_()
        for row, g in zip(noise, self.generators):
            row.exponential_(generator=g)
        return noise


__all__ = ["Sampler", "check_sampling", "filtered_logits", "sample"]
