"""The exercises as an nbgrader course, round trip with the real nbgrader: build the source
version from notebooks/ and course/solutions.py, generate the student version (no solution
in it), submit a correct and a typical wrong answer (mistakes.py) for every exercise and a
syntax error for one, autograde, and check the scores and that the feedback carries the
checker's hint. Kernels run this checkout (PYTHONPATH); nbgrader's API runs in-process.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader", reason="nbgrader is not installed (scripts/setup test)")

from nbgrader.api import Gradebook  # noqa: E402
from nbgrader.apps import NbGraderAPI  # noqa: E402
from traitlets.config.loader import PyFileConfigLoader  # noqa: E402

from mistral_lab.exercises import EXERCISES, course, mistakes  # noqa: E402

# nbgrader 0.9.6's own session handling warns (SQLAlchemy 2); nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = course.solution_bodies(REPO / "course" / "solutions.py")
ASSIGNMENTS = sorted({nb for _, nb in EXERCISES.values()})
TYPO = "03_rolling_buffer"  # the assignment that one student submits with a syntax error


def _wrong(name: str):
    """The first typical wrong answer for an exercise, and its hint."""
    return mistakes.MISTAKES[name][0]


def _answer(name: str, good: bool) -> str:
    if good:
        params, body = SOLUTIONS[name]
        return f"def {name}({', '.join(params)}):\n{body}\n"
    wrong, _ = _wrong(name)
    return inspect.getsource(wrong) + f"\n\n{name} = {wrong.__name__}\n"


def _cells(nb: dict, **meta):
    return [c for c in nb["cells"] if all(c["metadata"].get("nbgrader", {}).get(k) == v for k, v in meta.items())]


def _ok(result: dict, what: str):
    assert result["success"], f"{what} failed:\n{result.get('error')}\n{result.get('log', '')[-3000:]}"


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    t0 = time.perf_counter()
    written = course.build(root)
    assert [p.parent.name for p in written] == ASSIGNMENTS
    mp = pytest.MonkeyPatch()
    # nbgrader calls `alembic` on PATH; kernels import this checkout
    mp.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.chdir(root)
    try:
        config = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()  # the builder's config
        config.CourseDirectory.root = str(root)
        api = NbGraderAPI(config=config)
        for a in ASSIGNMENTS:
            _ok(api.generate_assignment(a, force=True, create=True), f"generate_assignment {a}")
        for a in ASSIGNMENTS:
            release = json.loads((root / "release" / a / f"{a}.ipynb").read_text(encoding="utf-8"))
            for student, good in (("good", True), ("wrong", False)):
                nb = json.loads(json.dumps(release))
                for cell in _cells(nb, solution=True):
                    cell["source"] = _answer(cell["metadata"]["nbgrader"]["grade_id"], good)
                folder = root / "submitted" / student / a
                folder.mkdir(parents=True)
                (folder / f"{a}.ipynb").write_text(json.dumps(nb), encoding="utf-8")
        nb = json.loads((root / "release" / TYPO / f"{TYPO}.ipynb").read_text(encoding="utf-8"))
        _cells(nb, solution=True)[0]["source"] = "def rolling_slot(position, W)\n    return position % W, None\n"
        (root / "submitted" / "typo" / TYPO).mkdir(parents=True)
        (root / "submitted" / "typo" / TYPO / f"{TYPO}.ipynb").write_text(json.dumps(nb), encoding="utf-8")
        t1 = time.perf_counter()
        for a in ASSIGNMENTS:
            for student in ("good", "wrong"):
                _ok(api.autograde(a, student, force=True, create=True), f"autograde {a} {student}")
        _ok(api.autograde(TYPO, "typo", force=True, create=True), "autograde typo")
        t2 = time.perf_counter()
        for student in ("wrong", "typo"):
            _ok(api.generate_feedback(TYPO, student, force=True), f"generate_feedback {student}")
        print(f"\nnbgrader round trip: build + generate {t1 - t0:.1f} s, 13 autogrades {t2 - t1:.1f} s, "
              f"feedback {time.perf_counter() - t2:.1f} s")
        yield root
    finally:
        mp.undo()


def test_the_source_version_holds_the_solutions_between_markers(tmp_path):
    course.build(tmp_path)
    for a in ASSIGNMENTS:
        nb = json.loads((tmp_path / "source" / a / f"{a}.ipynb").read_text(encoding="utf-8"))
        answers = _cells(nb, solution=True)
        tests = _cells(nb, grade=True)
        names = sorted(n for n, (_, stem) in EXERCISES.items() if stem == a)
        assert sorted(c["metadata"]["nbgrader"]["grade_id"] for c in answers) == names
        assert sorted(c["metadata"]["nbgrader"]["grade_id"] for c in tests) == [f"check_{n}" for n in names]
        for c in answers:
            src = "".join(c["source"])
            name = c["metadata"]["nbgrader"]["grade_id"]
            assert "### BEGIN SOLUTION" in src and SOLUTIONS[name][1] in src and "a first try" not in src
        for c in tests:
            assert "raise_on_fail=True" in "".join(c["source"]) and c["metadata"]["nbgrader"]["points"] > 0
            assert c["metadata"]["nbgrader"]["locked"]
        assert _cells(nb, locked=True, grade=False), f"{a}: the question cell is read-only"
        assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
        nbformat.validate(nbformat.from_dict(nb))


def test_a_bad_notebook_is_one_line(tmp_path):
    (tmp_path / "nb").mkdir()
    assert course.main(["--root", str(tmp_path), "--notebooks", str(tmp_path / "nb")]) == 2


def test_the_student_version_has_no_solution(graded):
    for a in ASSIGNMENTS:
        text = (graded / "release" / a / f"{a}.ipynb").read_text(encoding="utf-8")
        assert "BEGIN SOLUTION" not in text and "YOUR CODE HERE" in text
        for name, (_, stem) in EXERCISES.items():
            if stem == a:
                assert SOLUTIONS[name][1].strip().splitlines()[-1].strip() not in text, (a, name)


def test_scores_full_for_the_right_answer_zero_for_the_typical_mistake(graded):
    with Gradebook(f"sqlite:///{graded / 'gradebook.db'}") as gb:
        for name, (_, a) in EXERCISES.items():
            good = gb.find_grade(f"check_{name}", a, a, "good")
            wrong = gb.find_grade(f"check_{name}", a, a, "wrong")
            assert good.max_score > 0 and good.score == good.max_score, (name, good.score)
            assert wrong.score == 0, (name, wrong.score)
        typo = gb.find_grade("check_rolling_slot", TYPO, TYPO, "typo")
        assert typo.score == 0


def test_the_wrong_answers_feedback_carries_the_checkers_hint(graded):
    for name, (_, a) in EXERCISES.items():
        nb = json.loads((graded / "autograded" / "wrong" / a / f"{a}.ipynb").read_text(encoding="utf-8"))
        (cell,) = _cells(nb, grade_id=f"check_{name}")
        errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
        assert errors and errors[0]["ename"] == "AssertionError", (name, cell["outputs"])
        _, hint = _wrong(name)
        assert "✗" in errors[0]["evalue"] and hint in errors[0]["evalue"], (name, errors[0]["evalue"])
        good = json.loads((graded / "autograded" / "good" / a / f"{a}.ipynb").read_text(encoding="utf-8"))
        (cell,) = _cells(good, grade_id=f"check_{name}")
        assert "✓" in json.dumps(cell["outputs"], ensure_ascii=False)
    html = (graded / "feedback" / "wrong" / TYPO / f"{TYPO}.html").read_text(encoding="utf-8")
    assert "slot = position never wraps" in html  # rolling_slot_no_wrap's hint, in the HTML the student gets


def test_a_syntax_error_scores_zero_with_a_readable_message(graded):
    nb = json.loads((graded / "autograded" / "typo" / TYPO / f"{TYPO}.ipynb").read_text(encoding="utf-8"))
    (answer,) = _cells(nb, solution=True)
    errors = [o for o in answer["outputs"] if o["output_type"] == "error"]
    assert errors and errors[0]["ename"] == "SyntaxError", answer["outputs"]
    html = (graded / "feedback" / "typo" / TYPO / f"{TYPO}.html").read_text(encoding="utf-8")
    assert "SyntaxError" in html
