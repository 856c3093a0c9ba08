"""Exercises with checkers: write a small function, check it against the package's own.

    from mistral_lab import exercises as ex

    def visible(q_pos, kv_pos, W):
        ...                               # your answer
    ex.check_visible(visible)             # ✓ all 11 cases pass   or
                                          # ✗ case 'key at distance W (q=5, kv=2, W=3)': expected False,
                                          #   got True — hint: ...

One exercise per notebook (the function a student writes, and what it is graded against):

    01  check_visible(fn)            fn(q_pos, kv_pos, W) -> bool          masks.visible
    01  check_keys_per_query(fn)     fn(p, W) -> int                       masks.window_mask(...).sum(1)
    02  check_receptive_field(fn)    fn(k, W) -> int                       masks.receptive_field
    03  check_rolling_slot(fn)       fn(position, W) -> (slot, evicted)    KVCache.write (evicted: None if empty)
    04  check_chunk_mask(fn)         fn(cache_pos, chunk_pos, W) -> mask   masks.mask_for
    05  check_kv_bytes(fn)           fn(args, bytes_per_element) -> int   ModelArgs.kv_bytes_per_token
    06  check_gqa_head(fn)           fn(h, n_heads, n_kv_heads) -> int     ops.attention (which V it returns)

Edge cases: W - 1 and W + 1, position 0, wraps of the buffer, a chunk longer than W,
no window (W = None), empty cache slots (-1). A check never raises at a student: it
returns a Result (truthy when passed; its repr is the message). For CI,
`check_x(fn, raise_on_fail=True)` raises AssertionError with the same message.

Reference solutions: mistral_lab/exercises/solutions.py (outside the notebooks).
Typical wrong answers and their hints: mistral_lab/exercises/mistakes.py.

`question(text, answer)` shows a "predict, then run" question with the answer folded.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Callable

from . import mistakes as _mistakes

__all__ = ["Result", "check_chunk_mask", "check_gqa_head", "check_keys_per_query", "check_kv_bytes",
           "check_receptive_field", "check_rolling_slot", "check_visible", "question", "question_html", "EXERCISES"]


@dataclass
class Result:
    """The outcome of a check: `passed`, and a message that is its repr."""

    exercise: str
    passed: bool
    cases: int
    case: str | None = None  # the first failing case, by name
    expected: Any = None
    got: Any = None
    hint: str | None = None
    detail: str | None = None  # where inside a returned mask or tuple the answers differ

    def __bool__(self) -> bool:
        return self.passed

    @property
    def message(self) -> str:
        if self.passed:
            return f"✓ {self.exercise}: all {self.cases} cases pass"
        where = f" ({self.detail})" if self.detail else ""
        return (f"✗ {self.exercise}, case {self.case!r}: expected {self.expected!r}, got {self.got!r}{where}"
                f" — hint: {self.hint}")

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__


@dataclass
class _Case:
    name: str
    args: tuple
    expected: Any
    hint: str  # what this case tests: the hint when no known mistake explains the failure


class _Raised:
    """What a student's function did instead of returning (kept to compare with mistakes)."""

    def __init__(self, exc: BaseException):
        self.text = f"{type(exc).__name__}: {exc}"

    def __eq__(self, other):
        return isinstance(other, _Raised)

    def __repr__(self):
        return f"an error ({self.text})"


def _call(fn, args, normalize):
    try:
        return normalize(fn(*args))
    except Exception as e:  # a student's bug: reported, never re-raised here
        return _Raised(e)


def _grade(exercise: str, fn: Callable, cases: list[_Case], *, normalize=lambda x: x, diff=None,
           raise_on_fail: bool = False) -> Result:
    if not callable(fn):
        result = Result(exercise, False, len(cases), case="(none)", expected="a function", got=fn,
                        hint=f"pass the function itself, e.g. check(my_function), not its result")
        if raise_on_fail:
            raise AssertionError(result.message)
        return result
    got = [_call(fn, c.args, normalize) for c in cases]
    bad = next((i for i, (c, g) in enumerate(zip(cases, got)) if not _same(g, c.expected)), None)
    if bad is None:
        return Result(exercise, True, len(cases))
    c, g = cases[bad], got[bad]
    hint = c.hint
    for wrong, mistake_hint in _mistakes.MISTAKES.get(exercise, []):  # does it answer like a known mistake?
        if all(_same(g2, _call(wrong, c2.args, normalize)) for c2, g2 in zip(cases, got)):
            hint = mistake_hint
            break
    if isinstance(g, _Raised):
        hint = f"your function raised {g.text}; {hint}"
    detail = diff(c.expected, g) if diff is not None and not isinstance(g, _Raised) else None
    result = Result(exercise, False, len(cases), case=c.name, expected=c.expected, got=g, hint=hint, detail=detail)
    if raise_on_fail:
        raise AssertionError(result.message)
    return result


def _same(a, b) -> bool:
    if isinstance(a, _Raised) or isinstance(b, _Raised):
        return isinstance(a, _Raised) and isinstance(b, _Raised)
    try:
        return bool(a == b)
    except Exception:  # e.g. a tensor of another shape
        return False


def _as_bool(x):
    import torch

    if isinstance(x, torch.Tensor):
        x = x.item()
    if hasattr(x, "item") and not isinstance(x, (bool, int)):  # numpy scalars
        x = x.item()
    if isinstance(x, (bool, int)) and x in (0, 1):
        return bool(x)
    return x


def _as_int(x):
    if hasattr(x, "item") and not isinstance(x, int):  # tensors and numpy scalars
        x = x.item()
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


# --------------------------------------------------------------------------- 01 visible


def _visible_cases() -> list[_Case]:
    from ..masks import visible

    def case(name, q, kv, W, hint):
        return _Case(f"{name} (q={q}, kv={kv}, W={W})", (q, kv, W), bool(visible(q, kv, W)), hint)

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
    return _grade("visible", fn, _visible_cases(), normalize=_as_bool, raise_on_fail=raise_on_fail)


def check_keys_per_query(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 01: fn(p, W) -> how many keys the query at position p sees."""
    from ..masks import window_mask

    def case(name, p, W, hint):
        return _Case(f"{name} (p={p}, W={W})", (p, W), int(window_mask(p + 1, W)[p].sum()), hint)

    cases = [
        case("position 0", 0, 4, "position 0 sees only itself"),
        case("before the window fills", 2, 4, "positions 0..p are all inside the window"),
        case("position W-1, the window just full", 3, 4, "0..W-1 is exactly W keys"),
        case("position W", 4, 4, "from here on, W keys"),
        case("far past the window", 199, 64, "at most W keys, whatever the position"),
        case("no window (None)", 9, None, "W = None: every earlier position and itself"),
    ]
    return _grade("keys_per_query", fn, cases, normalize=_as_int, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------- 02 receptive field


def check_receptive_field(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 02: fn(k, W) -> positions back that k layers can reach, against masks.receptive_field."""
    from ..masks import receptive_field

    def case(name, k, W, hint):
        return _Case(f"{name} (k={k}, W={W})", (k, W), receptive_field(k, W), hint)

    cases = [
        case("one layer", 1, 4, "one layer: the W keys reach W - 1 positions back"),
        case("no layers", 0, 64, "before any layer a token depends only on itself"),
        case("window of one", 5, 1, "W = 1: every layer sees only the token itself"),
        case("the shipped model", 6, 64, "6 layers of W = 64"),
        case("Mistral 7B", 32, 4096, "32 layers of W = 4096: the paper's ~131K"),
    ]
    return _grade("receptive_field", fn, cases, normalize=_as_int, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------- 03 rolling buffer


def _tiny_args(W: int):
    from ..config import ModelArgs

    return ModelArgs(dim=2, n_layers=1, head_dim=2, hidden_dim=2, n_heads=1, n_kv_heads=1, vocab_size=2,
                     sliding_window=W)


def _real_slot(position: int, W: int) -> tuple[int, int | None]:
    """Write positions 0..position into a real W-slot KVCache; see where the last one went."""
    import torch

    from ..cache import KVCache

    cache = KVCache(_tiny_args(W))
    if position:
        z = torch.zeros(1, position, 1, 2)
        cache.write(0, z, z, 0)
    before = cache.positions(0)
    one = torch.zeros(1, 1, 1, 2)
    cache.write(0, one, one, position)
    slot = cache.positions(0).index(position)
    return slot, (before[slot] if before[slot] >= 0 else None)


def _as_slot(x):
    if isinstance(x, (tuple, list)) and len(x) == 2:
        slot, ev = _as_int(x[0]), _as_int(x[1])
        return slot, (None if ev is None or (isinstance(ev, int) and ev < 0) else ev)
    return x


def check_rolling_slot(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 03: fn(position, W) -> (slot, evicted position or None), against KVCache.write."""

    def case(name, p, W, hint):
        return _Case(f"{name} (position={p}, W={W})", (p, W), _real_slot(p, W), hint)

    cases = [
        case("position 0, empty buffer", 0, 4, "the first position goes to slot 0 and evicts nothing (None)"),
        case("position W-1, last empty slot", 3, 4, "until the buffer is full nothing is evicted (None)"),
        case("position W, first wrap", 4, 4, "the buffer has W slots: position W wraps to slot 0"),
        case("position W+1", 5, 4, "after the wrap, slots are reused in order"),
        case("second wrap", 2 * 8 + 3, 8, "slot = position mod W; it held the position W earlier"),
        case("window of one", 6, 1, "W = 1: one slot, each position evicts the one before"),
        case("the shipped model's buffer", 300, 64, "W = 64 after 300 positions"),
    ]
    return _grade("rolling_slot", fn, cases, normalize=_as_slot, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------- 04 chunk mask


def _cache_positions(start: int, W: int) -> list[int]:
    """The positions a real W-slot cache holds after positions 0..start-1, slot by slot."""
    import torch

    from ..cache import KVCache

    cache = KVCache(_tiny_args(W))
    if start:
        z = torch.zeros(1, start, 1, 2)
        cache.write(0, z, z, 0)
    return cache.positions(0)


def _as_mask(x):
    import torch

    try:
        t = torch.as_tensor(x)
    except Exception:
        return x
    if t.dtype != torch.bool:
        if t.dtype.is_floating_point or not torch.all((t == 0) | (t == 1)):
            return x  # not a mask of True/False (or 0/1)
        t = t.bool()
    return _Mask(t)


class _Mask:
    """A boolean (queries x keys) mask that compares by value and prints compactly."""

    def __init__(self, t):
        self.t = t

    def __eq__(self, other):
        import torch

        return isinstance(other, _Mask) and self.t.shape == other.t.shape and bool(torch.equal(self.t, other.t))

    def __repr__(self):
        rows = ["".join("1" if v else "." for v in row) for row in self.t.tolist()]
        if len(rows) > 6:
            rows = rows[:3] + ["..."] + rows[-2:]
        return f"mask {tuple(self.t.shape)} [" + " | ".join(rows) + "]"


def _mask_diff(expected, got) -> str | None:
    if not isinstance(got, _Mask):
        return "return a (chunk length) x (cache slots + chunk length) mask of True/False"
    if got.t.shape != expected.t.shape:
        return f"shape {tuple(got.t.shape)}, expected {tuple(expected.t.shape)}: one row per chunk query, " \
               f"one column per cache slot then per chunk key"
    r, c = (expected.t != got.t).nonzero()[0].tolist()
    return f"first difference at row {r}, column {c}: expected {bool(expected.t[r, c])}, got {bool(got.t[r, c])}"


def check_chunk_mask(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 04: fn(cache_pos, chunk_pos, W) -> mask (len(chunk), len(cache) + len(chunk)) of
    which [cache slots + chunk] keys each chunk query sees; cache_pos[s] is the position held
    by slot s (-1: empty). Graded against masks.mask_for."""
    import torch

    from ..masks import mask_for

    def case(name, start, chunk, W, hint, cache_W=None):
        cache_pos = _cache_positions(start, cache_W or W)
        chunk_pos = list(range(start, start + chunk))
        expected = _Mask(mask_for(torch.tensor(chunk_pos), torch.tensor(cache_pos + chunk_pos), W))
        return _Case(f"{name} (cache holds {start} positions, chunk {start}..{start + chunk - 1}, W={W})",
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
    return _grade("chunk_mask", fn, cases, normalize=_as_mask, diff=_mask_diff, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------- 05 KV bytes


def check_kv_bytes(fn, raise_on_fail: bool = False) -> Result:
    """Notebook 05: fn(args, bytes_per_element) -> cache bytes per token, against
    ModelArgs.kv_bytes_per_token."""
    from ..config import preset

    b7 = preset("mistral-7b-v0.1")
    small = preset("shakespeare")

    def case(name, args, b, hint):
        return _Case(f"{name} ({args.n_layers} layers, {args.n_heads} heads / {args.n_kv_heads} KV heads, "
                     f"head_dim {args.head_dim}, {b} bytes)", (args, b), args.kv_bytes_per_token(b), hint)

    cases = [
        case("Mistral 7B in bf16", b7, 2, "the paper's model: 128 KiB per token"),
        case("the shipped model in fp32", small, 4, "the shipped model's cache in fp32"),
        case("MQA: one KV head", b7.replace(n_kv_heads=1), 2, "with one K/V head, K and V are stored once per layer"),
        case("MHA: as many KV heads as heads", b7.replace(n_kv_heads=32), 2, "without GQA"),
    ]
    return _grade("kv_bytes_per_token", fn, cases, normalize=_as_int, raise_on_fail=raise_on_fail)


# --------------------------------------------------------------------------- 06 GQA


def _real_kv_head(h: int, H: int, K: int) -> int:
    """Run ops.attention with one key whose value in K/V head j is j: query head h returns its head."""
    import torch

    from ..ops import attention

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
        return _Case(f"{name} (h={h}, n_heads={H}, n_kv_heads={K})", (h, H, K), _real_kv_head(h, H, K), hint)

    cases = [
        case("head 0", 0, 8, 2, "the first query head reads the first K/V head"),
        case("second head of the first group", 1, 8, 2, "groups are consecutive query heads"),
        case("first head of the second group", 4, 8, 2, "8 heads / 2 KV heads: groups of 4"),
        case("last head", 31, 32, 8, "Mistral 7B: 32 heads, 8 KV heads, groups of 4"),
        case("MHA: one head per KV head", 5, 8, 8, "n_heads == n_kv_heads: head h reads K/V head h"),
        case("MQA: one KV head", 5, 8, 1, "n_kv_heads = 1: every head reads K/V head 0"),
    ]
    return _grade("gqa_kv_head", fn, cases, normalize=_as_int, raise_on_fail=raise_on_fail)


EXERCISES = {  # name -> (checker, notebook)
    "visible": (check_visible, "01_sliding_window_masks"),
    "keys_per_query": (check_keys_per_query, "01_sliding_window_masks"),
    "receptive_field": (check_receptive_field, "02_receptive_field"),
    "rolling_slot": (check_rolling_slot, "03_rolling_buffer"),
    "chunk_mask": (check_chunk_mask, "04_prefill_and_chunking"),
    "kv_bytes_per_token": (check_kv_bytes, "05_memory_at_32k"),
    "gqa_kv_head": (check_gqa_head, "06_grouped_query_attention"),
}


# --------------------------------------------------------------------------- predict, then run


def question_html(text: str, answer: str) -> str:
    """The question, then the answer folded in a <details> block (click to unfold)."""
    esc = lambda s: html.escape(s).replace("\n", "<br>")  # noqa: E731
    return (f'<div class="mistral-lab-question"><p><b>Predict, then run:</b> {esc(text)}</p>'
            f"<details><summary>answer</summary><p>{esc(answer)}</p></details></div>")


class _Question:
    def __init__(self, text: str, answer: str):
        self.text, self.answer = text, answer

    def _repr_html_(self) -> str:
        return question_html(self.text, self.answer)

    def __repr__(self) -> str:  # outside a notebook: the question only, the answer stays folded
        return f"Predict, then run: {self.text}\n(answer folded: .answer to read it)"


def question(text: str, answer: str) -> _Question:
    """A 'predict, then run' question: in JupyterLab the answer shows folded (click 'answer');
    as the last line of a cell it displays itself, elsewhere use IPython.display.display(q)."""
    if not isinstance(text, str) or not isinstance(answer, str) or not text.strip() or not answer.strip():
        raise ValueError("question(text, answer) takes two non-empty strings: the question and its answer")
    return _Question(text, answer)
