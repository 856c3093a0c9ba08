"""The exercises as an nbgrader course, built from the notebooks: one source of truth.

    python -m mistral_lab.exercises.course            # -> course/source/<NN_name>/<NN_name>.ipynb
    python -m mistral_lab.exercises.course --whole    # the whole lesson, not only its exercises

For each notebook 01-06 the builder takes its "## Exercises" section (the last one; with
--whole, every cell) from `notebooks/` and the reference solutions from the teacher's
`course/solutions.py`, and writes nbgrader's source version of it:

- the cell `def name(...): ... a first try` + `ex.check_name(name)` is split in two: the
  function becomes an autograded answer cell (`solution: true`), its body the reference
  solution between `### BEGIN SOLUTION` / `### END SOLUTION` (the notebook's signature and
  docstring kept); the check becomes a locked autograder test cell worth POINTS,
  `ex.check_name(name, raise_on_fail=True)`, so the checker is the grading logic and its
  AssertionError (case, expected, got, hint) is the student's feedback;
- a "predict, then run" cell (`ex.question(id)`) becomes a read-only cell;
- everything else is copied, outputs cleared.

Nothing here is edited by hand: change a notebook or a solution, build again. nbgrader's
own commands do the rest (generate_assignment, autograde, generate_feedback; see
docs/TEACHING.md). The builder needs no nbgrader itself.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

from ..files import atomic_write_text
from . import EXERCISES

CHECKOUT = Path(__file__).resolve().parents[2]
POINTS = 1  # per exercise (per autograder test cell)
SCHEMA = 3  # nbgrader's cell metadata schema
_CHECK = re.compile(r"^ex\.(check_\w+)\((\w+)\)\s*$", re.M)
_FIRST_TRY = ("The first version in each cell is a typical wrong answer: run the check, read the hint, fix it.",
              "Here each function is yours to write, where it says `YOUR CODE HERE`; the check below it is what "
              "the autograder runs, and its message is your feedback.")
CONFIG = '''# nbgrader's configuration for the mistral_lab course (written once by mistral_lab.exercises.course;
# edit it freely, the builder never overwrites it).
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "mistral_lab"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}
c.ExecutePreprocessor.timeout = 120  # seconds per cell: an exercise notebook runs in a few seconds
'''


class CourseError(ValueError):
    """A notebook or a solution the builder cannot turn into an assignment (one line)."""


def _meta(grade_id: str, *, solution=False, grade=False, locked=False, points=None) -> dict:
    m = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": SCHEMA,
         "solution": solution, "task": False}
    if points is not None:
        m["points"] = points
    return m


def _lines(text: str) -> list[str]:
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _code(source: str, nbgrader: dict | None, cell_id: str) -> dict:
    cell = {"cell_type": "code", "execution_count": None, "id": cell_id, "metadata": {}, "outputs": [],
            "source": _lines(source)}
    if nbgrader:
        cell["metadata"]["nbgrader"] = nbgrader
    return cell


def solution_bodies(path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (parameter names, body source without the docstring) of each function in solutions.py."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    out = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:]
            if not body:
                raise CourseError(f"{path}: {node.name} has no body after its docstring")
            out[node.name] = ([a.arg for a in node.args.args], "\n".join(lines[body[0].lineno - 1:node.end_lineno]))
    return out


def _answer_cell(fn_source: str, name: str, solutions: dict, where: str) -> str:
    """The notebook's function with its body replaced by the solution between the markers."""
    tree = ast.parse(fn_source)
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if len(fns) != 1:
        raise CourseError(f"{where}: expected one `def {name}(...)` before ex.check_...({name})")
    fn = fns[0]
    if name not in solutions:
        raise CourseError(f"{where}: no solution `{name}` in course/solutions.py")
    params, body = solutions[name]
    if [a.arg for a in fn.args.args] != params:
        raise CourseError(f"{where}: {name}'s parameters {[a.arg for a in fn.args.args]} differ from the "
                          f"solution's {params}")
    lines = fn_source.splitlines()
    keep = fn.body[0].end_lineno if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) \
        else fn.body[0].lineno - 1  # through the docstring, or the def line(s)
    head = "\n".join(lines[:keep])
    return f"{head}\n    ### BEGIN SOLUTION\n{body}\n    ### END SOLUTION"


def assignment(notebook: Path, solutions: dict, *, whole: bool = False) -> dict:
    """The nbgrader source version of one notebook (a notebook dict)."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    cells = nb["cells"]
    starts = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
              and "".join(c["source"]).lstrip().startswith("## Exercises")]
    if not starts:
        raise CourseError(f"{notebook.name}: no '## Exercises' section")
    title = next((line.lstrip("# ").strip() for c in cells if c["cell_type"] == "markdown"
                  for line in "".join(c["source"]).splitlines() if line.startswith("# ")), notebook.stem)
    checkers = {checker.__name__: name for name, (checker, _) in EXERCISES.items()}
    out = [] if whole else [{"cell_type": "markdown", "id": "exercises-intro", "metadata": {}, "source": _lines(
        f"# Exercises: {title}\n\nThe exercises of `{notebook.name}`: read and run that notebook first.")}]
    exercises = questions = 0
    for i, c in enumerate(cells if whole else cells[starts[-1]:]):
        source = "".join(c["source"])
        cid = c.get("id") or f"cell-{i}"
        if c["cell_type"] != "code":
            new = {k: v for k, v in c.items() if k != "attachments"}
            new["metadata"], new["id"] = {}, cid
            new["source"] = _lines(source.replace(*_FIRST_TRY))
            out.append(new)
            continue
        checks = _CHECK.findall(source)
        if checks:
            if len(checks) != 1:
                raise CourseError(f"{notebook.name}, cell {i}: one ex.check_... per exercise cell")
            checker, name = checks[0]
            if checkers.get(checker) != name:
                raise CourseError(f"{notebook.name}, cell {i}: ex.{checker}({name}) is not an exercise of "
                                  f"mistral_lab.exercises.EXERCISES")
            fn_source = _CHECK.sub("", source).rstrip()
            out.append(_code(_answer_cell(fn_source, name, solutions, f"{notebook.name}, cell {i}"),
                             _meta(name, solution=True), cid))
            out.append(_code(f"# autograded ({POINTS} point): the checker's message is your feedback\n"
                             f"ex.{checker}({name}, raise_on_fail=True)",
                             _meta(f"check_{name}", grade=True, locked=True, points=POINTS), f"{cid}-check"))
            exercises += 1
        elif "ex.question(" in source:
            qid = re.findall(r'ex\.question\("([\w.]+)"\)', source)
            out.append(_code(source, _meta(f"question_{(qid or [str(i)])[0].replace('.', '_')}", locked=True), cid))
            questions += 1
        else:
            out.append(_code(source, None, cid))
    if not exercises:
        raise CourseError(f"{notebook.name}: its exercises section has no `ex.check_...(fn)` cell")
    meta = {k: nb["metadata"][k] for k in ("kernelspec", "language_info") if k in nb["metadata"]}
    return {"cells": out, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}


def build(root: Path | str | None = None, *, notebooks: Path | str | None = None,
          solutions: Path | str | None = None, whole: bool = False) -> list[Path]:
    """Write root/source/<NN_name>/<NN_name>.ipynb for notebooks 01-06 (and root/nbgrader_config.py
    if there is none); return the notebooks written."""
    root = Path(root) if root is not None else CHECKOUT / "course"
    notebooks = Path(notebooks) if notebooks is not None else CHECKOUT / "notebooks"
    solutions = Path(solutions) if solutions is not None else CHECKOUT / "course" / "solutions.py"
    if not solutions.is_file():
        raise CourseError(f"no reference solutions at {solutions} (the teacher's course/solutions.py)")
    bodies = solution_bodies(solutions)
    names = sorted({nb for _, nb in EXERCISES.values()})
    written = []
    for stem in names:
        path = notebooks / f"{stem}.ipynb"
        if not path.is_file():
            raise CourseError(f"no notebook {path}")
        folder = root / "source" / stem
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / path.name
        atomic_write_text(target, json.dumps(assignment(path, bodies, whole=whole), indent=1,
                                             ensure_ascii=False) + "\n")
        written.append(target)
    config = root / "nbgrader_config.py"
    if not config.exists():
        atomic_write_text(config, CONFIG)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mistral_lab.exercises.course", description=__doc__.split("\n")[0])
    p.add_argument("--root", help="the nbgrader course folder (default: course/ of the checkout)")
    p.add_argument("--notebooks", help="where the notebooks are (default: notebooks/ of the checkout)")
    p.add_argument("--solutions", help="the reference solutions (default: course/solutions.py)")
    p.add_argument("--whole", action="store_true", help="the whole lesson in each assignment, not only its exercises")
    a = p.parse_args(argv)
    try:
        written = build(a.root, notebooks=a.notebooks, solutions=a.solutions, whole=a.whole)
    except (CourseError, OSError, SyntaxError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
