"""Digest of the deterministic outputs of notebooks, to prove a refactor changed no result.

    python scripts/notebook_digest.py notebooks/*.ipynb > before.json   # committed outputs
    (re-execute the notebooks)
    python scripts/notebook_digest.py notebooks/*.ipynb --compare before.json

Per code cell it keeps: text/plain results; printed text without the lines that carry
timings (tok/s, ms, " s") or memory readings of the process; and the numeric data of
every plotly trace (x, y, z, values), without layout, labels or random ids -- so a
figure restyled (colours, escaped labels, titles) still digests the same when its
numbers are. Prints one line per cell whose digest differs.
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import re
import sys
from pathlib import Path

TIMING = re.compile(r"tok/s|tokens/s|\bms\b|\d\s*s\b|seconds|RSS|peak|elapsed", re.I)


def _numbers(trace: dict) -> dict:
    keep = {}
    for key in ("x", "y", "z", "values"):
        v = trace.get(key)
        if isinstance(v, dict):  # plotly's typed arrays: {"dtype": ..., "bdata": ...}
            keep[key] = v
        elif isinstance(v, list) and v and all(isinstance(e, (int, float, list)) for e in v):
            keep[key] = v
    return keep


def cell_digests(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        parts = []
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream":
                text = "".join(o["text"])
                parts.append("\n".join(line for line in text.splitlines() if not TIMING.search(line)))
            elif o["output_type"] in ("execute_result", "display_data"):
                data = o.get("data", {})
                if "application/vnd.plotly.v1+json" in data:
                    fig = data["application/vnd.plotly.v1+json"]
                    parts.append(json.dumps([_numbers(t) for t in fig.get("data", [])], sort_keys=True))
                elif "text/plain" in data and "application/vnd.jupyter.widget-view+json" not in data:
                    parts.append("".join(data["text/plain"]))
            elif o["output_type"] == "error":
                parts.append("ERROR " + o.get("ename", ""))
        out.append(hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--compare", help="a digest JSON written earlier by this script")
    args = ap.parse_args()
    now = {Path(p).name: cell_digests(Path(p)) for p in args.notebooks}
    if not args.compare:
        print(json.dumps(now, indent=1))
        return 0
    before = json.loads(Path(args.compare).read_text())
    changed = 0
    for name, cells in now.items():
        old = before.get(name)
        if old is None:
            print(f"{name}: new notebook")
            continue
        # aligned, so that a cell removed or added does not make every later cell "differ"
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=cells, autojunk=False).get_opcodes():
            if op == "equal":
                continue
            changed += max(i2 - i1, j2 - j1)
            what = {"replace": "differs", "delete": "removed", "insert": "added"}[op]
            print(f"{name}: code cells {i1}-{i2 - 1} before, {j1}-{j2 - 1} now: {what}")
    print(f"{changed} code cells differ", file=sys.stderr)
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
