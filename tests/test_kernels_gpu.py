"""The compiled kernels on a CUDA GPU, at Mistral 7B's shapes and in bf16.

Skipped without a GPU (CI has none; tests/test_kernels.py covers the same code in
Triton's interpreter there, and runs compiled on a GPU too). Errors are relative,
||out - ref|| / ||ref||, against the fp32 reference on the same (upcast) inputs, with
fresh random inputs for every check: bf16 operands land between 1e-3 and 1e-2.
"""
import pytest
import torch

from mistral_lab.kernels import use_interpreter_if_no_gpu

if not torch.cuda.is_available() or use_interpreter_if_no_gpu():
    pytest.skip("needs a CUDA GPU with compiled Triton kernels", allow_module_level=True)

import mistral_lab  # noqa: E402
from mistral_lab import ops  # noqa: E402
from mistral_lab.generate import generate  # noqa: E402
from mistral_lab.kernels import chunk_attention, decode_attention, triton_backend  # noqa: E402
from mistral_lab.bench.kernels import one_layer_buffer  # noqa: E402

TRI = triton_backend()
DEV = "cuda"
REL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm()).item()


def qkv(B, T, H, K, D, dtype):
    return (torch.randn(B, T, H, D, device=DEV, dtype=dtype), torch.randn(B, T, K, D, device=DEV, dtype=dtype),
            torch.randn(B, T, K, D, device=DEV, dtype=dtype))


@pytest.mark.parametrize("T,W", [(4096, 4096), (8192, 4096), (5000, 1000), (3000, None)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prefill_7b_shapes(T, W, dtype):
    q, k, v = qkv(1, T, 32, 8, 128, dtype)
    pos = torch.arange(T, device=DEV)
    out = TRI.prefill(q, k, v, pos, W)
    ref = ops.attention(q.float(), k.float(), v.float(), pos, pos, W)
    assert rel_err(out, ref) < REL[dtype]


@pytest.mark.parametrize("p0,T", [(5000, 1), (5000, 512), (9000, 4096), (100, 300)])
def test_chunk_7b_shapes_bf16(p0, T):
    """A chunk over a wrapped 4096-slot buffer, read in place."""
    W, K, D = 4096, 8, 128
    ck, cv, cpos = one_layer_buffer(p0, W, K, D, torch.bfloat16)
    q, k, v = qkv(1, T, 32, K, D, torch.bfloat16)
    pos = torch.arange(p0, p0 + T, device=DEV)
    out = chunk_attention.chunk_attention(q, k, v, pos, ck, cv, cpos, W)
    ref = ops.attention(q.float(), torch.cat((ck, k), 1).float(), torch.cat((cv, v), 1).float(), pos,
                        torch.cat((cpos, pos)), W)
    assert rel_err(out, ref) < REL[torch.bfloat16]


@pytest.mark.parametrize("n", [17, 4096, 32768])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_7b_shapes(n, dtype):
    """One query at position n - 1 over the rolling buffer (4096 slots, slot = pos mod 4096)."""
    W, S = 4096, 4096
    ck, cv, cpos = one_layer_buffer(n, S, 8, 128, dtype)
    q = torch.randn(1, 1, 32, 128, device=DEV, dtype=dtype)
    position = torch.tensor([n - 1], device=DEV)
    out = decode_attention.decode_attention(q, ck, cv, cpos, position, W)
    ref = ops.attention(q.double(), ck.double(), cv.double(), position, cpos, W)
    assert rel_err(out, ref) < REL[dtype]


def test_shipped_model_generates_the_same_tokens_on_the_gpu():
    """The shipped model, fp32 on the GPU: triton and torch backends, 200 greedy tokens
    (past W = 64 three times), and both equal to the CPU reference's tokens."""
    tok = mistral_lab.load_tokenizer()
    prompt = tok.encode("ROMEO:")
    cpu = generate(mistral_lab.load(), prompt, 200)
    ref = generate(mistral_lab.load(device=DEV), prompt, 200)
    tri = generate(mistral_lab.load(device=DEV, backend="triton"), prompt, 200)
    assert tri.new_tokens == ref.new_tokens
    agree = sum(a == b for a, b in zip(cpu.new_tokens, ref.new_tokens))
    assert agree >= 150, f"GPU and CPU greedy tokens agree on {agree}/200 only"  # fp32 rounding may split late ties


# ---- the static decode step (static_decode.py): its CUDA graph against the eager step and the model

def _static_lockstep(model, prompts, steps, graph):
    """Greedy tokens and logits of StaticDecode (graph or eager) from the same pre-fill."""
    from mistral_lab.generate import prefill
    from mistral_lab.engines.static import StaticDecode

    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long, device=DEV)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = torch.tensor(p)
    with torch.inference_mode():
        cache = model.new_cache(len(prompts))
        token = prefill(model, ids, cache, lengths=lengths).argmax(-1)
        step = StaticDecode(model, cache, end=int(lengths.max()) + steps, graph=graph)
        running = torch.ones(len(prompts), dtype=torch.bool)
        toks, logits = [], []
        for _ in range(steps):
            token, _ = step(token, running)
            toks.append(token.tolist())
            logits.append(step.logits.clone())
    return toks, torch.stack(logits), step


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_static_graph_equals_eager_and_model_fp32(backend):
    """The shipped model in fp32: the replayed graph gives the eager step's logits (the same
    kernels) and the readable model's greedy tokens, batch 3 ragged, through wraps of W = 64."""
    model = mistral_lab.load(device=DEV, backend=backend, dtype=torch.float32)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    g_toks, g_logits, step = _static_lockstep(model, prompts, 150, graph=True)
    e_toks, e_logits, _ = _static_lockstep(model, prompts, 150, graph=False)
    assert step.graph is not None
    assert g_toks == e_toks
    torch.testing.assert_close(g_logits, e_logits, atol=1e-5, rtol=1e-5)
    ref = generate(model, prompts, 151, engine="model")
    for b in range(3):
        assert [t[b] for t in g_toks] == ref[b].new_tokens[1:]


def test_static_graph_bf16_7b_layer_shapes():
    """bf16, Mistral 7B's layer shapes (2 layers, small vocab): graph == eager exactly,
    and the readable model's logits within the bf16 tolerance."""
    from mistral_lab.bench import throughput
    from mistral_lab.config import preset

    args = preset("mistral-7b-v0.1").replace(n_layers=2, vocab_size=1024)
    model = throughput.random_model(args, dtype=torch.bfloat16, device=DEV, backend="triton")
    prompts = [[1, 2, 3], [4, 5]]
    g_toks, g_logits, _ = _static_lockstep(model, prompts, 20, graph=True)
    e_toks, e_logits, _ = _static_lockstep(model, prompts, 20, graph=False)
    assert g_toks == e_toks and torch.equal(g_logits, e_logits)
    ref = generate(model, prompts, 21, engine="model")
    agree = sum(t[0] == x for t, x in zip(g_toks, ref[0].new_tokens[1:]))
    assert agree >= 15, f"bf16 static vs model greedy tokens agree on {agree}/20"  # near-ties may split


def test_static_graph_replay_never_syncs():
    """Replaying the captured step under sync debug mode 'error': any host sync raises."""
    model = mistral_lab.load(device=DEV, dtype=torch.float32)
    from mistral_lab.generate import prefill
    from mistral_lab.engines.static import WARMUP_STEPS, StaticDecode
    from mistral_lab.sampling import Sampler

    with torch.inference_mode():
        cache = model.new_cache(2)
        token = prefill(model, torch.tensor([[1, 2, 3], [4, 5, 6]], device=DEV), cache).argmax(-1)
        step = StaticDecode(model, cache, end=200,
                            sampler=Sampler(2, temperature=0.8, top_p=0.9, seed=0, device=DEV))
        running = torch.ones(2, dtype=torch.bool)
        for _ in range(WARMUP_STEPS + 1):
            token, _ = step(token, running)
        assert step.graph is not None
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(100):
                token, _ = step(token, running)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        assert torch.equal(step.pos.cpu(), cache.seq_pos)


def test_generate_auto_takes_the_static_graph_on_cuda():
    model = mistral_lab.load(device=DEV, dtype=torch.float32)
    from mistral_lab.engines import choose
    from mistral_lab.engines.static import StaticDecode
    from mistral_lab.sampling import Sampler

    with torch.inference_mode():
        assert isinstance(choose(model, model.new_cache(4), "auto", Sampler(4, device=DEV), end=100), StaticDecode)
    tok = mistral_lab.load_tokenizer()
    prompt = tok.encode("ROMEO:")
    assert generate(model, prompt, 100).new_tokens == generate(model, prompt, 100, engine="model").new_tokens
