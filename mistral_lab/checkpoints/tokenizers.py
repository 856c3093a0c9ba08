"""Which tokenizer goes with a checkpoint. A model and its tokenizer must match: ids from
another tokenizer are silently meaningless (or out of range), so nothing is guessed.

    tok = load_tokenizer(path)                        # the checkpoint's own tokenizer.model
    tok = load_tokenizer(path, tokenizer="mistral-v1")   # Mistral 7B v0.1's, from mistral-common
"""
from __future__ import annotations

from pathlib import Path

from ..data.assets import default_model_path
from ..tokenizer import Tokenizer
from .layouts import previous
from .loading import locate, read_config
from .tensorfiles import CheckpointError


MISTRAL_V1 = "mistral-v1"  # tokenizer=MISTRAL_V1: Mistral 7B v0.1's, from mistral-common


def tokenizer_file(folder: Path) -> Path | None:
    """The tokenizer a checkpoint folder holds (tokenizer.model, else Mistral's tokenizer.model.v*)."""
    found = [f for f in [folder / "tokenizer.model"] + sorted(folder.glob("tokenizer.model.v*")) if f.is_file()]
    return found[0] if found else None


def load_tokenizer(path=None, *, tokenizer=None, check: bool = True) -> Tokenizer:
    """The tokenizer of the checkpoint at `path` (default: the shipped model): its
    tokenizer.model (or tokenizer.model.v*), or `path` itself when it names such a file.

    tokenizer: the tokenizer to use instead: a .model file, or "mistral-v1" (Mistral 7B
    v0.1's own, for checkpoints downloaded without theirs). A checkpoint without a
    tokenizer and no `tokenizer` argument is an error, never a guess. With `check`, the
    tokenizer's size must equal the checkpoint config's vocab_size."""
    if path is None:
        locate(None)  # the shipped model's own tokenizer (4096 pieces): fail if missing
        path = default_model_path()
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer not found: {path} does not exist (give a checkpoint directory)")
    if tokenizer is not None:
        tok = Tokenizer.mistral_v1() if str(tokenizer) == MISTRAL_V1 else Tokenizer(Path(tokenizer).expanduser())
    elif path.is_file() and path.name.startswith("tokenizer.model"):
        tok = Tokenizer(path)
    else:
        folder = previous(path) if path.is_dir() else path.parent  # a save cut mid-switch: the old model's
        found = tokenizer_file(folder)
        if found is None:
            raise FileNotFoundError(
                f"{folder} has no tokenizer.model: pass the tokenizer the model was trained with "
                f"(load_tokenizer(path, tokenizer='path/to/tokenizer.model'), or --tokenizer on the command "
                f"line; tokenizer='{MISTRAL_V1}' for Mistral 7B v0.1 and its fine-tunes)")
        tok = Tokenizer(found)
    if check:
        check_vocab(tok, path)
    return tok


def check_vocab(tok: Tokenizer, path) -> None:
    """The tokenizer's size must be the vocab_size of the checkpoint at `path` (when `path`
    is in a checkpoint folder: a bare tokenizer file has nothing to compare with)."""
    try:
        folder, layout = locate(path)
        _, args, _ = read_config(folder, layout)
    except (CheckpointError, FileNotFoundError):
        if Path(path).is_file() and Path(path).name.startswith("tokenizer.model"):
            return
        raise
    if tok.vocab_size != args.vocab_size:
        raise ValueError(
            f"the tokenizer {tok.model_file} has {tok.vocab_size} pieces but the model in {folder} has "
            f"vocab_size {args.vocab_size}: pass the tokenizer the model was trained with "
            f"(tokenizer=... / --tokenizer)")
