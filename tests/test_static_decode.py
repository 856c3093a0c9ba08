"""static_decode.StaticDecode against the readable model, on the CPU (eager: the CUDA
graph of the same step is tested in tests/test_kernels_gpu.py)."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from mistral_lab import trace
from mistral_lab.config import preset
from mistral_lab.engines import FastStep, ModelStep
from mistral_lab.engines import choose
from mistral_lab.generate import generate, prefill
from mistral_lab.model import Transformer
from mistral_lab.sampling import Sampler
from mistral_lab.engines.static import StaticDecode

from tolerances import TOL


def tiny(n_layers=2, backend="torch", **changes):
    torch.manual_seed(0)
    return Transformer(preset("tiny").replace(n_layers=n_layers, **changes), backend=backend).eval()


def _compare_caches(a, b, atol):
    """Same positions everywhere; keys and values close. A full cache may have grown to
    another capacity: the slots past the smaller one must be empty in the larger."""
    n = min(a.capacity, b.capacity)
    assert torch.equal(a.seq_pos, b.seq_pos)
    assert torch.equal(a.slot_pos[..., :n], b.slot_pos[..., :n])
    for c in (a, b):
        assert bool((c.slot_pos[..., n:] == -1).all())
    torch.testing.assert_close(b.k[:, :, :n], a.k[:, :, :n], atol=atol, rtol=atol)
    torch.testing.assert_close(b.v[:, :, :n], a.v[:, :, :n], atol=atol, rtol=atol)


def lockstep(model, prompts, steps, *, full=False, stop_at=None):
    """Pre-fill the prompts into two caches, then decode `steps` greedy tokens with the
    readable model on one and the static step on the other, comparing at every step the
    logits (fp32: 1e-5), the greedy tokens and both caches. stop_at = (step, sequence):
    that sequence stops there (position -1 from then on)."""
    B = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(B, int(lengths.max()), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = torch.tensor(p)
    tol = TOL[torch.float32]
    with torch.inference_mode():
        a, b = model.new_cache(B, full=full), model.new_cache(B, full=full)
        logits = prefill(model, ids, a, lengths=lengths)
        prefill(model, ids, b, lengths=lengths)
        step = StaticDecode(model, b, end=int(lengths.max()) + steps)
        running = torch.ones(B, dtype=torch.bool)
        token = logits.argmax(-1)
        for t in range(steps):
            if stop_at is not None and t == stop_at[0]:
                running[stop_at[1]] = False
            ref = model(torch.where(running, token, 0)[:, None], a, lengths=running.long())[:, -1]
            pick, logp = step(token, running)
            live = running.nonzero().flatten()
            torch.testing.assert_close(step.logits[live], ref[live], **tol)
            assert torch.equal(pick[live], ref[live].argmax(-1)), f"greedy tokens differ at step {t}"
            torch.testing.assert_close(logp[live], torch.log_softmax(ref[live], -1).gather(
                -1, pick[live, None])[:, 0], **tol)
            _compare_caches(a, b, tol["atol"])
            assert torch.equal(step.pos, b.seq_pos)  # the device's positions and the host's agree
            token = pick.clone()
    return a, b


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("prompts", [[[1, 2, 3]], [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]], ids=["batch1", "ragged3"])
def test_static_step_equals_model_through_wraps(full, prompts):
    model = tiny()
    W = model.args.sliding_window
    a, b = lockstep(model, prompts, 5 * W + 3, full=full, stop_at=(2 * W, 1) if len(prompts) > 1 else None)
    if not full:  # 5W tokens through a W-slot buffer: it wrapped five times
        assert b.capacity == W and int(b.seq_pos.max()) > 5 * W


def test_static_step_full_attention_model():
    """No window: a fixed-capacity full cache, every past position visible."""
    lockstep(tiny(sliding_window=None), [[1, 2], [3, 4, 5]], 30, full=True)


def test_static_step_triton_backend():
    """The Triton decode kernel (interpreted here) behind the same step: kept tiny."""
    lockstep(tiny(n_layers=1, backend="triton"), [[1, 2, 3], [4]], 12, stop_at=(6, 0))


class _HostSyncs(TorchFunctionMode):
    """Records the calls that make the host wait for a GPU: reading a value (item,
    tolist, int(), bool(), float(), index), copying to the host, nonzero, and indexing
    with a boolean mask (its size is data-dependent)."""

    NAMES = {"item", "tolist", "__int__", "__bool__", "__float__", "__index__", "cpu", "numpy", "nonzero",
             "masked_select", "argwhere", "unique"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        index = args[1] if name in ("__getitem__", "__setitem__") and len(args) > 1 else None
        parts = index if isinstance(index, tuple) else (index,)
        if name in self.NAMES or any(isinstance(x, torch.Tensor) and x.dtype == torch.bool for x in parts):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("full", [False, True])
def test_the_step_asks_the_host_nothing(full):
    """The body the CUDA graph captures reads no value on the host; the readable model's
    decode step does (its write asks nonzero/int()), so the check can tell."""
    model = tiny()
    with torch.inference_mode():
        cache = model.new_cache(3, full=full)
        prefill(model, torch.tensor([[1, 2, 3], [4, 5, 0], [6, 0, 0]]), cache, lengths=torch.tensor([3, 2, 1]))
        step = StaticDecode(model, cache, end=40)
        running = torch.tensor([True, False, True])
        step(torch.tensor([7, 8, 9]), running)  # the first call copies the positions in
        buffers = [t.data_ptr() for t in (cache.k, cache.v, cache.slot_pos, step.token, step.pos, step.logits)]
        pos = step.pos.clone()
        with _HostSyncs() as mode:
            step._body()
        assert mode.calls == []
        assert torch.equal(step.pos, pos + running.long())  # advanced in place, on the device
        cache.advance(running.long())  # what __call__ does on the host beside the body
        for _ in range(12):  # through a wrap: nothing is reallocated (a graph holds these addresses)
            out, logp = step(step.token, running)
            assert out is step.token and logp is step.logprob
        assert buffers == [t.data_ptr() for t in (cache.k, cache.v, cache.slot_pos, step.token, step.pos,
                                                   step.logits)]
        assert torch.equal(step.pos, cache.seq_pos)
        with _HostSyncs() as mode:
            model(torch.tensor([[1], [2], [3]]), model.new_cache(3, full=full))
        assert mode.calls, "the check sees no host read in the readable model's step: it cannot fail"


def test_generate_static_equals_model_with_eos_and_ragged_batch():
    model = tiny()
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]
    ref = generate(model, prompts, 40, engine="model")
    eos = ref[0].new_tokens[7]  # sequence 0 stops at its first eos, the others maybe later
    ref = generate(model, prompts, 40, engine="model", eos_id=eos)
    out = generate(model, prompts, 40, engine="static", eos_id=eos)
    assert ref[0].stop_reason == "eos" and len(ref[0].new_tokens) <= 8
    for r, o in zip(ref, out):
        assert o.new_tokens == r.new_tokens and o.stop_reason == r.stop_reason
        assert max(abs(x - y) for x, y in zip(o.logprobs, r.logprobs)) < 1e-5
    assert torch.equal(out[0].cache.seq_pos, ref[0].cache.seq_pos)
    one = generate(model, prompts[0], 40, engine="static")  # batch 1, full cache of a windowless model
    assert one.new_tokens == generate(model, prompts[0], 40, engine="model").new_tokens
    nowin = tiny(sliding_window=None)
    assert generate(nowin, prompts, 30, engine="static")[2].new_tokens == \
        generate(nowin, prompts, 30, engine="model")[2].new_tokens


def test_sampling_on_the_device():
    model = tiny()
    prompts = [[1, 2, 3], [4, 5]]
    a = generate(model, prompts, 30, engine="static", temperature=1.0, seed=5)
    b = generate(model, prompts, 30, engine="static", temperature=1.0, seed=5)
    c = generate(model, prompts, 30, engine="static", temperature=1.0, seed=6)
    assert [g.new_tokens for g in a] == [g.new_tokens for g in b] != [g.new_tokens for g in c]
    greedy = generate(model, prompts, 30, engine="static")
    top1 = generate(model, prompts, 30, engine="static", temperature=0.7, top_k=1, seed=1)
    assert [g.new_tokens for g in top1] == [g.new_tokens for g in greedy]
    with torch.inference_mode():  # every pick lies in the top 3 of its step's logits, and it varies
        cache = model.new_cache(2)
        prefill(model, torch.tensor([[1, 2, 3], [4, 5, 0]]), cache, lengths=torch.tensor([3, 2]))
        step = StaticDecode(model, cache, sampler=Sampler(2, temperature=2.0, top_k=3, seed=0))
        token, ranks = torch.tensor([3, 5]), []
        for _ in range(40):
            token, _ = step(token, torch.ones(2, dtype=torch.bool))
            top = step.logits.topk(3, dim=-1).indices
            ranks += (top == token[:, None]).float().argmax(-1).tolist()
            assert bool((top == token[:, None]).any(-1).all())
        assert set(ranks) == {0, 1, 2}  # at temperature 2 the 2nd and 3rd choices come up too


def test_engine_choice_and_errors():
    model = tiny()
    with torch.inference_mode():  # on the CPU auto keeps the lean step at batch 1, the model above it
        assert isinstance(choose(model, model.new_cache(1), "auto", Sampler(1), end=10), FastStep)
        assert isinstance(choose(model, model.new_cache(3), "auto", Sampler(3), end=10), ModelStep)
        assert isinstance(choose(model, model.new_cache(3), "static", Sampler(3), end=10), StaticDecode)
        with pytest.raises(ValueError, match="a full cache needs its final size"):
            StaticDecode(model, model.new_cache(1, full=True))
        with pytest.raises(ValueError, match="a CUDA graph needs the cache on a CUDA device"):
            StaticDecode(model, model.new_cache(1), graph=True)
    with pytest.raises(ValueError, match="without autograd"):
        StaticDecode(model, model.new_cache(1))
    with trace.record():
        with pytest.raises(ValueError, match="engine='static' cannot run here: a trace is recording"):
            generate(model, [1, 2], 4, engine="static")
    with pytest.raises(ValueError, match="does not fit a 8-slot cache"):  # a fixed full cache too small
        nowin = tiny(sliding_window=None)
        from mistral_lab.cache import KVCache

        generate(nowin, [1, 2], 20, engine="static", cache=KVCache(nowin.args, 1, 8))
