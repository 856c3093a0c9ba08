"""What a live process is and holds, read from /proc: the benchmarks' classes of students
(classroom.py's processes, hub.py's servers and kernels) are measured with these."""
from __future__ import annotations

import os
from pathlib import Path


def processes(uids: set[int] | None = None, text: str | None = None) -> dict[int, str]:
    """pid -> command line of the processes owned by `uids`, or whose command line holds `text`."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if (uids is not None and d.stat().st_uid in uids) or (text is not None and text in cmd):
                out[int(d.name)] = cmd
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


def peak_mib(pid="self") -> float:
    """The peak resident memory of a live process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def memory_mib(pid="self") -> dict[str, float]:
    """A live process's memory now, in MiB: rss (resident), pss (proportional: each shared
    page divided by the number of processes mapping it, so the PSS of a class adds up to
    what it uses) and uss (its own pages: what it frees when it exits)."""
    kib = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        kib[name] = int(value.split()[0])
    return {"rss": round(kib["Rss"] / 1024, 1), "pss": round(kib["Pss"] / 1024, 1),
            "uss": round((kib["Private_Clean"] + kib["Private_Dirty"]) / 1024, 1)}


def maps(pid: int, folder: Path) -> bool:
    """Whether process `pid` has a file of `folder` mapped (the shared weights)."""
    return f" {folder}/" in Path(f"/proc/{pid}/maps").read_text()
