"""CPU decode: mistral_lab's engines against Hugging Face transformers, same weights, same
machine, same run.

    python -m mistral_lab bench cpu-decode --out benchmarks/cpu_decode.json
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch

from ..checkpoints import load, load_tokenizer, save_hf
from ..data.assets import default_model_path, fingerprint
from ..generate import generate


def cpu_decode(model_path=None, new_tokens: int = 200, repeats: int = 5, prompt: str = "ROMEO.",
               tokenizer=None) -> dict:
    """Greedy decode of `new_tokens` after a short prompt: ours against HF generate on the
    same weights, in the same process, round-robin (each repeat runs every contender once,
    so drifts of a shared machine hit all alike); each figure is the median over repeats
    after one warm-up.

    Contenders. Ours: engine="model" (the readable Transformer.forward), "fast" (the
    lean step, fp32) and "fast-fp16" (fp16 weight matrices, the checkpoint's own dtype).
    Hugging Face MistralForCausalLM from the same weights saved in its layout: loaded as
    fp32, and loaded the default way, which for this fp16 checkpoint is fp16.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import MistralForCausalLM  # lazy: transformers is a test/bench-only dependency

    model = load(model_path)
    tok = load_tokenizer(model_path, tokenizer=tokenizer)
    ids = tok.encode(prompt)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(load(model_path, dtype=torch.float16), tmp)
        hf = {"transformers_fp32": MistralForCausalLM.from_pretrained(tmp, local_files_only=True,
                                                                      dtype=torch.float32).eval(),
              "transformers_default": MistralForCausalLM.from_pretrained(tmp, local_files_only=True).eval()}
    hf_dtype = str(next(hf["transformers_default"].parameters()).dtype).replace("torch.", "")

    def ours(engine):
        def run():
            t = time.perf_counter()
            g = generate(model, ids, new_tokens, engine=engine, threads=torch.get_num_threads())  # as HF's
            return time.perf_counter() - t, g.new_tokens
        return run

    def theirs(m):
        @torch.inference_mode()
        def run():
            x = torch.tensor([ids])
            t = time.perf_counter()
            out = m.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tok.eos_id)
            return time.perf_counter() - t, out[0, len(ids):].tolist()
        return run

    contenders = {"mistral_lab_model": ours("model"), "mistral_lab_fast": ours("fast"),
                  "mistral_lab_fast_fp16": ours("fast-fp16"),
                  **{name: theirs(m) for name, m in hf.items()}}
    runs = {name: [] for name in contenders}
    for name, fn in contenders.items():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in contenders.items():
            runs[name].append(fn())
    results = {}
    for name, rs in runs.items():
        results[name] = {"seconds": [round(s, 4) for s, _ in rs],
                         "tokens_per_s": round(new_tokens / statistics.median(s for s, _ in rs), 1)}
    tokens = {name: rs[0][1] for name, rs in runs.items()}

    def agree(a, b):  # the greedy tokens two contenders share before they first differ
        return next((i for i, (x, y) in enumerate(zip(tokens[a], tokens[b])) if x != y), new_tokens)

    def ratio(a, b):
        return round(results[a]["tokens_per_s"] / results[b]["tokens_per_s"], 2)

    return {
        "what": f"greedy generation of {new_tokens} tokens after a {len(ids)}-token prompt, batch 1, wall time "
                f"including the prompt's pre-fill; median of {repeats} round-robin runs after a warm-up",
        "model": {"path": str(model_path or default_model_path()), "params": model.args.n_params(),
                  "args": model.args.to_dict()},
        "transformers_default_dtype": hf_dtype,
        "results": results,
        "speedups": {
            "fast_fp32 / transformers_fp32 (same precision)": ratio("mistral_lab_fast", "transformers_fp32"),
            f"fast_fp16 / transformers_default ({hf_dtype} weights both)": ratio("mistral_lab_fast_fp16",
                                                                                "transformers_default"),
            "fast_fp16 / transformers_fp32": ratio("mistral_lab_fast_fp16", "transformers_fp32"),
            "fast_fp32 / mistral_lab_model": ratio("mistral_lab_fast", "mistral_lab_model"),
        },
        "same_greedy_tokens_of": {
            "fast_fp32 vs transformers_fp32": agree("mistral_lab_fast", "transformers_fp32"),
            "fast_fp32 vs mistral_lab_model": agree("mistral_lab_fast", "mistral_lab_model"),
            "fast_fp16 vs transformers_default": agree("mistral_lab_fast_fp16", "transformers_default"),
            "fast_fp16 vs fast_fp32": agree("mistral_lab_fast_fp16", "mistral_lab_fast"),
            "out_of": new_tokens,
        },
        "threads": torch.get_num_threads(),
        "slice": slice_check() if model_path is None else None,
    }


def slice_check() -> dict:
    """What tests/test_results.py re-measures: the shipped model's first 32 greedy tokens
    after the benchmark's prompt on the fast step, and the weights' fingerprint."""
    model, tok = load(), load_tokenizer()
    return {"greedy_fast_fp32": generate(model, tok.encode("ROMEO."), 32, engine="fast").new_tokens,
            "weights": {"model": fingerprint("model")}}


def measure(model_path=None, new_tokens: int = 200, repeats: int = 5, tokenizer=None) -> dict:
    """`python -m mistral_lab bench cpu-decode`: cpu_decode(), printed."""
    report = cpu_decode(model_path, new_tokens, repeats, tokenizer=tokenizer)
    print(f"decode, {report['model']['params'] / 1e6:.1f}M parameters, {report['threads']} threads")
    for name, res in report["results"].items():
        print(f"  {name:24} {res['tokens_per_s']:8.1f} tokens/s")
    for name, x in report["speedups"].items():
        print(f"  {x:6.2f}x  {name}")
    same = report["same_greedy_tokens_of"]
    print("  same greedy tokens: " + ", ".join(f"{k} {v}/{same['out_of']}" for k, v in same.items() if k != "out_of"))
    return report
