"""One student of the classroom benchmark (classroom.py): a fresh process, as a student's
kernel is, that loads the model, says "ready", generates notebook 03's text on "go", prints
one JSON line (its times, CPU seconds and the threads torch used), then its memory on
"memory" (proc.memory_mib) while every other student is still alive.

    python -m mistral_lab.bench.student --engine ours|shared|transformers [--shared FOLDER]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

from .. import threads
from ..checkpoints import load, load_tokenizer
from ..generate import generate
from .proc import memory_mib, peak_mib

PROMPT = "ROMEO."  # notebook 03
SAMPLING = {"temperature": 0.8, "top_k": 50, "seed": 1}
ENGINES = ("ours", "shared", "transformers")


def _cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _worker(args) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = load_tokenizer()
    ids = tok.encode(PROMPT)
    used = []  # torch's threads during the timed generation, as the generation saw them
    if args.engine in ("ours", "shared"):
        model = load(shared=args.shared if args.engine == "shared" else False)

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
                      # VmHWM, not getrusage's ru_maxrss: that survives exec, so a worker would
                      # report the larger parent's peak (the benchmark's own, ~450 MiB) as its own
                      "peak_rss_mib": peak_mib("self")}),
          flush=True)
    if sys.stdin.readline().strip() == "memory":  # asked once every worker has finished
        print(json.dumps(memory_mib()), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m mistral_lab.bench.student")
    p.add_argument("--engine", choices=ENGINES, required=True)
    p.add_argument("--shared", default=None, help="the shared-weights folder (engine shared)")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--hf-path", default=None)
    p.add_argument("--threads", type=int, default=None)
    _worker(p.parse_args())
