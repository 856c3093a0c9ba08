"""How much of its context a trained model uses: the measurements of notebook 09.

    loss_by_context(model, stream, [1, 4, 16, 64, 256])   # loss given only c tokens before
    nll_by_position(model, stream, 32768)                 # per-token loss, one long sequence
    binned(nll, edges)                                    # its mean per range of positions

`stream` is a token stream (e.g. the held-out split: data.assets.heldout_stream()).
Copying against distance is copying.copy_losses and retrieval against distance is
passkey.accuracy_by_distance; `sweep` runs all of them on the shipped models and returns
what notebook 09 plots (the heavy parts: 32K positions, many distances); the notebook
re-measures a slice of each live:

    python -m mistral_lab context-use --out benchmarks/context_use.json
"""
from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import torch

from ..checkpoints import load
from ..data.assets import asset, fingerprint, heldout_stream
from ..generate import score
from ..masks import receptive_field
from . import copying, passkey


@torch.inference_mode()
def loss_by_context(model, stream, contexts, *, n: int = 256, seed: int = 0, bos_id: int = 1) -> dict:
    """Mean loss (nats) of predicting a token from only the c tokens before it (after a BOS),
    for each c in `contexts`; the same n target tokens for every c."""
    stream = np.asarray(stream, dtype=np.int64)
    contexts = [int(c) for c in contexts]
    rng = np.random.default_rng(seed)
    targets = rng.integers(max(contexts), len(stream), n)
    device = next(model.parameters()).device
    loss = []
    for c in contexts:
        ids = torch.from_numpy(np.stack([np.r_[bos_id, stream[t - c:t + 1]] for t in targets])).to(device)
        logits = model(ids[:, :-1], last_only=True)[:, 0].float()  # (n, vocab): the prediction of stream[t]
        loss.append(round(float(torch.nn.functional.cross_entropy(logits, ids[:, -1])), 4))
    return {"context": contexts, "loss": loss, "n": n}


@torch.inference_mode()
def nll_by_position(model, stream, length: int, *, chunk_size: int | None = None, bos_id: int = 1) -> np.ndarray:
    """-log p of tokens 1..length-1 of [BOS] + stream, read as one sequence by chunked
    pre-fill (a rolling buffer for a model with a window, a full cache without): (length-1,)."""
    ids = torch.from_numpy(np.r_[bos_id, np.asarray(stream[:length - 1], dtype=np.int64)])
    if len(ids) < length:
        raise ValueError(f"the stream has {len(stream)} tokens: too short for {length} positions")
    return -score(model, ids.to(next(model.parameters()).device), chunk_size=chunk_size).cpu().numpy()


def binned(nll: np.ndarray, edges) -> dict:
    """Mean loss over the positions in [edges[i], edges[i+1]) (position p predicts token p + 1)."""
    edges = [int(e) for e in edges]
    means = [round(float(nll[a:b].mean()), 4) for a, b in zip(edges[:-1], edges[1:])]
    return {"start": edges[:-1], "end": edges[1:], "loss": means}


def at(curve: dict, x: int, field: str = "loss") -> float:
    """One value of a measured curve where its x (context, distance or bin start) equals x:
    how prose quotes a sweep, so that a re-measured sweep changes the sentence too."""
    axis = next(k for k in ("context", "distance", "start") if k in curve)
    return curve[field][curve[axis].index(x)]


def position_edges(length: int, first: int = 16) -> list[int]:
    """0, then powers of two from `first` up to `length`: bins that read on a log axis."""
    edges, e = [0], first
    while e < length:
        edges.append(e)
        e *= 2
    return edges + [length]


def sweep() -> dict:
    """Every measurement of notebook 09 on the shipped models (about 11 minutes on 2 cores)."""
    stream = heldout_stream()
    swa, full = load(asset("model")), load(asset("model-full"))
    with warnings.catch_warnings():  # the point of the experiment: said in the JSON and the notebook
        warnings.simplefilter("ignore")
        full_w = load(asset("model-full"), untrained_window=swa.args.sliding_window)
    W, k = swa.args.sliding_window, swa.args.n_layers
    n = 256
    contexts = [1, 2, 4, 8, 16, 32, 63, 64, 128, 256, 378, 511]
    distances = [16, 24, 32, 48, 63, 64, 96, 128, 192, 256, 378, 379, 480]
    long_swa, long_full = 32768, 8192
    t0 = time.time()
    result = {"window": W, "n_layers": k, "receptive_field": receptive_field(k, W),
              "train_seq_len": swa.args.max_seq_len}
    for name, model in (("swa", swa), ("full", full), ("full_through_window", full_w)):
        r = {"loss_by_context": loss_by_context(model, stream, contexts, n=n)}
        for kind, L, rnd in (("copy_text", 24, False), ("copy_random", 16, True)):
            r[kind] = copying.copy_losses(model, stream, L, [d for d in distances if d >= L], random_ids=rnd,
                                          n=n // 4)
        length = long_swa if model.args.sliding_window is not None else long_full
        chunk = None if model.args.sliding_window is not None else 512  # keys grow: bound the chunk
        r["loss_by_position"] = binned(nll_by_position(model, stream, length, chunk_size=chunk),
                                       position_edges(length - 1))
        result[name] = r
        print(f"{name}: done at {time.time() - t0:.0f} s", file=sys.stderr)
    result["passkey"] = passkey.accuracy_by_distance(load(asset("passkey")), n=256)
    result["wall_s"] = round(time.time() - t0, 1)
    result["slice"] = slice_check()
    return result


def slice_check() -> dict:
    """A few seconds of the sweep's measurements, on the same models and stream, that
    tests/test_results.py re-measures: when the code or the weights move them, the
    committed sweep is stale. With the weights' fingerprints."""
    stream = heldout_stream()
    swa, twin = load(asset("model")), load(asset("model-full"))
    copy = copying.copy_losses(twin, stream, 16, [16, 100], random_ids=True, n=8)
    return {"loss_by_context_swa": loss_by_context(swa, stream, [1, 16, 64], n=32)["loss"],
            "copy_random_twin_first": copy["first"], "copy_random_twin_second": copy["second"],
            "passkey_accuracy": passkey.accuracy_by_distance(load(asset("passkey")), [4, 40, 61], n=64)["accuracy"],
            "weights": {name: fingerprint(name) for name in ("model", "model-full", "passkey")}}
