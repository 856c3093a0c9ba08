"""scripts/ stay runnable where CI cannot run them (the GPU ones): the shell parses, and
every name a script imports from the package exists."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.parametrize("path", sorted(p for p in SCRIPTS.iterdir() if p.suffix == "" and p.is_file()),
                         ids=lambda p: p.name)
def test_shell_scripts_parse(path):
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path", sorted(SCRIPTS.glob("*.py")), ids=lambda p: p.name)
def test_python_scripts_import_what_exists(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mistral_lab":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{path.name}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mistral_lab":
                    importlib.import_module(alias.name)


def test_gpu_snippets_import_what_exists():
    """The Python that scripts/gpu runs inline (python3 -c / heredocs) names real modules."""
    text = (SCRIPTS / "gpu").read_text()
    for line in text.splitlines():
        if "from mistral_lab" in line:
            stmt = line[line.index("from mistral_lab"):].split(";")[0].strip().strip('"')
            mod, names = stmt.removeprefix("from ").split(" import ")
            module = importlib.import_module(mod)
            for name in names.split(","):
                assert hasattr(module, name.strip()), f"scripts/gpu: {mod} has no {name.strip()}"


def test_gpu_notebooks_script_on_the_cpu(tmp_path):
    """scripts/gpu_notebooks.py's CPU twin: one notebook on a small second checkpoint, the
    result in the one schema with the notebook's time and whether it finished."""
    import json
    import sys

    pytest.importorskip("papermill")
    sys.path.insert(0, str(SCRIPTS.parent / "tests"))
    from second_checkpoints import write

    model = write(tmp_path / "other")
    out = tmp_path / "notebooks.json"
    r = subprocess.run([sys.executable, str(SCRIPTS / "gpu_notebooks.py"), "--model", str(model), "--device", "cpu",
                        "--only", "08", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "notebooks" and doc["command"].startswith("python scripts/gpu_notebooks.py")
    (row,) = doc["rows"]
    assert row["notebook"].startswith("08_") and row["finished"] and row["seconds"] > 0 and row["gpu_peak_mib"] is None and row["kernel_peak_rss_mib"] > 100
