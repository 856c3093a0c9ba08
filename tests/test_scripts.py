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
