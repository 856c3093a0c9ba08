"""Token ids as the package takes them: integers, checked, never silently cast.

A token id is an integer: a Python int, a numpy integer, or an element of an integer
tensor or array. Floats, bools and strings are refused in one line (cast, 529.7 would
become 529 and True would become 1: a wrong token with no error).

    id_list(ids)                      one sequence -> list[int]
    sequences(tokens, device)         one sequence or a batch -> (1-D id tensors, batched?)
    pad(seqs)                         right-pad a batch: (B, T) ids, (B,) real lengths
    check_batch(tokens, vocab_size)   a (B, T) id tensor the model can embed
    lengths_of(lengths, B, T)         real tokens per row of a (B, T) batch, checked
"""
from __future__ import annotations

import numbers

import numpy as np
import torch


def is_id(x) -> bool:
    """An integer token id: a Python or numpy integer, or a 0-d integer tensor (no bools, no floats)."""
    if isinstance(x, torch.Tensor):
        return x.dim() == 0 and not x.dtype.is_floating_point and x.dtype != torch.bool and not x.is_complex()
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _integer_array(x) -> bool:
    if isinstance(x, torch.Tensor):
        return not (x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex())
    return isinstance(x, np.ndarray) and x.dtype.kind in "iu"


def id_list(ids, what: str = "token ids") -> list[int]:
    """One sequence of ids (a list, tuple, 1-D tensor or array) as a list of ints."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{what} must be integers, got a {type(ids).__name__}: encode text with the tokenizer first")
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        if not _integer_array(ids):
            raise ValueError(f"{what} must be integers, got a {ids.dtype} {type(ids).__name__}")
        if ids.ndim != 1:
            raise ValueError(f"{what} must be one sequence (1-D), got shape {tuple(ids.shape)}")
        return [int(i) for i in ids.tolist()]
    items = list(ids)
    bad = next((t for t in items if not is_id(t)), None)
    if bad is not None:
        raise ValueError(f"{what} must be integers, got {bad!r} ({type(bad).__name__})")
    return [int(t) for t in items]


def sequences(tokens, device) -> tuple[list[torch.Tensor], bool]:
    """(1-D id tensors on `device`, whether the input was a batch). A batch is a list of
    sequences or a 2-D tensor; anything else is one sequence."""
    if isinstance(tokens, torch.Tensor):
        if not _integer_array(tokens):
            raise ValueError(f"token ids must be integers, got a {tokens.dtype} tensor")
        if tokens.dim() not in (1, 2):
            raise ValueError(f"tokens must be one sequence (1-D) or a batch (2-D), got shape {tuple(tokens.shape)}")
        batched = tokens.dim() == 2
        t = tokens.to(device=device, dtype=torch.long)
        seqs = list(t) if batched else [t]
    else:
        items = list(tokens)
        batched = bool(items) and isinstance(items[0], (list, tuple, torch.Tensor, np.ndarray)) and not is_id(items[0])
        seqs = [_ids(x, device) for x in items] if batched else [_ids(items, device)]
    if not seqs:
        raise ValueError("the batch is empty: give at least one prompt")
    if any(s.numel() == 0 for s in seqs):
        raise ValueError("the prompt is empty: give at least one token (e.g. the BOS token)")
    return seqs, batched


def _ids(x, device) -> torch.Tensor:
    ids = id_list(x)
    huge = next((i for i in ids if not -2**63 <= i < 2**63), None)  # torch.long would raise "Overflow..."
    if huge is not None:
        raise ValueError(f"token id {huge} is outside the vocabulary: check the tokenizer matches the model")
    return torch.tensor(ids, dtype=torch.long, device=device)


def pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad sequences with id 0 (its position is -1: never seen): (B, T) ids, (B,) lengths."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = seqs[0].new_zeros(len(seqs), int(lengths.max()))
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = s
    return ids, lengths


def check_batch(tokens: torch.Tensor, vocab_size: int) -> None:
    """A (B, T) integer tensor of ids inside [0, vocab_size), or one line saying what is wrong."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a (batch, length) tensor of ids, got {shape}")
    if tokens.shape[1] == 0:
        raise ValueError("the input is empty: give at least one token (e.g. the BOS token)")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size}): check the tokenizer matches the model")


def lengths_of(lengths, B: int, T: int) -> torch.Tensor:
    """Real tokens per row as a (B,) host tensor, checked: 0 <= length <= T (default: all T)."""
    if lengths is None:
        return torch.full((B,), T, dtype=torch.long)
    n = torch.as_tensor(lengths).cpu()
    if n.dtype.is_floating_point or n.dtype == torch.bool or n.shape != (B,):
        raise ValueError(f"lengths must be {B} integers (real tokens per row), got {lengths!r}")
    if bool((n < 0).any()) or bool((n > T).any()):
        raise ValueError(f"lengths must lie in 0..{T} (the row length), got {n.tolist()}")
    return n.long()


__all__ = ["check_batch", "id_list", "is_id", "lengths_of", "pad", "sequences"]
