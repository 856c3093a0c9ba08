"""The grading engine: run a student's function on a list of cases, compare with the
package's own answer, and explain the first failure (by the typical mistake it matches,
else by what the failing case tests). A check never raises at a student: it returns a
Result (truthy when passed; its repr is the message)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import mistakes as _mistakes


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
class Case:
    name: str
    args: tuple
    expected: Any
    hint: str  # what this case tests: the hint when no known mistake explains the failure


class Raised:
    """What a student's function did instead of returning (kept to compare with mistakes)."""

    def __init__(self, exc: BaseException):
        self.text = f"{type(exc).__name__}: {exc}"

    def __eq__(self, other):
        return isinstance(other, Raised)

    def __repr__(self):
        return f"an error ({self.text})"


def _call(fn, args, normalize):
    try:
        return normalize(fn(*args))
    except Exception as e:  # a student's bug: reported, never re-raised here
        return Raised(e)


def grade(exercise: str, fn: Callable, cases: list[Case], *, normalize=lambda x: x, diff=None, explain=None,
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
    else:  # no known mistake: what is wrong over all cases (explain), before what the first failing case tests
        hint = (explain(cases, got) if explain is not None else None) or hint
    if isinstance(g, Raised):
        hint = f"your function raised {g.text}; {hint}"
    detail = diff(c.expected, g) if diff is not None and not isinstance(g, Raised) else None
    result = Result(exercise, False, len(cases), case=c.name, expected=c.expected, got=g, hint=hint, detail=detail)
    if raise_on_fail:
        raise AssertionError(result.message)
    return result


def _same(a, b) -> bool:
    if isinstance(a, Raised) or isinstance(b, Raised):
        return isinstance(a, Raised) and isinstance(b, Raised)
    try:
        return bool(a == b)
    except Exception:  # e.g. a tensor of another shape
        return False


def as_bool(x):
    if isinstance(x, torch.Tensor):
        x = x.item()
    if hasattr(x, "item") and not isinstance(x, (bool, int)):  # numpy scalars
        x = x.item()
    if isinstance(x, (bool, int)) and x in (0, 1):
        return bool(x)
    return x


def as_int(x):
    if hasattr(x, "item") and not isinstance(x, int):  # tensors and numpy scalars
        x = x.item()
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


def as_slot(x):
    if isinstance(x, (tuple, list)) and len(x) == 2:
        slot, ev = as_int(x[0]), as_int(x[1])
        return slot, (None if ev == -1 else ev)  # -1: the cache's own mark for "no position"; -4 is a wrong answer
    return x


def as_mask(x):
    try:
        t = torch.as_tensor(x)
    except Exception:
        return x
    if t.dtype != torch.bool:
        if t.dtype.is_floating_point or not torch.all((t == 0) | (t == 1)):
            return x  # not a mask of True/False (or 0/1)
        t = t.bool()
    return Mask(t)


class Mask:
    """A boolean (queries x keys) mask that compares by value and prints compactly."""

    def __init__(self, t):
        self.t = t

    def __eq__(self, other):
        return isinstance(other, Mask) and self.t.shape == other.t.shape and bool(torch.equal(self.t, other.t))

    def __repr__(self):
        rows = ["".join("1" if v else "." for v in row) for row in self.t.tolist()]
        if len(rows) > 6:
            rows = rows[:3] + ["..."] + rows[-2:]
        return f"mask {tuple(self.t.shape)} [" + " | ".join(rows) + "]"


def mask_diff(expected, got) -> str | None:
    if not isinstance(got, Mask):
        return "return a (chunk length) x (cache slots + chunk length) mask of True/False"
    if got.t.shape != expected.t.shape:
        return f"shape {tuple(got.t.shape)}, expected {tuple(expected.t.shape)}: one row per chunk query, " \
               f"one column per cache slot then per chunk key"
    r, c = (expected.t != got.t).nonzero()[0].tolist()
    return f"first difference at row {r}, column {c}: expected {bool(expected.t[r, c])}, got {bool(got.t[r, c])}"
