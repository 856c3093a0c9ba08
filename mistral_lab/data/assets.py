"""Where the shipped files live: <repository>/assets (see assets/README.md).

    default_model_path()     assets/model, the shipped model (W = 64)
    asset("model-full")      its full-attention twin; asset("passkey"): the retrieval probe
    heldout_stream()         the held-out plays as token ids, as the models were evaluated on them
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import sha256
from .corpus import encode_corpus

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def asset(name: str) -> Path:
    """assets/<name>: "model", "model-full", "passkey", "tokenizer.model", "heldout.txt"."""
    return ASSETS / name


def default_model_path() -> Path:
    """Where the project's shipped small model lives: <repo>/assets/model."""
    return asset("model")


def fingerprint(name: str = "model") -> str:
    """sha256 of assets/<name>/model.safetensors: which weights a committed result measured."""
    return sha256(asset(name) / "model.safetensors")


def heldout_text() -> str:
    """The held-out split's text: three works joined by a form feed (corpus.DOC_SEP)."""
    return asset("heldout.txt").read_text(encoding="utf-8")


def heldout_stream(tokenizer_file: str | Path | None = None) -> np.ndarray:
    """The held-out split as the shipped models were evaluated on it (BOS before each work),
    or through another model's tokenizer file (a notebook run on another checkpoint)."""
    return encode_corpus(tokenizer_file or asset("tokenizer.model"), heldout_text())


__all__ = ["ASSETS", "asset", "default_model_path", "fingerprint", "heldout_stream", "heldout_text"]
