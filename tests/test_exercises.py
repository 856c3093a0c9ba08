"""The exercise checkers: every reference solution passes, every typical wrong answer fails
with its own hint and names the case it fails on, and a check never raises at a student."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from mistral_lab import exercises as ex
from mistral_lab.exercises import checkers, mistakes, questions

REPO = Path(__file__).resolve().parent.parent


def _load_solutions():
    """The teacher's reference solutions: course/solutions.py, outside the package."""
    spec = importlib.util.spec_from_file_location("course_solutions", REPO / "course" / "solutions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


solutions = _load_solutions()

CHECKS = {
    "visible": (ex.check_visible, solutions.visible),
    "keys_per_query": (ex.check_keys_per_query, solutions.keys_per_query),
    "receptive_field": (ex.check_receptive_field, solutions.receptive_field),
    "rolling_slot": (ex.check_rolling_slot, solutions.rolling_slot),
    "chunk_mask": (ex.check_chunk_mask, solutions.chunk_mask),
    "kv_bytes_per_token": (ex.check_kv_bytes, solutions.kv_bytes_per_token),
    "gqa_kv_head": (ex.check_gqa_head, solutions.gqa_kv_head),
}

# wrong answer -> (words of the failing case's name, words of its hint)
EXPECTED_FAILURES = {
    mistakes.visible_w_plus_one: ("distance W, just outside", "W + 1 keys"),
    mistakes.visible_not_causal: ("a future key", "causal"),
    mistakes.visible_or: ("distance W, just outside", "OR"),
    mistakes.visible_ignores_empty: ("an empty slot", "kv_pos >= 0"),
    mistakes.keys_per_query_p: ("position 0", "p + 1"),
    mistakes.receptive_field_kw: ("one layer", "k * (W - 1)"),
    mistakes.rolling_slot_no_wrap: ("position W, first wrap", "position % W"),
    mistakes.rolling_slot_evicts_plus_one: ("position W-1, last empty slot", "not position - W + 1"),
    mistakes.rolling_slot_negative_eviction: ("position 0, empty buffer", "not the negative number"),
    mistakes.rolling_slot_evicts_late: ("position W, first wrap", "one step late"),
    mistakes.chunk_mask_ignores_empty: ("empty cache", "-1"),
    mistakes.chunk_mask_by_slot: ("empty cache", "slot index"),
    mistakes.kv_bytes_n_heads: ("Mistral 7B in bf16", "n_kv_heads, not n_heads"),
    mistakes.kv_bytes_no_two: ("Mistral 7B in bf16", "multiply by 2"),
    mistakes.gqa_modulo: ("second head of the first group", "h // G"),
}


def test_every_notebook_01_to_06_has_an_exercise():
    assert {nb[:2] for _, nb in ex.EXERCISES.values()} >= {"01", "02", "03", "04", "05", "06"}
    assert set(CHECKS) == set(ex.EXERCISES) == set(mistakes.MISTAKES)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_reference_solution_passes(name):
    check, solution = CHECKS[name]
    r = check(solution)
    assert r.passed and bool(r), r
    assert repr(r).startswith("✓") and f"all {r.cases} cases pass" in repr(r)
    assert check(solution, raise_on_fail=True).passed


def test_every_listed_mistake_is_tested():
    listed = {fn for pairs in mistakes.MISTAKES.values() for fn, _ in pairs}
    assert listed == set(EXPECTED_FAILURES)


@pytest.mark.parametrize("wrong", list(EXPECTED_FAILURES), ids=lambda f: f.__name__)
def test_typical_wrong_answer_fails_with_its_hint(wrong):
    name = next(n for n, pairs in mistakes.MISTAKES.items() if any(fn is wrong for fn, _ in pairs))
    check, _ = CHECKS[name]
    case_words, hint_words = EXPECTED_FAILURES[wrong]
    r = check(wrong)
    assert not r.passed and not bool(r)
    text = repr(r)
    assert text.startswith("✗") and "expected" in text and "got" in text and "hint:" in text
    assert case_words in r.case and f"case {r.case!r}" in text, text
    assert hint_words in r.hint, text
    with pytest.raises(AssertionError, match="hint:"):
        check(wrong, raise_on_fail=True)


def test_the_cases_cover_the_edges():
    names = " / ".join(c.name for c in checkers._visible_cases())
    for edge in ("distance W-1", "distance W,", "distance W+1", "future", "position 0", "None", "empty slot"):
        assert edge in names


def test_a_crashing_or_odd_answer_is_reported_not_raised():
    def crashes(q, kv, W):
        return kv > q - W  # TypeError on W = None (and no causal check)

    r = ex.check_visible(crashes)
    assert not r.passed and "future key" in r.case
    r = ex.check_visible(lambda q, kv, W: 1 / 0)
    assert not r.passed and "ZeroDivisionError" in r.hint
    r = ex.check_visible(42)
    assert not r.passed and "pass the function itself" in r.hint
    r = ex.check_chunk_mask(lambda c, q, W: [[True]])
    assert not r.passed and "shape (1, 1)" in repr(r)


def test_rolling_slot_hint_names_the_wrong_half():
    # an eviction wrong in a way no listed mistake is: the hint is about the eviction, not the slot
    r = ex.check_rolling_slot(lambda p, W: (p % W, p - W - 1 if p > W else None))
    assert not r.passed and "your slots are right; the evicted position is not" in r.hint
    r = ex.check_rolling_slot(lambda p, W: ((p + 1) % W, p - W if p >= W else None))
    assert not r.passed and "your evictions are right; the slot is not" in r.hint


def test_answers_as_tensors_and_numbers_are_accepted():
    assert ex.check_visible(lambda q, kv, W: torch.tensor(solutions.visible(q, kv, W))).passed
    assert ex.check_visible(lambda q, kv, W: int(solutions.visible(q, kv, W))).passed
    assert ex.check_receptive_field(lambda k, W: torch.tensor(k * (W - 1))).passed
    assert ex.check_rolling_slot(lambda p, W: (p % W, p - W if p >= W else -1)).passed  # -1 for "nothing"
    assert ex.check_chunk_mask(lambda c, q, W: torch.tensor(solutions.chunk_mask(c, q, W))).passed


def test_question_folds_the_answer():
    q = ex.question("How many keys does position 0 see?", "One: <itself>.")
    html = q._repr_html_()
    assert "<details>" in html and "&lt;itself&gt;" in html and "How many keys" in html
    assert "One" not in repr(q)  # printed outside a notebook, the answer stays folded
    with pytest.raises(ValueError):
        ex.question("", "x")
    with pytest.raises(ValueError, match="03.slot"):
        ex.question("no.such.id")


@pytest.mark.parametrize("qid", sorted(questions.QUESTIONS))
def test_every_question_by_id_folds_an_answer_not_stored_in_plain_text(qid):
    text, stored = questions.QUESTIONS[qid]
    answer = questions.decode(stored)
    assert answer.strip() and questions.encode(answer) == stored
    q = ex.question(qid)
    assert q.text == text and q.answer == answer and answer not in repr(q)
    assert "<details>" in q._repr_html_()
    shown = ex.question(qid, show_answer=False)._repr_html_()
    assert "<details>" not in shown and questions.decode(stored)[:20] not in shown
    # the source files never hold the answer in plain text (nor its first words)
    assert answer[:30] not in (REPO / "mistral_lab" / "exercises" / "questions.py").read_text(encoding="utf-8")


def test_notebooks_name_questions_by_id_and_show_no_solution():
    import json
    used = set()
    for nb in sorted((REPO / "notebooks").glob("0[1-6]_*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        source = "\n".join("".join(c["source"]) for c in cells)
        found = re.findall(r"ex\.question\(\s*\"([\w.]+)\"\s*\)", source)
        assert found, f"{nb.name}: no ex.question(id)"
        used.update(found)
        assert "ex.question(" not in re.sub(r"ex\.question\(\s*\"[\w.]+\"\s*\)", "", source), nb.name
        for _, stored in questions.QUESTIONS.values():
            assert questions.decode(stored)[:30] not in source, nb.name
        assert "solutions.py" not in source, nb.name
    assert used == set(questions.QUESTIONS)


def test_no_file_under_notebooks_holds_a_solution():
    """What scripts/lab's file browser reaches (notebooks/) never shows a reference solution."""
    import ast
    text = (REPO / "course" / "solutions.py").read_text(encoding="utf-8")
    lines = text.splitlines()
    bodies = [lines[n.body[-1].lineno - 1].split("  #")[0].strip()  # each solution's last line, no comment
              for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)]
    assert len(bodies) == len(CHECKS)
    for f in (REPO / "notebooks").rglob("*"):
        if f.is_file():
            content = f.read_text(encoding="utf-8", errors="replace")
            for line in bodies:
                assert line not in content, (f, line)
