"""Key/value caches: the rolling buffer of the paper, and a full cache to compare with.

Rolling buffer (W slots per layer). The key and value of position i live in slot
i mod W; the absolute position held by each slot is kept beside it (`slot_pos`), so
attention masks by position, never by slot index, and RoPE (applied before caching)
needs no unrotation. Worked example with W = 4 after the 6 tokens 0..5:

    slot       0  1  2  3
    position   4  5  2  3     position 4 overwrote 0, position 5 overwrote 1

The next token, position 6, goes to slot 2 and evicts position 2 -- which a query at
6 no longer sees anyway (its window is positions 3..6).

A full cache is the same structure with one slot per position: it grows as tokens
arrive (capacity doubles), which is what the rolling buffer saves.

Order of operations (see model.Attention): a pre-fill chunk attends over
[cache + chunk] *before* its keys are written -- otherwise its own later tokens could
overwrite slots that its earlier queries still need; a decode step writes, then attends.
"""
from __future__ import annotations

import torch

from . import trace
from .config import ModelArgs


class KVCache:
    def __init__(
        self,
        args: ModelArgs,
        batch_size: int = 1,
        capacity: int | None = None,
        *,
        grow: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        window = args.sliding_window
        if capacity is None:
            if window is None:
                raise ValueError(
                    "this model has no sliding window (full attention): give the cache a capacity, "
                    "e.g. KVCache.full(args, ...) or capacity=<longest sequence>"
                )
            capacity = window
        if capacity <= 0:
            raise ValueError(f"cache capacity must be a positive number of slots, got {capacity}")
        if window is not None and capacity < window and not grow:
            raise ValueError(
                f"a cache of {capacity} slots cannot hold a window of {window} keys: use capacity >= {window}"
            )
        self.args = args
        self.grow = grow
        shape = (args.n_layers, batch_size, capacity, args.n_kv_heads, args.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, S, K, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # Absolute position held by each slot, per layer; -1 = empty. Per layer because
        # a forward pass writes layer by layer, and a chunk's attention at layer l must
        # see the slots as they were before layer l's write.
        self.slot_pos = torch.full((args.n_layers, capacity), -1, dtype=torch.long, device=device)
        self.next_pos = 0  # position of the next token to come

    @classmethod
    def rolling(cls, args: ModelArgs, batch_size: int = 1, **kw) -> "KVCache":
        """The paper's rolling buffer: W slots per layer, overwritten in place."""
        return cls(args, batch_size, **kw)

    @classmethod
    def full(cls, args: ModelArgs, batch_size: int = 1, capacity: int = 256, **kw) -> "KVCache":
        """A cache that keeps every position, growing as needed (for comparison)."""
        return cls(args, batch_size, capacity, grow=True, **kw)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values (positions bookkeeping excluded)."""
        return self.k.nelement() * self.k.element_size() + self.v.nelement() * self.v.element_size()

    def advance(self, n: int) -> None:
        self.next_pos += n

    def reserve(self, end: int) -> None:
        """Make room for positions < end: grows a full cache, refuses to wrap a full-attention one."""
        if end <= self.capacity:
            return
        if self.grow:
            self._resize(max(end, 2 * self.capacity))
        elif self.args.sliding_window is None:
            raise ValueError(
                f"position {end - 1} does not fit a {self.capacity}-slot cache of a full-attention model: "
                f"use KVCache.full(...) or a larger capacity"
            )

    def _resize(self, capacity: int) -> None:
        # Before any wrap, slot == position, so the old contents keep their slots.
        old = self.capacity
        for name in ("k", "v"):
            t = getattr(self, name)
            new = t.new_zeros(t.shape[:2] + (capacity,) + t.shape[3:])
            new[:, :, :old] = t
            setattr(self, name, new)
        pos = self.slot_pos.new_full((self.slot_pos.shape[0], capacity), -1)
        pos[:, :old] = self.slot_pos
        self.slot_pos = pos

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Store k, v (B, T, K, D) of positions start .. start+T-1 into slots pos mod capacity."""
        T, S = k.shape[1], self.capacity
        if T > S:  # only the last S positions survive; writing the rest would be overwritten anyway
            k, v, start, T = k[:, T - S:], v[:, T - S:], start + T - S, S
        tr = trace.active()
        if tr is not None and tr.wants_layer(layer):
            self._record(tr, layer, start, T)
        first = start % S
        n1 = min(T, S - first)  # contiguous run up to the end of the buffer, then wrap to slot 0
        self.k[layer, :, first:first + n1] = k[:, :n1]
        self.v[layer, :, first:first + n1] = v[:, :n1]
        if T == 1:
            self.slot_pos[layer, first] = start
        else:
            pos = torch.arange(start, start + T, device=self.slot_pos.device)
            self.slot_pos[layer, first:first + n1] = pos[:n1]
            if n1 < T:
                self.k[layer, :, : T - n1] = k[:, n1:]
                self.v[layer, :, : T - n1] = v[:, n1:]
                self.slot_pos[layer, : T - n1] = pos[n1:]

    def _record(self, tr, layer: int, start: int, T: int) -> None:
        S = self.capacity
        held = self.slot_pos[layer].tolist()
        for p in range(start, start + T):
            tr.cache_writes.append(trace.CacheWrite(layer, p % S, p, held[p % S]))
            held[p % S] = p

    def positions(self, layer: int = 0) -> list[int]:
        """Which absolute position each slot holds (-1: empty), for display."""
        return self.slot_pos[layer].tolist()


def cache_bytes(args: ModelArgs, tokens: int, *, rolling: bool, batch_size: int = 1, bytes_per_element: int = 2) -> int:
    """Exact K/V bytes after `tokens` tokens: rolling keeps min(tokens, W) per layer."""
    held = min(tokens, args.sliding_window) if rolling and args.sliding_window is not None else tokens
    return batch_size * held * args.kv_bytes_per_token(bytes_per_element)
