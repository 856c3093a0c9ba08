"""A class on a real JupyterHub (jupyter/jupyterhub_config.py, driven by mistral_lab.bench.hub):
the hub, its configurable-http-proxy and four students' single-user servers, each a system
user with a private home. Through the hub's REST API the users' servers are started;
through the proxy a kernel is started in each student's own server and notebook 03 (real
generation on the shipped model) runs in all four at once, over the kernel's websocket as
JupyterLab runs it. One student's copy has a broken cell: that student sees the error, the
others finish with the same checked facts. Students cannot read or write each other's
files. Every kernel maps the one copy of the weights the hub wrote. Stopping the hub leaves
no process behind.

Needs root (system users, setuid spawning), JupyterHub and the proxy from npm (scripts/setup
test installs both); skipped otherwise, saying which. Loopback only; bounded in time.
"""
from __future__ import annotations

import os
import pwd

import pytest

from mistral_lab.bench import hub

N_USERS = 4
BROKEN = "raise RuntimeError('a broken cell, on purpose')"
DEADLINE_S = 420  # four runs of 03 at once on two cores take about 20 s each here

if hub.unavailable():
    pytest.skip(hub.unavailable(), allow_module_level=True)


@pytest.fixture(scope="module")
def klass():
    with hub.Class(N_USERS) as k:
        yield k


def test_four_students_run_notebook_03_at_once_each_in_their_own_kernel(klass):
    users = klass.users
    plans = {u: hub.notebook_cells(hub.NOTEBOOK_03, broken=BROKEN if u == users[-1] else None) for u in users}
    results = klass.run_all(plans, timeout=DEADLINE_S)
    good = users[:-1]
    for u in good:
        assert results[u]["error"] is None, f"{u}: {results[u]['error']}"
        assert len(results[u]["outputs"]) == len(plans[u]), f"{u} stopped early"
    checks = [i for i, c in enumerate(plans[good[0]]) if "✔ check" in c]
    assert checks, "notebook 03 has no checked facts"
    for i in checks:  # the same facts, to the character, in every student's own kernel
        assert len({results[u]["outputs"][i] for u in good}) == 1, f"check cell {i} differs between students"
    bad = results[users[-1]]
    assert bad["error"] == "RuntimeError: a broken cell, on purpose", bad["error"]
    assert len(bad["outputs"]) == 4  # stopped at the broken cell (the 4th), as Run All stops
    peaks = klass.peaks()
    assert all(p["kernel_mib"] and p["server_mib"] for p in peaks.values()), peaks  # each has its own
    # ... and one copy of the weights for all: the file the hub wrote, mapped by every kernel
    assert len(list(klass.weights.glob("*.safetensors"))) == 1, "the hub wrote no shared weights"
    assert all(p["kernel_maps_shared_weights"] for p in peaks.values()), peaks


def test_students_cannot_read_or_write_each_others_files(klass):
    a, b = klass.users[:2]
    home_b = klass.home(b)
    notebook = home_b / "mistral_lab_notebooks" / hub.NOTEBOOK_03.name
    assert notebook.is_file(), "the notebooks were not placed in the home"
    assert oct(home_b.stat().st_mode & 0o777) == "0o700"
    probe = (f"import os, pathlib\nfor what, f in [('read', lambda: pathlib.Path({str(notebook)!r}).read_bytes()), "
             f"('write', lambda: pathlib.Path({str(home_b / 'from_a.txt')!r}).write_text('x')), "
             f"('list', lambda: list(pathlib.Path({str(home_b)!r}).iterdir()))]:\n"
             f"    try:\n        f(); print(what, 'ALLOWED')\n    except PermissionError:\n        print(what, 'denied')\n"
             f"print('uid', os.getuid())")
    r = klass.run_all({a: [probe]})[a]
    assert r["error"] is None, r["error"]
    lines = r["outputs"][0].split("\n")
    assert lines[:3] == ["read denied", "write denied", "list denied"], r["outputs"][0]
    assert lines[3] == f"uid {pwd.getpwnam(a).pw_uid}"  # the kernel runs as the student, not as root
    assert not (home_b / "from_a.txt").exists()
    assert os.geteuid() == 0  # (the test itself is root: the denials above are the students')


def test_zz_stopping_the_hub_leaves_no_process_behind(klass):
    """Named to run last in this module: stop the hub the way a teacher does (SIGTERM)."""
    left = klass.stop_hub()
    assert not left, "processes left after the hub stopped:\n" + "\n".join(f"{p} {c[:120]}" for p, c in left.items())
