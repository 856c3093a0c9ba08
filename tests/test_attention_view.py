"""viz.attention: the banded attention view of a real text, checked against the dense
probabilities (ops.attention_probs), across backends, without a window, and its figure,
summary and explorer."""
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("plotly")

import mistral_lab as ml  # noqa: E402
from mistral_lab.viz import attention as va  # noqa: E402
from mistral_lab.experiments import gqa as xg  # noqa: E402
from mistral_lab.experiments import attention as xa  # noqa: E402

from tolerances import TOL  # noqa: E402

HELDOUT = Path(__file__).resolve().parent.parent / "assets" / "heldout.txt"


@pytest.fixture(scope="module")
def shipped():
    torch.manual_seed(0)
    model, tok = ml.load().eval(), ml.load_tokenizer()
    return model, tok, tok.encode(HELDOUT.read_text()[:3000])


def dense_as_band(model, ids, layer, width):
    """(H, T, width) from the dense (H, T, T) probabilities of a one-shot forward:
    out[h, i, d] = P[h, i, i - d]."""
    P = xg.attention_probs(xg.layer_qkv(model, ids, layer))  # ops.attention_probs, no cache
    T = P.shape[-1]
    i, d = torch.arange(T)[:, None], torch.arange(width)[None, :]
    keys = i - d
    return torch.where(keys >= 0, P[:, i, keys.clamp(min=0)], torch.zeros(())), P


def test_bands_are_the_dense_rows_shifted_to_distances(shipped):
    model, _, ids = shipped
    ids, W = ids[:200], model.args.sliding_window
    bands = xa.attention_bands(model, ids, layers=[0, 3])
    assert bands.probs.shape == (2, model.args.n_heads, 200, W) and bands.width == W
    assert bands.positions.tolist() == list(range(200))
    for li, layer in enumerate((0, 3)):
        expected, P = dense_as_band(model, ids, layer, W)
        torch.testing.assert_close(bands.probs[li], expected, **TOL[torch.float32])
        # nothing of the dense rows lies W or more positions back: the band is all of it
        far = torch.arange(200)[:, None] - torch.arange(200)[None, :] >= W
        assert torch.all(P[:, far] == 0)
    torch.testing.assert_close(bands.probs.sum(-1), torch.ones(2, model.args.n_heads, 200))
    before_bos = torch.arange(W)[None, :] > bands.positions[:, None]  # no key at that distance
    assert torch.all(bands.probs[:, :, before_bos] == 0)


def test_chunk_size_does_not_change_the_bands(shipped):
    model, _, ids = shipped
    a = xa.attention_bands(model, ids[:150], layers=[2], heads=[1, 6])
    b = xa.attention_bands(model, ids[:150], layers=[2], heads=[1, 6], chunk_size=37)
    torch.testing.assert_close(a.probs, b.probs, **TOL[torch.float32])
    torch.testing.assert_close(a.band(2, 6), a.probs[0, 1])


def _tiny(backend):
    torch.manual_seed(0)
    m = ml.Transformer(ml.preset("tiny")).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)  # sharper than the default init: heads with distinct patterns
    m.backend = backend
    return m


def test_triton_band_equals_torch():
    try:
        ml.kernels.triton_backend()
    except Exception as e:  # noqa: BLE001 - Triton missing or unusable here
        pytest.skip(f"Triton backend unavailable: {e}")
    # Layers 1 and 2, not 0: the probabilities of a layer come from its q and k, which at layer 0
    # are the embeddings on either backend; from layer 1 on they carry the kernels' own outputs.
    ids = torch.randint(0, 512, (100,), generator=torch.Generator().manual_seed(2))
    ref = xa.attention_bands(_tiny("torch"), ids, layers=[1, 2], chunk_size=24)
    tri = xa.attention_bands(_tiny("triton"), ids, layers=[1, 2], chunk_size=24)
    assert tri.probs.shape == ref.probs.shape == (2, 4, 100, 8)
    torch.testing.assert_close(tri.probs, ref.probs, **TOL[torch.float32])


def test_no_window_twin_keeps_a_band_of_the_chosen_width():
    twin, tok = ml.load("assets/model-full").eval(), ml.load_tokenizer("assets/model-full")
    assert twin.args.sliding_window is None
    ids = tok.encode(HELDOUT.read_text()[:2000])[:300]
    bands = xa.attention_bands(twin, ids, layers=[1], heads=[0, 5], width=128)
    assert bands.window is None and bands.width == 128 and bands.probs.shape == (1, 2, 300, 128)
    expected, P = dense_as_band(twin, ids, 1, 128)
    torch.testing.assert_close(bands.probs[0], expected[[0, 5]], **TOL[torch.float32])
    # what the band leaves out is exactly the mass further back than width - 1
    beyond = 1 - bands.probs[0].sum(-1)
    torch.testing.assert_close(beyond[:, :128], torch.zeros(2, 128), **TOL[torch.float32])
    assert torch.all(beyond[:, 200:] > 0)
    rows = xa.sink_summary(bands)
    assert all(r["beyond"] > 0 and math.isnan(r["oldest"]) for r in rows)
    assert xa.attention_bands(twin, ids[:40], layers=[0], heads=[0]).width == 40  # default: min(512, N)
    with pytest.raises(ValueError, match="exactly W"):
        xa.attention_bands(_tiny("torch"), ids[:20], width=16)


def test_figure_marks_the_window_edge_and_escapes_tokens(shipped):
    model, tok, ids = shipped
    ids, W = ids[:300], model.args.sliding_window
    bands = xa.attention_bands(model, ids, layers=[4], heads=[6])
    pieces = tok.pieces(ids)
    fig = va.attention_figure(bands, 4, 6, pieces, max_rows=100)
    assert {s.x0 for s in fig.layout.shapes} == {W - 1} and len(fig.layout.shapes) == 2  # both panels
    assert any(f"W−1 = {W - 1}" in a.text for a in fig.layout.annotations)
    heat = fig.data[0]
    assert len(heat.z) == 100 and len(heat.z[0]) == W and "1 query in 3 shown" in fig.layout.title.text
    assert heat.z[0][1] is None and heat.z[0][0] == 1.0  # BOS sees only itself; no key before it
    assert all(v is None or round(v, 3) == v for row in heat.z for v in row)
    assert pieces[0] == "<s>" and "&lt;s&gt;" in fig.layout.yaxis.ticktext[0]
    zoom = va.attention_figure(bands, 4, 6, pieces, query_range=(0, 40))  # small: per-cell hover with tokens
    assert "&lt;s&gt;" in zoom.data[0].text[5][5] and not any("<s>" in t for r in zoom.data[0].text for t in r)
    mean = fig.data[1]  # profile over every selected row, not only the drawn ones
    torch.testing.assert_close(torch.tensor(mean.y), xa.profile(bands.band(4, 6), bands.positions), atol=1e-5, rtol=0)


def test_sink_summary_on_a_long_text_is_finite(shipped):
    model, _, ids = shipped
    W = model.args.sliding_window
    ids = ids[:4 * W + 40]  # BOS leaves the buffer at position W: most queries come after
    bands = xa.attention_bands(model, ids, layers=[0, 4])
    rows = xa.sink_summary(bands)
    assert len(rows) == 2 * model.args.n_heads
    keys = ("bos", "bos_x", "oldest", "oldest_x", "self", "previous", "reach90")
    assert all(math.isfinite(r[k]) for r in rows for k in keys)
    assert all(0 < r["bos"] < 1 and 0 < r["oldest"] < 1 and 0 <= r["reach90"] <= W - 1 for r in rows)
    b = bands.band(4, 6)
    r = next(r for r in rows if (r["layer"], r["head"]) == (4, 6))
    assert r["oldest"] == pytest.approx(float(b[W:, W - 1].mean()))
    assert r["previous"] == pytest.approx(float(b[1:, 1].mean()))
    assert len(xa.summary_table(rows).splitlines()) == len(rows) + 1


def test_explorer_redraws_from_the_bands_only(shipped, monkeypatch):
    pytest.importorskip("ipywidgets")
    model, tok, ids = shipped
    bands = xa.attention_bands(model, ids[:200], layers=[3, 4], heads=[0, 1])
    ui = va.attention_explorer(bands, tok.pieces(ids[:200]))
    before = ui.figure
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("a redraw must not run the model"))
    ui.sliders["head"].value = 1
    assert "head 1" in ui.figure.layout.title.text and ui.figure.data[0].z != before.data[0].z
    ui.sliders["queries"].value = (100, 150)
    assert ui.figure.data[0].y == tuple(range(100, 151))
    assert "application/vnd.plotly.v1+json" in ui._repr_mimebundle_()
