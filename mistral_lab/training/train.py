"""Train a small model with exactly Mistral's architecture (only ModelArgs differ).

    python -m mistral_lab train --out runs/shakespeare --device cuda   # the shipped model's recipe
    python -m mistral_lab train --preset tiny --steps 5 ...   # a smoke run
    python -m mistral_lab train --resume runs/shakespeare      # continue an interrupted run

Seeded end to end (data order, initialization); random crops of seq_len + 1 tokens
from the training split; AdamW with warm-up and cosine decay; bf16 autocast with fp32
master weights. Each run writes to its folder: train_log.jsonl (the loss curve, one
line per step, appended and flushed line by line), checkpoint.pt (at every evaluation
and at the end), then the model (project layout) and the tokenizer.

Nothing is lost: every file is written whole or not at all (files.atomic_write), a run
never writes into a folder holding anything else, and a resumed run restores the model,
the optimizer, the step (which sets the learning rate) and the data order's RNG, so it
ends bitwise equal to an uninterrupted run on the same machine. The log of a resumed
run keeps its old lines: a {"event": "resume"} line marks where it continued, and the
steps after the checkpoint are logged again (read_log keeps the last record of a step).
"""
from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tqdm.auto import tqdm

from .. import files
from ..config import ModelArgs, check_fits
from ..data.repeats import add_repeats
from ..experiments.copying import copy_gain
from ..model import Transformer

LOG_VERSION = 1  # the "v" of every train_log.jsonl line
CHECKPOINT_FORMAT, CHECKPOINT_VERSION = "mistral_lab.train_checkpoint", 1


@dataclass
class TrainConfig:
    steps: int = 1000  # the shipped model's recipe
    batch_size: int = 8
    seq_len: int = 512
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int | None = None  # None: 100 steps, at most a tenth of the run
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1337
    eval_every: int = 200
    eval_batches: int = 4
    autocast: bool = True  # bf16 matmuls, fp32 master weights
    device: str = "cpu"
    # Share of each batch's sequences that carry repeated spans (repeats.add_repeats): the
    # signal that teaches copying from the context. 0 trains on plain text.
    copy_rows: float = 0.0

    def __post_init__(self):
        if self.warmup is None and type(self.steps) is int and self.steps > 0:
            self.warmup = min(100, max(1, self.steps // 10))
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches"):
            _check(name, getattr(self, name), int, lambda v: v > 0, "a positive integer")
        _check("warmup", self.warmup, int, lambda v: v >= 0, "an integer >= 0")
        # numpy's and torch's generators both take any seed in [0, 2**63)
        _check("seed", self.seed, int, lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)")
        _check("lr", self.lr, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
        _check("min_lr", self.min_lr, float, lambda v: math.isfinite(v) and 0 <= v <= self.lr,
               f"a finite number in [0, lr = {self.lr}]")
        _check("weight_decay", self.weight_decay, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
        _check("grad_clip", self.grad_clip, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
        _check("copy_rows", self.copy_rows, float, lambda v: 0 <= v <= 1, "a share in [0, 1]")
        if type(self.autocast) is not bool:
            raise ValueError(f"TrainConfig.autocast must be True or False, got {self.autocast!r}")


def _check(name, value, kind, ok, what) -> None:
    types = (int,) if kind is int else (int, float)
    if type(value) not in types or not ok(value):  # type(): True is not a step count
        raise ValueError(f"TrainConfig.{name} must be {what}, got {value!r}")


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


def batches(tokens: np.ndarray, cfg: TrainConfig, seed: int, rng: np.random.Generator | None = None,
            vocab_size: int | None = None):
    """Endless random crops (B, seq_len + 1), reproducible from the seed (or from `rng`,
    whose state a checkpoint saves: the crops after a resume are the ones that would
    have come next). With vocab_size, the first round(copy_rows * B) rows of each batch
    get repeated spans (repeats.add_repeats) drawn from the same rng."""
    rng = np.random.default_rng(seed) if rng is None else rng
    n = len(tokens) - cfg.seq_len - 1
    if n <= 0:
        raise ValueError(f"the token stream ({len(tokens)} tokens) is shorter than seq_len + 1 = {cfg.seq_len + 1}")
    mixed = round(cfg.copy_rows * cfg.batch_size) if vocab_size is not None else 0
    while True:
        starts = rng.integers(0, n, cfg.batch_size)
        rows = np.stack([tokens[s:s + cfg.seq_len + 1] for s in starts]).astype(np.int64)
        for row in rows[:mixed]:
            add_repeats(row, rng, vocab_size, tokens)
        yield torch.from_numpy(rows)


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


@torch.no_grad()
def copy_eval(model: Transformer, heldout_tokens: np.ndarray) -> dict:
    """Nats/token a span saves when repeated right after itself: 24 tokens of held-out
    text, 16 random ids (repeats.copy_gain), 16 places each."""
    model.eval()
    gains = {"copy_text": copy_gain(model, heldout_tokens, random_ids=False, span_len=24, n=16),
             "copy_random": copy_gain(model, heldout_tokens, random_ids=True, span_len=16, n=16)}
    model.train()
    return {k: round(v, 4) for k, v in gains.items()}


def fresh_start(args: ModelArgs, cfg: TrainConfig):
    """A seeded run's first state: (model initialised in train mode, AdamW, the data rng)."""
    torch.manual_seed(cfg.seed)
    model = Transformer(args).to(cfg.device)
    init_weights(model, cfg.seed)
    model.train()
    return model, make_optimizer(model, cfg), np.random.default_rng(cfg.seed)


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=False)


def train(args: ModelArgs, train_tokens: np.ndarray, heldout_tokens: np.ndarray, cfg: TrainConfig,
          out_dir: Path, *, progress: bool = True, log=None, resume: bool = False) -> Transformer:
    """Train from scratch (or, with resume, from out_dir/checkpoint.pt); returns the model.
    Appends to out_dir/train_log.jsonl as it goes; `log(record)` is called every step."""
    out_dir = Path(out_dir)
    ckpt = read_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        check_same_run(ckpt, args, cfg, out_dir)
    vocab_hi = int(max(train_tokens.max(initial=0), heldout_tokens.max(initial=0)))
    if vocab_hi >= args.vocab_size:
        raise ValueError(f"the data holds token id {vocab_hi}, outside the model's vocabulary [0, {args.vocab_size}): "
                         f"encode it with a tokenizer of {args.vocab_size} pieces")
    check_fits(args, 4, cfg.device, copies=4)  # fp32 weights, gradients, two AdamW moments
    model, opt, rng = fresh_start(args, cfg)
    start = 0
    if ckpt is not None:  # everything the next step depends on; the LR follows from the step
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        rng.bit_generator.state = ckpt["data_rng"]
        start = ckpt["step"]
    data = batches(train_tokens, cfg, cfg.seed, rng=rng, vocab_size=args.vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "train_log.jsonl"
    t0 = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as logf, \
            tqdm(range(start, cfg.steps), disable=not progress, desc="train", initial=start, total=cfg.steps) as bar:
        if ckpt is not None:
            _append(logf, {"event": "resume", "from_step": start})
        for step in bar:
            loss = optimizer_step(model, opt, lambda: loss_on(model, next(data), cfg), step, cfg)
            rec = {"step": step + 1, "loss": round(loss.item(), 5), "lr": lr_at(step, cfg),
                   "tokens": (step + 1) * cfg.batch_size * cfg.seq_len, "elapsed_s": round(time.perf_counter() - t0, 2)}
            if not math.isfinite(rec["loss"]):
                raise FloatingPointError(f"the loss is {rec['loss']} at step {step + 1}: training diverged; "
                                         f"lower --lr, or resume from the last checkpoint with a smaller one")
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                rec["heldout_loss"] = round(evaluate(model, heldout_tokens, cfg), 5)
                rec.update(copy_eval(model, heldout_tokens))
                # at every evaluation: an interruption loses at most eval_every steps
                write_checkpoint(out_dir, args, cfg, step + 1, model, opt, rng)
            _append(logf, rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", **({"heldout": f"{rec['heldout_loss']:.3f}"} if "heldout_loss" in rec else {}))
            if log is not None:
                log(rec)
    model.eval()
    return model


def optimizer_step(model, opt, loss_fn, step: int, cfg: TrainConfig) -> torch.Tensor:
    """One step of every recipe: the learning rate of this step, the loss, backward, the
    gradient clipped to cfg.grad_clip, AdamW. Returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    loss = loss_fn()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss


def _append(logf, rec: dict) -> None:
    logf.write(json.dumps({"v": LOG_VERSION, **rec}) + "\n")  # one write per line, flushed at once
    logf.flush()


def write_checkpoint(out_dir: Path, args: ModelArgs, cfg: TrainConfig, step: int, model, opt, rng) -> None:
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "args": args.to_dict(),
                "train": asdict(cfg), "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "data_rng": rng.bit_generator.state}, buf)
    files.atomic_write_bytes(out_dir / "checkpoint.pt", buf.getvalue())


def read_checkpoint(out_dir: Path) -> dict:
    file = Path(out_dir) / "checkpoint.pt"
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: " + (  # a log without it: stopped before its first
            f"the run in {out_dir} stopped before its first checkpoint, so there is nothing to resume; start it "
            f"again with --out {out_dir} --overwrite" if (Path(out_dir) / "train_log.jsonl").is_file() else
            f"there is no run to resume in {out_dir} (start one with --out {out_dir})"))
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and EOF errors all mean the same thing here
        raise ValueError(f"{file} is not a readable training checkpoint ({type(e).__name__}): "
                         f"start a new run with --out NEW_FOLDER") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{file} is not a mistral_lab training checkpoint with a format version (written by "
                         f"an older mistral_lab?): it cannot be resumed; start a new run with --out NEW_FOLDER")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{file} has checkpoint format version {ckpt.get('version')!r}; this mistral_lab "
                         f"resumes version {CHECKPOINT_VERSION}: use the mistral_lab that wrote it")
    return ckpt


def check_same_run(ckpt: dict, args: ModelArgs, cfg: TrainConfig, out_dir: Path) -> None:
    """A resumed run must compute what the run computed: the same model and settings
    (only the device may change)."""
    if ModelArgs.from_dict(ckpt["args"]) != args:
        raise ValueError(f"{out_dir}/checkpoint.pt holds another model configuration than the one given: "
                         f"resume with the run's own (train_config(checkpoint))")
    saved = {k: v for k, v in _train_settings(ckpt).items() if k != "device"}
    given = {k: v for k, v in asdict(cfg).items() if k != "device"}
    diff = [f"{k}={given[k]!r} (the run: {saved.get(k)!r})" for k in given if saved.get(k) != given[k]]
    if diff:
        raise ValueError(f"resuming {out_dir} with other settings than its run: {', '.join(diff)}; "
                         f"drop them, or start a new run in a new folder")


def resume_settings(out_dir: Path, given: dict | None = None, device: str | None = None
                    ) -> tuple[ModelArgs, TrainConfig]:
    """The model configuration and training settings of the run in out_dir. given: settings
    the user passed again (TrainConfig field -> value), each of which must be the run's
    own; device: where to continue (the one setting that may change)."""
    ckpt = read_checkpoint(out_dir)
    settings = _train_settings(ckpt)
    for k, v in (given or {}).items():
        if settings.get(k) != v:
            raise ValueError(f"{out_dir} was trained with {k}={settings.get(k)!r}, not {v!r}: resume without "
                             f"--{k.replace('_', '-')}, or start a new run in a new folder")
    if device is not None:
        settings["device"] = device
    return ModelArgs.from_dict(ckpt["args"]), TrainConfig(**settings)


def _train_settings(ckpt: dict) -> dict:
    return {"copy_rows": 0.0, **ckpt["train"]}  # runs from before the copy mix trained on plain text


def read_log(path) -> list[dict]:
    """The step records of a train_log.jsonl, one per step (a resumed run's last), by step."""
    path = Path(path)
    steps: dict[int, dict] = {}
    lines = path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            # a line cut by a kill, before a resume started a new one: skip it
            if i + 1 < len(lines) and '"event": "resume"' in lines[i + 1]:
                continue
            raise ValueError(f"{path}: line {i + 1} is not JSON: the log is damaged") from None
        if rec.get("v") != LOG_VERSION:
            raise ValueError(f"{path}: line {i + 1} has log version {rec.get('v')!r}; this mistral_lab reads "
                             f"version {LOG_VERSION}")
        if "step" in rec:
            steps[rec["step"]] = rec
    return [steps[k] for k in sorted(steps)]
