"""One copy of the weights for every process on a machine: a class on one server, or one
student's ten notebook kernels.

    MISTRAL_LAB_SHARED_WEIGHTS=/srv/mistral_lab/weights     (scripts/lab and the hub set it)
    load()                                 -> the weights are views of one file every kernel maps
    python -m mistral_lab share-weights    writes that file ahead (the teacher, once)

Why a file of its own and not the checkpoint. The shipped checkpoint is fp16, and a CPU
loads it as fp32 (the dtype policy: the numbers stay what they are); the lean decode step
then streams its matrices packed and transposed (engines/fast.py). Both are derived from
the checkpoint the same way in every process, so they are written here once -- the
model's fp32 state and the step's packed matrices, 2 x 26.5 MB for the shipped model --
and each process maps that file instead of holding its own copies.

The mapping is torch.UntypedStorage.from_file(shared=False), i.e. MAP_PRIVATE of a file
opened read-only: the pages come from the page cache, one physical copy for all; a write
(an experiment that edits a weight) copies that one page for that process alone; nothing
ever writes to the file. The fast step adopts the mapped packed matrices only while the
model's weights are unedited (engines.fast.adopt), so an edit changes what it computes
exactly as it does without sharing.

The file is named by the checkpoint's identity (its folder and the size and modification
time of each of its files): a re-trained checkpoint gets a new file, and the old one is
removed when the new one is written. A folder that cannot be written and holds no file
for the checkpoint means a private copy, with a warning that says what to run.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .. import files
from ..engines.fast import packed_fp32
from .tensorfiles import _ST_DTYPES, write_safetensors

ENV = "MISTRAL_LAB_SHARED_WEIGHTS"
FORMAT = "1"  # what the file holds; a new one means a new name, so old files are never misread
PACKED = "decode."  # the prefix of the fast step's packed matrices in the file
AUTO_MAX_BYTES = 1 << 30  # from the environment, only checkpoints up to 1 GiB in fp32 (a 7B would write ~58 GB)


def folder_from_env(fp32_bytes: int) -> Path | None:
    """The shared-weights folder MISTRAL_LAB_SHARED_WEIGHTS names, for a model of this size."""
    value = os.environ.get(ENV, "").strip()
    if not value or value.lower() in ("0", "off", "no") or fp32_bytes > AUTO_MAX_BYTES:
        return None
    return Path(value).expanduser()


def identity(folder: Path, sources: list[Path]) -> str:
    """What names the checkpoint: its folder, and each file's size and modification time."""
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(sources)]
    return json.dumps([FORMAT, str(folder.resolve()), stats])


def shared_file(where: Path, folder: Path, sources: list[Path]) -> Path:
    """<where>/<checkpoint folder's hash>-<its files' hash>.safetensors"""
    by_folder = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return where / f"{by_folder}-{hashlib.sha256(identity(folder, sources).encode()).hexdigest()[:16]}.safetensors"


def write(file: Path, state: dict[str, torch.Tensor], n_layers: int, source: str, mode: int = 0o644) -> None:
    """The model's state and the fast step's packed matrices, atomically, readable as the
    checkpoint is (`mode`: its weights' permissions), whatever the writer's umask. Then the
    files it makes stale are removed: older ones of the same checkpoint, and those of
    checkpoints whose folder is gone (a process that maps one keeps its pages)."""
    tensors = {**state, **{PACKED + k: v for k, v in packed_fp32(state, n_layers).items()}}
    files.atomic_write(file, lambda f: write_safetensors(f, tensors, {"mistral_lab_shared": FORMAT,
                                                                      "source": source}))
    os.chmod(file, mode & 0o644)
    prefix = file.name.split("-")[0] + "-"
    for old in file.parent.glob("*.safetensors"):
        if old != file and (old.name.startswith(prefix) or not _source_exists(old)):
            _remove(old)
    for part in file.parent.glob(".*.safetensors.*.tmp"):  # a writer killed mid-write (another's is younger)
        if time.time() - _mtime(part) > 3600:
            _remove(part)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # another user's file in a shared folder: theirs to remove


def _source_exists(file: Path) -> bool:
    """Whether the checkpoint folder a shared-weights file was made from still exists
    (True when the file cannot be read as one: not ours to judge)."""
    try:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(n))["__metadata__"] if 0 < n < 100 << 20 else None
        folder = json.loads(meta["source"])[1] if meta and meta.get("mistral_lab_shared") else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return True
    return folder is None or Path(folder).is_dir()


def mapped(file: Path, expected: dict[str, tuple], source: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a shared-weights file as views of one MAP_PRIVATE mapping, or None
    when the file is not one for this checkpoint (then it is rewritten or not used)."""
    try:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n < 100 << 20 else None
        size = file.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or (header.get("__metadata__") or {}).get("source") != source:
        return None
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if {k: tuple(v.get("shape", ())) for k, v in entries.items()} != expected or any(
            v.get("dtype") != "F32" or v["data_offsets"][1] + 8 + n > size for v in entries.values()):
        return None
    raw = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage.from_file(str(file), shared=False, nbytes=size))
    return {k: raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]].view(_ST_DTYPES[v["dtype"]])
            .view(v["shape"]) for k, v in entries.items()}


def load_state(where: Path, folder: Path, sources: list[Path], expected: dict[str, tuple], n_layers: int,
               read: Callable[[], dict[str, torch.Tensor]], *, strict: bool) -> tuple[dict, dict | None]:
    """(model state, packed matrices) mapped from the shared file, written first from
    read() when missing. When the folder cannot hold it: an OSError if `strict` (the
    caller named the folder), else (read(), None) with a warning (a kernel still runs)."""
    file, source = shared_file(where, folder, sources), identity(folder, sources)
    packed_shapes = {PACKED + k: tuple(v.shape) for k, v in packed_fp32(_meta(expected), n_layers).items()}
    everything = {**expected, **packed_shapes}
    tensors = mapped(file, everything, source)
    if tensors is None:
        state = read()
        try:
            _make_folder(where)
            write(file, state, n_layers, source, os.stat(sources[-1]).st_mode)  # as its weights (last) are
        except OSError as e:
            if strict:
                raise OSError(f"cannot keep the shared weights in {where}: {e.strerror or e}") from None
            warnings.warn(f"shared weights: {where} holds no copy of {files.shown_path(folder)} and cannot take "
                          f"one ({e.strerror or e}): this process loads its own; run `python -m mistral_lab "
                          f"share-weights --model {files.shown_path(folder)}` as a user who can write there",
                          stacklevel=3)
            return state, None
        del state
        tensors = mapped(file, everything, source)
        if tensors is None:
            raise OSError(f"{file} was written but does not read back as the shared weights: remove it and retry")
    state = {k: v for k, v in tensors.items() if not k.startswith(PACKED)}
    return state, {k[len(PACKED):]: v for k, v in tensors.items() if k.startswith(PACKED)}


def _make_folder(where: Path) -> None:
    """The folder, made readable by everyone when made here (the file's own mode decides
    who reads the weights; a class's kernels run as other users)."""
    if not where.is_dir():
        where.mkdir(parents=True)
        os.chmod(where, 0o755)


def _meta(expected: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in expected.items()}


__all__ = ["ENV", "folder_from_env", "load_state", "mapped", "shared_file", "write"]
