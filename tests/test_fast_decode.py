"""fast_decode.DecodeStep against the readable model: the same function, fewer ops."""
import pytest
import torch

import mistral_lab
from mistral_lab import trace
from mistral_lab.cache import KVCache
from mistral_lab.config import preset
from mistral_lab.engines.fast import DecodeStep, decode_step
from mistral_lab.generate import generate, prefill
from mistral_lab.model import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(preset("tiny").replace(n_layers=3)).eval()


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("weights,tol", [("fp32", 1e-5), ("fp16", 3e-2)])
def test_step_equals_model_through_wraps(model, full, weights, tol):
    """Every position from 3 to 5W+3: logits and the cache state after each step.
    The fp16 weights are rounded here (the tiny model's are fp32), so its bound is loose."""
    W = model.args.sliding_window
    ids = torch.randint(0, model.args.vocab_size, (1, 5 * W + 3), generator=torch.Generator().manual_seed(1))
    step = DecodeStep(model, weights)
    with torch.inference_mode():
        a, b = model.new_cache(full=full), model.new_cache(full=full)
        prefill(model, ids[:, :3], a)
        prefill(model, ids[:, :3], b)
        for t in range(3, ids.shape[1]):
            ref = model(ids[:, t:t + 1], a)[:, -1]
            out = step(int(ids[0, t]), b)
            assert out.shape == ref.shape and out.dtype == torch.float32
            torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
            assert a.next_pos == b.next_pos and torch.equal(a.slot_pos, b.slot_pos)
            torch.testing.assert_close(b.k, a.k, atol=tol, rtol=tol)
            torch.testing.assert_close(b.v, a.v, atol=tol, rtol=tol)


def test_full_attention_model():
    """No window (v0.2-style config): a growing full cache, every past position visible."""
    torch.manual_seed(4)
    m = Transformer(preset("tiny").replace(n_layers=2, sliding_window=None)).eval()
    ids = list(range(1, 40))
    with torch.inference_mode():
        assert DecodeStep.unsupported(m, m.new_cache()) is None
    a, b = generate(m, ids[:3], 36, engine="model"), generate(m, ids[:3], 36, engine="fast")
    assert a.new_tokens == b.new_tokens and max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def test_full_cache_of_a_windowed_model_reads_only_the_window(model):
    """A growing full cache keeps every position; the step must still attend to the last W."""
    W = model.args.sliding_window
    ids = torch.randint(0, model.args.vocab_size, (1, 3 * W), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        roll, full = model.new_cache(), model.new_cache(full=True)
        step = DecodeStep(model)
        for t in range(ids.shape[1]):
            x = step(int(ids[0, t]), roll)
            y = step(int(ids[0, t]), full)
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    assert full.capacity >= 3 * W > roll.capacity == W


def test_generate_engines_give_the_same_tokens_on_the_shipped_model():
    m, tok = mistral_lab.load(), mistral_lab.load_tokenizer()
    prompt = tok.encode("ROMEO:")
    ref = generate(m, prompt, 200, engine="model")
    fast = generate(m, prompt, 200, engine="fast")
    auto = generate(m, prompt, 200)
    assert fast.new_tokens == ref.new_tokens == auto.new_tokens
    assert max(abs(x - y) for x, y in zip(fast.logprobs, ref.logprobs)) < 1e-4
    assert torch.allclose(fast.cache.k, ref.cache.k, atol=1e-5) and torch.equal(fast.cache.slot_pos, ref.cache.slot_pos)
    half = generate(m, prompt, 200, engine="fast-fp16")  # fp16 products: close, and may split a near-tie
    assert sum(x == y for x, y in zip(half.new_tokens, ref.new_tokens)) >= 20


def test_auto_falls_back_to_the_model_where_the_step_does_not_apply(model):
    prompt = [1, 5, 9]
    with trace.record() as tr:  # traced generations record every cache write of the readable path
        g = generate(model, prompt, 4)
    assert len(tr.cache_writes) > 0 and len(g.new_tokens) == 4
    small = model.new_cache()
    big = KVCache(model.args, 1, 2 * model.args.sliding_window)  # not the rolling layout
    with torch.inference_mode():
        assert DecodeStep.unsupported(model, small) is None and DecodeStep.unsupported(model, big) is not None
        assert DecodeStep.unsupported(model, model.new_cache(batch_size=2)) is not None
    assert DecodeStep.unsupported(model, small) is not None  # grad mode on: the step is inference only
    bf16 = Transformer(model.args).eval().to(torch.bfloat16)  # a bf16 model runs the readable path
    assert len(generate(bf16, prompt, 4).new_tokens) == 4
    with pytest.raises(ValueError, match="fp32 model"):
        generate(bf16, prompt, 4, engine="fast")
    assert generate(model, prompt, 4, cache=big).new_tokens == generate(model, prompt, 4, engine="model").new_tokens


def test_engine_errors_are_one_clear_line(model):
    with pytest.raises(ValueError, match="unknown engine 'turbo'"):
        generate(model, [1, 2], 3, engine="turbo")
    with pytest.raises(ValueError, match="it decodes one sequence, the cache holds 2; use engine='model'"):
        generate(model, [[1, 2], [3]], 3, engine="fast")
    with pytest.raises(ValueError, match="the cache holds 2 sequences but 1 prompts"):
        generate(model, [1, 2], 3, cache=model.new_cache(batch_size=2))
    with pytest.raises(ValueError, match="weights must be one of"):
        DecodeStep(model, "int8")


def test_packed_step_is_rebuilt_when_weights_change():
    torch.manual_seed(3)
    m = Transformer(preset("tiny").replace(n_layers=1)).eval()
    s1 = decode_step(m)
    assert decode_step(m) is s1
    with torch.no_grad():
        m.layers[0].attention.wq.weight.mul_(0.5)  # in place: bumps the tensor's version
    s2 = decode_step(m)
    assert s2 is not s1
    assert torch.equal(s2.layers[0][2][:, :m.args.n_heads * m.args.head_dim],
                       m.layers[0].attention.wq.weight.t())


def test_cpu_decode_benchmark_runs_and_reports_every_contender():
    from mistral_lab.bench import cpu_decode as bench

    r = bench.cpu_decode(new_tokens=6, repeats=1)
    assert set(r["results"]) == {"mistral_lab_model", "mistral_lab_fast", "mistral_lab_fast_fp16",
                                 "transformers_fp32", "transformers_default"}
    assert r["transformers_default_dtype"] == "float16"  # the shipped checkpoint's dtype
    assert r["same_greedy_tokens_of"]["fast_fp32 vs transformers_fp32"] == 6
    assert all(v > 0 for v in r["speedups"].values()) and r["threads"] >= 1
