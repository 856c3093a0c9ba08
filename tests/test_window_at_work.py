"""What the window really remembers: the full-attention twin, the retrieval probe, the
copy measurements and the explicit opt-in to run weights under a window they were not
trained with (notebook 09)."""
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import mistral_lab as ml
from mistral_lab.data import passkey as task
from mistral_lab.data import repeats
from mistral_lab.data.assets import heldout_stream
from mistral_lab.experiments import context_use, copying
from mistral_lab.experiments.passkey import accuracy_by_distance, answer_logits
from mistral_lab.training import probe as probe_training
from mistral_lab.training.train import TrainConfig, batches

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.fixture(scope="module")
def probe():
    return ml.load(ASSETS / "passkey")


@pytest.fixture(scope="module")
def stream():
    return heldout_stream()


def test_assets_fit_the_budget():
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert size <= 40 * 2**20, size


def test_the_twin_is_the_shipped_model_without_a_window():
    twin = ml.load(ASSETS / "model-full")
    assert twin.args.sliding_window is None
    assert twin.args == ml.preset("shakespeare").replace(sliding_window=None) == ml.preset("shakespeare-full")
    assert ml.load_tokenizer(ASSETS / "model-full").vocab_size == twin.args.vocab_size
    assert twin.new_cache().grow  # nothing to size a buffer by: a full cache


def test_a_window_the_weights_were_not_trained_with_is_an_explicit_opt_in():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default path runs the checkpoint's own window, silently
        assert ml.load(ASSETS / "model-full").args.sliding_window is None
        assert ml.load(ASSETS / "model").args.sliding_window == 64
        assert ml.load(ASSETS / "model", untrained_window=64).args.sliding_window == 64  # its own: no warning
    with pytest.warns(UserWarning, match="trained with full attention run with a window of 64"):
        cut = ml.load(ASSETS / "model-full", untrained_window=64)
    assert cut.args.sliding_window == 64 and not cut.new_cache().grow  # a rolling buffer of 64 slots
    with pytest.warns(UserWarning, match="trained with a window of 64 run with full attention"):
        assert ml.load(ASSETS / "model", untrained_window=None).args.sliding_window is None
    with pytest.raises(ValueError, match="sliding_window must be a positive integer"):
        ml.load(ASSETS / "model-full", untrained_window=0)


def test_the_twin_loses_more_than_the_swa_model_past_its_training_length(stream):
    """Length generalisation: the twin was trained on 512 positions; at 512-2047 its loss
    rises above its own loss before 512, while the SWA model's does not."""
    swa, twin = ml.load(ASSETS / "model"), ml.load(ASSETS / "model-full")
    edges = [0, 512, 2047]
    s = context_use.binned(context_use.nll_by_position(swa, stream, 2048), edges)["loss"]
    f = context_use.binned(context_use.nll_by_position(twin, stream, 2048, chunk_size=512), edges)["loss"]
    assert f[1] > f[0] + 0.5, f
    assert abs(s[1] - s[0]) < 0.3, s


def test_probe_retrieves_inside_the_window(probe):
    W = probe.args.sliding_window
    r = accuracy_by_distance(probe, range(1, W), n=128)
    assert min(r["accuracy"]) >= 0.95, r


def test_probe_is_at_chance_beyond_the_receptive_field(probe):
    """Beyond k(W - 1) no path connects the passkey to the answer: the answer's logits are
    exactly those of any other passkey, so the accuracy is chance (1/16) up to sampling."""
    bound = ml.receptive_field(probe.args.n_layers, probe.args.sliding_window)
    assert bound == 60
    r = accuracy_by_distance(probe, [bound + 1, 90, 120, task.MAX_DISTANCE], n=512)
    chance = 1 / task.N_VALUES
    assert all(abs(a - chance) < 0.05 for a in r["accuracy"]), r  # 0.05: over 4 binomial sd at n = 512
    x, v, _ = task.sample(np.random.default_rng(0), 64, bound + 1)
    other = x.clone()
    other[torch.arange(64), task.SEQ_LEN - 1 - (bound + 1)] = task.VALUE0 + (v - task.VALUE0 + 1) % task.N_VALUES
    with torch.inference_mode():
        assert torch.equal(answer_logits(probe, x), answer_logits(probe, other))
        inside = x.clone()
        inside[:, -1 - bound] = task.FILLER0  # a position inside the field does move the answer
        assert not torch.equal(answer_logits(probe, x), answer_logits(probe, inside))


def test_probe_training_is_deterministic():
    cfg = probe_training.recipe(steps=3)
    a, log_a = probe_training.train(ml.preset("passkey"), cfg, progress=False)
    b, log_b = probe_training.train(ml.preset("passkey"), cfg, progress=False)
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_probe_sequences_hold_one_passkey_at_distance_d():
    x, v, d = task.sample(np.random.default_rng(1), 200)
    q = task.SEQ_LEN - 1
    assert (x[:, 0] == task.BOS).all() and (x[:, q] == task.QUERY).all()
    values = (x >= task.VALUE0) & (x < task.VALUE0 + task.N_VALUES)
    assert (values.sum(1) == 1).all()
    assert torch.equal(x[torch.arange(200), q - d], v) and (x[torch.arange(200), q - d - 1] == task.KEY).all()
    assert d.min() >= 1 and d.max() <= task.MAX_DISTANCE
    with pytest.raises(ValueError, match="distance must lie in 1..157"):
        task.sample(np.random.default_rng(1), 2, 158)


def test_copy_mix_writes_exact_repeats_and_is_reproducible():
    src = np.arange(30_000, dtype=np.int64) % 4000 + 50
    rows = []
    for _ in range(2):
        rng = np.random.default_rng(7)
        rows.append([repeats.add_repeats(src[i * 600:i * 600 + 513].copy(), rng, 4096, src) for i in range(40)])
    assert all(np.array_equal(a, b) for a, b in zip(*rows))
    for row, i in zip(rows[0], range(40)):
        changed = row != src[i * 600:i * 600 + 513]
        assert changed.any()
        # every changed token equals the token some distance d before or after it (its other occurrence)
        copies = np.zeros_like(changed)
        for d in range(8, 513):
            same = row[d:] == row[:-d]
            copies[d:] |= same
            copies[:-d] |= same
        assert copies[changed].mean() > 0.99
    cfg = TrainConfig(copy_rows=0.5)
    b1 = next(batches(src, cfg, 0, vocab_size=4096))
    b2 = next(batches(src, cfg, 0, vocab_size=4096))
    plain = next(batches(src, TrainConfig(), 0, vocab_size=4096))
    assert torch.equal(b1, b2) and b1.shape == (8, 513)
    assert not torch.equal(b1[:4], plain[:4])


def test_copy_losses_measure_the_occurrences(stream):
    """A model that copies perfectly is not at hand; check the bookkeeping instead: with
    d = span_len the repeat directly follows the span, the first occurrence's loss does
    not depend on d, and the distances are validated."""
    model = ml.load()
    r = copying.copy_losses(model, stream, 16, [16, 100], random_ids=True, n=8)
    assert r["first"][0] == r["first"][1] and r["distance"] == [16, 100]
    assert r["first"][0] > math.log(model.args.vocab_size) - 1  # random ids: no better than about uniform
    with pytest.raises(ValueError, match="distances must be >= span_len"):
        copying.copy_losses(model, stream, 16, [8], random_ids=True, n=2)


def test_loss_falls_with_the_context_given(stream):
    model = ml.load()
    r = context_use.loss_by_context(model, stream, [1, 16, 63], n=64)
    assert r["loss"][0] > r["loss"][1] + 0.5 and r["loss"][2] < r["loss"][0]


@pytest.mark.parametrize("args, message", [
    (["passkey", "eval", "--model", str(ASSETS / "model")], "is not a passkey probe model"),
    (["passkey", "train"], "passkey train needs --out DIR"),
    (["train", "--out", "unused", "--preset", "passkey"], "--preset passkey is the retrieval probe"),
])
def test_probe_cli_refuses_in_one_line(args, message):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mistral_lab", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
