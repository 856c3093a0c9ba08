"""Every file the project writes goes through here: whole or not at all.

A write goes to a temporary file in the target's own folder, is flushed and fsync'ed,
then renamed over the target. A rename within one file system is atomic, so a kill or a
full disk at any moment leaves either the old file or the new one, never a half-written
mix. The temporary file gets the permissions of an ordinary new file (0666 minus the
umask), not mkstemp's 0600.

    atomic_write_bytes(path, data)
    atomic_write_text(path, text)
    atomic_write_json(path, obj)        indent 2, a final newline

And the one schema of every committed result (benchmarks/*.json):

    write_result(path, "cpu-decode", body, command="python -m mistral_lab bench cpu-decode ...")
    # {"benchmark", "date", "commit", "dirty", "command", "environment", ...body}
"""
from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _folder(path: Path) -> Path:
    """The folder `path` goes in, which must exist (a missing one is one line, never created)."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    return folder


def atomic_write(path, write: Callable[[object], None], *, binary: bool = True, mode: int | None = None) -> Path:
    """Call write(f) on a temporary file beside `path`, then rename it over `path`. Its
    permissions: `mode` when given, else what the umask gives a new file; set before the
    rename, so the file never appears with others."""
    path = Path(path)
    folder = _folder(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, e) from None
        raise
    fsync_dir(folder)
    return path


def disk_full(path: Path, e: OSError) -> OSError:
    """ENOSPC/EDQUOT as one line that names the file, the folder and the space left
    (the system's own text, "[Errno 28] No space left on device", names none of them)."""
    try:
        free = f"{shutil.disk_usage(path.parent or '.').free / 1e6:,.1f} MB free there"
    except OSError:
        free = "its free space unknown"
    full = OSError(f"no space left to write {path} ({'quota exceeded' if e.errno == errno.EDQUOT else free}; "
                   f"nothing was replaced): free some space, or write to another folder")
    full.errno = e.errno
    return full


def fsync_dir(folder) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_json(path, obj, *, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def check_writable(path) -> None:
    """Fail now, in one line, if `path` cannot be written later (before long work starts)."""
    path = Path(path)
    folder = _folder(path)
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {path}: the folder {folder} is not writable")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")


def sha256(path) -> str:
    """The file's SHA-256 as hex, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | None = None) -> dict:
    """Date (UTC, ISO 8601), versions, the CPU and GPU, torch's threads and the load."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for name in ("triton", "transformers"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    if device is not None:
        env["device"] = device
    try:
        env["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return env


REPOSITORY = Path(__file__).resolve().parent.parent
RESULT_KEYS = ("benchmark", "date", "commit", "dirty", "command", "environment", "digest")  # every result's header


def shown_path(path) -> str:
    """A path as a reader should see it: relative to the repository when inside it (a saved
    notebook or a committed result then never shows the home folder of the machine that
    ran it), else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPOSITORY))
    except ValueError:
        return str(path)


def provenance(repo: Path = REPOSITORY) -> dict:
    """{"commit": the checkout's HEAD, "dirty": whether tracked files differ from it}; both
    None outside a git checkout (an installed wheel) or without git."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def digest(doc: dict) -> str:
    """sha256 of a result's contents without its digest, as canonical JSON: a number
    edited by hand no longer matches (tests/test_results.py checks every committed one)."""
    rest = {k: v for k, v in doc.items() if k != "digest"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def result(benchmark: str, body: dict, *, command: str, device: str | None = None) -> dict:
    """A result in the one schema: what it is, when, from which code and command, where;
    then the body; last, the digest of all of it."""
    clash = sorted(set(body) & set(RESULT_KEYS))
    if clash:
        raise ValueError(f"a result body may not set {clash}: the header is written by files.result")
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    doc = {"benchmark": benchmark, "date": date, **provenance(), "command": command,
           "environment": environment(device), **body}
    doc = json.loads(json.dumps(doc))  # as it will be read back (tuples become lists)
    return {**doc, "digest": digest(doc)}


def write_result(path, benchmark: str, body: dict, *, command: str, device: str | None = None) -> dict:
    """result(...) written whole to `path` (atomic_write_json); returns it."""
    doc = result(benchmark, body, command=command, device=device)
    atomic_write_json(path, doc)
    return doc


__all__ = ["RESULT_KEYS", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "check_writable", "cpu_name", "fsync_dir", "digest", "environment", "provenance", "result", "sha256", "shown_path",
           "write_result"]
