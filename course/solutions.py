"""Reference solutions to the exercises in mistral_lab.exercises -- for teachers.

The one copy. Students write their own in the notebooks; these live in the teacher's
folder course/, outside the package and outside what `scripts/lab` shows (notebooks/).
Each is written the way a student would (plain Python, no package helpers, no helper of
this file: each body goes as it is between nbgrader's solution markers, see
mistral_lab/exercises/course.py); the checkers compare against the package's own functions
(masks.visible, masks.receptive_field, ModelArgs.kv_bytes_per_token, KVCache.write,
ops.attention), and the tests check that every solution here passes.
"""
from __future__ import annotations


def visible(q_pos: int, kv_pos: int, W: int | None) -> bool:
    """01: a query at q_pos sees keys at (q_pos - W, q_pos]; -1 marks an empty slot."""
    if kv_pos < 0 or kv_pos > q_pos:  # an empty slot, or the future
        return False
    return W is None or kv_pos > q_pos - W  # AND: every condition must hold


def keys_per_query(p: int, W: int | None) -> int:
    """01: how many keys the query at position p sees (positions 0..p exist)."""
    return p + 1 if W is None else min(p + 1, W)


def receptive_field(k: int, W: int) -> int:
    """02: positions back that layer k's output can depend on: W - 1 per layer."""
    return k * (W - 1)


def rolling_slot(position: int, W: int) -> tuple[int, int | None]:
    """03: (slot, evicted position or None) when `position` is written into a W-slot buffer."""
    slot = position % W
    evicted = position - W if position >= W else None
    return slot, evicted


def chunk_mask(cache_pos: list[int], chunk_pos: list[int], W: int | None) -> list[list[bool]]:
    """04: rows = chunk queries, columns = [cache slots + chunk keys]; mask by position."""
    keys = list(cache_pos) + list(chunk_pos)
    return [[0 <= k <= q and (W is None or k > q - W) for k in keys] for q in chunk_pos]  # filled, causal, in W


def kv_bytes_per_token(args, bytes_per_element: int) -> int:
    """05: K and V (x2) for every layer, KV head and head dimension."""
    return 2 * args.n_layers * args.n_kv_heads * args.head_dim * bytes_per_element


def gqa_kv_head(h: int, n_heads: int, n_kv_heads: int) -> int:
    """06: query heads come in consecutive groups of n_heads // n_kv_heads per K/V head."""
    return h // (n_heads // n_kv_heads)
