"""Mistral 7B's exact shapes (Table 1) in bf16 on one GPU, random weights (no 7B weights
travel here): chunked pre-fill of a long prompt and greedy decode through the
4096-slot rolling buffer, torch vs triton backends. Prints one JSON line.

    python scripts/gpu_7b.py [prompt_tokens] [new_tokens] [chunk]
"""
import json
import sys
import time

import torch

from mistral_lab.config import preset
from mistral_lab.generate import generate
from mistral_lab.kernels import use_interpreter_if_no_gpu
from mistral_lab.model import Transformer

if use_interpreter_if_no_gpu():
    sys.exit("scripts/gpu_7b.py runs Mistral 7B's shapes on compiled kernels: it needs a CUDA GPU and "
             "TRITON_INTERPRET unset or 0")


def main(n_prompt=8192, n_new=64, chunk=4096):
    args = preset("mistral-7b-v0.1")
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device="cuda").to(torch.bfloat16).eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0) if p.dim() == 1 else p.normal_(0, 0.02, generator=g)
    prompt = torch.randint(0, args.vocab_size, (n_prompt,), generator=torch.Generator().manual_seed(1)).tolist()
    out = {"params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3), "prompt": n_prompt,
           "new": n_new, "chunk": chunk, "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    tokens = {}
    for backend in ("torch", "triton"):
        model.backend = backend
        generate(model, prompt[:512], 4, chunk_size=chunk)  # warm-up (kernel compilation)
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        gen = generate(model, prompt, n_new, chunk_size=chunk)
        wall = time.perf_counter() - t
        s = gen.stats
        tokens[backend] = gen.new_tokens
        out[backend] = {"prefill_s": round(s.prefill_s, 4), "decode_tok_s": round((s.new_tokens - 1) / s.decode_s, 1)
                        if s.new_tokens > 1 else None, "wall_s": round(wall, 3),
                        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                        "cache_gib": round(gen.cache.nbytes / 2**30, 3)}
    out["same_tokens"] = sum(a == b for a, b in zip(tokens["torch"], tokens["triton"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
