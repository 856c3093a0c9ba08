"""Committed results cannot go stale: one schema, untouched by hand, and re-measured.

Every benchmarks/*.json is written by files.write_result: benchmark, date, commit, dirty,
command, environment, then the body, then a digest of all of it -- a number edited by hand
no longer matches. A result that makes a claim about the shipped weights carries a `slice`:
a few seconds of the same measurement (and the weights' fingerprints), which this test
measures again; when the code or the weights have moved it beyond the tolerance, the
result is stale and must be re-run with the command it records.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mistral_lab import files
from mistral_lab.bench import classroom, cpu_decode, perplexity_memory, thread_policy, throughput
from mistral_lab.experiments import context_use

ROOT = Path(__file__).resolve().parent.parent
RESULTS = sorted((ROOT / "benchmarks").glob("*.json"))
# benchmark name -> the function that re-measures its slice
SLICES = {"context-use": context_use.slice_check, "cpu-decode": cpu_decode.slice_check,
          "classroom": classroom.slice_check, "classroom-hub": classroom.slice_check, "perplexity-memory": perplexity_memory.slice_check,
          "threads": thread_policy.slice_check, "throughput": throughput.slice_check}
# Measured before results carried a slice, and not about today's weights or code: each is
# re-measured with the final shipped weights, then leaves this list.
LEGACY = {"h100_attention.json", "h100_decode.json"}  # GPU-only: scripts/gpu re-measures them
TOLERANCE = 2e-3  # thread counts change float sums in the last digits; a real change moves more


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_one_schema_and_not_edited_by_hand(path):
    doc = json.loads(path.read_text())
    assert list(doc)[:6] == list(files.RESULT_KEYS[:6]), f"{path.name}: header {list(doc)[:6]}"
    assert doc["command"].startswith("python -m mistral_lab"), doc["command"]
    assert doc["commit"] and len(doc["commit"]) == 40
    assert doc["digest"] == files.digest(doc), f"{path.name} was edited after it was written: re-run {doc['command']}"


def _close(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE), f"{where}: committed {a}, measured now {b}"
    else:
        assert a == b, f"{where}: committed {a!r}, measured now {b!r}"


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_slice_measured_again(path):
    doc = json.loads(path.read_text())
    if path.name in LEGACY:
        assert "legacy" in doc and "slice" not in doc
        pytest.skip(f"{path.name}: measured before slices; re-measured with the final weights")
    assert doc["benchmark"] in SLICES or doc["environment"].get("gpu"), f"{path.name}: no slice to re-measure"
    if doc["benchmark"] in SLICES:
        _close(doc["slice"], json.loads(json.dumps(SLICES[doc["benchmark"]]())), f"{path.name}: slice")


def test_the_digest_catches_a_hand_edit(tmp_path):
    doc = files.write_result(tmp_path / "r.json", "cpu-decode", {"results": {"tokens_per_s": 652.0}},
                             command="python -m mistral_lab bench cpu-decode")
    assert doc["commit"] is None or len(doc["commit"]) == 40
    edited = json.loads((tmp_path / "r.json").read_text())
    edited["results"]["tokens_per_s"] = 700.0
    assert files.digest(edited) != edited["digest"]
    with pytest.raises(ValueError, match="may not set"):
        files.result("x", {"commit": "mine"}, command="python -m mistral_lab x")
