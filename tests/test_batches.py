"""Batches of prompts of different lengths: one cache, each sequence with its own positions,
its own rows of slots and its own stop, and exactly the result of running it alone.

Prompt lengths {1, W-1, W+3, 3W}, greedy, EOS forced at different steps for two of them,
generation through the rolling buffer past several wraps, pre-fill chunk sizes {1, W,
2W+1}; on the torch backend and on the triton backend (the interpreter without a GPU).
"""
import pytest
import torch

import mistral_lab as ml
from mistral_lab.generate import prefill, score

from tolerances import TOL

W = 8
ARGS = ml.ModelArgs(dim=64, n_layers=3, head_dim=16, hidden_dim=160, n_heads=4, n_kv_heads=2,
                    vocab_size=256, sliding_window=W)
LENGTHS = (1, W - 1, W + 3, 3 * W)
NEW = 3 * W + 5  # each generation wraps the W-slot buffer several times


def make_model(backend="torch"):
    torch.manual_seed(0)
    m = ml.Transformer(ARGS).eval()
    with torch.no_grad():  # larger-than-default weights: peaked logits, clear greedy choices
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    m.backend = backend
    return m


def prompts():
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, ARGS.vocab_size, (n,), generator=g).tolist() for n in LENGTHS]


def backends():
    out = ["torch"]
    try:
        ml.kernels.triton_backend()
        out.append("triton")
    except Exception:  # Triton missing (macOS/Windows): the torch backend alone
        pass
    return out


@pytest.fixture(scope="module", params=backends())
def model(request):
    return make_model(request.param)


def eos_for_two(alone):
    """A token that ends two of the sequences at different steps, and not at their first."""
    for tok in range(ARGS.vocab_size):
        first = [g.new_tokens.index(tok) if tok in g.new_tokens else None for g in alone]
        steps = {s for s in first if s is not None and s > 0}
        if sum(s is not None and s > 0 for s in first) >= 2 and len(steps) >= 2 and None in first:
            return tok
    pytest.fail("no token ends two sequences at different steps: change the seed")


@pytest.mark.parametrize("chunk", [1, W, 2 * W + 1])
def test_ragged_prefill_equals_each_alone(model, chunk):
    ps = prompts()
    T = max(LENGTHS)
    ids = torch.zeros(len(ps), T, dtype=torch.long)
    for b, p in enumerate(ps):
        ids[b, :len(p)] = torch.tensor(p)
    lengths = torch.tensor(LENGTHS)
    cache = model.new_cache(len(ps))
    with torch.no_grad():
        batch = prefill(model, ids, cache, chunk, lengths=lengths, all_logits=True)  # (B, T, vocab)
        last = prefill(model, ids, model.new_cache(len(ps)), chunk, lengths=lengths)  # (B, vocab)
        for b, p in enumerate(ps):
            alone = prefill(model, torch.tensor([p]), model.new_cache(), chunk, all_logits=True)[0]
            torch.testing.assert_close(batch[b, :len(p)], alone, **TOL[torch.float32])
            torch.testing.assert_close(last[b], alone[-1], **TOL[torch.float32])
    assert cache.seq_pos.tolist() == list(LENGTHS)  # each sequence at its own next position
    for b, n in enumerate(LENGTHS):  # each row of slots holds its own sequence's last W positions
        held = sorted(p for p in cache.positions(0, seq=b) if p >= 0)
        assert held == list(range(max(0, n - W), n))


@pytest.mark.parametrize("chunk", [1, W, 2 * W + 1])
def test_ragged_generate_equals_each_alone(model, chunk):
    if model.backend == "triton" and chunk != W:
        pytest.skip("the interpreter is slow: triton generates with chunk W (its pre-fill is tested at every size)")
    ps = prompts()
    alone = [ml.generate(model, p, NEW, chunk_size=chunk, engine="model") for p in ps]
    eos = eos_for_two(alone)
    alone = [ml.generate(model, p, NEW, chunk_size=chunk, eos_id=eos, engine="model") for p in ps]
    batch = ml.generate(model, ps, NEW, chunk_size=chunk, eos_id=eos)
    assert isinstance(batch, list) and len(batch) == len(ps)
    stops = [g.stop_reason for g in batch]
    assert stops.count("eos") >= 2 and "length" in stops
    assert len({len(g.new_tokens) for g in batch if g.stop_reason == "eos"}) >= 2  # different steps
    for a, b in zip(alone, batch):
        assert b.prompt == a.prompt and b.new_tokens == a.new_tokens and b.stop_reason == a.stop_reason
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), **TOL[torch.float32])
    assert max(len(p) + len(g.new_tokens) for p, g in zip(ps, batch)) > 4 * W  # wrapped several times


def test_stopped_sequence_gets_no_token():
    """After its EOS a sequence is given position -1: no write, no advance, while the others go on."""
    model = make_model()
    ps = prompts()
    alone = [ml.generate(model, p, NEW, engine="model") for p in ps]
    eos = eos_for_two(alone)
    batch = ml.generate(model, ps, NEW, eos_id=eos)
    cache = batch[0].cache
    for b, (p, g) in enumerate(zip(ps, batch)):
        fed = len(p) + len(g.new_tokens) - 1  # the last token is sampled, never fed back
        assert int(cache.seq_pos[b]) == fed
        assert max(cache.positions(ARGS.n_layers - 1, seq=b)) == fed - 1


def test_batched_score_equals_each_alone(model):
    ps = [p + [3, 4] for p in prompts()]  # at least two tokens each
    batch = score(model, ps, chunk_size=W)
    for p, s in zip(ps, batch):
        torch.testing.assert_close(s, score(model, p, chunk_size=W), **TOL[torch.float32])
        assert s.shape == (len(p) - 1,)


def test_batch_inputs_and_errors():
    m = make_model()
    two = ml.generate(m, torch.tensor([[1, 2, 3], [4, 5, 6]]), 3)  # a 2-D tensor is a batch
    assert [g.new_tokens for g in two] == [ml.generate(m, [1, 2, 3], 3).new_tokens,
                                           ml.generate(m, [4, 5, 6], 3).new_tokens]
    with pytest.raises(ValueError, match="token ids must be integers"):
        ml.generate(m, [1.0, 2.0], 3)
    with pytest.raises(ValueError, match="token ids must be integers"):
        ml.generate(m, torch.tensor([True, False]), 3)
    with pytest.raises(ValueError, match="one sequence \\(1-D\\) or a batch \\(2-D\\)"):
        ml.generate(m, torch.ones(1, 2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="prompt is empty"):
        ml.generate(m, [[1, 2], []], 3)
    with pytest.raises(ValueError, match="on_token streams one sequence"):
        ml.generate(m, [[1], [2]], 3, on_token=print)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer"):
        ml.generate(m, [1], 2.5)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        ml.generate(m, [1], 2, temperature=float("inf"))
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        ml.generate(m, [1], 2, temperature=1.0, top_k=2.5)
    with pytest.raises(ValueError, match="seed must be an integer"):
        ml.generate(m, [1], 2, temperature=1.0, seed=10**23)
    with pytest.raises(ValueError, match="lengths must lie in 0..3"):
        m(torch.tensor([[1, 2, 3]]), lengths=[4])
    with pytest.raises(ValueError, match="the cache holds 1 sequences but the tokens have 2 rows"):
        m(torch.tensor([[1], [2]]), m.new_cache())
    assert ml.generate(m, [1, 2], 0).new_tokens == []


def test_full_cache_reads_only_filled_slots():
    """A full cache of large capacity costs the keys it holds, not its capacity (notebook 05 at 32k)."""
    m = make_model()
    big = ml.KVCache.full(ARGS, capacity=4096)
    small = m.new_cache(full=True)
    with ml.trace.record(attention=True, layers=[0]) as t:
        a = ml.generate(m, [1, 2, 3], 2 * W, cache=big)
    assert ml.generate(m, [1, 2, 3], 2 * W, cache=small).new_tokens == a.new_tokens
    assert max(c.k_pos.shape[1] for c in t.attention) <= 3 + 2 * W  # never the 4096 allocated slots
