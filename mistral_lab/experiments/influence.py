"""How far back information reaches through the layers: the influence of token j on position i.

    M = influence(model, ids, positions=[300], layer=3)   # (1, T)
    M[0, j]   # how much the hidden state at 300, after 3 layers, moves with token j

influence[i, j] is |d h_i / d x_j|: the norm of the Jacobian of the hidden state at
position i (after `layer` blocks) with respect to the input embedding at position j,
computed by autograd in fp32. With sliding-window attention (W keys, self included)
each layer moves information back at most W - 1 positions, so after k layers
influence[i, j] is *exactly* 0 when i - j > k (W - 1) -- not small: no path of the
computation graph connects them -- and positive for i - k (W - 1) <= j <= i.

`probes` picks how the norm over dimensions is taken. None: the exact Frobenius norm
(every output dimension as a direction: dim rows in the batch, fine for small models).
An integer P: P random Gaussian directions u, influence = sqrt(mean_u |u^T J|^2)
(mean_u |u^T J|^2 is an unbiased estimate of |J|_F^2); it is exactly 0 where J is 0 and
(almost surely) positive elsewhere. Either way the directions ride in the batch dimension: one forward and one backward
per output position.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..model import Transformer


def _directions(probes: int | None, dim: int, seed: int) -> torch.Tensor:
    if probes is None:
        return torch.eye(dim)  # every output dimension: the exact Frobenius norm
    g = torch.Generator().manual_seed(seed)
    return torch.randn(probes, dim, generator=g)


def influence(model: Transformer, tokens: Sequence[int] | torch.Tensor, positions: Sequence[int] | None = None,
              layer: int | None = None, *, probes: int | None = 4, seed: int = 0) -> torch.Tensor:
    """|d hidden_i / d embedding_j| for the hidden state after `layer` blocks (None: all).

    Returns (len(positions), T), or (T, T) when positions is None (every row). Rows
    are for output positions i, columns for input positions j; entries with j > i are 0.
    """
    ids = torch.as_tensor(list(tokens) if not isinstance(tokens, torch.Tensor) else tokens).long().flatten()
    T = ids.numel()
    n = model.args.n_layers if layer is None else layer
    if not 0 <= n <= model.args.n_layers:
        raise ValueError(f"layer must be in 0..{model.args.n_layers}, got {layer}")
    rows = list(range(T)) if positions is None else [int(p) for p in positions]
    if any(not 0 <= p < T for p in rows):
        raise ValueError(f"positions must lie in 0..{T - 1}")
    p0 = next(model.parameters())
    dirs = _directions(probes, model.args.dim, seed).to(p0.device)  # (P, dim)
    P = dirs.shape[0]
    out = torch.zeros(len(rows), T)
    with torch.enable_grad():
        emb = model.tok_embeddings.weight.detach().float()
        for r, i in enumerate(rows):
            # causal: position i depends on 0..i only, so run the prefix
            x = emb[ids[: i + 1].to(p0.device)].unsqueeze(0).repeat(P, 1, 1).requires_grad_(True)  # (P, i+1, dim)
            pos = torch.arange(i + 1, device=p0.device).expand(P, i + 1)
            h = model.hidden_states(x, pos, n_layers=n)  # (P, i+1, dim)
            (g,) = torch.autograd.grad((h[:, i] * dirs).sum(), x)  # (P, i+1, dim): u_p^T J_{i,j}
            sq = g.float().pow(2).sum(-1)  # (P, i+1)
            out[r, : i + 1] = (sq.sum(0) if probes is None else sq.mean(0)).sqrt().cpu()
    return out


def influence_by_layer(model: Transformer, tokens, position: int, *, probes: int | None = 4,
                       seed: int = 0) -> torch.Tensor:
    """Influence on one output position after 0, 1, ..., n_layers blocks: (n_layers + 1, T)."""
    return torch.cat([influence(model, tokens, [position], k, probes=probes, seed=seed)
                      for k in range(model.args.n_layers + 1)])


def reach(row: torch.Tensor, position: int) -> int:
    """How many positions back a row of influence is nonzero: position - (first j with influence > 0)."""
    nz = torch.nonzero(row > 0).flatten()
    return position - int(nz.min())


def flops(args, tokens: int, layers: int, probes: int | None = 4) -> float:
    """About what influence(...) costs for one output position through `layers` blocks:
    forward and backward (3x a forward) of `probes` copies (dim copies when exact) of
    `tokens` tokens, 2 flops per weight per token in each block."""
    per_block = args.n_params() / args.n_layers  # close enough: the embeddings are read, not multiplied
    copies = args.dim if probes is None else probes
    return 2 * 3 * per_block * layers * tokens * copies


def depth_within(args, budget_flops: float, *, probes: int | None = 4, margin: int = 22,
                 cap_tokens: int = 4096) -> tuple[int, int]:
    """(layers, tokens) of the deepest influence measurement of notebook 02 that fits a
    compute budget: for k layers, a text of k(W - 1) + margin tokens (so the last row's
    field fits inside it), every depth 0..k measured. (0, margin) when not even one layer
    fits; without a window a fixed text of cap_tokens // 10 tokens."""
    W = args.sliding_window
    best = (0, margin)
    for k in range(1, args.n_layers + 1):
        tokens = (cap_tokens // 10) if W is None else k * (W - 1) + margin
        if tokens > cap_tokens:
            break
        cost = sum(flops(args, tokens, d, probes) for d in range(k + 1))
        if cost > budget_flops:
            break
        best = (k, tokens)
    return best
