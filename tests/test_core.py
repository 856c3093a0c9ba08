"""The reference model's invariants: window boundaries, rolling buffer = full cache + window,
chunked pre-fill invariance, GQA, generation, and clear errors on bad input."""
import pytest
import torch
import torch.nn.functional as F

import mistral_lab as ml
from mistral_lab import ops
from mistral_lab.cache import KVCache, cache_bytes
from mistral_lab.generate import prefill, score
from mistral_lab.sampling import sample
from mistral_lab.masks import mask_for, visible, window_mask

from tolerances import TOL

W = 8
ARGS = ml.ModelArgs(dim=64, n_layers=3, head_dim=16, hidden_dim=160, n_heads=4, n_kv_heads=2,
                    vocab_size=256, sliding_window=W)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ml.Transformer(ARGS).eval()
    with torch.no_grad():  # larger-than-default weights so that attention is far from uniform
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    return m


def tokens(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, ARGS.vocab_size, (1, n), generator=g)


# ---------------------------------------------------------------- window boundaries

@pytest.mark.parametrize("n", [W - 1, W, W + 1, 2 * W])
def test_visible_key_count_per_query(n):
    counts = window_mask(n, W).sum(1).tolist()
    assert counts == [min(q + 1, W) for q in range(n)]  # W keys including self, fewer at the start


def test_window_endpoints_are_exact():
    assert visible(10, 10, W) and visible(10, 10 - W + 1, W)  # self and the oldest key in the window
    assert not visible(10, 10 - W, W)  # W positions back: outside (the paper's W+1 reading would include it)
    assert not visible(10, 11, W)  # the future
    assert not visible(10, -1, W)  # an empty slot


def test_no_future_key_ever_visible():
    q = torch.arange(50)[:, None]
    k = torch.arange(50)[None, :]
    for w in (1, 3, W, 49, None):
        assert not (visible(q, k, w) & (k > q)).any()


def test_window_at_least_sequence_is_plain_causal():
    n = 12
    assert torch.equal(window_mask(n, n), window_mask(n, None))
    assert torch.equal(window_mask(n, 100), torch.tril(torch.ones(n, n, dtype=torch.bool)))


def test_reference_attention_matches_sdpa():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 20, 4, 16), torch.randn(2, 20, 2, 16), torch.randn(2, 20, 2, 16)
    pos = torch.arange(20)
    rep = lambda t: t.repeat_interleave(2, dim=2).transpose(1, 2)  # (B, H, T, D), the copy we avoid
    sdpa = lambda mask: F.scaled_dot_product_attention(rep(q.transpose(1, 2).transpose(1, 2)), rep(k), rep(v),
                                                       attn_mask=mask).transpose(1, 2)
    # a window >= sequence is exactly SDPA's causal attention
    causal = F.scaled_dot_product_attention(q.transpose(1, 2), rep(k), rep(v), is_causal=True).transpose(1, 2)
    torch.testing.assert_close(ops.attention(q, k, v, pos, pos, 20), causal, **TOL[torch.float32])
    # a real window equals SDPA with the window as an explicit mask (is_causal alone would drop it)
    windowed = F.scaled_dot_product_attention(q.transpose(1, 2), rep(k), rep(v), attn_mask=window_mask(20, 5)).transpose(1, 2)
    torch.testing.assert_close(ops.attention(q, k, v, pos, pos, 5), windowed, **TOL[torch.float32])
    assert not torch.allclose(windowed, causal, atol=1e-3)


def test_attention_ignores_slot_order():
    """Keys in a rolled buffer: a permutation of (key, position) pairs changes nothing."""
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 3, 4, 16), torch.randn(1, 10, 2, 16), torch.randn(1, 10, 2, 16)
    qp, kp = torch.tensor([7, 8, 9]), torch.arange(10)
    perm = torch.randperm(10)
    torch.testing.assert_close(ops.attention(q, k, v, qp, kp, 4), ops.attention(q, k[:, perm], v[:, perm], qp, kp[perm], 4))


# ---------------------------------------------------------------- rolling buffer

def test_rolling_buffer_equals_full_cache_every_step(model):
    """Decode 5W tokens one at a time: rolling buffer (W slots) vs full cache, identical logits."""
    ids = tokens(5 * W)
    rolling, full = model.new_cache(), model.new_cache(full=True)
    assert rolling.capacity == W
    with torch.no_grad():
        for t in range(ids.shape[1]):
            a = model(ids[:, t:t + 1], rolling)
            b = model(ids[:, t:t + 1], full)
            torch.testing.assert_close(a, b, **TOL[torch.float32])  # same math, other summation order
    assert full.capacity >= 5 * W and rolling.capacity == W
    # and both equal one-shot attention over the whole sequence, at the last step
    torch.testing.assert_close(a[:, -1], model(ids)[:, -1], **TOL[torch.float32])


def test_slots_hold_position_mod_w(model):
    cache = model.new_cache()
    prefill(model, tokens(2 * W + 3), cache)
    n = 2 * W + 3
    expected = [max(p for p in range(n) if p % W == s) for s in range(W)]
    for layer in range(ARGS.n_layers):
        assert cache.positions(layer) == expected


def test_trace_records_writes_and_overwrites(model):
    with ml.trace.record(layers=[0]) as t:
        ml.generate(model, tokens(W - 2)[0].tolist(), 2 * W)
    writes = t.cache_writes
    n = W - 2 + 2 * W - 1  # prompt + decode steps (the last token is sampled, never fed back)
    assert [w.position for w in writes] == list(range(n))
    assert all(w.slot == w.position % W and w.layer == 0 for w in writes)
    assert all(w.evicted == (w.position - W if w.position >= W else -1) for w in writes)
    assert len(t.overwrites) == n - W


def test_trace_off_records_nothing(model, monkeypatch):
    with ml.trace.record() as t:
        prefill(model, tokens(W), model.new_cache())
    n = len(t.cache_writes)
    assert n == ARGS.n_layers * W  # the same call records while a trace is on
    assert ml.trace.active() is None
    monkeypatch.setattr(ml.trace.Trace, "add_attention", lambda *a: pytest.fail("attention recorded without a trace"))
    monkeypatch.setattr(ml.trace.CacheWrite, "__init__", lambda *a: pytest.fail("a write recorded without a trace"))
    prefill(model, tokens(3 * W), model.new_cache())
    assert len(t.cache_writes) == n  # a closed trace gets nothing more


def test_chunk_longer_than_buffer_writes_only_survivors(model):
    cache = model.new_cache()
    prefill(model, tokens(3 * W + 1), cache, chunk_size=3 * W + 1)
    assert sorted(cache.positions()) == list(range(2 * W + 1, 3 * W + 1))


def test_cache_bytes_7b_at_32k():
    a = ml.preset("mistral-7b-v0.1")
    assert cache_bytes(a, 32768, rolling=False) == 4 * 2**30
    assert cache_bytes(a, 32768, rolling=True) == 2**29
    cache = KVCache.rolling(ARGS, dtype=torch.float16)
    assert cache.nbytes == cache_bytes(ARGS, 10_000, rolling=True)


# ---------------------------------------------------------------- chunked pre-fill

@pytest.mark.parametrize("chunk", [1, W - 1, W, W + 1, 2 * W, None])
def test_chunked_prefill_invariance(model, chunk):
    ids = tokens(4 * W + 3)
    one_shot = model(ids)
    chunked = prefill(model, ids, model.new_cache(), chunk if chunk else ids.shape[1], all_logits=True)
    torch.testing.assert_close(chunked, one_shot, **TOL[torch.float32])


def test_generated_text_rescored_in_chunks(model):
    g = ml.generate(model, tokens(5)[0].tolist(), 4 * W, temperature=1.0, seed=3)
    for chunk in (1, W - 1, W + 1, 3 * W):
        lp = score(model, g.tokens, chunk)[len(g.prompt) - 1:]
        torch.testing.assert_close(lp, torch.tensor(g.logprobs), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- generation

def test_generation_runs_past_any_table(model):
    g = ml.generate(model, [1, 2, 3], 300)  # >> W and > ARGS.max_seq_len? RoPE has no table at all
    assert len(g.new_tokens) == 300 and g.cache.capacity == W
    assert g.stats.decode_tokens_per_s > 0 and g.stats.prefill_tokens_per_s > 0


def test_sampling_is_seeded_and_top_k1_is_greedy(model):
    p = tokens(6)[0].tolist()
    a = ml.generate(model, p, 20, temperature=1.0, seed=7)
    b = ml.generate(model, p, 20, temperature=1.0, seed=7)
    c = ml.generate(model, p, 20, temperature=1.0, seed=8)
    assert a.new_tokens == b.new_tokens != c.new_tokens
    greedy = ml.generate(model, p, 20)
    assert ml.generate(model, p, 20, temperature=1.0, top_k=1, seed=1).new_tokens == greedy.new_tokens
    assert ml.generate(model, p, 20, temperature=1.0, top_p=1e-6, seed=1).new_tokens == greedy.new_tokens


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample(logits, 1.0, top_p=0.8, generator=g)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.8; tokens 2 and 3 are cut


def test_eos_stops_and_streaming_sees_every_token(model):
    p = tokens(6)[0].tolist()
    greedy = ml.generate(model, p, 30).new_tokens
    eos = greedy[10]
    seen = []
    g = ml.generate(model, p, 30, eos_id=eos, on_token=seen.append)
    assert g.stop_reason == "eos" and g.new_tokens == greedy[: greedy.index(eos) + 1] == seen


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("change, message", [
    (dict(sliding_window=0), "sliding_window must be a positive integer"),
    (dict(sliding_window=-4), "sliding_window must be a positive integer"),
    (dict(n_heads=4, n_kv_heads=3), r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"),
    (dict(dim=0), "dim must be a positive integer"),
])
def test_bad_config(change, message):
    with pytest.raises(ValueError, match=message):
        ARGS.replace(**change)


def test_bad_tokens_and_prompts(model):
    with pytest.raises(ValueError, match=r"token id 256 is outside the vocabulary \[0, 256\)"):
        model(torch.tensor([[1, 256]]))
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
        ml.generate(model, [3, -1], 5)
    with pytest.raises(ValueError, match="prompt is empty"):
        ml.generate(model, [], 5)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="chunk_size must be a positive"):
            ml.generate(model, [1, 2], 5, chunk_size=bad)
        with pytest.raises(ValueError, match="chunk_size must be a positive"):
            prefill(model, tokens(4), model.new_cache(), bad)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        ml.generate(model, [1], 5, temperature=-1)
    with pytest.raises(ValueError, match="unknown attention backend"):
        model.backend = "cuda-magic"


def test_full_attention_model_needs_capacity():
    a = ARGS.replace(sliding_window=None)
    with pytest.raises(ValueError, match="no sliding window"):
        KVCache.rolling(a)
    m = ml.Transformer(a).eval()
    g = ml.generate(m, [1, 2, 3], 40)  # full attention: never a silent window
    assert g.cache.grow and g.cache.capacity >= 43
    assert score(m, g.tokens).shape == (42,)
    cache = KVCache(a, capacity=10)
    with pytest.raises(ValueError, match="does not fit a 10-slot cache"):
        prefill(m, tokens(12), cache)
