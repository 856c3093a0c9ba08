"""Train a small model with exactly Mistral's architecture (only ModelArgs differ).

    python -m mistral_lab train --out runs/shakespeare --device cuda   # the shipped model's recipe
    python -m mistral_lab train --preset tiny --steps 5 ...   # a smoke run

Seeded end to end (data order, initialization); random crops of seq_len + 1 tokens
from the training split; AdamW with warm-up and cosine decay; bf16 autocast with fp32
master weights. Each run writes to --out: the model (project layout), the tokenizer,
and train_log.jsonl (the loss curve).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelArgs
from .model import Transformer


@dataclass
class TrainConfig:
    steps: int = 1000  # the shipped model's recipe
    batch_size: int = 8
    seq_len: int = 512
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1337
    eval_every: int = 200
    eval_batches: int = 4
    autocast: bool = True  # bf16 matmuls, fp32 master weights
    device: str = "cpu"


def init_weights(model: Transformer, seed: int) -> None:
    """GPT-2 style: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layers)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            torch.nn.init.ones_(p)  # RMSNorm gains
            continue
        std = 0.02
        if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
            std /= math.sqrt(2 * model.args.n_layers)
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def batches(tokens: np.ndarray, cfg: TrainConfig, seed: int):
    """Endless random crops (B, seq_len + 1), reproducible from the seed."""
    rng = np.random.default_rng(seed)
    n = len(tokens) - cfg.seq_len - 1
    if n <= 0:
        raise ValueError(f"the token stream ({len(tokens)} tokens) is shorter than seq_len + 1 = {cfg.seq_len + 1}")
    while True:
        starts = rng.integers(0, n, cfg.batch_size)
        yield torch.from_numpy(np.stack([tokens[s:s + cfg.seq_len + 1] for s in starts]).astype(np.int64))


def loss_on(model: Transformer, batch: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    batch = batch.to(cfg.device)
    with torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.autocast):
        logits = model(batch[:, :-1])  # (B, T, V), fp32
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: Transformer, tokens: np.ndarray, cfg: TrainConfig) -> float:
    model.eval()
    it = batches(tokens, cfg, seed=cfg.seed + 1)  # the same held-out crops at every evaluation
    loss = sum(loss_on(model, next(it), cfg).item() for _ in range(cfg.eval_batches)) / cfg.eval_batches
    model.train()
    return loss


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=False)


def train(args: ModelArgs, train_tokens: np.ndarray, heldout_tokens: np.ndarray, cfg: TrainConfig,
          out_dir: Path, *, progress: bool = True, log=None) -> Transformer:
    """Train from scratch; returns the model. Writes out_dir/train_log.jsonl as it goes."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    model = Transformer(args).to(cfg.device)
    init_weights(model, cfg.seed)
    model.train()
    opt = make_optimizer(model, cfg)
    data = batches(train_tokens, cfg, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train_log.jsonl"
    t0 = time.perf_counter()
    with open(log_path, "w") as logf, tqdm(range(cfg.steps), disable=not progress, desc="train") as bar:
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = loss_on(model, next(data), cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            rec = {"step": step + 1, "loss": round(loss.item(), 5), "lr": lr_at(step, cfg),
                   "tokens": (step + 1) * cfg.batch_size * cfg.seq_len, "elapsed_s": round(time.perf_counter() - t0, 2)}
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                rec["heldout_loss"] = round(evaluate(model, heldout_tokens, cfg), 5)
                # a plain state dict at every evaluation: progress survives an interruption
                torch.save({"args": args.to_dict(), "step": step + 1, "model": model.state_dict()},
                           out_dir / "checkpoint.pt")
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            bar.set_postfix(loss=f"{rec['loss']:.3f}", **({"heldout": f"{rec['heldout_loss']:.3f}"} if "heldout_loss" in rec else {}))
            if log is not None:
                log(rec)
    model.eval()
    return model
