"""The notebooks as slides (jupyterlab-rise): every section heading starts a slide, every
figure has a subslide of its own, and a lecture skips the papermill parameters cell and the
checked-fact cells. Read from the committed notebooks; the browser test shows two slides."""
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
FIGURES = ("application/vnd.plotly.v1+json", "application/vnd.jupyter.widget-view+json")


def expected(cell) -> str | None:
    src = "".join(cell["source"])
    if cell["cell_type"] == "markdown" and src.startswith(("# ", "## ")):
        return "slide"
    if cell["cell_type"] == "code":
        if src.startswith("# parameters") or "# ✔ check" in src:
            return "skip"
        if any(k in o.get("data", {}) for o in cell.get("outputs", []) for k in FIGURES):
            return "subslide"
    return None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_slide_metadata_follows_the_sections(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["metadata"].get("rise", {}).get("scroll") is True, "long slides must scroll (metadata.rise.scroll)"
    wrong = [(i, expected(c), c.get("metadata", {}).get("slideshow", {}).get("slide_type"))
             for i, c in enumerate(nb["cells"])
             if expected(c) != c.get("metadata", {}).get("slideshow", {}).get("slide_type")]
    assert not wrong, f"{path.name}: cells whose slide type is not the rule's (cell, expected, found): {wrong}"
    assert "".join(nb["cells"][0]["source"]).startswith("# ") and expected(nb["cells"][0]) == "slide"
