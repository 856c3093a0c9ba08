"""Reading and writing tensor files: safetensors (streamed, header first) and .pth.

Shared by every layout in layouts.py. Only headers are read up front, so names, shapes
and dtypes are checked before any tensor data is touched.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open as _open


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what to do."""


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def index(files: list[Path]) -> dict:
    """name -> (shape, dtype, read, file) for every tensor; read() returns it on the CPU.

    Only headers are read here (safetensors; a .pth is memory-mapped), so names, shapes
    and dtypes are checked before any tensor data is touched."""
    out = {}
    for file in files:
        if file.suffix == ".pth":
            out.update({k: (tuple(t.shape), t.dtype, lambda t=t: t, file) for k, t in _load_pth(file).items()})
            continue
        f = safe_open(file)  # stays open while the index lives
        for k in f.keys():
            s = f.get_slice(k)
            out[k] = (tuple(s.get_shape()), _ST_DTYPES.get(s.get_dtype(), s.get_dtype()),
                      lambda f=f, k=k: f.get_tensor(k), file)
    return out


def safe_open(file: Path):
    try:
        return _open(str(file), framework="pt", device="cpu")
    except SafetensorError as e:
        raise CheckpointError(f"{file} is truncated or not a safetensors file ({e}): re-download or re-save it") from None


def _load_pth(file: Path) -> dict:
    try:
        try:  # mmap: pages are read only when a tensor is used
            sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            sd = torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # zip, pickle and EOF errors all mean the same thing here
        raise CheckpointError(f"{file} is truncated or not a PyTorch checkpoint ({type(e).__name__}): "
                              f"re-download or re-save it") from None
    if not isinstance(sd, dict) or not all(isinstance(t, torch.Tensor) for t in sd.values()):
        raise CheckpointError(f"{file} holds a {type(sd).__name__}, not a dict of tensors")
    return sd


# ---------------------------------------------------------------- writing tensors

def write_safetensors(f, tensors: dict[str, torch.Tensor], metadata: dict[str, str], align: int = 8) -> None:
    """Stream the safetensors format to an open binary file, one tensor at a time: no
    second copy of the model in memory (safetensors.torch.save builds one whole bytes).
    The data starts `align`-byte aligned (the header padded with spaces, as the format allows)."""
    header, offset = {"__metadata__": metadata}, 0
    for name in sorted(tensors):
        t = tensors[name]
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % align)  # where the data starts in the file: 8-byte aligned, as safetensors writes it
    f.write(len(raw).to_bytes(8, "little") + raw)
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
