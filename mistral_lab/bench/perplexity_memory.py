"""Peak memory of `python -m mistral_lab perplexity` on a big file: it must not grow with the file.

    python -m mistral_lab bench perplexity-memory --mb 1 10 --out benchmarks/perplexity_memory.json

Each size runs the CLI in a fresh interpreter (its own peak RSS) on a generated file:
assets/heldout.txt repeated to that size.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import files
from ..checkpoints import load, load_tokenizer
from ..data.assets import ASSETS, asset, fingerprint, heldout_text
from ..experiments.perplexity import file_perplexity


def bench_memory(size_mb: float, workdir: Path) -> dict:
    """Peak RSS and wall time of `python -m mistral_lab perplexity` on a generated file."""
    root = ASSETS.parent
    seed = heldout_text()
    target = int(size_mb * 1e6)
    text = (seed * (target // len(seed) + 1))[:target]
    text = text[: text.rfind("\n") + 1]
    sample = workdir / f"perplexity_{size_mb:g}mb.txt"
    files.atomic_write_text(sample, text)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    t0 = time.perf_counter()
    # The CLI itself, in a fresh interpreter that reports its own peak RSS as it exits.
    code = ("import resource, sys; from mistral_lab.__main__ import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "perplexity", str(sample)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise ValueError(f"perplexity failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    result = json.loads(r.stdout)
    peak_kib = int(r.stderr.rsplit("MAXRSS_KIB", 1)[1].split()[0])  # Linux: KiB
    report = {"model": "assets/model (shipped)",
              "file_bytes": sample.stat().st_size, "tokens": result["tokens"], "perplexity": result["perplexity"],
              "peak_rss_mib": round(peak_kib / 1024, 1), "wall_s": round(wall, 1),
              "command": "python -m mistral_lab perplexity FILE (default chunk = W)"}
    sample.unlink()
    return report


def measure(sizes_mb=(10.0,)) -> dict:
    """One run per size, each in its own process (so each peak RSS is its own)."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in sizes_mb:
            runs.append(bench_memory(mb, Path(tmp)))
            print(json.dumps(runs[-1]), file=sys.stderr)
    return {"runs": runs, "slice": slice_check()}


def slice_check() -> dict:
    """What tests/test_results.py re-measures: the perplexity of the first 4,096 tokens of
    the held-out text by the same function the CLI runs, and the weights' fingerprint."""
    r = file_perplexity(load(), load_tokenizer(), asset("heldout.txt"), max_tokens=4096, progress=False)
    return {"perplexity_4096": r["perplexity"], "weights": {"model": fingerprint("model")}}
