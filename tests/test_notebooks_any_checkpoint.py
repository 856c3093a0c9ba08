"""Every notebook on another checkpoint, the way an engineer points one at their weights:

    papermill notebooks/03_rolling_buffer.ipynb out.ipynb -p model /path/to/checkpoint

Two checkpoints of tests/second_checkpoints.py: random weights of another shape than the
shipped model (another window, layer count, head and K/V-head count, the Hugging Face
layout) and the same without a window (`sliding_window: null`). Every notebook must run top
to bottom on both -- every architecture check holds for any weights, sizes follow the
config, the shipped model's facts are checked only where it is loaded -- and a bad
parameter fails in the loading cell in one line. The committed notebooks are never written.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("ipykernel")

from second_checkpoints import NO_WINDOW, OTHER, write  # noqa: E402

from mistral_lab.masks import receptive_field  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 120
# A whole notebook on the small second checkpoint, kernel start included. The shipped model's
# notebooks take 5-60 s under nbval on a 2-vCPU host; these are smaller models.
RUN_BOUND_S = 150


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {"other": write(root / "other", OTHER), "no_window": write(root / "no_window", NO_WINDOW)}


NOTHING_WINDOWED = {"08"}  # the chat format: no section depends on the window
NO_WINDOW_SAID = re.compile(r"no window|without a window|full attention|full causal", re.I)
KINDS = ("other", "no_window")
# Two runs at a time: each kernel computes on one thread, so the 20 runs take about half the
# wall time on the 2-core CI host (and each run's bound still holds with a neighbour).
AT_ONCE = 2


def _text(output: dict) -> str:  # a saved notebook keeps multi-line text as a list of lines
    data = output.get("data", {})
    return "".join(output.get("text", "")) + "".join(data.get("text/markdown", "")) + "".join(data.get("text/plain", ""))


def _code(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1",  # the kernel imports this checkout's package, whatever is installed
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for name in ("MISTRAL_LAB_MODEL", "MISTRAL_LAB_DEVICE", "MISTRAL_LAB_DTYPE"):
        env.pop(name, None)
    return env


def _papermill(src: Path, out: Path, **parameters) -> subprocess.Popen:
    """papermill's own command line, as an engineer runs it; returns the running process, its
    output going to OUT.log (a file, not a pipe nobody reads while it runs)."""
    argv = [sys.executable, "-m", "papermill", str(src), str(out), "-k", "python3", "--cwd", str(src.parent),
            "--no-progress-bar", "--execution-timeout", str(CELL_TIMEOUT_S)]
    for name, value in parameters.items():
        argv += ["-p", name, str(value)]
    with open(out.with_suffix(".log"), "w") as log:
        return subprocess.Popen(argv, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, out: Path, timeout: float) -> str:
    """Wait for the run (killed past `timeout`); papermill's output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return out.with_suffix(".log").read_text()


@pytest.fixture(scope="module")
def runs(checkpoints, tmp_path_factory):
    """(notebook, kind) -> (seconds, executed notebook, papermill's output): all 20 runs, AT_ONCE at a time."""
    root = tmp_path_factory.mktemp("runs")
    todo = [(src, kind) for src in NOTEBOOKS for kind in KINDS]
    running, done = {}, {}
    try:
        while todo or running:
            while todo and len(running) < AT_ONCE:
                src, kind = todo.pop(0)
                out = root / f"{kind}_{src.name}"
                running[src.name, kind] = (time.monotonic(), out, _papermill(src, out, model=checkpoints[kind]))
            for key, (t0, out, proc) in list(running.items()):
                if proc.poll() is not None or time.monotonic() - t0 > 2 * RUN_BOUND_S:
                    log = _finish(proc, out, timeout=0)
                    nb = json.loads(out.read_text()) if out.is_file() else None
                    done[key] = (time.monotonic() - t0, nb, log)
                    del running[key]
            time.sleep(0.2)
    finally:
        for _, out, proc in running.values():
            _finish(proc, out, timeout=0)
    return done


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("src", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_notebook_runs_on_another_checkpoint(src, kind, runs):
    seconds, nb, log = runs[src.name, kind]
    assert nb is not None, f"{src.name} on {kind}: papermill wrote nothing:\n{log[-2000:]}"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{src.name} on {kind}: {errors[0]['ename']}: {errors[0]['evalue']}" if errors else ""
    assert all(c["execution_count"] for c in code), f"a cell did not run:\n{log[-2000:]}"
    assert seconds < RUN_BOUND_S, f"{src.name} on {kind}: {seconds:.0f} s, bound {RUN_BOUND_S} s"
    # the model the notebook ran on is the one given, and it says so
    shown = "".join("".join(o.get("data", {}).get("text/plain", "")) for c in code for o in c["outputs"] if "data" in o)
    args = NO_WINDOW if kind == "no_window" else OTHER
    assert f"dim {args.dim}" in shown and f"{args.n_layers} layers" in shown, f"{src.name}: the model is not shown"
    if kind == "no_window" and src.name[:2] not in NOTHING_WINDOWED:  # beyond the model's own description, the notebook says what having no window changes
        said = [_text(o) for c in code for o in c["outputs"]]
        assert any(NO_WINDOW_SAID.search(t) for t in said if "K/V heads" not in t), f"{src.name}: silent about no window"


def test_bad_parameter_fails_in_the_loading_cell_in_one_line(tmp_path):
    src = REPO / "notebooks" / "03_rolling_buffer.ipynb"
    out = tmp_path / "out.ipynb"
    log = _finish(_papermill(src, out, model=tmp_path / "no-such-folder"), out, timeout=RUN_BOUND_S)
    assert "NotebookError" in log and str(tmp_path / "no-such-folder") in log, log[-2000:]
    out = json.loads(out.read_text())
    failed = [c for c in out["cells"] if any(o["output_type"] == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "open_model(" in "".join(failed[0]["source"])
    (error,) = [o for o in failed[0]["outputs"] if o["output_type"] == "error"]
    assert error["ename"] == "NotebookError" and str(tmp_path / "no-such-folder") in error["evalue"]
    assert len(error["traceback"]) == 1  # the one line, not a traceback


@pytest.mark.parametrize("src", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_one_parameters_cell_and_one_way_to_the_model(src):
    nb = json.loads(src.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{src.name}: one cell tagged parameters"
    params = "".join(tagged[0]["source"])
    assert re.search(r"^model = None\b", params, re.M) and 'device = "auto"' in params and 'dtype = "auto"' in params
    code = _code(nb)
    assert sum(s.count("open_model(model, device, dtype)") for s in code) == 1, f"{src.name}: open the model once"
    # the shipped model is reached only through the parameter; other weights only by their asset name
    loads = [m for s in code for m in re.findall(r"ml\.load\(([^)]*)\)", s)]
    assert all(m.startswith("asset(") for m in loads), f"{src.name}: ml.load({loads}) besides open_model"



def test_no_shipped_model_numbers_typed_into_markdown():
    """Prose about the model comes from the run (lab.say); a number of the shipped model's
    config typed into a Markdown cell would be wrong on any other checkpoint."""
    from mistral_lab.checkpoints.loading import locate, read_config

    _, a, _ = read_config(*locate(None))
    typed = [f"W = {a.sliding_window}`", f"W = {a.sliding_window} ", f"= {receptive_field(a.n_layers, a.sliding_window)}",
             f"{a.n_layers} layers"]
    bad = []
    for src in NOTEBOOKS:
        nb = json.loads(src.read_text())
        for c in nb["cells"]:
            text = "".join(c["source"])
            if c["cell_type"] == "markdown" and "## Exercises" not in text:
                bad += [f"{src.name}: {t!r}" for t in typed if t in text]
    assert not bad, "\n".join(bad)
