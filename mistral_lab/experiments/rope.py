"""Why a wrapped buffer needs nothing undone: after RoPE, q . k depends only on the distance.

    s = scores_by_position(head_dim=32, theta=1e4, distances=[0, 5, 40], positions=range(64, 4096, 64))
    s[a, b]   # q rotated at positions[b] . k rotated at positions[b] - distances[a]: flat along b

RoPE rotates each pair of dimensions of q and k by an angle proportional to the absolute
position. Rotating both by the same extra angle leaves their dot product unchanged, so
the score of a (query, key) pair is a function of p_q - p_k alone: a key rotated when it
was written and stored in any slot scores the same as if it were still in text order.
"""
from __future__ import annotations

import torch

from .. import ops


@torch.no_grad()
def scores_by_position(head_dim: int, theta: float, distances, positions, *, seed: int = 0) -> torch.Tensor:
    """(len(distances), len(positions)) scores of one random query and key vector pair,
    the query at each position p and the key at p - d (both rotated with ops.apply_rope)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, 1, head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, head_dim, generator=g, dtype=torch.float64)
    out = torch.zeros(len(distances), len(positions), dtype=torch.float64)
    for a, d in enumerate(distances):
        for b, p in enumerate(positions):
            fq = ops.rope_frequencies(torch.tensor([int(p)]), head_dim, theta)
            fk = ops.rope_frequencies(torch.tensor([int(p) - int(d)]), head_dim, theta)
            out[a, b] = (ops.apply_rope(q, fq.to(torch.complex128)) * ops.apply_rope(k, fk.to(torch.complex128))).sum()
    return out


__all__ = ["scores_by_position"]
