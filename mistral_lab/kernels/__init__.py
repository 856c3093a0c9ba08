"""Triton kernels for the attention backend, one file per op.

    swa_attention.py     pre-fill: flash attention that visits only the window's tiles
    chunk_attention.py   a pre-fill chunk over [rolling buffer, read in place + chunk]
    decode_attention.py  one query over the rolling buffer, split across programs
    cache_write.py       scatter new K/V into slots position mod S, per sequence
    attend.py            the device functions the three attention kernels share
    launch.py            tile sizes from the device, input checks, launch set-up
    counters.py          per-program counters the kernels fill inside mistral_lab.trace()

(GPU timings against FlexAttention and SDPA: mistral_lab/bench/kernels.py.)

Triton is optional: it has no macOS/Windows wheels. Without a CUDA GPU the kernels run
in Triton's interpreter (numpy on the CPU, ~150x slower than torch). Whether they do is
decided in ONE place, use_interpreter_if_no_gpu() below: the package calls it when it is
imported, tests/conftest.py at the start of a session, the backend and
experiments.kernels before they import a kernel module -- which is when Triton decides between compiling and
interpreting.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import torch

_KERNEL_MODULES = ("attend", "launch", "swa_attention", "chunk_attention", "decode_attention", "cache_write")


class TritonUnavailable(RuntimeError):
    """The triton backend cannot run here (Triton missing, or imported the wrong way)."""


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def use_interpreter_if_no_gpu(*, force: bool = False) -> bool:
    """Decide how the kernels run; True when they will run in Triton's interpreter.

    TRITON_INTERPRET is read when Triton is first imported (its own standard library is
    @jit-decorated then) and when each kernel is decorated, so call this before either.
    Without a CUDA GPU it sets TRITON_INTERPRET=1, unless the variable is already set (a
    user's choice wins: 1 to debug on a GPU, 0 to compile ahead of time without one) or
    Triton was imported first (it has settled then). force=True, just before a kernel
    module is imported to run: without a GPU compiled kernels cannot run, so it sets 1
    whatever was there -- and refuses if a kernel module was already decorated otherwise.
    """
    if not _has_cuda() and os.environ.get("TRITON_INTERPRET") != "1":
        if force:
            loaded = [m for m in _KERNEL_MODULES if f"{__name__}.{m}" in sys.modules]
            if loaded:
                raise TritonUnavailable(
                    f"{__name__}.{loaded[0]} was imported before TRITON_INTERPRET=1 was set and there is no "
                    f"CUDA GPU: set TRITON_INTERPRET=1 before importing it, or create the backend first")
            os.environ["TRITON_INTERPRET"] = "1"
        elif "TRITON_INTERPRET" not in os.environ and "triton" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"
    return os.environ.get("TRITON_INTERPRET") == "1"


def available() -> tuple[bool, str]:
    """(whether backend='triton' can run here, why / how it will run)."""
    if importlib.util.find_spec("triton") is None:
        return False, "Triton is not installed (it has no macOS/Windows wheels): use backend='torch'"
    use_interpreter_if_no_gpu()  # before the import below
    try:
        import triton  # noqa: F401  # lazy: Triton is optional, and must come after the interpreter decision
    except ImportError as e:
        if importlib.util.find_spec("triton") is None:
            return False, "Triton is not installed (it has no macOS/Windows wheels): use backend='torch'"
        return False, f"Triton is installed but cannot be imported ({e}): use backend='torch'"
    if _has_cuda():
        if os.environ.get("TRITON_INTERPRET") == "1":
            return True, "TRITON_INTERPRET=1: kernels run in Triton's interpreter even though a CUDA GPU is present"
        return True, f"compiled for the CUDA GPU {torch.cuda.get_device_name()}"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "no CUDA GPU: kernels run in Triton's interpreter (TRITON_INTERPRET=1), ~150x slower than torch"
    return True, ("no CUDA GPU: TRITON_INTERPRET=1 will be set when the backend is created, "
                  "so kernels run in Triton's interpreter, ~150x slower than torch")


def _import_kernels():
    ok, reason = available()
    if not ok:
        raise TritonUnavailable(reason)
    use_interpreter_if_no_gpu(force=True)  # read by @triton.jit when the modules below load
    from . import cache_write, chunk_attention, decode_attention, swa_attention  # lazy: each imports Triton

    return swa_attention, chunk_attention, decode_attention, cache_write


class TritonBackend:
    """The attention calls of backends.TorchBackend, as Triton kernels (same contract).

    prefill(q, k, v, positions, window)
    chunk(q, k, v, positions, cache, window)    reads the rolling buffer in place
    decode(q, positions, cache, window)         split across programs (flash-decoding)
    write(cache, k, v, positions)               the cache-write kernel
    """

    name = "triton"

    def __init__(self):
        self._swa, self._chunk, self._decode, self._write = _import_kernels()
        self.interpreting = self._swa.interpreting()

    def _check_device(self, x) -> None:
        if not self.interpreting and x.device.type != "cuda":
            raise TritonUnavailable(
                f"the triton backend is compiled for the GPU but got {x.device.type} tensors: "
                f"move the model to 'cuda' or use backend='torch'")

    def prefill(self, q, k, v, positions, window):
        self._check_device(q)
        return self._swa.swa_prefill(q, k, v, positions, window)

    def chunk(self, q, k, v, positions, cache, window):
        self._check_device(q)
        return self._chunk.chunk_attention(q, k, v, positions, cache.k, cache.v, cache.pos, window)

    def decode(self, q, positions, cache, window):
        self._check_device(q)
        return self._decode.decode_attention(q, cache.k, cache.v, cache.pos, positions, window)

    def write(self, cache, k, v, positions):
        self._check_device(k)
        cache.record(positions)  # the same trace events as the reference write
        self._write.cache_write(k, v, positions, cache.k, cache.v, cache.pos, layer=cache.index)

    def __repr__(self) -> str:
        return f"TritonBackend({'interpreter' if self.interpreting else 'compiled'})"


def triton_backend() -> TritonBackend:
    """The triton backend; raises TritonUnavailable (a RuntimeError) where Triton cannot run."""
    return TritonBackend()


__all__ = ["TritonBackend", "TritonUnavailable", "available", "triton_backend", "use_interpreter_if_no_gpu"]
