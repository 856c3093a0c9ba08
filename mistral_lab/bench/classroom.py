"""A classroom on one machine: N students run notebook 03's generation at the same moment.

    python -m mistral_lab bench classroom --out benchmarks/classroom.json

For N = 1, 2, 4, 8 concurrent processes, each loads the shipped model, waits until all
are loaded, then generates notebook 03's text (prompt "ROMEO.", 4W = 256 new tokens,
temperature 0.8, top-k 50, seed 1). Two contenders, one after the other:

  ours           mistral_lab.generate inside threads.limited() -- the thread policy
                 (one thread for a small model's decode) applied by the worker itself;
  transformers   MistralForCausalLM.generate on the same weights saved in Hugging Face's
                 layout, loaded and run at its defaults (torch's default threads, the
                 checkpoint's fp16), same sampling settings and number of new tokens.

Reported per N: the aggregate rate (all new tokens / the span from the first start to
the last finish), the slowest and the median process's time, and each process's peak
RSS. The goal on a C-core machine: with 8 processes, aggregate >= 0.8 x (one process's
one-thread rate x C), and no process slower than 3x the median.

Also a thread sweep: one process at 1 and 2 threads, the machine idle and with one
other busy process (a Python spin loop), through the Python API and the command line.

Each worker is a fresh `python -m mistral_lab.bench.classroom` process (what a student's
kernel is); it prints one JSON line, with the threads it used read back from torch.
Nothing here needs the network: the Hugging Face copy is written to a temporary folder
and read with local_files_only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .. import threads
from ..checkpoints import load, load_tokenizer, save_hf
from ..data.assets import fingerprint
from ..generate import generate

PROMPT = "ROMEO."  # notebook 03
SAMPLING = {"temperature": 0.8, "top_k": 50, "seed": 1}
COUNTS = (1, 2, 4, 8)
SPIN = "while True: pass"


# --------------------------------------------------------------------------- worker


def _cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _worker(args) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer()
    ids = tok.encode(PROMPT)
    used = []  # torch's threads during the timed generation, as the generation saw them
    if args.engine == "ours":
        model = load()

        def run():  # generate applies the thread policy itself (args.threads, when given, wins)
            g = generate(model, ids, args.tokens, threads=args.threads, **SAMPLING)
            used.append(g.stats.threads)
            return len(g.new_tokens)

        generate(model, ids, 8, threads=args.threads, **SAMPLING)  # warm-up outside the timing
    else:
        from transformers import MistralForCausalLM  # lazy: transformers is a test/bench-only dependency

        hf = MistralForCausalLM.from_pretrained(args.hf_path, local_files_only=True).eval()
        if args.threads:
            torch.set_num_threads(threads.choose(args.threads).n)  # capped at the usable CPUs, as ours

        @torch.inference_mode()
        def run():
            used.append(torch.get_num_threads())
            torch.manual_seed(SAMPLING["seed"])
            out = hf.generate(torch.tensor([ids]), max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                              do_sample=True, temperature=SAMPLING["temperature"], top_k=SAMPLING["top_k"],
                              pad_token_id=tok.eos_id)
            return out.shape[1] - len(ids)

        with torch.inference_mode():
            hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_id)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":  # the parent closed the pipe: nothing to do
        return
    cpu0 = _cpu_seconds()
    start = time.time()
    n = run()
    end = time.time()
    print(json.dumps({"engine": args.engine, "tokens": n, "start": start, "end": end, "seconds": end - start,
                      "threads": used[-1],
                      "cpu_s": round(_cpu_seconds() - cpu0, 3),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
          flush=True)


# --------------------------------------------------------------------------- parent


def _env() -> dict:
    here = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    return env


def run_group(n: int, engine: str, tokens: int, *, hf_path: str | None = None, threads: int | None = None,
              limit_s: float = 180) -> dict:
    """Start n workers, let them load, start them together, collect their results.

    A group still running `limit_s` after the start is stopped and reported as timed out,
    with an upper bound on its aggregate rate (n x tokens / limit_s): threads that
    collapse on a busy machine can take many minutes, and that is the finding."""
    cmd = [sys.executable, "-m", "mistral_lab.bench.classroom", "worker", "--engine", engine, "--tokens", str(tokens)]
    if hf_path:
        cmd += ["--hf-path", hf_path]
    if threads:
        cmd += ["--threads", str(threads)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env()) for _ in range(n)]
    results, timed_out = [], False
    try:
        for p in procs:  # everyone loaded before anyone starts: the load is not what we measure
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a classroom worker failed to start: {(line + ' ' + p.stderr.read()).strip()[-500:]}")
        go = time.time()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(0.1, go + limit_s - time.time()))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
            if p.returncode != 0:
                raise RuntimeError(f"a classroom worker failed: {err.strip()[-500:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
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
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in results)}


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
        for engine in ("ours", "transformers"):
            for n in counts:
                g = run_group(n, engine, tokens, hf_path=tmp if engine == "transformers" else None)
                report["groups"].append(g)
                if g["timed_out"]:
                    progress(f"  {engine:12} N={n}: not done after {g['limit_s']:.0f} s ({g['finished']} of {n} "
                             f"finished): aggregate <= {g['aggregate_tokens_per_s_at_most']} tok/s")
                    continue
                progress(f"  {engine:12} N={n}: {g['aggregate_tokens_per_s']:7.1f} tok/s aggregate, slowest "
                         f"{g['slowest_s']:.2f} s (median {g['median_s']:.2f} s), threads {g['threads_per_process']}, "
                         f"peak RSS {g['peak_rss_mib_max']:.0f} MiB")
    one = next(g for g in report["groups"] if g["engine"] == "ours" and g["processes"] == 1)
    eight = next((g for g in report["groups"] if g["engine"] == "ours" and g["processes"] == 8), None)
    if eight is not None and not eight["timed_out"] and not one["timed_out"]:
        hf8 = next(g for g in report["groups"] if g["engine"] == "transformers" and g["processes"] == 8)
        target = 0.8 * one["aggregate_tokens_per_s"] * cpus
        report["goal"] = {
            "aggregate_8": eight["aggregate_tokens_per_s"], "target": round(target, 1),
            "aggregate_ok": eight["aggregate_tokens_per_s"] >= target,
            "slowest_over_median_8": eight["slowest_over_median"], "fairness_ok": eight["slowest_over_median"] <= 3,
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
        print(f"  goal: 8 processes {g['aggregate_8']} tok/s vs target {g['target']} "
              f"({'ok' if g['aggregate_ok'] else 'MISSED'}); slowest/median {g['slowest_over_median_8']} "
              f"({'ok' if g['fairness_ok'] else 'MISSED'}); "
              f"{'>= ' if g['ours_over_transformers_8_is_lower_bound'] else ''}{g['ours_over_transformers_8']}x transformers")
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m mistral_lab.bench.classroom")
    p.add_argument("role", choices=["worker"])
    p.add_argument("--engine", choices=["ours", "transformers"], required=True)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--hf-path", default=None)
    p.add_argument("--threads", type=int, default=None)
    _worker(p.parse_args())
