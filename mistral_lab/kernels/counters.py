"""Kernel instrumentation: counters that the kernels fill themselves, for plots.

Off by default. Inside `mistral_lab.trace.record()`, each launch gets an int64 buffer
with one row per program and compiles with COUNT=True; the kernel writes its own row
(tiles it computed, tiles it skipped, bytes of K/V it loaded, ...): these are counts
made by the code that did the work, not formulas evaluated beside it. Without a trace
the kernel gets a one-element dummy buffer and COUNT=False, so the counting code is
compiled out and costs nothing.

Each launch is appended to `trace.active().kernel_calls` as a `KernelCall`.

Counter definitions (per program; "rows" are (query, head) pairs, so a program of
BLOCK_M queries and G heads of one KV group has up to BLOCK_M * G rows):

  tiles         key tiles computed (loaded and multiplied), cache tiles included
  skipped       swa_prefill / chunk: key blocks of the causal range [0, last query]
                before the window, never loaded. decode: buffer slots not read
                because they cannot hold a visible position (counted by split 0)
  kv_bytes      bytes of K and V loaded: real keys of each tile * D * 2 * element size
  flops         4 * D * rows * keys per tile (QK^T and PV, 2 flops per multiply-add),
                masked pairs of computed tiles included: the work actually done
  visible_pairs (row, key) pairs that pass masks.visible: the useful part of flops is
                4 * D * visible_pairs
  first_block, last_block   (pre-fill, chunk) key blocks the loop ran over (the tile map)
  cache_tiles   (chunk) tiles of the rolling buffer computed
  cache_lo, cache_hi        (chunk) absolute positions [lo, hi) read from the buffer
  first_pos, last_pos       (decode) absolute positions the split read, -1 if none
  slots, bytes  (cache_write) slots written and bytes stored
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import trace

# Column order of each kernel's counter rows (the kernels store in this order).
PREFILL = ("tiles", "skipped", "kv_bytes", "flops", "visible_pairs", "first_block", "last_block")
CHUNK = ("tiles", "skipped", "kv_bytes", "flops", "visible_pairs", "first_block", "last_block",
         "cache_tiles", "cache_lo", "cache_hi")
DECODE = ("tiles", "skipped", "kv_bytes", "flops", "visible_pairs", "first_pos", "last_pos")
CACHE_WRITE = ("slots", "bytes")

# Columns that are not summed into KernelCall.totals.
_NOT_ADDITIVE = {"first_block", "last_block", "cache_lo", "cache_hi", "first_pos", "last_pos"}


@dataclass
class KernelCall:
    """One kernel launch seen by a trace: plain data, ready for plots.

    per_program[name] is an int64 array shaped like the grid (grid[0], grid[1]); for
    swa_prefill, per_program["first_block"][i, j] .. ["last_block"][i, j] is the run
    of key blocks that query block i of (batch, KV head) j computed: the tile map.
    """

    kernel: str
    grid: tuple
    block_m: int
    block_n: int
    per_program: dict = field(repr=False)
    totals: dict
    meta: dict = field(default_factory=dict)

    def tile_map(self) -> np.ndarray:
        """(query blocks, key blocks) boolean map of the tiles computed by programs j = 0."""
        first, last = self.per_program["first_block"][:, 0], self.per_program["last_block"][:, 0]
        n_kb = int(last.max()) + 1 if last.size else 0
        kb = np.arange(n_kb)
        return (kb[None, :] >= first[:, None]) & (kb[None, :] <= last[:, None])


_dummies: dict = {}


def buffer(grid: tuple, n_counters: int, device) -> tuple[torch.Tensor, bool]:
    """(counters buffer, COUNT flag) for a launch: a real buffer only inside a trace."""
    if trace.active() is None:
        key = str(device)
        if key not in _dummies:
            _dummies[key] = torch.zeros(1, dtype=torch.int64, device=device)
        return _dummies[key], False
    n_programs = 1
    for g in grid:
        n_programs *= g
    return torch.zeros(n_programs * n_counters, dtype=torch.int64, device=device), True


def record(kernel: str, names: tuple, buf: torch.Tensor, grid: tuple, block_m: int, block_n: int,
           meta: dict | None = None) -> KernelCall:
    """Turn a filled buffer (program-major: row = pid0 * grid[1] + pid1) into a KernelCall."""
    shape = tuple(grid) + (1,) * (2 - len(grid))
    data = buf.cpu().numpy().reshape(shape + (len(names),))
    per_program = {name: data[..., i].copy() for i, name in enumerate(names)}
    totals = {name: int(a.sum()) for name, a in per_program.items() if name not in _NOT_ADDITIVE}
    call = KernelCall(kernel, tuple(grid), block_m, block_n, per_program, totals, dict(meta or {}))
    tr = trace.active()
    if tr is not None:
        tr.kernel_calls.append(call)
    return call
