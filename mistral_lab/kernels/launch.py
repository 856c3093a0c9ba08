"""How the attention kernels are launched: the interpreter or the GPU, tile sizes chosen
from the device, input preparation and checks, and the set-up both pre-fill launchers share.
Host code only; the kernels themselves are in swa_attention.py, chunk_attention.py and
decode_attention.py, and the device functions they share in attend.py.
"""
from __future__ import annotations

import torch
import triton

from . import counters
from .attend import _visible


def interpreting() -> bool:
    """True when the @triton.jit functions of this module run in Triton's interpreter."""
    return type(_visible).__name__ == "InterpretedFunction"


def dot_settings(dtype: torch.dtype) -> tuple[bool, str]:
    """(upcast operands to fp32 before tl.dot, input precision of an fp32 dot).

    The interpreter's tl.dot is a numpy matmul that mishandles bf16, so it always gets
    fp32 operands. On a GPU fp16/bf16 go to the tensor cores as they are; an fp32 model
    asks for 'ieee' (true fp32) rather than Triton's default tf32 (10-bit mantissa), so
    that backend='triton' reproduces backend='torch' token for token.
    """
    return interpreting() or dtype == torch.float32, "ieee"


def prefill_blocks(group_p2: int, head_dim: int, dtype: torch.dtype) -> dict:
    """BLOCK_M (queries per program), BLOCK_N (keys per tile), num_warps, num_stages."""
    if interpreting():
        # Small tiles: the interpreter pays per numpy op, whatever its size, and small
        # blocks make the window edges and the skipping visible at test sizes.
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)
    if dtype == torch.float32:
        # True-fp32 dots run on the FMA units, not the tensor cores, and hold far more
        # registers: smaller tiles (sm_90 ptxas, D = 128: 64x16 tiles spill ~260 bytes,
        # 64x32 ~640, 128x32 ~6.8 KB). A correctness path, not a fast one. (bf16/fp16 at
        # 128x64: wgmma, 237 registers, no spill.)
        return dict(BLOCK_M=max(1, 64 // group_p2), BLOCK_N=16, num_warps=8, num_stages=2)
    rows = 128  # score-tile rows = BLOCK_M * G: 128 rows = two m64 wgmma tiles on Hopper
    block_m = max(1, rows // group_p2)
    big = rows * max(head_dim, 16) >= 128 * 128
    return dict(BLOCK_M=block_m, BLOCK_N=64, num_warps=8 if big else 4, num_stages=3 if head_dim <= 128 else 2)


def check_window(window) -> None:
    if window is not None and (not isinstance(window, int) or window <= 0):
        raise ValueError(f"window must be a positive number of keys or None (full causal attention), got {window!r}")


def prepare(x: torch.Tensor) -> torch.Tensor:
    """Last dimension contiguous (the kernels assume d-stride 1); bf16 upcast in the interpreter."""
    if interpreting() and x.dtype == torch.bfloat16:
        x = x.float()  # the interpreter's bf16 is broken (docs/ARCHITECTURE.md, Tolerances)
    return x if x.stride(-1) == 1 else x.contiguous()


def check_consecutive(positions: torch.Tensor) -> None:
    """The kernels find the window's key blocks by index: each row's positions must be
    p0, p0+1, ..., then only padding (-1) -- the right-padding of a ragged batch.

    Checked only where it costs no device synchronisation (positions on the CPU).
    """
    if positions.device.type == "cpu" and positions.shape[-1] > 1:
        p = positions.reshape(-1, positions.shape[-1])
        step_ok = (p[:, 1:] - p[:, :-1] == 1) | (p[:, 1:] < 0)
        pad_ok = (p[:, :-1] >= 0) | (p[:, 1:] < 0)  # once padding starts, it stays
        if not bool((step_ok & pad_ok).all()):
            raise ValueError("the triton backend needs consecutive positions (p0, p0+1, ...) within a call, "
                             "padding (-1) only at the end of a row")


def batch_positions(positions: torch.Tensor, B: int, device) -> torch.Tensor:
    """(B, N) int64 contiguous positions on `device`: a shared (N,) row is repeated per sequence."""
    positions = positions.to(device=device, dtype=torch.int64)
    if positions.dim() == 1:
        positions = positions.expand(B, -1)
    return positions.contiguous()



def overridden(cfg: dict, **overrides) -> dict:
    """The device's tile config with the settings a test or a tuning sweep gave (None: keep)."""
    return {**cfg, **{k: v for k, v in overrides.items() if v is not None}}


def prefill_launch(q, Kh, block_m, block_n, counter_names, num_warps=None, num_stages=None):
    """What both pre-fill launchers set up: head grouping, tile config (with test and
    tuning overrides), output, grid (query blocks x batch*KV heads), counters, dot precision."""
    B, T, H, D = q.shape
    if H % Kh:
        raise ValueError(f"{H} query heads cannot be grouped over {Kh} key/value heads")
    G = H // Kh
    G_P2 = triton.next_power_of_2(G)
    cfg = overridden(prefill_blocks(G_P2, D, q.dtype), BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
                     num_stages=num_stages)
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grid = (triton.cdiv(T, cfg["BLOCK_M"]), B * Kh)
    ctr, count = counters.buffer(grid, len(counter_names), q.device)
    dot_f32, precision = dot_settings(q.dtype)
    return G, G_P2, cfg, o, grid, ctr, count, dot_f32, precision
