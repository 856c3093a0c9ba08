"""The figures saved in the notebooks read right: every log axis has 1-2-5 ticks with labels
(viz.axes.log_axis, never plotly's "100 5 2 10 5 2 1"), and no annotation on a log axis sits
outside the axis's data (plotly reads an annotation's x on a log axis as an exponent: a label
meant for x = 63 at raw 63 stretches the axis to 10^63)."""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PLOTLY = "application/vnd.plotly.v1+json"


def _values(v) -> list[float]:
    if isinstance(v, dict) and "bdata" in v:  # plotly's typed arrays
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).astype(float).ravel().tolist()
    if isinstance(v, list):
        flat = []
        for e in v:
            flat += _values(e) if isinstance(e, (list, dict)) else ([float(e)] if isinstance(e, (int, float)) else [])
        return flat
    return []


def _figures(nb_path: Path):
    nb = json.loads(nb_path.read_text())
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            fig = out.get("data", {}).get(PLOTLY)
            if fig:
                yield i, fig


def _axis_key(ref: str, letter: str) -> str:  # "x2" -> "xaxis2", "x" -> "xaxis"
    return f"{letter}axis{ref[1:]}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_log_axes_have_readable_ticks_and_annotations_inside(nb):
    bad, figures = [], 0
    for cell, fig in _figures(nb):
        figures += 1
        layout = fig.get("layout", {})
        for key, axis in layout.items():
            if not (key.startswith(("xaxis", "yaxis")) and isinstance(axis, dict) and axis.get("type") == "log"):
                continue
            if not axis.get("tickvals") or len(axis.get("ticktext", [])) != len(axis["tickvals"]):
                bad.append(f"cell {cell}: {key} is a log axis without 1-2-5 ticks (viz.axes.log_axis)")
            letter = key[0]
            ref = letter + key[5:]  # "xaxis2" -> "x2"
            data = [v for tr in fig.get("data", []) if tr.get(f"{letter}axis", letter) == ref
                    for v in _values(tr.get(letter)) if v > 0]
            if not data:
                continue
            lo, hi = math.log10(min(data)), math.log10(max(data))
            for a in layout.get("annotations", []):
                if a.get(f"{letter}ref") == ref and isinstance(a.get(letter), (int, float)):
                    if not lo - 1 <= a[letter] <= hi + 1:
                        bad.append(f"cell {cell}: annotation {a.get('text')!r} at {letter} = {a[letter]} on log "
                                   f"{key} whose data spans 10^{lo:.1f}..10^{hi:.1f} (use viz.axes.mark)")
    assert not bad, f"{nb.name}:\n" + "\n".join(bad)
    if nb.name[:2] not in ("08",):
        assert figures, f"{nb.name}: no saved figure"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_saved_state_reads_as_finished(nb):
    """No stderr box (it reads as an error), no progress bar widget frozen at its first value:
    progress is a line of text on stdout (experiments.progress) that ends finished."""
    book = json.loads(nb.read_text())
    stderr = [i for i, c in enumerate(book["cells"]) for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not stderr, f"{nb.name}: stderr output in cells {stderr}"
    state = book["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    bars = [w for w in state.values() if w["model_name"] in ("FloatProgressModel", "IntProgressModel")]
    assert not bars, f"{nb.name}: a progress bar widget saved in the notebook"
