"""Model configuration: one frozen dataclass, named as in Mistral's params.json.

`ModelArgs` is the only thing that differs between the 7B of the paper and the
small model shipped in assets/: the code path is the same.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .masks import check_window

# No single size of a model this code runs comes near 2**24 (the 7B's largest is 32000):
# anything beyond is a typo, and refusing it here keeps products of sizes within int64.
MAX_SIZE = 1 << 24


@dataclass(frozen=True)
class ModelArgs:
    dim: int  # width of the residual stream
    n_layers: int
    head_dim: int  # per head; dim need not equal n_heads * head_dim (Mistral's convention)
    hidden_dim: int  # SwiGLU inner width
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads, shared by n_heads // n_kv_heads query heads (GQA)
    vocab_size: int
    # W: a query at position p sees keys at positions (p - W, p], i.e. W keys including
    # itself (see masks.visible). None means full causal attention (Mistral v0.2/v0.3).
    sliding_window: int | None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Context length the model was trained for (Table 1: 8192). Informational: with the
    # rolling buffer nothing in the code stops at it, and RoPE needs no table.
    max_seq_len: int = 8192

    def __post_init__(self):
        # One validator for every source of a config (the three layouts, presets, code):
        # the loaders pass raw JSON values here, so types are checked, not coerced.
        for name in ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:  # type(): True is an int to isinstance
                raise ValueError(f"ModelArgs.{name} must be a positive integer, got {value!r}")
            if value > MAX_SIZE:
                raise ValueError(f"ModelArgs.{name} = {value} is beyond any model this code can hold (max {MAX_SIZE})")
        w = self.sliding_window
        check_window(w, "ModelArgs.sliding_window")
        if w is not None and type(w) is not int:  # a numpy integer would not survive json.dump
            raise ValueError(f"ModelArgs.sliding_window must be a Python int, got {type(w).__name__}")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"ModelArgs.{name} must be a finite positive number, got {value!r}")
            object.__setattr__(self, name, float(value))  # JSON may give 10000 for 10000.0
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelArgs.n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads}): "
                f"each key/value head serves a whole group of query heads"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelArgs.head_dim must be even for RoPE (pairs of dimensions), got {self.head_dim}")

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def n_params(self) -> int:
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        ffn = 3 * self.dim * self.hidden_dim
        per_layer = attn + ffn + 2 * self.dim
        return self.n_layers * per_layer + 2 * self.vocab_size * self.dim + self.dim

    def kv_bytes_per_token(self, bytes_per_element: int = 2) -> int:
        """Cache bytes one token costs across all layers (K and V)."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * bytes_per_element

    def replace(self, **changes) -> "ModelArgs":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelArgs field(s) {unknown}: expected some of {sorted(known)}")
        return cls(**d)


PRESETS: dict[str, ModelArgs] = {
    # The paper's Table 1.
    "mistral-7b-v0.1": ModelArgs(
        dim=4096, n_layers=32, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8,
        vocab_size=32000, sliding_window=4096, norm_eps=1e-5, rope_theta=10000.0, max_seq_len=8192,
    ),
    # The model shipped in assets/model: trained on Shakespeare with its own 4096-piece BPE.
    # W = 64 over training sequences of 512 tokens (8 windows), so that information from
    # beyond one window reaches a token only through the stacked layers (6 x 63 = 378).
    "shakespeare": ModelArgs(
        dim=256, n_layers=6, head_dim=32, hidden_dim=768, n_heads=8, n_kv_heads=2,
        vocab_size=4096, sliding_window=64, max_seq_len=512,
    ),
    # The retrieval probe (passkey.py): W = 16 and 4 layers, so information can travel at
    # most 4 x 15 = 60 positions back, over sequences of 160 (d up to 157).
    "passkey": ModelArgs(
        dim=64, n_layers=4, head_dim=16, hidden_dim=192, n_heads=4, n_kv_heads=2,
        vocab_size=40, sliding_window=16, max_seq_len=160,
    ),
    # A few-hundred-thousand-parameter model with the same structure, for tests and demos.
    "tiny": ModelArgs(
        dim=64, n_layers=3, head_dim=16, hidden_dim=160, n_heads=4, n_kv_heads=2,
        vocab_size=512, sliding_window=8, max_seq_len=256,
    ),
}

# The shipped model's full-attention twin: the same model, recipe and data with no window,
# to show what the window changes (notebook 09).
PRESETS["shakespeare-full"] = PRESETS["shakespeare"].replace(sliding_window=None)


def preset(name: str) -> ModelArgs:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}") from None


def available_memory(device) -> int | None:
    """Bytes free on `device` now (None where it cannot be told)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_fits(args: ModelArgs, bytes_per_param: int, device="cpu", copies: int = 1) -> None:
    """Refuse, before allocating, a model whose weights (times `copies`: 4 for training with
    AdamW: weights, gradients and two moments) exceed the memory free on `device`."""
    need = args.n_params() * bytes_per_param * copies
    free = available_memory(device)
    if free is not None and need > free:
        gib = 2**30
        raise ValueError(f"the model needs {need / gib:.1f} GiB ({args.n_params():,} parameters x {bytes_per_param} "
                         f"bytes{f' x {copies}' if copies > 1 else ''}) but only {free / gib:.1f} GiB is free on "
                         f"{device}: use a smaller configuration, a smaller dtype or another device")


def check_bytes(need: int, what: str, device="cpu", fix: str = "ask for less") -> None:
    """Refuse, before allocating, `need` bytes for `what` when the memory free on `device`
    cannot hold them: one line with the size it would need and what to do."""
    free = available_memory(device)
    if free is not None and need > free:
        gib = 2**30
        raise MemoryError(f"{what} needs {need / gib:.2f} GiB ({need:,} bytes) but only {free / gib:.1f} GiB is "
                          f"free on {device}: {fix}")


def check_cache_fits(args: ModelArgs, batch_size: int, capacity: int, dtype, device) -> None:
    """Refuse a KV cache of `capacity` slots per sequence (keys, values and their
    positions) that the memory free on `device` cannot hold, before allocating it."""
    element = torch.tensor([], dtype=dtype).element_size()
    need = batch_size * capacity * (args.kv_bytes_per_token(element) + 8 * args.n_layers)
    free = available_memory(device or "cpu")
    if free is None or need <= free:  # the common case: one read of the free memory, no advice to build
        return
    window = args.sliding_window
    one = need // batch_size  # what a single sequence needs: is the batch or the window too big?
    if batch_size > 1 and one <= free:
        fix = f"use a smaller batch (at most {free // one:,} sequences of this cache fit)"
    elif window is not None and capacity == window:
        fix = f"use a smaller window (W = {window})"
    else:
        fix = "generate fewer tokens, use a smaller batch, or a model with a window"
    check_bytes(need, f"a KV cache of {capacity:,} slots x {batch_size:,} sequence{'s' if batch_size > 1 else ''}",
                device or "cpu", fix=fix)
