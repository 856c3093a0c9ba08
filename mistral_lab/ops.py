"""Reference operations: stateless, pure PyTorch, readable. The kernels match these.

Shapes: B batch, T sequence (queries), S keys, H query heads, K key/value heads,
G = H // K query heads per key/value head, D head_dim.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .masks import mask_for


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight, computed in fp32 (a bf16 mean of squares loses too much)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """theta^(-2i/D) for each pair of dimensions: (D/2,) float64 (see rope_frequencies)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim))


def rope_frequencies(positions: torch.Tensor, head_dim: int, theta: float,
                     inv_freq: torch.Tensor | None = None) -> torch.Tensor:
    """exp(j * angle) for every position and pair of dimensions: complex (..., D/2).

    positions (T,) or (B, T) gives (T, D/2) or (B, T, D/2). Computed from the positions
    on every call rather than looked up in a table, so a rolling-buffer generation can
    run past any precomputed length. inv_freq: rope_inv_freq's result, when the caller
    keeps it (the lean decode step computes it once).
    """
    # In float64, reduced mod 2*pi, then float32: a float32 product p * f is off by about
    # p * f * 6e-8 radians, 0.2 rad at position 3.5M (a 10 MB text scored as one stream).
    if inv_freq is None:
        inv_freq = rope_inv_freq(head_dim, theta, positions.device)
    angles = torch.remainder(positions.double()[..., None] * inv_freq, 2 * math.pi).float()  # (..., D/2)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by the angles: Mistral/Meta's layout.

    x: (B, T, heads, D); freqs: complex (T, D/2) shared by the batch, or (B, T, D/2) when
    each sequence has its own positions. The pair is the complex number x[2i] + j*x[2i+1];
    rotating it is one complex multiplication.
    """
    B, T, nh, D = x.shape
    xc = torch.view_as_complex(x.float().reshape(B, T, nh, D // 2, 2))  # (B, T, nh, D/2)
    f = freqs[None, :, None, :] if freqs.dim() == 2 else freqs[:, :, None, :]
    return torch.view_as_real(xc * f).reshape(B, T, nh, D).type_as(x)


def attention_probs(q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, kv_pos: torch.Tensor,
                    window: int | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) over the visible keys: (B, H, T, S) in fp32.

    q: (B, T, H, D); k: (B, S, K, D) in any slot order; q_pos (T,) or (B, T); kv_pos (S,)
    or (B, S), negative for an empty slot or a padding token. masks.visible decides which
    keys count. A query that sees no key at all (a padding row, position -1) gets a row
    of zeros, not the NaN of a softmax over nothing.

    GQA without repeating K: the G query heads of a group are folded into the row
    dimension of one matmul against their shared key head.
    """
    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    qg = q.view(B, T, K, G, D).permute(0, 2, 3, 1, 4).reshape(B, K, G * T, D)  # (B, K, G*T, D)
    scores = (qg @ k.permute(0, 2, 3, 1)).view(B, K, G, T, S) * (1.0 / math.sqrt(D))  # (B, K, G, T, S)
    mask = mask_for(q_pos, kv_pos, window)  # (T, S) or (B, T, S)
    mask = mask[:, None, None] if mask.dim() == 3 else mask
    probs = torch.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1)
    probs = probs.masked_fill(~mask.any(-1, keepdim=True), 0.0)  # rows with no visible key
    return probs.view(B, H, T, S)  # head h = kv_head * G + g


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    kv_pos: torch.Tensor,
    window: int | None,
) -> torch.Tensor:
    """Grouped-query sliding-window attention by absolute positions: attention_probs @ v.

    q: (B, T, H, D); k, v: (B, S, K, D) in any slot order; q_pos: (T,) or (B, T); kv_pos:
    (S,) or (B, S), negative for an empty slot. Returns (B, T, H, D).
    """
    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    probs = attention_probs(q, k, q_pos, kv_pos, window).to(q.dtype).view(B, K, G * T, S)
    out = probs @ v.permute(0, 2, 1, 3)  # (B, K, G*T, D)
    return out.view(B, K, G, T, D).permute(0, 3, 1, 2, 4).reshape(B, T, H, D)


def swiglu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up: the gated inner activation, from the two projections W1 x and W3 x."""
    return F.silu(gate) * up


def swiglu(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """W2 (silu(W1 x) * W3 x): the gated feed-forward of Llama and Mistral."""
    return F.linear(swiglu_gate(F.linear(x, w1), F.linear(x, w3)), w2)
