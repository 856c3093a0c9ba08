"""Every file the project writes goes through here: whole or not at all.

A write goes to a temporary file in the target's own folder, is flushed and fsync'ed,
then renamed over the target. A rename within one file system is atomic, so a kill or a
full disk at any moment leaves either the old file or the new one, never a half-written
mix. The temporary file gets the permissions of an ordinary new file (0666 minus the
umask), not mkstemp's 0600.

    atomic_write_bytes(path, data)
    atomic_write_text(path, text)
    atomic_write_json(path, obj)        indent 2, a final newline
    environment()                       the stamp every benchmark result carries
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[object], None], *, binary: bool = True) -> Path:
    """Call write(f) on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)
    return path


def _fsync_dir(folder: Path) -> None:
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
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {path}: the folder {folder} is not writable")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | None = None) -> dict:
    """Date (UTC, ISO 8601), versions and the device: the stamp of every committed result."""
    import torch

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


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_writable",
           "cpu_name", "environment"]
