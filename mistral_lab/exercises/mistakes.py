"""Typical wrong answers to the exercises, each with the hint that explains it.

The checkers run a student's function and, when it fails, compare its answers on every
case with these: a student whose function answers exactly like one of them gets that
mistake's hint. The tests check that each of these fails, with its hint.
"""
from __future__ import annotations


# 01 -- visible(q_pos, kv_pos, W)
def visible_w_plus_one(q, kv, W):
    if W is None:
        return 0 <= kv <= q
    return 0 <= kv <= q and kv > q - W - 1  # [q - W, q]: W + 1 keys


def visible_not_causal(q, kv, W):
    if W is None:
        return kv >= 0
    return kv >= 0 and kv > q - W  # no kv <= q: the future leaks in


def visible_or(q, kv, W):
    if W is None:
        return 0 <= kv <= q
    return kv >= 0 and (kv <= q or kv > q - W)  # OR: either condition lets a key through


def visible_ignores_empty(q, kv, W):
    return kv <= q and (W is None or kv > q - W)  # -1 (an empty slot) passes


# 01 -- keys_per_query(p, W)
def keys_per_query_p(p, W):
    return p if W is None else min(p, W)  # forgets the query itself


# 02 -- receptive_field(k, W)
def receptive_field_kw(k, W):
    return k * W


# 03 -- rolling_slot(position, W)
def rolling_slot_no_wrap(position, W):
    return position, (position - W if position >= W else None)  # slot = position


def rolling_slot_evicts_plus_one(position, W):
    ev = position - W + 1
    return position % W, (ev if ev >= 0 else None)


def rolling_slot_negative_eviction(position, W):
    return position % W, position - W  # "evicts" position -4 while the buffer fills


def rolling_slot_evicts_late(position, W):
    return position % W, (position - W if position > W else None)  # position W evicts nothing


# 04 -- chunk_mask(cache_pos, chunk_pos, W)
def _vis(q, kv, W):
    return 0 <= kv <= q and (W is None or kv > q - W)


def chunk_mask_ignores_empty(cache_pos, chunk_pos, W):
    keys = list(cache_pos) + list(chunk_pos)
    return [[k <= q and (W is None or k > q - W) for k in keys] for q in chunk_pos]


def chunk_mask_by_slot(cache_pos, chunk_pos, W):
    # column index used as the key's position, as if slot s held position s
    S = len(cache_pos)
    keys = list(range(S)) + list(chunk_pos)
    return [[_vis(q, k, W) for k in keys] for q in chunk_pos]


# 05 -- kv_bytes_per_token(args, bytes_per_element)
def kv_bytes_n_heads(args, b):
    return 2 * args.n_layers * args.n_heads * args.head_dim * b


def kv_bytes_no_two(args, b):
    return args.n_layers * args.n_kv_heads * args.head_dim * b


# 06 -- gqa_kv_head(h, n_heads, n_kv_heads)
def gqa_modulo(h, H, K):
    return h % K


# name -> list of (wrong function, hint)
MISTAKES = {
    "visible": [
        (visible_w_plus_one, "your window holds W + 1 keys ([q - W, q]): the key at distance exactly W must be "
                             "hidden -- use kv_pos > q_pos - W"),
        (visible_not_causal, "a key from the future is visible: add the causal condition kv_pos <= q_pos"),
        (visible_or, "the conditions are combined with OR: a key must be causal AND inside the window AND filled, "
                     "so use `and` (or & on tensors)"),
        (visible_ignores_empty, "an empty slot (kv_pos = -1) is visible: positions < 0 mark empty slots, "
                                "add kv_pos >= 0"),
    ],
    "keys_per_query": [
        (keys_per_query_p, "position p sees positions 0..p: that is p + 1 keys, itself included"),
    ],
    "receptive_field": [
        (receptive_field_kw, "W keys include the query itself, so one layer moves information W - 1 positions "
                             "back, not W: k * (W - 1)"),
    ],
    "rolling_slot": [
        (rolling_slot_no_wrap, "slot = position never wraps: a W-slot buffer has slots 0..W-1, so use position % W"),
        (rolling_slot_evicts_plus_one, "off by one: the slot position % W last held position - W (the same "
                                       "residue mod W), not position - W + 1"),
        (rolling_slot_negative_eviction, "your slots are right, but while the buffer fills (position < W) nothing "
                                         "is evicted: return None there, not the negative number position - W"),
        (rolling_slot_evicts_late, "your slots are right, but one step late: position W already evicts position 0 "
                                   "(its slot 0 is full), so evict when position >= W, not > W"),
    ],
    "chunk_mask": [
        (chunk_mask_ignores_empty, "empty cache slots hold position -1 and must never be visible: add kv >= 0"),
        (chunk_mask_by_slot, "you masked by slot index: a slot's column means the position stored there "
                             "(cache_pos[s]), which after a wrap is not s"),
    ],
    "kv_bytes_per_token": [
        (kv_bytes_n_heads, "the cache stores one K and one V per key/value head: use n_kv_heads, not n_heads (GQA)"),
        (kv_bytes_no_two, "the cache stores keys AND values: multiply by 2"),
    ],
    "gqa_kv_head": [
        (gqa_modulo, "query heads are grouped consecutively (0..G-1 read K/V head 0, G..2G-1 head 1, with "
                     "G = n_heads // n_kv_heads): use h // G, not h % n_kv_heads"),
    ],
}
