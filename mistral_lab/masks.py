"""THE sliding-window definition. Every mask in the project is built from `visible`.

Convention (the one Hugging Face, xformers and a W-slot rolling buffer use): a query
at position p sees the keys at positions (p - W, p] -- W keys, itself included.

The paper's prose ("attends to hidden states between i - W and i") and the pre-fill
mask of Mistral's first reference code read as [p - W, p]: W + 1 keys. Both agree on
the idea; they differ by one key. With W keys per layer, information moves back at most
W - 1 positions per layer, so after k layers a token sees k * (W - 1) positions back
(the paper's "k x W" counts with W + 1 keys).

Worked example, W = 3, query at position 5: keys 3, 4, 5 are visible; 2 is not (too
old), 6 is not (the future).
"""
from __future__ import annotations

import numbers

import torch


def check_window(window, what: str = "window W") -> None:
    """A window is a positive integer (keys per query, self included) or None (full attention).
    A float or negative W would give a mask that looks plausible and is wrong: refuse it.
    The common case is tested first: the fast decode step asks keys_per_query per layer per token."""
    if window is None or (type(window) is int and window > 0):
        return
    if not isinstance(window, numbers.Integral) or isinstance(window, bool) or window <= 0:
        raise ValueError(f"{what} must be a positive integer (keys per query, self included) "
                         f"or None for full attention, got {window!r}")


def _check_count(n, what: str) -> None:
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{what} must be a whole number >= 0, got {n!r}")


def visible(q_pos, kv_pos, window: int | None):
    """True where a query at `q_pos` may attend to a key at `kv_pos`.

    Works on Python ints and on broadcastable integer tensors. Negative key positions
    mark empty cache slots and are never visible. The three conditions are composed
    with AND: any OR here would let future tokens through.
    """
    causal = kv_pos <= q_pos
    filled = kv_pos >= 0
    if window is None:
        return causal & filled
    return causal & filled & (kv_pos > q_pos - window)


def window_mask(n: int, window: int | None, device=None) -> torch.Tensor:
    """(n, n) boolean mask for a sequence at positions 0..n-1: row = query, column = key."""
    _check_count(n, "the sequence length n")
    check_window(window)
    pos = torch.arange(n, device=device)
    return visible(pos[:, None], pos[None, :], window)


def mask_for(q_pos: torch.Tensor, kv_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean mask for explicit query and key positions (e.g. cache slots): (Tq, Tk) from
    q_pos (Tq,) and kv_pos (Tk,); (B, Tq, Tk) when either carries a batch dimension
    (each sequence of a ragged batch has its own positions; -1 marks padding)."""
    return visible(q_pos[..., :, None], kv_pos[..., None, :], window)


def paper_window_mask(n: int, window: int, device=None) -> torch.Tensor:
    """The W + 1 reading ([p - W, p]), only to show the difference side by side."""
    check_window(window)
    return window_mask(n, window + 1, device)


def keys_per_query(position, window: int | None):
    """How many keys a query at `position` sees: min(p + 1, W), or p + 1 without a window
    (itself and everything before it that the window keeps). Ints or integer tensors."""
    check_window(window)
    if window is None:
        return position + 1
    if isinstance(position, torch.Tensor):
        return (position + 1).clamp(max=window)
    return min(position + 1, window)


def oldest_visible(position, window: int | None):
    """The oldest position a query at `position` sees: position + 1 - keys_per_query."""
    return position + 1 - keys_per_query(position, window)


def receptive_field(n_layers: int, window: int) -> int:
    """How many positions back the last layer's output can depend on: n_layers * (W - 1)."""
    _check_count(n_layers, "the number of layers")
    check_window(window)
    if window is None:
        raise ValueError("receptive_field needs a window W: without one every layer sees the whole past")
    return n_layers * (window - 1)


def visible_pairs(n: int, window: int | None) -> int:
    """(query, key) pairs of a length-n sequence that `visible` allows: the sum over p of
    keys_per_query(p, W) -- n(n+1)/2 causal, about n * W with a window. The work of attention."""
    _check_count(n, "the sequence length n")
    check_window(window)
    if window is None or window >= n:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window
