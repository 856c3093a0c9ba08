"""The retrieval probe: a tiny Mistral-architecture model that must fetch a passkey d tokens back.

    python -m mistral_lab passkey train --out runs/passkey   # about 10 minutes on one CPU thread
    python -m mistral_lab passkey eval --model assets/passkey

A sequence is noise with one passkey in it, then a question:

    <s> n n n ... KEY v n n n ... n n QUERY -> v
                      ^ value      ^ the query, d positions after v

n: filler ids drawn at random; v: one of N_VALUES value ids; KEY marks it; the model
is trained (loss on the answer only) to predict v after QUERY. Nothing else in the
sequence says what v is, so the answer is right more often than chance (1 / N_VALUES)
only if information from v reaches the query's position through the layers.

With a window of W keys and k layers it can travel at most k(W - 1) positions back
(masks.receptive_field): for the preset "passkey" (W = 16, 4 layers) that is 60. Beyond
it no path of the computation connects v to the prediction, which is then exactly the
same whatever v is: accuracy is chance, by construction. Inside one window the query
can read v directly. In between, the model must relay v through the filler positions,
a layer at a time; how far it learns to do so is what notebook 09 measures. The
distance d is drawn uniformly from 1 to SEQ_LEN - 3 in training, so every distance is
asked for equally.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelArgs

BOS, KEY, QUERY = 1, 3, 4
N_FILLER, N_VALUES = 16, 16
FILLER0 = 5  # filler ids 5..20
VALUE0 = FILLER0 + N_FILLER  # value ids 21..36
SEQ_LEN = 160  # tokens the model reads: the query is the last one
MAX_DISTANCE = SEQ_LEN - 3  # KEY at 1 at the earliest (after BOS), v at 2, the query at SEQ_LEN - 1


def sample(rng: np.random.Generator, n: int, distance: int | np.ndarray | None = None):
    """n sequences (n, SEQ_LEN) with their answers (n,) and distances (n,). distance:
    one for all, one per sequence, or None (uniform in 1..MAX_DISTANCE)."""
    q = SEQ_LEN - 1
    d = rng.integers(1, MAX_DISTANCE + 1, n) if distance is None else np.broadcast_to(np.asarray(distance), (n,))
    if d.min() < 1 or d.max() > MAX_DISTANCE:
        raise ValueError(f"distance must lie in 1..{MAX_DISTANCE}, got {int(d.min())}..{int(d.max())}")
    x = rng.integers(FILLER0, FILLER0 + N_FILLER, (n, SEQ_LEN))
    v = rng.integers(VALUE0, VALUE0 + N_VALUES, n)
    rows = np.arange(n)
    x[:, 0], x[:, q] = BOS, QUERY
    x[rows, q - d] = v
    x[rows, q - d - 1] = KEY
    return torch.from_numpy(x), torch.from_numpy(v), torch.from_numpy(np.array(d))


def answer_logits(model, x: torch.Tensor) -> torch.Tensor:
    """The model's logits over the value ids at the query position: (n, N_VALUES)."""
    logits = model(x.to(next(model.parameters()).device))[:, -1].float()
    return logits[:, VALUE0:VALUE0 + N_VALUES]


@torch.no_grad()
def accuracy_by_distance(model, distances=None, n: int = 256, seed: int = 0) -> dict:
    """{"distance": [...], "accuracy": [...], "chance": 1/N_VALUES, "bound": k(W-1)}:
    the share of n sequences at each distance whose most likely value is the passkey."""
    from .masks import receptive_field

    was = model.training
    model.eval()
    distances = list(range(1, MAX_DISTANCE + 1)) if distances is None else [int(d) for d in distances]
    rng = np.random.default_rng(seed)
    acc = []
    for d in distances:
        x, v, _ = sample(rng, n, d)
        pred = answer_logits(model, x).argmax(-1).cpu() + VALUE0
        acc.append(round(float((pred == v).float().mean()), 4))
    model.train(was)
    W = model.args.sliding_window
    return {"distance": distances, "accuracy": acc, "n": n, "chance": 1 / N_VALUES, "window": W,
            "bound": None if W is None else receptive_field(model.args.n_layers, W)}


def recipe(steps: int = 1000, seed: int = 1337, device: str = "cpu"):
    """The shipped probe's training settings (a train.TrainConfig): batch 64, AdamW at 3e-3
    with 100 warm-up steps, fp32 (bitwise reproducible on one CPU type and thread count)."""
    from .train import TrainConfig

    return TrainConfig(steps=steps, batch_size=64, seq_len=SEQ_LEN, lr=3e-3, min_lr=3e-4, warmup=min(100, steps),
                       seed=seed, eval_every=100, autocast=False, device=device)


def train(args: ModelArgs, cfg, *, progress: bool = True):
    """Train on freshly drawn sequences (loss on the answer only); returns (model, log):
    log holds the loss every cfg.eval_every steps. cfg: a train.TrainConfig (steps,
    batch_size, lr, warm-up, seed, clip, device; seq_len and the text settings unused)."""
    from tqdm.auto import tqdm

    from .train import fresh_start, lr_at

    model, opt, rng = fresh_start(args, cfg)
    log, t0 = [], time.perf_counter()
    for step in tqdm(range(cfg.steps), disable=not progress, desc="passkey"):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, v, _ = sample(rng, cfg.batch_size)
        loss = F.cross_entropy(model(x.to(cfg.device))[:, -1].float(), v.to(cfg.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss is {loss.item()} at step {step + 1}: lower the learning rate")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            log.append({"step": step + 1, "loss": round(loss.item(), 5),
                        "elapsed_s": round(time.perf_counter() - t0, 2)})
    model.eval()
    return model, log
