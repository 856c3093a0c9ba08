"""Config sweeps of the kernels at Mistral 7B's shapes (GPU), best last.

Pre-fill: ms and useful TFLOP/s per (rows, BLOCK_N, num_warps, num_stages), rows =
BLOCK_M * group. Decode: CUDA-graph ms per (BLOCK_N, splits, num_warps) over a full
4096-slot buffer.

    python scripts/gpu_tune.py [N] [window]
"""
import sys

import torch

from mistral_lab.kernels import use_interpreter_if_no_gpu

if use_interpreter_if_no_gpu():  # decided before the kernel modules below are imported
    sys.exit("scripts/gpu_tune.py times compiled kernels: it needs a CUDA GPU and TRITON_INTERPRET unset or 0")

from triton.testing import do_bench, do_bench_cudagraph  # noqa: E402

from mistral_lab import ops  # noqa: E402
from mistral_lab.bench import kernels as bench  # noqa: E402
from mistral_lab.kernels import decode_attention, swa_attention  # noqa: E402


def main(n=16384, window=4096, H=32, K=8, D=128):
    q = torch.randn(1, n, H, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, n, K, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, n, K, D, device="cuda", dtype=torch.bfloat16)
    pos = torch.arange(n, device="cuda")
    m = 2048  # correctness on the last 2048 queries against the fp32 reference
    ref = ops.attention(q[:, -m:].float(), k.float(), v.float(), pos[-m:], pos, window)
    flops = bench.attention_flops(n, window, H, D)
    G = H // K
    results = []
    for rows in (128, 256):
        for bn in (64, 128):
            for warps in (4, 8):
                for stages in (2, 3, 4):
                    kw = dict(block_m=rows // G, block_n=bn, num_warps=warps, num_stages=stages)
                    try:
                        out = swa_attention.swa_prefill(q, k, v, pos, window, **kw)
                        err = ((out[:, -m:].float() - ref).norm() / ref.norm()).item()
                        ms = do_bench(lambda: swa_attention.swa_prefill(q, k, v, pos, window, **kw),
                                      warmup=25, rep=100, return_mode="median")
                    except Exception as e:  # out of shared memory / registers for this config
                        print(f"rows={rows} bn={bn} warps={warps} stages={stages}: {type(e).__name__}")
                        continue
                    results.append((ms, rows, bn, warps, stages, err))
                    print(f"rows={rows:4} bn={bn:4} warps={warps} stages={stages}  {ms:.4f} ms  "
                          f"{flops / ms / 1e9:6.1f} TFLOP/s  err {err:.2e}", flush=True)
    print("best:")
    for ms, rows, bn, warps, stages, err in sorted(results)[:5]:
        print(f"  rows={rows} bn={bn} warps={warps} stages={stages}  {ms:.4f} ms  err {err:.2e}")


def decode(S=4096, H=32, K=8, D=128):
    n = 9000  # wrapped: every slot holds a visible position
    ck, cv, cpos = bench.rolling_buffer(n, S, K, D, torch.bfloat16)
    q = torch.randn(1, 1, H, D, device="cuda", dtype=torch.bfloat16)
    position = torch.tensor([n - 1], device="cuda")
    ref = ops.attention(q.double(), ck.double(), cv.double(), position, cpos, S)
    results = []
    for bn in (16, 32, 64, 128):
        for splits in (8, 16, 32, 64, 128):
            for warps in (1, 2, 4, 8):
                kw = dict(block_n=bn, num_splits=splits, num_warps=warps)
                fn = lambda: decode_attention.decode_attention(q, ck, cv, cpos, position, S, **kw)  # noqa: E731
                try:
                    err = ((fn().double() - ref).norm() / ref.norm()).item()
                    us = 1000 * do_bench_cudagraph(fn, rep=50, return_mode="median")
                except Exception as e:
                    print(f"decode bn={bn} splits={splits} warps={warps}: {type(e).__name__}")
                    continue
                results.append((us, bn, splits, warps, err))
    print("decode best:")
    for us, bn, splits, warps, err in sorted(results)[:8]:
        print(f"  bn={bn} splits={splits} warps={warps}  {us:.2f} us  err {err:.2e}")


if __name__ == "__main__":
    decode()
    main(*map(int, sys.argv[1:]))
