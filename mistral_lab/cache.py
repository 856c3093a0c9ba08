"""Key/value caches: the rolling buffer of the paper, and a full cache to compare with.

Rolling buffer (S = W slots per layer and sequence). The key and value of position i
live in slot i mod S; the absolute position held by each slot is kept beside it
(`slot_pos`), so attention masks by position, never by slot index, and RoPE (applied
before caching) needs no unrotation. Worked example with W = 4 after the 6 tokens 0..5:

    slot       0  1  2  3
    position   4  5  2  3     position 4 overwrote 0, position 5 overwrote 1

The next token, position 6, goes to slot 2 and evicts position 2 -- which a query at
6 no longer sees anyway (its window is positions 3..6).

A full cache is the same structure with one slot per position: it grows as tokens
arrive (capacity doubles), which is what the rolling buffer saves.

Batches. Every sequence of a batch has its own row of slots and its own next position
(`seq_pos`), so prompts of different lengths share one cache: sequence 0 may be at
position 300 while sequence 1 is at 5. Positions are (B, T) tensors everywhere; -1
marks "no token here" (the padding of a shorter prompt, a sequence that has stopped):
it is never written and, through masks.visible, never attended.

The model never indexes the cache itself: layer l gets `cache.layer(l)`, a LayerCache
view that owns the slot arithmetic and the write. Order of operations (model.Attention):
a pre-fill chunk attends over [cache + chunk] *before* its keys are written --
otherwise its own later tokens could overwrite slots that its earlier queries still
need; a decode step writes, then attends.
"""
from __future__ import annotations

import torch

from . import trace
from .config import ModelArgs, check_cache_fits
from .masks import keys_per_query, oldest_visible


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
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive number of sequences, got {batch_size!r}")
        if capacity <= 0:
            raise ValueError(f"cache capacity must be a positive number of slots, got {capacity}")
        if window is not None and capacity < window and not grow:
            raise ValueError(
                f"a cache of {capacity} slots cannot hold a window of {window} keys: use capacity >= {window}"
            )
        self.args = args
        self.grow = grow
        check_cache_fits(args, batch_size, capacity, dtype, device)  # one line with the bytes, not the allocator's
        shape = (args.n_layers, batch_size, capacity, args.n_kv_heads, args.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, S, K, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # Absolute position held by each slot, per layer and sequence; -1 = empty. Per
        # layer because a forward pass writes layer by layer, and a chunk's attention at
        # layer l must see the slots as they were before layer l's write.
        self.slot_pos = torch.full((args.n_layers, batch_size, capacity), -1, dtype=torch.long, device=device)
        self.seq_pos = torch.zeros(batch_size, dtype=torch.long)  # next position of each sequence (host)
        self.end = 0  # one past the highest position reserved so far (what a full cache must read)
        self.oldest_query = 0  # the lowest position a query of the current call can have (host int)

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

    @property
    def next_pos(self) -> int:
        """The next position, when every sequence is at the same one (always at batch 1)."""
        first = int(self.seq_pos[0])
        if bool((self.seq_pos != first).any()):
            raise ValueError(f"the sequences of this batch are at different positions {self.seq_pos.tolist()}: "
                             f"read cache.seq_pos")
        return first

    @next_pos.setter
    def next_pos(self, pos: int) -> None:
        self.seq_pos.fill_(pos)
        self.end = max(self.end, pos)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Store k, v (B, T, K, D) of positions start .. start+T-1 of every sequence (tests, demos)."""
        B, T = k.shape[:2]
        self.reserve(start + T)
        self.layer(layer).write(k, v, (start + torch.arange(T)).expand(B, T).to(self.k.device))

    def layer(self, i: int) -> "LayerCache":
        """The view that layer i reads and writes."""
        return LayerCache(self, i)

    def positions_for(self, lengths: torch.Tensor, T: int, device=None) -> torch.Tensor:
        """(B, T) positions of the next T columns: sequence b's first lengths[b] columns
        continue at seq_pos[b]; the rest are padding (-1)."""
        t = torch.arange(T)
        pos = self.seq_pos[:, None] + t[None, :]
        return torch.where(t[None, :] < lengths[:, None], pos, -1).to(device)

    def begin(self, lengths: torch.Tensor, T: int, device=None) -> torch.Tensor:
        """Start a call of T columns with lengths (B,) real tokens per row: make room, note
        the oldest query position (what a full cache's reads start from), and return the
        (B, T) positions (-1: padding)."""
        self.reserve(int((self.seq_pos + lengths).max()))
        self.oldest_query = int(self.seq_pos.min())
        return self.positions_for(lengths, T, device)

    def advance(self, lengths) -> None:
        """Move each sequence on by the tokens it was given (an int: all by the same)."""
        self.seq_pos += torch.as_tensor(lengths, dtype=torch.long)

    def reserve(self, end: int) -> None:
        """Make room for positions < end: grows a full cache, refuses to wrap a full-attention one."""
        self.end = max(self.end, end)
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
        check_cache_fits(self.args, self.batch_size, capacity, self.k.dtype, self.k.device)
        for name in ("k", "v", "slot_pos"):
            t = getattr(self, name)
            fill = -1 if name == "slot_pos" else 0
            new = t.new_full(t.shape[:2] + (capacity,) + t.shape[3:], fill)
            new[:, :, :old] = t
            setattr(self, name, new)

    def readable_slots(self) -> int:
        """How many slots attention must read: all of a rolling buffer; of a full cache only
        [0, end), so a full cache of capacity 65,536 holding 40 tokens costs 40 keys."""
        return min(self.capacity, self.end) if self.grow else self.capacity

    def positions(self, layer: int = 0, seq: int = 0) -> list[int]:
        """Which absolute position each slot holds (-1: empty), for display."""
        return self.slot_pos[layer, seq].tolist()


class LayerCache:
    """One layer's slice of a KVCache: what the attention of layer `index` reads and writes.

    k, v (B, S, K, D) and pos (B, S) are views of the cache's tensors (no copy). Backends
    receive this object, never the whole cache. Every write puts position p in slot
    p mod S; there is one writer per engine family, because each needs something the
    others must not pay for:

      write       the torch backend (readable model): any T, trace events, a decode
                  step through write_step;
      write_step  one token per sequence without a host sync (the static engine's graph);
      append      the fast engine: one sequence, and returns the run of keys it reads;
      (kernel)    the Triton backend writes the same tensors with kernels/cache_write.py.
    """

    __slots__ = ("cache", "index")

    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    @property
    def k(self) -> torch.Tensor:
        return self.cache.k[self.index]

    @property
    def v(self) -> torch.Tensor:
        return self.cache.v[self.index]

    @property
    def pos(self) -> torch.Tensor:
        return self.cache.slot_pos[self.index]

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def slot(self, position):
        """Where a position lives: position mod S (a full cache never wraps: slot = position)."""
        return position % self.capacity

    def readable(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, v, pos) of the slots this call's attention must read, as views: every slot of
        a rolling buffer; of a full cache only the filled ones (KVCache.readable_slots) and,
        with a window, only from the oldest position a query of this call can still see
        (slot = position there), the same run the Triton kernels walk. So a 32k-token
        pre-fill through a full cache reads W keys per query, not 32k: its memory grows,
        its work does not. The bound is a host-side int (KVCache.begin), never a device read;
        a stale one (older) only reads more slots, which the mask then hides."""
        n, lo = self.cache.readable_slots(), 0
        W = self.cache.args.sliding_window
        if self.cache.grow and W is not None:
            lo = min(oldest_visible(self.cache.oldest_query, W), n)
        return self.k[:, lo:n], self.v[:, lo:n], self.pos[:, lo:n]

    def with_chunk(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """[cache + chunk] in slot order then chunk order: what a pre-fill chunk attends over
        before it is written. Returns keys, values (B, S + T, K, D) and positions (B, S + T)."""
        ck, cv, cpos = self.readable()
        return torch.cat((ck, k), dim=1), torch.cat((cv, v), dim=1), torch.cat((cpos, positions), dim=1)

    def kept(self, positions: torch.Tensor) -> torch.Tensor:
        """Which of these (B, T) positions end up in the buffer: real ones (>= 0), and of a
        call longer than the buffer only each sequence's last S (the rest would be
        overwritten within the same call)."""
        last = positions.max(dim=1, keepdim=True).values
        return (positions >= 0) & (positions > last - self.capacity)

    def write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Store k, v (B, T, K, D) of positions (B, T) into slots position mod S (-1: skipped).

        The readable model's write (the torch backend's). One token per sequence (a decode
        step) goes through write_step, the same scatter the static engine uses; a chunk
        picks the positions it keeps (kept) and stores them by index."""
        self.record(positions)
        if positions.shape[1] == 1:
            self.write_step(k, v, positions)
            return
        b, t = torch.nonzero(self.kept(positions), as_tuple=True)
        p = positions[b, t]
        s = self.slot(p)
        self.k[b, s] = k[b, t].to(self.k.dtype)
        self.v[b, s] = v[b, t].to(self.v.dtype)
        self.pos[b, s] = p

    def write_step(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """One token per sequence, k, v (B, 1, K, D) at positions (B, 1) on the cache's
        device (-1: no token), with no host synchronisation (no nonzero, no int() of a
        position), so the static engine's CUDA graph can hold it: every sequence scatters
        into slot position mod S, and one without a token writes its slot 0 back onto
        itself. No trace event (write records them; the static engine never runs traced)."""
        B = k.shape[0]
        p = positions.reshape(B)
        keep = p >= 0
        s = self.slot(p.clamp(min=0))  # (B,)
        idx = s.view(B, 1, 1, 1).expand(B, 1, k.shape[2], k.shape[3])
        for dst, new in ((self.k, k), (self.v, v)):
            dst.scatter_(1, idx, torch.where(keep.view(B, 1, 1, 1), new.to(dst.dtype), dst.gather(1, idx)))
        pos = self.pos
        pos.scatter_(1, s[:, None], torch.where(keep, p, pos.gather(1, s[:, None])[:, 0])[:, None])

    def append(self, pos: int, k: torch.Tensor, v: torch.Tensor, window: int | None):
        """The fast engine's write (engines/fast.py: one sequence, no trace), apart from
        write because it also returns what the query reads: store k, v (K, D) of position
        `pos` of sequence 0, and return the keys and values its query sees as one run of
        slots each, (n, K, D), so no mask is needed. In a rolling buffer of S = W slots
        every filled slot is inside the window; in a full cache slot = position, and the
        window is the last keys_per_query of them."""
        c, i = self.cache, self.index
        s = pos % c.k.shape[2]  # self.slot(pos), without the property chain: this runs per layer per token
        k_, v_ = c.k[i, 0], c.v[i, 0]  # (S, K, D) views, one indexing op each
        k_[s], v_[s] = k, v
        c.slot_pos[i, 0, s] = pos
        if c.grow:
            lo = oldest_visible(pos, window)
            return k_[lo:pos + 1], v_[lo:pos + 1]
        n = keys_per_query(pos, k_.shape[0])  # S = W slots: the filled ones are the visible ones
        return k_[:n], v_[:n]

    def record(self, positions: torch.Tensor) -> None:
        """Tell an active trace which slots these positions overwrite (before they do)."""
        tr = trace.active()
        if tr is None or not tr.wants_layer(self.index):
            return
        keep = self.kept(positions).cpu()
        positions = positions.cpu()
        for b in range(positions.shape[0]):
            held = self.pos[b].tolist()
            for p in positions[b][keep[b]].tolist():
                s = self.slot(p)
                tr.cache_writes.append(trace.CacheWrite(self.index, s, p, held[s], b))
                held[s] = p


def cache_bytes(args: ModelArgs, tokens: int, *, rolling: bool, batch_size: int = 1, bytes_per_element: int = 2) -> int:
    """Exact K/V bytes after `tokens` tokens: rolling keeps min(tokens, W) per layer."""
    held = min(tokens, args.sliding_window) if rolling and args.sliding_window is not None else tokens
    return batch_size * held * args.kv_bytes_per_token(bytes_per_element)
