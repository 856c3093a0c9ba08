"""Benchmarks whose results are committed to benchmarks/ (JSON with device, versions, date).

    python -m mistral_lab bench cpu-decode     decode tokens/s: mistral_lab vs Hugging Face
                                               transformers, same weights, same machine, same run
    python -m mistral_lab bench attention      GPU: SWA pre-fill kernel vs FlexAttention / SDPA
    python -m mistral_lab bench decode         GPU: decode over a full rolling buffer
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def environment(device: str = "cpu") -> dict:
    import torch

    info = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    if device == "cpu":
        info["device"] = _cpu_name()
        info["cores"] = os.cpu_count()
    else:
        info["device"] = torch.cuda.get_device_name()
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_decode(model_path=None, new_tokens: int = 200, repeats: int = 3, prompt: str = "ROMEO.") -> dict:
    """Greedy decode of `new_tokens` after a short prompt, ours vs HF generate on the same weights.

    Both run in fp32 on the CPU with the same thread count; each figure is the median of
    `repeats` runs after one warm-up. The greedy tokens of both must agree.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import MistralForCausalLM

    from . import weights
    from .generate import generate

    model = weights.load(model_path)
    tok = weights.load_tokenizer(model_path)
    ids = tok.encode(prompt)
    with tempfile.TemporaryDirectory() as tmp:
        weights.save_hf(model, tmp)
        hf = MistralForCausalLM.from_pretrained(tmp, local_files_only=True, torch_dtype=torch.float32).eval()

    def ours():
        t = time.perf_counter()
        g = generate(model, ids, new_tokens)
        return time.perf_counter() - t, g.new_tokens

    @torch.inference_mode()
    def theirs():
        x = torch.tensor([ids])
        t = time.perf_counter()
        out = hf.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          pad_token_id=tok.eos_id)
        return time.perf_counter() - t, out[0, len(ids):].tolist()

    results = {}
    for name, fn in (("mistral_lab", ours), ("transformers", theirs)):
        fn()  # warm-up
        runs = [fn() for _ in range(repeats)]
        results[name] = {"seconds": [round(s, 4) for s, _ in runs],
                         "tokens_per_s": round(new_tokens / statistics.median(s for s, _ in runs), 1),
                         "tokens": runs[0][1]}
    same = results["mistral_lab"]["tokens"] == results["transformers"]["tokens"]
    for r in results.values():
        del r["tokens"]
    return {
        "benchmark": "cpu-decode",
        "what": f"greedy generation of {new_tokens} tokens after a {len(ids)}-token prompt, batch 1, fp32, "
                f"wall time including the prompt's pre-fill; median of {repeats} runs after a warm-up",
        "model": {"path": str(model_path or weights.default_model_path()), "params": model.args.n_params(),
                  "args": model.args.to_dict()},
        "results": results,
        "speedup": round(results["mistral_lab"]["tokens_per_s"] / results["transformers"]["tokens_per_s"], 2),
        "same_tokens": same,
        "environment": environment("cpu"),
    }


def main(args) -> None:
    if args.what == "cpu-decode":
        report = cpu_decode(args.model, args.tokens, args.repeats)
        r = report["results"]
        print(f"decode, {report['model']['params'] / 1e6:.1f}M parameters, {report['environment']['device']}, "
              f"{report['environment']['threads']} threads")
        print(f"  mistral_lab   {r['mistral_lab']['tokens_per_s']:8.1f} tokens/s")
        print(f"  transformers  {r['transformers']['tokens_per_s']:8.1f} tokens/s")
        print(f"  speedup       {report['speedup']:8.2f}x   (same greedy tokens: {report['same_tokens']})")
    else:
        from .kernels import bench as kbench

        report = kbench.main(args)
    if args.out and report is not None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
