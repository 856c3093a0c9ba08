"""trace.record(): attention calls and their probabilities on either backend, checked against
the backends' own outputs and Hugging Face's eager attention; the Triton cache write in
generation; the banded view that keeps a long sequence at N x W."""
import pytest
import torch

import mistral_lab as ml
from mistral_lab.generate import prefill
from mistral_lab.masks import mask_for

from tolerances import TOL

W = 8
ARGS = ml.ModelArgs(dim=64, n_layers=2, head_dim=16, hidden_dim=160, n_heads=4, n_kv_heads=2,
                    vocab_size=256, sliding_window=W)


def make_model(backend="torch", args=ARGS):
    torch.manual_seed(0)
    m = ml.Transformer(args).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    m.backend = backend
    return m


def has_triton() -> bool:
    try:
        ml.kernels.triton_backend()
        return True
    except Exception:
        return False


BACKENDS = ["torch"] + (["triton"] if has_triton() else [])
needs_triton = pytest.mark.skipif(not has_triton(), reason="Triton is not installed")
IDS = torch.randint(0, ARGS.vocab_size, (1, 3 * W + 3), generator=torch.Generator().manual_seed(1))


def traced_run(backend, chunk, **kw):
    """A one-shot forward (no cache), a chunked pre-fill of IDS, then three decode steps,
    recording every attention call."""
    m = make_model(backend)
    cache = m.new_cache()
    with ml.trace.record(**kw) as t, torch.no_grad():
        m(IDS[:, :W + 2])
        prefill(m, IDS, cache, chunk)
        for tok in (5, 6, 7):
            m(torch.tensor([[tok]]), cache)
    return t


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [5, W, 3 * W + 3])
def test_backend_output_is_probs_times_values(backend, chunk):
    """Not circular: the trace computes probabilities itself (a flash kernel never has them);
    each backend's actual output must equal them times the values it was handed."""
    t = traced_run(backend, chunk, probs=True, qkv=True)
    assert {c.kind for c in t.attention} == {"prefill", "chunk", "decode"}
    for c in t.attention:
        G = ARGS.n_heads // ARGS.n_kv_heads
        v = c.v.repeat_interleave(G, dim=2).float()  # (B, Tk, H, D)
        expected = torch.einsum("bhqk,bkhd->bqhd", c.probs, v)
        torch.testing.assert_close(c.out.float(), expected, **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_probabilities_are_a_softmax_over_visible_keys(backend):
    t = traced_run(backend, W, probs=True)
    for c in t.attention:
        vis = mask_for(c.q_pos, c.k_pos, W)[:, None]  # (B, 1, Tq, Tk)
        assert torch.all(c.probs[~vis.expand_as(c.probs)] == 0)
        torch.testing.assert_close(c.probs.sum(-1), torch.ones(c.probs.shape[:-1]))
        assert c.q_pos.shape == (1, c.probs.shape[2]) and c.k_pos.shape == (1, c.probs.shape[3])


@needs_triton
def test_torch_and_triton_probabilities_agree():
    a, b = traced_run("torch", W, probs=True), traced_run("triton", W, probs=True)
    assert [(c.layer, c.kind) for c in a.attention] == [(c.layer, c.kind) for c in b.attention]
    for x, y in zip(a.attention, b.attention):
        assert torch.equal(x.k_pos, y.k_pos)
        torch.testing.assert_close(x.probs, y.probs, **TOL[torch.float32])


def test_heads_and_layers_selection_and_band():
    t = traced_run("torch", W, layers=[1], probs=True, heads=[3])
    assert {c.layer for c in t.attention} == {1} and all(c.probs.shape[1] == 1 for c in t.attention)
    full = traced_run("torch", W, layers=[1], probs=True)
    positions, band = t.attention_band(layer=1, head=3, window=W)
    assert band.shape == (IDS.shape[1] + 3, W) and positions.tolist() == list(range(IDS.shape[1] + 3))
    # (the one-shot forward's calls repeat positions 0..W+1: the band keeps one row per position)
    torch.testing.assert_close(band.sum(1), torch.ones(len(positions)))
    assert torch.all(band[torch.arange(W)[None, :] > positions[:, None]] == 0)  # before position 0
    _, band_all = full.attention_band(layer=1, head=3, window=W)
    torch.testing.assert_close(band, band_all)
    with pytest.raises(ValueError, match="no attention call of layer 0"):
        t.attention_band(layer=0, head=3)


def test_off_by_default_and_no_attention_calls_without_asking():
    t = traced_run("torch", W)
    assert t.attention == [] and len(t.cache_writes) > 0


def test_probabilities_equal_hugging_face_eager():
    pytest.importorskip("transformers")
    from test_hf_parity import VOCAB, hf_model
    from mistral_lab import checkpoints as weights

    hf = hf_model("eager")
    ours = weights.load(_saved(hf))
    x = torch.randint(0, VOCAB, (1, 4 * 6 + 1), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = hf(x, output_attentions=True).attentions  # per layer (1, H, T, T)
        with ml.trace.record(probs=True) as t:
            ours(x)
    assert len(t.attention) == len(theirs)
    for c, h in zip(t.attention, theirs):
        torch.testing.assert_close(c.probs, h.float(), atol=1e-5, rtol=1e-4)


def _saved(hf):
    import tempfile

    folder = tempfile.mkdtemp()
    hf.save_pretrained(folder)
    return folder


@needs_triton
def test_triton_cache_write_runs_in_generation_and_matches_reference():
    ref, tri = make_model("torch"), make_model("triton")
    c_ref, c_tri = ref.new_cache(), tri.new_cache()
    with torch.no_grad():
        prefill(ref, IDS[:, :W + 3], c_ref, 4)
        with ml.trace.record() as t:
            prefill(tri, IDS[:, :W + 3], c_tri, 4)
        writes = [c for c in t.kernel_calls if c.kernel == "cache_write"]
        assert len(writes) == ARGS.n_layers * 3 and sum(c.totals["slots"] for c in writes) == ARGS.n_layers * (W + 3)
        for step in range(2 * W + 1):  # decode past two more wraps, compared after every step
            tok = torch.tensor([[(7 * step) % ARGS.vocab_size]])
            ref(tok, c_ref)
            with ml.trace.record() as t:
                tri(tok, c_tri)
            assert sum(c.kernel == "cache_write" for c in t.kernel_calls) == ARGS.n_layers
            assert torch.equal(c_ref.slot_pos, c_tri.slot_pos)
            torch.testing.assert_close(c_tri.k, c_ref.k, **TOL[torch.float32])
            torch.testing.assert_close(c_tri.v, c_ref.v, **TOL[torch.float32])
