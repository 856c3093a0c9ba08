"""The exercises' checkers, one per notebook 01-06: each grades a student's function on the
edge cases against what the package itself does (masks, the real KVCache, ops.attention)."""
from __future__ import annotations

import torch

from ..cache import KVCache
from ..config import ModelArgs, preset
from ..masks import keys_per_query, mask_for, receptive_field, visible
from ..ops import attention
from .grading import Case, Mask, Result, as_bool, as_int, as_mask, as_slot, grade, mask_diff


# --------------------------------------------------------------------------- 01 visible


def _visible_cases() -> list[Case]:
    def case(name, q, kv, W, hint):
        return Case(f"{name} (q={q}, kv={kv}, W={W})", (q, kv, W), bool(visible(q, kv, W)), hint)

    return [
        case("the query itself", 5, 5, 3, "a query always sees its own key"),
        case("key at distance W-1, the oldest inside", 5, 3, 3, "W keys including the query: q - W + 1 .. q"),
        case("key at distance W, just outside", 5, 2, 3, "W keys including the query: q - W is already out"),
        case("key at distance W+1", 10, 1, 8, "two positions beyond the window are out too"),
        case("a future key", 5, 6, 3, "a query never sees a later position (causal)"),
        case("a future key at distance W", 2, 5, 3, "a later position is hidden however close it looks"),
        case("position 0 sees itself", 0, 0, 4, "at position 0 the only key is the query's own"),
        case("window of one", 7, 7, 1, "W = 1: each query sees only itself"),
        case("no window (None): the far past", 100, 0, None, "W = None means full causal attention"),
        case("no window (None): the future", 3, 4, None, "with no window, the causal condition still holds"),
        case("an empty slot", 2, -1, 8, "kv_pos = -1 marks an empty cache slot: never visible"),
    ]


def check_visible(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 01: fn(q_pos, kv_pos, W) -> bool, graded against masks.visible."""
    return grade("visible", fn, _visible_cases(), normalize=as_bool, raise_on_fail=raise_on_fail)


def check_keys_per_query(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 01: fn(p, W) -> how many keys the query at position p sees."""
    def case(name, p, W, hint):
        return Case(f"{name} (p={p}, W={W})", (p, W), keys_per_query(p, W), hint)

    cases = [
        case("position 0", 0, 4, "position 0 sees only itself"),
        case("before the window fills", 2, 4, "positions 0..p are all inside the window"),
        case("position W-1, the window just full", 3, 4, "0..W-1 is exactly W keys"),
        case("position W", 4, 4, "from here on, W keys"),
        case("far past the window", 199, 64, "at most W keys, whatever the position"),
        case("no window (None)", 9, None, "W = None: every earlier position and itself"),
    ]
    return grade("keys_per_query", fn, cases, normalize=as_int, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------- 02 receptive field


def check_receptive_field(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 02: fn(k, W) -> positions back that k layers can reach, against masks.receptive_field."""
    def case(name, k, W, hint):
        return Case(f"{name} (k={k}, W={W})", (k, W), receptive_field(k, W), hint)

    cases = [
        case("one layer", 1, 4, "one layer: the W keys reach W - 1 positions back"),
        case("no layers", 0, 64, "before any layer a token depends only on itself"),
        case("window of one", 5, 1, "W = 1: every layer sees only the token itself"),
        case("the shipped model", 6, 64, "6 layers of W = 64"),
        case("Mistral 7B", 32, 4096, "32 layers of W = 4096: the paper's ~131K"),
    ]
    return grade("receptive_field", fn, cases, normalize=as_int, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------- 03 rolling buffer


def _tiny_args(W: int):
    return ModelArgs(dim=2, n_layers=1, head_dim=2, hidden_dim=2, n_heads=1, n_kv_heads=1, vocab_size=2,
                     sliding_window=W)


def _real_slot(position: int, W: int) -> tuple[int, int | None]:
    """Write positions 0..position into a real W-slot KVCache; see where the last one went."""
    cache = KVCache(_tiny_args(W))
    if position:
        z = torch.zeros(1, position, 1, 2)
        cache.write(0, z, z, 0)
    before = cache.positions(0)
    one = torch.zeros(1, 1, 1, 2)
    cache.write(0, one, one, position)
    slot = cache.positions(0).index(position)
    return slot, (before[slot] if before[slot] >= 0 else None)


def check_rolling_slot(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 03: fn(position, W) -> (slot, evicted position or None), against KVCache.write."""

    def case(name, p, W, hint):
        return Case(f"{name} (position={p}, W={W})", (p, W), _real_slot(p, W), hint)

    cases = [
        case("position 0, empty buffer", 0, 4, "the first position goes to slot 0 and evicts nothing (None)"),
        case("position W-1, last empty slot", 3, 4, "until the buffer is full nothing is evicted (None)"),
        case("position W, first wrap", 4, 4, "the buffer has W slots: position W wraps to slot 0"),
        case("position W+1", 5, 4, "after the wrap, slots are reused in order"),
        case("second wrap", 2 * 8 + 3, 8, "slot = position mod W; it held the position W earlier"),
        case("window of one", 6, 1, "W = 1: one slot, each position evicts the one before"),
        case("the shipped model's buffer", 300, 64, "W = 64 after 300 positions"),
    ]
    return grade("rolling_slot", fn, cases, normalize=as_slot, explain=_explain_slot, raise_on_fail=raise_on_fail)


def _explain_slot(cases: list[Case], got: list) -> str | None:
    """Which half of (slot, evicted) is wrong over all cases: a hint for that half."""
    def right(i):
        return all(isinstance(g, tuple) and len(g) == 2 and g[i] == c.expected[i] for c, g in zip(cases, got))
    if right(0) and not right(1):
        return ("your slots are right; the evicted position is not: the slot position % W last held position - W, "
                "and nothing (None) while position < W")
    if right(1) and not right(0):
        return "your evictions are right; the slot is not: a W-slot buffer puts position p in slot p % W"
    return None


# --------------------------------------------------------------------------- 04 chunk mask


def _cache_positions(start: int, W: int) -> list[int]:
    """The positions a real W-slot cache holds after positions 0..start-1, slot by slot."""
    cache = KVCache(_tiny_args(W))
    if start:
        z = torch.zeros(1, start, 1, 2)
        cache.write(0, z, z, 0)
    return cache.positions(0)


def check_chunk_mask(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 04: fn(cache_pos, chunk_pos, W) -> mask (len(chunk), len(cache) + len(chunk)) of
    which [cache slots + chunk] keys each chunk query sees; cache_pos[s] is the position held
    by slot s (-1: empty). Graded against masks.mask_for."""
    def case(name, start, chunk, W, hint, cache_W=None):
        cache_pos = _cache_positions(start, cache_W or W)
        chunk_pos = list(range(start, start + chunk))
        expected = Mask(mask_for(torch.tensor(chunk_pos), torch.tensor(cache_pos + chunk_pos), W))
        return Case(f"{name} (cache holds {start} positions, chunk {start}..{start + chunk - 1}, W={W})",
                     (cache_pos, chunk_pos, W), expected, hint)

    cases = [
        case("first chunk, empty cache", 0, 3, 4, "every slot holds -1 (empty): none of them is visible"),
        case("cache partly filled", 2, 2, 4, "slots 2 and 3 are still empty (-1)"),
        case("cache full, no wrap yet", 4, 2, 4, "the slots hold positions 0..3; mask by those positions"),
        case("cache wrapped", 6, 3, 4, "after a wrap slot s holds a position that is not s: use cache_pos[s]"),
        case("chunk > W", 4, 6, 4, "a chunk longer than the window: its late queries no longer see the cache"),
        case("chunk of one, like a decode step", 9, 1, 4, "one query over the whole buffer"),
        case("no window (None)", 3, 2, None, "W = None: every earlier filled position is visible", cache_W=8),
    ]
    return grade("chunk_mask", fn, cases, normalize=as_mask, diff=mask_diff, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------- 05 KV bytes


def check_kv_bytes(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 05: fn(args, bytes_per_element) -> cache bytes per token, against
    ModelArgs.kv_bytes_per_token."""
    b7 = preset("mistral-7b-v0.1")
    small = preset("shakespeare")

    def case(name, args, b, hint):
        return Case(f"{name} ({args.n_layers} layers, {args.n_heads} heads / {args.n_kv_heads} KV heads, "
                     f"head_dim {args.head_dim}, {b} bytes)", (args, b), args.kv_bytes_per_token(b), hint)

    cases = [
        case("Mistral 7B in bf16", b7, 2, "the paper's model: 128 KiB per token"),
        case("the shipped model in fp32", small, 4, "the shipped model's cache in fp32"),
        case("MQA: one KV head", b7.replace(n_kv_heads=1), 2, "with one K/V head, K and V are stored once per layer"),
        case("MHA: as many KV heads as heads", b7.replace(n_kv_heads=32), 2, "without GQA"),
    ]
    return grade("kv_bytes_per_token", fn, cases, normalize=as_int, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------- 06 GQA


def _real_kv_head(h: int, H: int, K: int) -> int:
    """Run ops.attention with one key whose value in K/V head j is j: query head h returns its head."""
    D = 2
    q = torch.zeros(1, 1, H, D)
    k = torch.zeros(1, 1, K, D)
    v = torch.arange(K, dtype=torch.float32).view(1, 1, K, 1).expand(1, 1, K, D).contiguous()
    pos = torch.zeros(1, dtype=torch.long)
    out = attention(q, k, v, pos, pos, None)
    return int(round(out[0, 0, h, 0].item()))


def check_gqa_head(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 06: fn(h, n_heads, n_kv_heads) -> the K/V head query head h reads, against ops.attention."""

    def case(name, h, H, K, hint):
        return Case(f"{name} (h={h}, n_heads={H}, n_kv_heads={K})", (h, H, K), _real_kv_head(h, H, K), hint)

    cases = [
        case("head 0", 0, 8, 2, "the first query head reads the first K/V head"),
        case("second head of the first group", 1, 8, 2, "groups are consecutive query heads"),
        case("first head of the second group", 4, 8, 2, "8 heads / 2 KV heads: groups of 4"),
        case("last head", 31, 32, 8, "Mistral 7B: 32 heads, 8 KV heads, groups of 4"),
        case("MHA: one head per KV head", 5, 8, 8, "n_heads == n_kv_heads: head h reads K/V head h"),
        case("MQA: one KV head", 5, 8, 1, "n_kv_heads = 1: every head reads K/V head 0"),
    ]
    return grade("gqa_kv_head", fn, cases, normalize=as_int, raise_on_fail=raise_on_fail)
