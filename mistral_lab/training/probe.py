"""Training the retrieval probe (data/passkey.py): fresh sequences every step, loss on the answer.

    python -m mistral_lab passkey train --out runs/passkey   # about 12 minutes on one CPU thread
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import files, threads
from ..config import ModelArgs, preset
from ..data.passkey import MAX_DISTANCE, SEQ_LEN, sample
from ..experiments.passkey import accuracy_by_distance
from .runs import finish, prepare_out
from .train import TrainConfig, fresh_start, optimizer_step


def recipe(steps: int = 1000, seed: int = 1337, device: str = "cpu"):
    """The shipped probe's training settings (a train.TrainConfig): batch 64, AdamW at 3e-3
    with 100 warm-up steps, fp32 (bitwise reproducible on one CPU type and thread count)."""
    return TrainConfig(steps=steps, batch_size=64, seq_len=SEQ_LEN, lr=3e-3, min_lr=3e-4, warmup=min(100, steps),
                       seed=seed, eval_every=100, autocast=False, device=device)


def train(args: ModelArgs, cfg, *, progress: bool = True):
    """Train on freshly drawn sequences (loss on the answer only); returns (model, log):
    log holds the loss every cfg.eval_every steps. cfg: a train.TrainConfig (steps,
    batch_size, lr, warm-up, seed, clip, device; seq_len and the text settings unused)."""
    model, opt, rng = fresh_start(args, cfg)
    log, t0 = [], time.perf_counter()
    for step in tqdm(range(cfg.steps), disable=not progress, desc="passkey"):
        x, v, _ = sample(rng, cfg.batch_size)
        loss = optimizer_step(model, opt, lambda: F.cross_entropy(model(x.to(cfg.device))[:, -1].float(),
                                                                   v.to(cfg.device)), step, cfg)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the loss is {loss.item()} at step {step + 1}: lower the learning rate")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            log.append({"step": step + 1, "loss": round(loss.item(), 5),
                        "elapsed_s": round(time.perf_counter() - t0, 2)})
    model.eval()
    return model, log


def train_run(out_dir, *, steps: int = 1000, seed: int = 1337, n_threads: int = 1, overwrite: bool = False,
              progress: bool = True) -> dict:
    """`python -m mistral_lab passkey train`: train the probe into out_dir (a run folder,
    runs.py) with the thread count pinned -- the weights are bitwise the same for one
    thread count on one CPU type. Returns train_info.json's contents."""
    out_dir = Path(out_dir)
    prepare_out(out_dir, overwrite=overwrite)  # refuses a folder holding anything else
    cfg = recipe(steps=steps, seed=seed)
    with threads.limited(n_threads):
        t0 = time.time()
        model, log = train(preset("passkey"), cfg, progress=progress)
        summary = accuracy_by_distance(model, range(1, MAX_DISTANCE + 1, 4), n=128)
        out_dir.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(out_dir / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in log))
        info = {"preset": "passkey", "args": model.args.to_dict(), "train": cfg.__dict__,
                "accuracy_by_distance": summary}
        return finish(out_dir, model, info, t0=t0, device="cpu", save_dtype=torch.float32)
