"""A classroom on one machine: N students run notebook 03's generation at the same moment.

    python -m mistral_lab bench classroom --out benchmarks/classroom.json

For N = 1, 2, 4, 8 concurrent processes, each loads the shipped model, waits until all
are loaded, then generates notebook 03's text (prompt "ROMEO.", 4W = 256 new tokens,
temperature 0.8, top-k 50, seed 1). Three contenders, one after the other:

  ours           mistral_lab.generate inside threads.limited() -- the thread policy
                 (one thread for a small model's decode) applied by the worker itself --
                 each process with its own copy of the weights (shared=False);
  shared         the same, every process mapping one shared-weights file (what scripts/lab
                 and the hub give a student's kernels: checkpoints/shared.py), written
                 once by the parent before the workers start;
  transformers   MistralForCausalLM.generate on the same weights saved in Hugging Face's
                 layout, loaded and run at its defaults (torch's default threads, the
                 checkpoint's fp16), same sampling settings and number of new tokens.

Reported per N: the aggregate rate (all new tokens / the span from the first start to
the last finish), the slowest and the median process's time, each process's peak RSS,
and its memory once all have finished but are still alive (proc.memory_mib: resident,
proportional -- shared pages divided among the processes that map them -- and its own).
The goal on a C-core machine, for `shared`: with 8 processes, aggregate >= 0.8 x (one
private process's one-thread rate x C), and no process slower than 1.5x the median.

Also a thread sweep: one process at 1 and 2 threads, the machine idle and with one
other busy process (a Python spin loop), through the Python API and the command line.

Each worker is a fresh `python -m mistral_lab.bench.student` process (what a student's
kernel is; student.py); it prints one JSON line, with the threads it used read back from
torch, then its memory when asked. Nothing here needs the network: the Hugging Face copy is written
to a temporary folder and read with local_files_only.
"""
from __future__ import annotations

import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from .. import threads
from ..checkpoints import load, load_tokenizer, save_hf, share
from ..data.assets import fingerprint
from ..generate import generate
from .student import ENGINES, PROMPT, SAMPLING

COUNTS = (1, 2, 4, 8)
SPIN = "while True: pass"
FAIR = 1.5  # the goal: the slowest student within 1.5x the median


# --------------------------------------------------------------------------- parent


def _env() -> dict:
    here = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    return env


def run_group(n: int, engine: str, tokens: int, *, hf_path: str | None = None, shared: str | None = None,
              threads: int | None = None, limit_s: float = 180) -> dict:
    """Start n workers, let them load, start them together, collect their results, then
    (all still alive) their memory.

    A group still running `limit_s` after the start is stopped and reported as timed out,
    with an upper bound on its aggregate rate (n x tokens / limit_s): threads that
    collapse on a busy machine can take many minutes, and that is the finding."""
    cmd = [sys.executable, "-m", "mistral_lab.bench.student", "--engine", engine, "--tokens", str(tokens)]
    if hf_path:
        cmd += ["--hf-path", hf_path]
    if shared:
        cmd += ["--shared", shared]
    if threads:
        cmd += ["--threads", str(threads)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env()) for _ in range(n)]
    lines = [_lines(p) for p in procs]
    results, memory, timed_out = [], [], False
    try:
        for p, q in zip(procs, lines):  # everyone loaded before anyone starts: the load is not what we measure
            line = _next(q, 300)
            if line != "ready":
                raise RuntimeError(f"a classroom worker failed to start: {(line or '')} {p.stderr.read()}".strip()[-500:])
        go = time.time()
        for p in procs:
            _say(p, "go")
        for p, q in zip(procs, lines):
            line = _next(q, max(0.1, go + limit_s - time.time()))
            if line is None and p.poll() is None:
                timed_out = True
                break
            if not line:
                raise RuntimeError(f"a classroom worker failed: {p.stderr.read().strip()[-500:]}")
            results.append(json.loads(line))
        if not timed_out:
            for p, q in zip(procs, lines):
                _say(p, "memory")
                line = _next(q, 60)
                if not line:
                    raise RuntimeError(f"a classroom worker did not report its memory: {p.stderr.read().strip()[-500:]}")
                memory.append(json.loads(line))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    row = {"processes": n, "engine": engine, "tokens_each": tokens}
    if timed_out:
        return {**row, "timed_out": True, "limit_s": limit_s, "finished": len(results),
                "aggregate_tokens_per_s": None, "aggregate_tokens_per_s_at_most": round(n * tokens / limit_s, 1),
                "slowest_s": None, "seconds_finished": [round(r["seconds"], 3) for r in results]}
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    secs = sorted(r["seconds"] for r in results)
    total = sum(r["tokens"] for r in results)
    return {**row, "timed_out": False, "aggregate_tokens_per_s": round(total / span, 1),
            "span_s": round(span, 3), "slowest_s": round(secs[-1], 3), "median_s": round(statistics.median(secs), 3),
            "slowest_over_median": round(secs[-1] / statistics.median(secs), 2),
            "seconds": [round(s, 3) for s in secs], "threads_per_process": sorted({r["threads"] for r in results}),
            "cpu_s_per_process_median": round(statistics.median(r["cpu_s"] for r in results), 3),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in results),
            **{f"{m}_mib_median": round(statistics.median(x[m] for x in memory), 1) for m in ("rss", "pss", "uss")}}


def goal(one_rate: float, eight_rate: float, slowest_over_median_8: float, cpus: int) -> dict:
    """The classroom goal: with 8 students, aggregate >= 0.8 x one student's rate x cores,
    and the slowest within FAIR x the median."""
    target = 0.8 * one_rate * cpus
    return {"aggregate_8": eight_rate, "target": round(target, 1), "aggregate_ok": eight_rate >= target,
            "slowest_over_median_8": slowest_over_median_8, "fairness_ok": slowest_over_median_8 <= FAIR}


def _lines(p: subprocess.Popen) -> "queue.Queue[str | None]":
    """A worker's stdout, line by line, read in a thread (so a wait can time out); None at its end."""
    q: "queue.Queue[str | None]" = queue.Queue()

    def pump():
        for line in p.stdout:
            q.put(line.strip())
        q.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return q


def _next(q: "queue.Queue[str | None]", timeout: float) -> str | None:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return None


def _say(p: subprocess.Popen, word: str) -> None:
    try:
        p.stdin.write(word + "\n")
        p.stdin.flush()
    except (BrokenPipeError, OSError):
        pass  # it has exited: its missing line says so


def _with_spinner(busy: bool):
    return subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None


def _stop(p) -> None:
    if p is not None:
        p.kill()
        p.wait()


def cli_generate(tokens: int, threads: int) -> dict:
    """`python -m mistral_lab generate --threads N`: wall time of the command and its decode rate."""
    cmd = [sys.executable, "-m", "mistral_lab", "generate", "--max-new-tokens", str(tokens), "--prompt", "ROMEO:",
           "--threads", str(threads)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"python -m mistral_lab generate failed: {p.stderr.strip()[-300:]}")
    m = re.search(r"decode (\d+) tok/s", p.stderr)
    return {"wall_s": round(wall, 2), "decode_tokens_per_s": int(m.group(1)) if m else None}


def thread_sweep(tokens: int = 300, repeats: int = 2) -> list[dict]:
    """One process, 1 vs 2 threads, idle vs one busy process; API and CLI; round-robin."""
    rows = []
    for busy in (False, True):
        spinner = _with_spinner(busy)
        try:
            time.sleep(0.5 if busy else 0)
            for _ in range(repeats):
                for n in (1, 2):
                    api = run_group(1, "ours", tokens, threads=n, limit_s=600)
                    cli = cli_generate(tokens, n)
                    rows.append({"busy_process": busy, "threads": n,
                                 "api_tokens_per_s": round(tokens / api["slowest_s"], 1),
                                 "cli_decode_tokens_per_s": cli["decode_tokens_per_s"], "cli_wall_s": cli["wall_s"]})
        finally:
            _stop(spinner)
    summary = []
    for busy in (False, True):
        for n in (1, 2):
            sel = [r for r in rows if r["busy_process"] == busy and r["threads"] == n]
            summary.append({"busy_process": busy, "threads": n,
                            "api_tokens_per_s": round(statistics.median(r["api_tokens_per_s"] for r in sel), 1),
                            "cli_decode_tokens_per_s": round(statistics.median(r["cli_decode_tokens_per_s"] or 0
                                                                               for r in sel), 1),
                            "cli_wall_s": round(statistics.median(r["cli_wall_s"] for r in sel), 2), "runs": len(sel)})
    return summary


def classroom(tokens: int = 256, counts=COUNTS, sweep: bool = True, progress=print) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cpus = threads.usable_cpus()
    load_before = os.getloadavg()
    report = {"what": f"N concurrent processes, each generating notebook 03's text ({tokens} new tokens after "
                      f"{PROMPT!r}, temperature 0.8, top-k 50, seed 1) after all have loaded the shipped model; "
                      f"aggregate = all new tokens / (last finish - first start)",
              "usable_cpus": cpus, "load_avg_before": [round(x, 2) for x in load_before], "groups": []}
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(load(dtype=torch.float16), tmp)
        weights = os.path.join(tmp, "shared-weights")
        report["shared_weights_file_mib"] = round(share(None, weights).stat().st_size / 2**20, 1)
        for engine in ENGINES:
            for n in counts:
                g = run_group(n, engine, tokens, hf_path=tmp if engine == "transformers" else None,
                              shared=weights if engine == "shared" else None)
                report["groups"].append(g)
                if g["timed_out"]:
                    progress(f"  {engine:12} N={n}: not done after {g['limit_s']:.0f} s ({g['finished']} of {n} "
                             f"finished): aggregate <= {g['aggregate_tokens_per_s_at_most']} tok/s")
                    continue
                progress(f"  {engine:12} N={n}: {g['aggregate_tokens_per_s']:7.1f} tok/s aggregate, slowest "
                         f"{g['slowest_s']:.2f} s (median {g['median_s']:.2f} s), threads {g['threads_per_process']}, "
                         f"peak RSS {g['peak_rss_mib_max']:.0f} MiB; now RSS {g['rss_mib_median']:.0f}, "
                         f"PSS {g['pss_mib_median']:.0f}, own {g['uss_mib_median']:.0f} MiB")

    def group(engine, n):
        return next((g for g in report["groups"] if g["engine"] == engine and g["processes"] == n), None)
    one, eight, private8 = group("ours", 1), group("shared", 8), group("ours", 8)
    if eight is not None and not eight["timed_out"] and not one["timed_out"]:
        hf8 = group("transformers", 8)
        report["goal"] = {
            **goal(one["aggregate_tokens_per_s"], eight["aggregate_tokens_per_s"], eight["slowest_over_median"], cpus),
            "private_aggregate_8": private8["aggregate_tokens_per_s"],
            "pss_mib_8": {"shared": eight["pss_mib_median"], "private": private8["pss_mib_median"]},
            "uss_mib_8": {"shared": eight["uss_mib_median"], "private": private8["uss_mib_median"]},
            # a timed-out group gives an upper bound on its rate, so the ratio is then a lower bound
            "ours_over_transformers_8": round(eight["aggregate_tokens_per_s"] / (hf8["aggregate_tokens_per_s"]
                                                                                or hf8["aggregate_tokens_per_s_at_most"]), 2),
            "ours_over_transformers_8_is_lower_bound": hf8["timed_out"],
        }
    if sweep:
        progress("  thread sweep (one process; 1 vs 2 threads; idle, then beside a busy process)")
        report["thread_sweep"] = thread_sweep()
        for r in report["thread_sweep"]:
            progress(f"    busy={r['busy_process']!s:5} threads={r['threads']}: API {r['api_tokens_per_s']:6.1f} tok/s, "
                     f"CLI decode {r['cli_decode_tokens_per_s']:6.1f} tok/s, CLI wall {r['cli_wall_s']:.2f} s")
    report["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["slice"] = slice_check()
    return report


def slice_check() -> dict:
    """What tests/test_results.py re-measures: the first 32 tokens every student generates
    (the same prompt and seed), and the weights' fingerprint."""
    tok = load_tokenizer()
    return {"tokens": generate(load(), tok.encode(PROMPT), 32, **SAMPLING).new_tokens,
            "weights": {"model": fingerprint("model")}}


def measure(tokens: int = 256) -> dict:
    """`python -m mistral_lab bench classroom`: classroom(), with its goal printed."""
    report = classroom(tokens=tokens)
    if "goal" in report:
        g = report["goal"]
        print(f"  goal: 8 processes sharing the weights {g['aggregate_8']} tok/s vs target {g['target']} "
              f"({'ok' if g['aggregate_ok'] else 'MISSED'}); slowest/median {g['slowest_over_median_8']} "
              f"({'ok' if g['fairness_ok'] else 'MISSED'}); "
              f"{'>= ' if g['ours_over_transformers_8_is_lower_bound'] else ''}{g['ours_over_transformers_8']}x transformers; "
              f"PSS per process {g['pss_mib_8']['shared']} MiB shared vs {g['pss_mib_8']['private']} private")
    return report
