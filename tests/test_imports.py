"""The package's imports go one way: down the layers of docs/ARCHITECTURE.md, no circles.

Read from the source (ast), not by importing: every `import` and `from ... import` of
every module, at module level or inside a function. The layer table is the one in
docs/ARCHITECTURE.md ("## Layers"), so the page and the code cannot disagree.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mistral_lab"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
# Packages a function may import lazily, with a `# lazy: why` comment: optional ones
# (no macOS/Windows wheels, test/bench-only, GPU-only) and heavy ones needed by one call.
LAZY_OK = {"triton", "transformers", "mistral_common"}


def modules() -> dict[str, tuple[Path, bool]]:
    """'mistral_lab.x.y' -> (file, is a package's __init__)."""
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


MODULES = modules()


def targets(module: str, is_pkg: bool, node) -> list[str]:
    """The mistral_lab modules an import statement imports."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "mistral_lab"]
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "mistral_lab":
        return []
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]


def imports() -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, inside a function) for every internal import."""
    out = []
    for module, (file, is_pkg) in MODULES.items():
        tree = ast.parse(file.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in targets(module, is_pkg, node):
                    if t != module:
                        out.append((module, t, node.lineno, id(node) not in top))
    return out


def unit(module: str) -> str:
    """What a layer holds: a top-level module ('cache'), a subpackage ('engines'), or the package."""
    parts = module.split(".")[1:]
    return parts[0] if parts else "mistral_lab"


def layers() -> dict[str, int]:
    """unit -> layer number, from the table under "## Layers" in docs/ARCHITECTURE.md."""
    text = DOC.read_text(encoding="utf-8").split("## Layers", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            for name in re.findall(r"`([\w.]+)`", cells[-1]):
                out[name] = int(cells[0])
    return out


def test_every_module_has_a_layer():
    table = layers()
    missing = sorted({unit(m) for m in MODULES} - set(table))
    assert not missing, f"units without a layer in docs/ARCHITECTURE.md's table: {missing}"
    stale = sorted(set(table) - {unit(m) for m in MODULES})
    assert not stale, f"docs/ARCHITECTURE.md's layer table names units that do not exist: {stale}"


def test_imports_only_go_down():
    table = layers()
    upward = []
    for a, b, line, _ in imports():
        ua, ub = unit(a), unit(b)
        if ua == ub:
            continue  # inside one subpackage: free, but no circle (below)
        if table[ub] >= table[ua]:
            upward.append(f"{a} (layer {table[ua]}) imports {b} (layer {table[ub]}), line {line}")
    assert not upward, "imports that do not go down:\n" + "\n".join(upward)


def test_no_import_circles():
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in imports():
        graph.setdefault(a, set()).add(b)
    seen, stack, circles = set(), [], []

    def visit(m):
        if m in stack:
            circles.append(" -> ".join(stack[stack.index(m):] + [m]))
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            visit(n)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not circles, "import circles:\n" + "\n".join(circles)


def _lazy_imports():
    """(module, line, what, marked) for every import inside a function body."""
    out = []
    for module, (file, _) in MODULES.items():
        lines = file.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                name = node.names[0].name if isinstance(node, ast.Import) else ("." * node.level + (node.module or ""))
                above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
                marked = "lazy:" in lines[node.lineno - 1] or (above.startswith("#") and "lazy:" in above) \
                    or any("lazy:" in lines[i] for i in range(node.lineno - 1, getattr(node, "end_lineno", node.lineno)))
                if not marked and above.startswith(("from ", "import ")):  # a run of lazy imports: one mark above
                    i = node.lineno - 2
                    while i > 0 and lines[i].strip().startswith(("from ", "import ")):
                        i -= 1
                    marked = lines[i].strip().startswith("#") and "lazy:" in lines[i]
                out.append((module, node.lineno, name, marked))
    return out


def test_lazy_imports_are_few_and_say_why():
    bad = [f"{m}:{line} imports {what} inside a function" + ("" if marked else " without a `# lazy: why` comment")
           for m, line, what, marked in _lazy_imports()
           if not marked or not (what.startswith(".") or what.split(".")[0] in LAZY_OK)]
    assert not bad, "\n".join(bad)


def test_the_test_sees_an_upward_import(tmp_path):
    """The layer check itself: an import of a higher layer is caught (cache importing viz)."""
    table = layers()
    assert table["viz"] > table["cache"]
    assert unit("mistral_lab.engines.fast") == "engines" and unit("mistral_lab.cache") == "cache"
    node = ast.parse("from .viz import escape_label").body[0]
    assert targets("mistral_lab.cache", False, node) == ["mistral_lab.viz.escape_label"
                                                         if "mistral_lab.viz.escape_label" in MODULES else "mistral_lab.viz"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if MODULES[m][1] is False))
def test_long_files_say_why(module):
    """A file over ~300 lines says at its top why it is one file."""
    file = MODULES[module][0]
    lines = file.read_text(encoding="utf-8").splitlines()
    if len(lines) <= 320:
        return
    head = "\n".join(lines[:40]).lower()
    assert "one file" in head or "why this file is long" in head, \
        f"{file.relative_to(ROOT)} has {len(lines)} lines: split it, or say at its top why it is one file"


def test_module_map_lists_every_module():
    """docs/ARCHITECTURE.md's module map names every module: a top-level one as `name.py`,
    one inside a subpackage by its name in that package's row."""
    text = DOC.read_text(encoding="utf-8").split("## Module map", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) > 2:
            for name in re.findall(r"`([\w.]+?)/?`", cells[1]):
                rows[name.removesuffix(".py")] = cells[2]
    missing = []
    for module in MODULES:
        parts = module.split(".")[1:]
        if not parts or parts[-1] == "__main__":
            continue
        if len(parts) == 1:
            if parts[0] not in rows:
                missing.append(module)
        elif parts[0] not in rows or f"`{parts[-1]}`" not in rows[parts[0]]:
            missing.append(module)
    assert not missing, "docs/ARCHITECTURE.md's module map does not name: " + ", ".join(missing)
