"""One copy of the weights for every process on a machine: a class on one server, or one
student's ten notebook kernels.

    MISTRAL_LAB_SHARED_WEIGHTS=/srv/mistral_lab/weights     (scripts/lab and the hub set it)
    load()                                 -> the weights are views of one file every kernel maps
    python -m mistral_lab share-weights    writes that file ahead (the teacher, once)

Why a file of its own and not the checkpoint. The shipped checkpoint is fp16, and a CPU
loads it as fp32 (the dtype policy: the numbers stay what they are); the lean decode step
then streams its matrices packed and transposed (engines/fast.py). Both are derived from
the checkpoint the same way in every process, so they are written here once -- the
model's fp32 state and the step's packed matrices, 46.5 MiB for the shipped model -- and
each process maps that file instead of holding its own copies.

The mapping is torch.UntypedStorage.from_file(shared=False), i.e. MAP_PRIVATE of a file
opened read-only: the pages come from the page cache, one physical copy for all; a write
(an experiment that edits a weight) copies that one page for that process alone; nothing
ever writes to the file, which is read-only (0444) and replaced only by a rename, never
rewritten in place (a mapped file cut short would kill its readers with SIGBUS). The fast
step adopts the mapped packed matrices only while the model's weights are still the
file's (engines.fast.adopt), so an edit changes what it computes exactly as it does
without sharing.

The file is named by the checkpoint's identity: its folder, each of its files' size,
times, inode and device (stat before the checkpoint is read and again after: a checkpoint
replaced meanwhile is not shared), and a hash of the code that turns a checkpoint into
these tensors. A re-trained checkpoint or a changed conversion gets a new file; a write
removes the old ones and those of checkpoints whose folder is gone. One writer at a time
(a lock file in the folder): a class whose kernels all start at once writes one file,
which all of them map. A file or folder that another user could have written is not
trusted; one that cannot be written and holds no file means a private copy, with a
warning that says what to run.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import stat
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .. import files
from ..engines.fast import packed_fp32
from .tensorfiles import write_safetensors

ENV = "MISTRAL_LAB_SHARED_WEIGHTS"
FORMAT = "2"  # what the file holds; a new one means a new name, so old files are never misread
PACKED = "decode."  # the prefix of the fast step's packed matrices in the file
AUTO_MAX_BYTES = 1 << 30  # from the environment, only checkpoints up to 1 GiB in fp32 (a 7B would write ~58 GB)
ALIGN = 64  # every tensor starts 64-byte aligned, as torch's own allocations do (MKL's results may depend on it)
MODE = 0o444  # read-only: replaced by a rename, never written in place
# The code that decides what the file holds: a change in any of them names a new file.
CODE = ("engines/fast.py", "checkpoints/layouts.py", "checkpoints/loading.py", "checkpoints/shared.py",
        "checkpoints/tensorfiles.py", "model.py")


def folder_from_env(fp32_bytes: int = 0) -> Path | None:
    """The shared-weights folder MISTRAL_LAB_SHARED_WEIGHTS names, for a model of this size."""
    value = os.environ.get(ENV, "").strip()
    if not value or value.lower() in ("0", "off", "no") or fp32_bytes > AUTO_MAX_BYTES:
        return None
    return Path(value).expanduser()


def identity(folder: Path, sources: list[Path]) -> str | None:
    """What names the checkpoint: its folder, each file's size, times, inode and device, and
    the conversion code; None when a file cannot be read (load reports that itself)."""
    try:
        stats = [(p.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
                 for p in sorted(sources) for st in [p.stat()]]
    except OSError:
        return None
    return json.dumps({"format": FORMAT, "code": _code(), "folder": str(folder.resolve()), "files": stats})


@functools.cache
def _code() -> str:
    package = Path(__file__).resolve().parents[1]
    return hashlib.sha256(b"".join((package / name).read_bytes() for name in CODE)).hexdigest()[:16]


def shared_file(where: Path, folder: Path, source: str) -> Path:
    """<where>/<checkpoint folder's hash>-<its identity's hash>.safetensors"""
    by_folder = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return where / f"{by_folder}-{hashlib.sha256(source.encode()).hexdigest()[:16]}.safetensors"


def write(file: Path, state: dict[str, torch.Tensor], n_layers: int, source: str, mode: int = 0o444) -> None:
    """The model's state and the fast step's packed matrices, atomically, read-only and
    readable by whoever may read the checkpoint (`mode`: its weights' permissions), whatever
    the writer's umask. Then the files it makes stale are removed: older ones of the same
    checkpoint, and those of checkpoints whose folder is gone (a process that maps one
    keeps its pages)."""
    tensors = {**state, **{PACKED + k: v for k, v in packed_fp32(state, n_layers).items()}}
    files.atomic_write(file, lambda f: write_safetensors(f, tensors, {"mistral_lab_shared": FORMAT, "source": source},
                                                         align=ALIGN), mode=mode & MODE)
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
            meta = _header(f)[1]["__metadata__"]
        folder = json.loads(meta["source"])["folder"] if meta.get("mistral_lab_shared") else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return True
    return folder is None or Path(folder).is_dir()


def _header(f) -> tuple[int, dict]:
    """(its length, the header) of the safetensors file open in `f`; ValueError if it has none."""
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n)) if 0 < n < 100 << 20 else None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors header")
    return n, header


def mapped(file: Path, expected: dict[str, tuple], source: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a shared-weights file as views of one MAP_PRIVATE mapping, or None
    when the file is not one for this checkpoint, or not trusted (then it is rewritten or
    not used). Mapped through the descriptor that was checked, not the name again."""
    try:
        with open(file, "rb") as f:
            st = os.fstat(f.fileno())
            if not trusted(st):
                return None
            n, header = _header(f)
            if (header.get("__metadata__") or {}).get("source") != source:
                return None
            entries = {k: v for k, v in header.items() if k != "__metadata__"}
            spans = {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in entries.items()}
            if {k: tuple(v["shape"]) for k, v in entries.items()} != expected or any(
                    v["dtype"] != "F32" or spans[k][1] - spans[k][0] != 4 * math.prod(v["shape"]) or spans[k][1] > st.st_size
                    for k, v in entries.items()):
                return None
            storage = torch.UntypedStorage.from_file(f"/proc/self/fd/{f.fileno()}", shared=False, nbytes=st.st_size)
    except (OSError, ValueError, KeyError, TypeError, IndexError, RuntimeError):
        return None
    raw = torch.empty(0, dtype=torch.uint8).set_(storage)
    return {k: raw[a:b].view(torch.float32).view(entries[k]["shape"]) for k, (a, b) in spans.items()}


def trusted(st: os.stat_result) -> bool:
    """Written by this user or root, and by nobody else (no group or other write bit)."""
    return st.st_uid in (os.geteuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def load_state(where: Path, folder: Path, source: str, sources: list[Path], expected: dict[str, tuple],
               n_layers: int, read: Callable[[], dict[str, torch.Tensor]], *,
               strict: bool) -> tuple[dict, dict | None, Callable | None]:
    """(model state, packed matrices, unchanged) mapped from the shared file, written first
    from read() when missing; unchanged(model) says whether a model's weights are still the
    file's. `source` is the checkpoint's identity taken before it was opened. When the
    folder cannot hold the file: an OSError if `strict` (the caller named the folder), else
    (read(), None, None) with a warning (a kernel still runs)."""
    file = shared_file(where, folder, source)
    packed_shapes = {PACKED + k: tuple(v.shape) for k, v in packed_fp32(_meta(expected), n_layers).items()}
    everything = {**expected, **packed_shapes}
    tensors = mapped(file, everything, source)
    state = None
    if tensors is None:
        try:
            _make_folder(where)
            with _one_writer(where):  # the others wait here, then map what the first one wrote
                tensors = mapped(file, everything, source)
                if tensors is None:
                    state = read()
                    if identity(folder, sources) != source:
                        return _private(state, f"{files.shown_path(folder)} changed while it was read", strict)
                    write(file, state, n_layers, source, os.stat(sources[-1]).st_mode)  # as its weights (last) are
                    tensors = mapped(file, everything, source)
                    if tensors is None:
                        raise OSError(f"{file} was written but does not read back as the shared weights")
        except OSError as e:
            if strict:
                raise OSError(f"cannot keep the shared weights in {where}: {e.strerror or e}") from None
            return _private(state if state is not None else read(),
                            f"{where} has no usable copy of {files.shown_path(folder)} and cannot take one "
                            f"({e.strerror or e})", False,
                            f"run `python -m mistral_lab share-weights --model {files.shown_path(folder)} "
                            f"--dir {where}` as a user who can write there")
    del state

    def unchanged(model) -> bool:  # against a second mapping of the file: pages it shares, no copy
        fresh = mapped(file, everything, source)
        return fresh is not None and all(torch.equal(t, fresh[k]) for k, t in model.state_dict().items())
    return ({k: v for k, v in tensors.items() if not k.startswith(PACKED)},
            {k[len(PACKED):]: v for k, v in tensors.items() if k.startswith(PACKED)}, unchanged)


def _private(state: dict, why: str, strict: bool, fix: str = "") -> tuple[dict, None, None]:
    """A private copy, said in one warning (or, when the caller named the folder, an error)."""
    if strict:
        raise OSError(f"no shared weights: {why}")
    warnings.warn(f"shared weights: {why}: this process loads its own copy{'; ' + fix if fix else ''}", stacklevel=4)
    return state, None, None


@contextlib.contextmanager
def _one_writer(where: Path):
    """An exclusive lock on <where>/.lock while one process checks for the file and writes it."""
    fd = os.open(where / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _make_folder(where: Path) -> None:
    """The folder, and every folder made for it, readable by everyone (the file's own mode
    decides who reads the weights; a class's kernels run as other users). An existing
    folder that another user could write to is refused: they could plant a file there."""
    made = []
    for p in [where, *where.parents]:
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"{p} is a file, not a folder")
            break
        made.append(p)
    for p in reversed(made):
        p.mkdir(exist_ok=True)
        os.chmod(p, 0o755)
    st = os.stat(where)
    if not (st.st_uid in (os.geteuid(), 0) and (not st.st_mode & stat.S_IWOTH or st.st_mode & stat.S_ISVTX)
            and (not st.st_mode & stat.S_IWGRP or st.st_uid == os.geteuid())):
        raise PermissionError(f"{where} can be written by other users: give it mode 0755 (or use another folder)")


def _meta(expected: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in expected.items()}


__all__ = ["ENV", "folder_from_env", "identity", "load_state", "mapped", "shared_file", "trusted", "write"]
