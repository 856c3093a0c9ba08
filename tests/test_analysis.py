"""The receptive field, measured: after k layers, token j influences position i
exactly when 0 <= i - j <= k (W - 1) (this project's W keys per query, self included)."""
import pytest
import torch

import mistral_lab as ml
from mistral_lab.experiments.influence import influence, influence_by_layer, reach


def _check_span(rows: torch.Tensor, position: int, window: int) -> None:
    """rows: (n_layers + 1, T) influence on `position` after 0..n_layers blocks."""
    j = torch.arange(rows.shape[1])
    for k, row in enumerate(rows):
        inside = (j <= position) & (position - j <= k * (window - 1))
        assert torch.all(row[~inside] == 0), f"layer {k}: nonzero influence outside the receptive field"
        assert torch.all(row[inside] > 0), f"layer {k}: zero influence inside the receptive field"
        assert reach(row, position) == min(position, k * (window - 1))


def tiny_model():
    torch.manual_seed(0)
    args = ml.ModelArgs(dim=32, n_layers=3, head_dim=8, hidden_dim=64, n_heads=4, n_kv_heads=2,
                        vocab_size=64, sliding_window=5)
    return ml.Transformer(args).eval()


@pytest.mark.parametrize("probes", [None, 4])
def test_receptive_field_tiny_model_every_position(probes):
    model = tiny_model()
    T, W = 18, model.args.sliding_window
    ids = torch.randint(0, 64, (T,), generator=torch.Generator().manual_seed(1))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    for k in range(model.args.n_layers + 1):
        M = influence(model, ids, layer=k, probes=probes)  # (T, T)
        inside = (j <= i) & (i - j <= k * (W - 1))
        assert torch.all(M[~inside] == 0)
        assert torch.all(M[inside] > 0)


def test_exact_norm_matches_jacobian():
    model = tiny_model()
    ids = torch.randint(0, 64, (9,), generator=torch.Generator().manual_seed(2))
    x = model.tok_embeddings.weight.detach()[ids][None]
    pos = torch.arange(9)[None]
    J = torch.autograd.functional.jacobian(lambda e: model.hidden_states(e, pos, n_layers=2)[0, 8], x)  # (dim, 1, T, dim)
    expected = J[:, 0].pow(2).sum((0, 2)).sqrt()  # (T,)
    got = influence(model, ids, [8], layer=2, probes=None)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_influence_rejects_bad_layer():
    with pytest.raises(ValueError):
        influence(tiny_model(), [1, 2, 3], [2], layer=9)


def test_receptive_field_shipped_model():
    from mistral_lab.checkpoints import default_model_path

    path = default_model_path()
    if not (path / "model.safetensors").exists():
        pytest.skip("assets/model is not there (run python -m mistral_lab train --out assets/model)")
    model = ml.load().eval()
    W, L = model.args.sliding_window, model.args.n_layers
    position = L * (W - 1) + 10  # far enough that even the last layer's field ends inside the text
    ids = torch.randint(3, model.args.vocab_size, (position + 1,), generator=torch.Generator().manual_seed(0))
    _check_span(influence_by_layer(model, ids, position, probes=2), position, W)
