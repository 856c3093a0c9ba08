"""The thread policy measured: every kind of work at one thread and at every usable CPU,
on an idle machine and beside one busy process.

    python -m mistral_lab bench threads --out benchmarks/threads.json

Kinds of work, on the shipped model: scoring (score() over 2,048 held-out tokens),
pre-fill (one 2,048-token prompt, chunks of W), decode (generate 128 greedy tokens) and a
training step (batch 8 x 256, AdamW, bf16 autocast as the recipe). Each runs in this
process with torch.set_num_threads(n) around it, the threads read back from torch; the
busy process is a Python spin loop pinned to nothing, as a classmate's kernel would be.
Round-robin: each repeat times every (kind, threads) once, so a drift of the machine hits
all alike; each figure is the median of the repeats.

The policy's default (threads.choose(kind=threads.kind_for(model))) must be no more than
10% slower than one thread beside a busy process, for every kind: tests/test_threads.py
reads this file and checks it.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from .. import threads
from ..checkpoints import load
from ..data.assets import fingerprint, heldout_stream
from ..generate import generate, prefill, score
from ..training.train import TrainConfig, loss_on, make_optimizer

SPIN = "while True: pass"


def _work(model, stream: np.ndarray):
    """name -> a function that does one unit of that work (and returns nothing)."""
    text = torch.from_numpy(stream[:2048].astype(np.int64))
    prompt = text[None]
    train_model = load()
    train_model.requires_grad_(True).train()
    cfg = TrainConfig(batch_size=8, seq_len=256, device="cpu")
    opt = make_optimizer(train_model, cfg)
    rng = np.random.default_rng(0)

    def train_step():
        starts = rng.integers(0, len(stream) - cfg.seq_len - 1, cfg.batch_size)
        batch = torch.from_numpy(np.stack([stream[s:s + cfg.seq_len + 1] for s in starts]).astype(np.int64))
        loss = loss_on(train_model, batch, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {
        "score": lambda: score(model, text),
        "prefill": lambda: prefill(model, prompt, model.new_cache()),
        "decode": lambda: generate(model, text[:16].tolist(), 128, threads=torch.get_num_threads()),
        "train_step": train_step,
    }


def _timed(fn, n: int) -> tuple[float, int]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        used = torch.get_num_threads()
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t, used
    finally:
        torch.set_num_threads(before)


def measure(repeats: int = 3) -> dict:
    """Seconds per unit of each kind of work at 1 and at all usable CPUs, idle and busy."""
    cpus = threads.usable_cpus()
    counts = sorted({1, cpus})
    model = load()
    work = _work(model, heldout_stream())
    for fn in work.values():  # warm-up: first-call costs out of the timing
        _timed(fn, 1)
    rows = []
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
        try:
            if busy:
                time.sleep(1.0)  # the spinner is running before the first timing
            load_before = os.getloadavg()[0]
            times = {(k, n): [] for k in work for n in counts}
            used = {}
            for _ in range(repeats):
                for k, fn in work.items():
                    for n in counts:
                        s, u = _timed(fn, n)
                        times[(k, n)].append(s)
                        used[(k, n)] = u
            for (k, n), ts in times.items():
                rows.append({"kind": k, "threads": used[(k, n)], "busy_process": busy,
                             "seconds": [round(x, 4) for x in ts], "median_s": round(statistics.median(ts), 4),
                             "load_avg_1min_before": round(load_before, 2)})
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    choice = threads.choose(kind=threads.kind_for(model)).n
    summary = []
    for k in work:
        def med(n, busy):
            return next(r["median_s"] for r in rows if (r["kind"], r["threads"], r["busy_process"]) == (k, n, busy))

        summary.append({"kind": k, "default_threads": choice,
                        "idle_one_s": med(1, False), "idle_all_s": med(cpus, False),
                        "busy_one_s": med(1, True), "busy_all_s": med(cpus, True),
                        "default_over_one_busy": round(med(choice, True) / med(1, True), 3),
                        "all_over_one_busy": round(med(cpus, True) / med(1, True), 2),
                        "all_over_one_idle": round(med(cpus, False) / med(1, False), 2)})
    for r in summary:
        print(f"  {r['kind']:10} idle: 1 thread {r['idle_one_s']:.3f} s, {cpus} threads {r['idle_all_s']:.3f} s; "
              f"beside a busy process: 1 thread {r['busy_one_s']:.3f} s, {cpus} threads {r['busy_all_s']:.3f} s")
    return {"what": "seconds per unit of work at one thread and at every usable CPU, idle and beside one busy "
                    f"process; median of {repeats} round-robin repeats", "usable_cpus": cpus,
            "model": "assets/model (shipped)", "rows": rows, "summary": summary, "slice": slice_check()}


def slice_check() -> dict:
    """The weights measured (timings cannot be re-measured exactly; their model can)."""
    return {"weights": {"model": fingerprint("model")}}


__all__ = ["measure"]
