"""The Triton kernels against the references (ops.attention, TorchBackend, KVCache.write).

Without a GPU they run in Triton's interpreter, chosen by tests/conftest.py before any
kernel module is imported, because @triton.jit decides at decoration time (shapes stay
small: the interpreter costs milliseconds per tile). With a CUDA GPU the same tests
run the compiled kernels on the GPU (DEV = "cuda"); tests/test_kernels_gpu.py adds
bf16 and Mistral 7B's shapes there.
"""
import os

import torch  # noqa: E402

import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed (no macOS/Windows wheels): the triton backend is optional",
                allow_module_level=True)

import mistral_lab  # noqa: E402
from mistral_lab import ops  # noqa: E402
from mistral_lab.backends import TorchBackend, get_backend  # noqa: E402
from mistral_lab.cache import KVCache  # noqa: E402
from mistral_lab.config import preset  # noqa: E402
from mistral_lab.generate import generate, prefill  # noqa: E402
from mistral_lab.kernels import TritonUnavailable, available, triton_backend  # noqa: E402
from mistral_lab.masks import mask_for, window_mask  # noqa: E402
from mistral_lab.model import Transformer  # noqa: E402

from tolerances import TOL  # noqa: E402

BACKEND = triton_backend()
from mistral_lab.bench import kernels as bench  # noqa: E402
from mistral_lab.kernels import cache_write, chunk_attention, decode_attention, swa_attention  # noqa: E402

REF = TorchBackend()
ON_GPU = not swa_attention.interpreting()
DEV = "cuda" if ON_GPU else "cpu"  # compiled kernels read GPU memory; the interpreter, CPU tensors


def rand(*shape, dtype=torch.float32, gen=None):
    return torch.randn(*shape, generator=gen).to(dtype).to(DEV)


def arange(*a):
    return torch.arange(*a, device=DEV)


def close(out, ref, dtype):
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])


def ref_chunk(q, k, v, pos, cache, W):
    """TorchBackend.chunk in fp32 over a cache of any dtype (the reference for fp16 kernels)."""
    keys, values, key_pos = cache.layer(0).with_chunk(k, v, pos)
    return ops.attention(q.float(), keys.float(), values.float(), pos, key_pos, W)


def ref_decode(q, pos, cache, W):
    keys, values, key_pos = cache.layer(0).readable()
    return ops.attention(q.float(), keys.float(), values.float(), pos, key_pos, W)


def qkv(B, T, H, K, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return rand(B, T, H, D, dtype=dtype, gen=g), rand(B, T, K, D, dtype=dtype, gen=g), rand(B, T, K, D, dtype=dtype, gen=g)


# ----------------------------------------------------------------------------- setup

def test_available_and_backend():
    ok, reason = available()
    assert ok and ("interpreter" in reason or "CUDA" in reason)
    assert BACKEND.name == "triton" and get_backend("triton").name == "triton"
    assert issubclass(TritonUnavailable, RuntimeError)


def test_missing_triton_gives_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # what `import triton` sees on macOS/Windows
    ok, reason = available()
    assert not ok and "backend='torch'" in reason
    with pytest.raises(TritonUnavailable, match="Triton is not installed"):
        triton_backend()


def test_interpreter_fp32_dot_is_exact_fp32():
    """The interpreter's tl.dot is numpy's fp32 matmul (no tf32): fp32 tests can use 1e-5."""
    q, k, v = qkv(1, 40, 2, 2, 64, torch.float32, seed=1)
    pos = arange(40)
    err = (BACKEND.prefill(q, k, v, pos, None) - ops.attention(q.double(), k.double(), v.double(), pos, pos, None))
    assert err.abs().max() < 1e-5


# ----------------------------------------------------------------------------- pre-fill

# (B, T, H, K, D, W): T around the window (< W, W-1, W, W+1, 3W+5), T not a multiple of
# the 16-wide blocks, W not a multiple either, GQA ratios 1, 2, 4 (and 3, padded), no window.
PREFILL_CASES = [
    (1, 5, 4, 2, 16, 12),
    (2, 11, 2, 2, 32, 12),    # T = W - 1
    (1, 12, 4, 1, 16, 12),    # T = W
    (1, 13, 4, 4, 64, 12),    # T = W + 1
    (1, 41, 4, 2, 16, 12),    # T = 3W + 5
    (1, 37, 4, 1, 32, 16),    # W = block
    (2, 29, 6, 2, 16, 8),     # G = 3: padded to 4 heads per program
    (1, 33, 4, 2, 16, None),  # full causal
    (1, 7, 2, 1, 128, 4),     # head_dim 128 at a tiny T
    (1, 20, 2, 2, 24, 6),     # head_dim 24: padded to 32
    (1, 9, 2, 2, 16, 1),      # W = 1: each token sees only itself
]


@pytest.mark.parametrize("B,T,H,K,D,W", PREFILL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_prefill_matches_reference(B, T, H, K, D, W, dtype):
    q, k, v = qkv(B, T, H, K, D, dtype, seed=T * 7 + D)
    pos = arange(T)
    out = BACKEND.prefill(q, k, v, pos, W)
    assert out.shape == q.shape and out.dtype == dtype
    close(out, ops.attention(q.float(), k.float(), v.float(), pos, pos, W), dtype)


# tl.dot on a GPU needs tiles of at least 16 in each dimension; the interpreter takes 8.
SMALL_BLOCKS = [(16, 16), (32, 16), (16, 32)] if ON_GPU else [(8, 8), (16, 8), (8, 16)]


@pytest.mark.parametrize("block_m,block_n", SMALL_BLOCKS)
def test_prefill_every_window_against_small_blocks(block_m, block_n):
    """W = 1 .. block + 1 (and two more) against small blocks: the window's edges fall at every
    offset inside a tile (the masked-edge / unmasked-interior split is exact or wrong here).
    The sequence starts at position 100: the mask works on positions, the skipping on indices."""
    q, k, v = qkv(1, 45, 4, 2, 16, torch.float32, seed=3)
    pos = arange(100, 145)
    big = max(block_m, block_n)
    for W in list(range(1, big + 2)) + [2 * big - 1, 2 * big + 1, None]:
        out = swa_attention.swa_prefill(q, k, v, pos, W, block_m=block_m, block_n=block_n)
        close(out, ops.attention(q, k, v, pos, pos, W), torch.float32)


def test_prefill_bf16_through_interpreter():
    q, k, v = qkv(1, 20, 4, 2, 16, torch.bfloat16, seed=4)
    pos = arange(20)
    close(BACKEND.prefill(q, k, v, pos, 6), ops.attention(q.float(), k.float(), v.float(), pos, pos, 6), torch.bfloat16)


def test_prefill_rejects_bad_arguments():
    q, k, v = qkv(1, 4, 2, 1, 16, torch.float32)
    with pytest.raises(ValueError, match="consecutive"):  # checked where it costs no sync: CPU positions
        BACKEND.prefill(q, k, v, torch.tensor([0, 1, 3, 4]), 2)
    with pytest.raises(ValueError, match="window"):
        BACKEND.prefill(q, k, v, arange(4), 0)


# ----------------------------------------------------------------------------- counters

def tiles_by_brute_force(T, W, BM, BN):
    """For each query block, the key blocks holding at least one visible (query, key) pair."""
    vis = window_mask(T, W).numpy()
    n_qb, n_kb = -(-T // BM), -(-T // BN)
    return np.array([[vis[i * BM:(i + 1) * BM, j * BN:(j + 1) * BN].any() for j in range(n_kb)] for i in range(n_qb)])


@pytest.mark.parametrize("T,W,D,G", [(53, 16, 16, 2), (53, 5, 32, 1), (40, None, 16, 4), (12, 20, 16, 1)])
def test_prefill_counters_match_closed_forms(T, W, D, G):
    B, K = 2, 2
    H = G * K
    q, k, v = qkv(B, T, H, K, D, torch.float16, seed=5)
    with mistral_lab.trace.record() as tr:
        out = BACKEND.prefill(q, k, v, arange(T), W)
    close(out, ops.attention(q.float(), k.float(), v.float(), arange(T), arange(T), W), torch.float16)
    (call,) = tr.kernel_calls
    BM, BN = call.block_m, call.block_n
    assert call.kernel == "swa_prefill" and call.grid == (-(-T // BM), B * K)
    tiles = tiles_by_brute_force(T, W, BM, BN)  # (query blocks, key blocks)
    causal = tiles_by_brute_force(T, None, BM, BN)
    pp = call.per_program
    for j in range(B * K):  # every (batch, KV head) program row sees the same tiles
        np.testing.assert_array_equal(pp["tiles"][:, j], tiles.sum(1))
        np.testing.assert_array_equal(pp["skipped"][:, j], causal.sum(1) - tiles.sum(1))
        np.testing.assert_array_equal(pp["first_block"][:, j], tiles.argmax(1))
        np.testing.assert_array_equal(pp["last_block"][:, j], tiles.shape[1] - 1 - tiles[:, ::-1].argmax(1))
    np.testing.assert_array_equal(call.tile_map(), tiles)  # wholly-outside tiles are never visited
    keys_in_block = np.minimum(BN, T - BN * np.arange(tiles.shape[1]))
    queries_in_block = np.minimum(BM, T - BM * np.arange(tiles.shape[0]))
    kv_keys = (tiles * keys_in_block[None, :]).sum()
    assert call.totals["kv_bytes"] == B * K * kv_keys * D * 2 * 2  # K and V, 2 bytes each
    pairs = (tiles * queries_in_block[:, None] * keys_in_block[None, :]).sum()
    assert call.totals["flops"] == B * H * 4 * D * pairs
    visible = int(window_mask(T, W).sum())
    assert visible == bench.visible_pairs(T, W)
    assert call.totals["visible_pairs"] == B * H * visible
    assert call.totals["tiles"] == B * K * tiles.sum()


def test_counters_off_without_trace():
    """No trace: a one-element dummy buffer and COUNT=False (the counting code compiled out)."""
    from mistral_lab.kernels import counters

    buf, on = counters.buffer((3, 2), 7, "cpu")
    assert not on and buf.numel() == 1
    with mistral_lab.trace.record():
        buf, on = counters.buffer((3, 2), 7, "cpu")
    assert on and buf.numel() == 3 * 2 * 7


# ----------------------------------------------------------------------------- chunk

def filled_cache(args, B, n_tokens, dtype, seed=0, step=7):
    """A cache holding positions 0..n_tokens-1, written by KVCache.write in pieces (slots wrap)."""
    g = torch.Generator().manual_seed(seed)
    cache = KVCache.rolling(args, B, dtype=dtype, device=DEV) if args.sliding_window else KVCache.full(args, B, dtype=dtype, device=DEV)
    for s in range(0, n_tokens, step):
        n = min(step, n_tokens - s)
        shape = (B, n, args.n_kv_heads, args.head_dim)
        cache.reserve(s + n)
        cache.write(0, rand(*shape, dtype=dtype, gen=g), rand(*shape, dtype=dtype, gen=g), s)
    cache.next_pos = n_tokens
    return cache


def chunk_args(W, H=4, K=2, D=16):
    return preset("tiny").replace(sliding_window=W, n_heads=H, n_kv_heads=K, head_dim=D, n_layers=1)


@pytest.mark.parametrize("W", [8, 12])
@pytest.mark.parametrize("chunk", ["1", "W-1", "W", "W+1", "2W"])
def test_chunk_over_wrapped_buffer(W, chunk):
    T = {"1": 1, "W-1": W - 1, "W": W, "W+1": W + 1, "2W": 2 * W}[chunk]
    args = chunk_args(W)
    B, p0 = 2, 3 * W + 5  # the buffer has wrapped three times
    cache = filled_cache(args, B, p0, torch.float32, seed=W + T)
    q, k, v = qkv(B, T, args.n_heads, args.n_kv_heads, args.head_dim, torch.float32, seed=T)
    pos = arange(p0, p0 + T).expand(B, T)
    before = cache.k[0].clone()
    out = BACKEND.chunk(q, k, v, pos, cache.layer(0), W)
    close(out, REF.chunk(q, k, v, pos, cache.layer(0), W), torch.float32)
    assert torch.equal(cache.k[0], before)  # read in place, not modified


@pytest.mark.parametrize("p0,T,W,dtype", [
    (0, 9, 8, torch.float32),       # empty buffer (all slots -1)
    (5, 6, 8, torch.float16),       # partially filled, not wrapped
    (20, 3, 16, torch.float16),     # W = block
    (23, 10, None, torch.float32),  # no window: a full cache, every past position visible
])
def test_chunk_partial_and_full_caches(p0, T, W, dtype):
    args = chunk_args(W, H=8, K=2, D=32)
    cache = filled_cache(args, 1, p0, dtype, seed=p0)
    if W is None:
        cache.reserve(p0 + T)
    q, k, v = qkv(1, T, 8, 2, 32, dtype, seed=p0 + 1)
    pos = arange(p0, p0 + T)[None]
    out = BACKEND.chunk(q, k, v, pos, cache.layer(0), W)
    close(out, ref_chunk(q, k, v, pos, cache, W), dtype)


def test_chunk_counters_visit_only_visible_cache_positions():
    W, B, p0, T = 12, 1, 40, 21
    args = chunk_args(W)
    cache = filled_cache(args, B, p0, torch.float32)
    q, k, v = qkv(B, T, 4, 2, 16, torch.float32)
    pos = arange(p0, p0 + T)
    with mistral_lab.trace.record() as tr:
        BACKEND.chunk(q, k, v, pos[None], cache.layer(0), W)
    (call,) = tr.kernel_calls
    BM, BN, pp = call.block_m, call.block_n, call.per_program
    cpos = cache.slot_pos[0, 0]
    vis_cache = mask_for(pos, cpos, W)  # (T, S)
    for i in range(call.grid[0]):
        rows = vis_cache[i * BM:(i + 1) * BM].any(0)
        seen = cpos[rows]
        lo, hi = pp["cache_lo"][i, 0], pp["cache_hi"][i, 0]
        if seen.numel():  # exactly the run of visible buffered positions, nothing older
            assert (lo, hi) == (int(seen.min()), int(seen.max()) + 1)
        else:
            assert lo == hi
        assert pp["cache_tiles"][i, 0] == -(-(hi - lo) // BN)
    all_pos = torch.cat((cpos, pos))
    visible = int(mask_for(pos, all_pos, W).sum())
    assert call.totals["visible_pairs"] == B * 4 * visible


# ----------------------------------------------------------------------------- decode

@pytest.mark.parametrize("p,S,W,G,D,dtype,splits", [
    (3, 8, 8, 2, 16, torch.float32, None),      # partially filled: slots 4..7 empty (-1)
    (7, 8, 8, 1, 32, torch.float32, 3),         # exactly full
    (29, 8, 8, 4, 16, torch.float32, None),     # wrapped
    (29, 16, 16, 2, 64, torch.float16, 2),
    (44, 64, 12, 2, 16, torch.float32, 4),      # a buffer longer than the window: only W slots read
    (50, 64, None, 2, 16, torch.float16, 3),    # no window, partially filled full cache
    (9, 40, 12, 2, 128, torch.float32, 1),      # head_dim 128
    (30, 8, 8, 3, 16, torch.float32, 8),        # more splits than tiles: empty splits combine to nothing
])
def test_decode_matches_reference(p, S, W, G, D, dtype, splits):
    K, B = 2, 2
    args = preset("tiny").replace(sliding_window=W, n_heads=G * K, n_kv_heads=K, head_dim=D, n_layers=1)
    if W is None or S != W:
        cache = KVCache(args, B, S, grow=W is None, dtype=dtype, device=DEV)
        g = torch.Generator().manual_seed(p)
        for s in range(p + 1):
            cache.write(0, rand(B, 1, K, D, dtype=dtype, gen=g), rand(B, 1, K, D, dtype=dtype, gen=g), s)
    else:
        cache = filled_cache(args, B, p + 1, dtype, seed=p)
    q = rand(B, 1, G * K, D, dtype=dtype, gen=torch.Generator().manual_seed(1))
    position = torch.tensor([[p]] * B, device=DEV)
    out = decode_attention.decode_attention(q, cache.k[0], cache.v[0], cache.slot_pos[0], position, W, num_splits=splits)
    close(out, ref_decode(q, position, cache, W), dtype)


@pytest.mark.parametrize("p,S,W", [(3, 16, 16), (40, 16, 16), (40, 48, 12)])
def test_decode_counters(p, S, W):
    K, G, D, B = 2, 2, 16, 1
    args = preset("tiny").replace(sliding_window=W, n_heads=G * K, n_kv_heads=K, head_dim=D, n_layers=1)
    cache = KVCache(args, B, S, dtype=torch.float16, device=DEV)
    for s in range(p + 1):
        cache.write(0, rand(B, 1, K, D, dtype=torch.float16), rand(B, 1, K, D, dtype=torch.float16), s)
    q = rand(B, 1, G * K, D, dtype=torch.float16)
    with mistral_lab.trace.record() as tr:
        BACKEND.decode(q, torch.tensor([[p]], device=DEV), cache.layer(0), W)
    (call,) = tr.kernel_calls
    read = min(p + 1, W, S)  # slots holding a visible position: the only ones read
    assert call.totals["kv_bytes"] == B * K * read * D * 2 * 2
    assert call.totals["skipped"] == B * K * (S - read)
    assert call.totals["visible_pairs"] == B * G * K * int(mask_for(torch.tensor([p], device=DEV), cache.slot_pos[0, 0], W).sum())
    assert call.totals["flops"] == B * G * K * 4 * D * read
    first, last = call.per_program["first_pos"][:, 0], call.per_program["last_pos"][:, 0]
    used = first >= 0
    assert first[used].min() == p + 1 - read and last[used].max() == p  # positions, not slots
    assert call.totals["tiles"] >= B * K * -(-read // call.block_n)


# ----------------------------------------------------------------------------- cache write

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T,start", [(1, 0), (5, 6), (8, 8), (19, 13), (3, 30)])
def test_cache_write_matches_kvcache(dtype, T, start):
    args = preset("tiny")  # W = 8 slots
    B, K, D = 2, args.n_kv_heads, args.head_dim
    a, b = KVCache.rolling(args, B, dtype=dtype, device=DEV), KVCache.rolling(args, B, dtype=dtype, device=DEV)
    g = torch.Generator().manual_seed(T)
    k0, v0 = rand(B, 6, K, D, gen=g), rand(B, 6, K, D, gen=g)
    a.write(1, k0, v0, 0)
    b.write(1, k0, v0, 0)
    k, v = rand(B, T, K, D, gen=g), rand(B, T, K, D, gen=g)  # fp32 in, cast like copy_ does
    with mistral_lab.trace.record() as ta:
        a.write(1, k, v, start)
    with mistral_lab.trace.record() as tb:
        BACKEND.write(b.layer(1), k, v, arange(start, start + T).expand(B, T))
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v) and torch.equal(a.slot_pos, b.slot_pos)
    assert ta.cache_writes == tb.cache_writes
    (call,) = tb.kernel_calls
    kept = min(T, args.sliding_window)
    assert call.totals == {"slots": B * kept, "bytes": B * kept * 2 * K * D * b.k.element_size()}


# ----------------------------------------------------------------------------- the model

@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ref = Transformer(preset("tiny")).eval().to(DEV)
    tri = Transformer(preset("tiny"), backend="triton").eval().to(DEV)
    tri.load_state_dict(ref.state_dict())
    return ref, tri


def test_model_prefill_chunks_and_decode(models):
    ref, tri = models
    W = ref.args.sliding_window
    tokens = torch.randint(0, ref.args.vocab_size, (1, 3 * W + 5), generator=torch.Generator().manual_seed(2)).to(DEV)
    with torch.no_grad():
        full = ref(tokens)
        torch.testing.assert_close(tri(tokens), full, **TOL[torch.float32])  # one-shot pre-fill
        for chunk in (1, W + 1):
            logits = prefill(tri, tokens, tri.new_cache(), chunk, all_logits=True)
            torch.testing.assert_close(logits, full, **TOL[torch.float32])
        # decode through the rolling buffer past 3W, step by step, against the torch backend
        c_ref, c_tri = ref.new_cache(), tri.new_cache()
        prefill(ref, tokens[:, :W - 1], c_ref)
        prefill(tri, tokens[:, :W - 1], c_tri)
        for t in range(W - 1, tokens.shape[1]):
            a = ref(tokens[:, t:t + 1], c_ref)
            b = tri(tokens[:, t:t + 1], c_tri)
            torch.testing.assert_close(b, a, **TOL[torch.float32])
        assert torch.equal(c_ref.slot_pos, c_tri.slot_pos)


def test_model_generate_same_tokens(models):
    ref, tri = models
    W = ref.args.sliding_window
    prompt = [1, 17, 42, 99, 5]
    a = generate(ref, prompt, 3 * W)
    with mistral_lab.trace.record() as tr:
        b = generate(tri, prompt, 3 * W)
    assert a.new_tokens == b.new_tokens
    kinds = {c.kernel for c in tr.kernel_calls}
    assert {"swa_prefill", "decode_attention"} <= kinds or {"chunk_attention", "decode_attention"} <= kinds


# ----------------------------------------------------------------------------- bench (CPU parts)

def test_bench_counts_visible_pairs():
    for n in (1, 5, 16, 17, 40):
        for W in (1, 4, 16, 100, None):
            assert bench.visible_pairs(n, W) == int(window_mask(n, W).sum())
    assert bench.attention_flops(8192, 4096, 32, 128) == 4 * 32 * 128 * (4096 * 4097 // 2 + 4096 * 4096)
    assert bench.decode_flops(32768, 4096, 32, 128) == 4 * 32 * 128 * 4096


def test_flex_mask_mod_is_visible():
    from torch.nn.attention.flex_attention import create_mask

    for W in (1, 3, 8, None):
        assert torch.equal(create_mask(bench.window_mask_mod(W), None, None, 20, 20, device="cpu")[0, 0], window_mask(20, W))
        one = create_mask(bench.window_mask_mod(W, q_offset=17), None, None, 1, 20, device="cpu")[0, 0]
        assert torch.equal(one, mask_for(torch.tensor([17]), torch.arange(20), W))


def test_bench_rolling_buffer_layout():
    """The benchmarks' buffers (a real KVCache): slot = position mod S, -1 and zeros where nothing was written."""
    ck, cv, cpos = bench.one_layer_buffer(10, 4, 2, 8, torch.float16, device="cpu")
    assert cpos.tolist() == [8, 9, 6, 7] and ck.shape == cv.shape == (1, 4, 2, 8) and ck.dtype == torch.float16
    ck, cv, cpos = bench.one_layer_buffer(2, 4, 2, 8, torch.float32, device="cpu")
    assert cpos.tolist() == [0, 1, -1, -1] and not ck[:, 2:].any() and ck[:, :2].all() and cv[:, :2].all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_bench_without_gpu_says_so():
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        bench.bench_attention([128])
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        bench.bench_decode([128])


def test_bench_ratios():
    rows = bench._add_ratios([dict(kind="prefill", N=4096, impl="a", ms=1.0, tflops=2.0),
                              dict(kind="prefill", N=4096, impl="b", ms=2.0, tflops=1.0)])
    assert rows[0]["vs"] == {"b": 2.0} and rows[1]["vs"] == {"a": 0.5}


# ----------------------------------------------------------------------------- compiles for the GPU

AOT = textwrap.dedent('''
    import inspect, os, sys
    assert os.environ.get("TRITON_INTERPRET") != "1"
    import triton
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget
    from mistral_lab.kernels import swa_attention as S, chunk_attention as C, decode_attention as Dk, cache_write as W

    def build(fn, ptrs, consts, **opts):
        names = list(inspect.signature(fn.fn).parameters)
        sig = {n: "constexpr" if n in consts else ptrs.get(n, "fp32" if n == "qk_scale" else "i32") for n in names}
        # like the JIT, which specialises pointers and strides divisible by 16 (16-byte loads)
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
                 if sig[n].startswith("*") or n.startswith("stride")}
        src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()},
                        attrs=attrs)
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)

    bf = "*bf16"
    att = dict(GROUP=4, GROUP_P2=4, HEAD_DIM=128, BLOCK_D=128, BLOCK_M=32, BLOCK_N=64, WINDOWED=True,
               ELEM_BYTES=2, DOT_F32=False, PRECISION="ieee")
    for count in (False, True):
        build(S._swa_prefill_kernel, dict(Q=bf, K=bf, V=bf, O=bf, POS="*i64", CTR="*i64"),
              dict(att, COUNT=count), num_warps=8, num_stages=3)
        build(C._chunk_attention_kernel, dict(Q=bf, K=bf, V=bf, CK=bf, CV=bf, O=bf, CPOS="*i64", POS="*i64", CTR="*i64"),
              dict(att, COUNT=count), num_warps=8, num_stages=3)
        build(Dk._decode_split_kernel, dict(Q=bf, CK=bf, CV=bf, CPOS="*i64", POS="*i64", CTR="*i64",
              MID_O="*fp32", MID_ML="*fp32"), dict(NUM_SPLITS=33, GROUP=4, ROWS=16, HEAD_DIM=128, BLOCK_D=128,
              BLOCK_N=64, WINDOWED=True, COUNT=count, ELEM_BYTES=2, DOT_F32=False, PRECISION="ieee"),
              num_warps=4, num_stages=2)
        build(W._cache_write_kernel, dict(K_SRC=bf, V_SRC=bf, K_DST=bf, V_DST=bf, SLOT_POS="*i64", POS="*i64",
                                          LAST="*i64", CTR="*i64"),
              dict(HEAD_DIM=128, N_KV_HEADS=8, BLOCK=1024, COUNT=count, ELEM_BYTES=2), num_warps=4)
    build(S._swa_prefill_kernel, dict(Q=bf, K=bf, V=bf, O=bf, POS="*i64", CTR="*i64"),
          dict(att, WINDOWED=False, COUNT=False), num_warps=8, num_stages=3)
    build(Dk._decode_combine_kernel, dict(MID_O="*fp32", MID_ML="*fp32", O=bf),
          dict(NUM_SPLITS=33, SPLITS_P2=64, HEAD_DIM=128, BLOCK_D=128), num_warps=4)
    print("compiled")
''')


def test_kernels_compile_for_sm90():
    """The interpreter accepts code the compiler rejects (loop-carried types, constexpr
    misuse): compile every kernel for an H100 (bf16, Mistral 7B's shapes) with the
    ptxas bundled in Triton's wheel -- no GPU needed."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("Triton's wheel has no bundled ptxas here")
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # compile, whatever this session runs
    root = os.path.dirname(os.path.dirname(os.path.abspath(mistral_lab.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + sys.path)
    r = subprocess.run([sys.executable, "-c", AOT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]
