"""How many CPU threads torch should use, and a block that uses them and then restores.

    from mistral_lab import threads
    threads.choose()                  # ThreadChoice(n=1, source='default (small-model decode)')
    with threads.limited():           # torch.set_num_threads(1) inside, the caller's setting after
        ml.generate(model, ids, 300)
    with threads.limited(4): ...      # an explicit number always wins

Why one thread by default. A decode step of the shipped model (6 layers, dim 256) is a
few dozen small matrix-vector products; splitting each across threads costs more in
hand-offs than it saves, and when another process is busy on the same cores each
hand-off waits for a core the scheduler has given away: the threads then collapse.
Measured 2026-11-25 on this project's 2-vCPU Intel Xeon VM (shared with other work:
1-minute load average 5.7-6.6 around the run), shipped model, 300 new tokens, medians of
two runs (`bench classroom`, benchmarks/classroom.json; docs/TEACHING.md has the rest):

    decode tokens/s                   1 thread   2 threads
    Python API, host's own load          429        11
    CLI generate, host's own load        420         5.5   (wall 3.7 s vs 59 s)
    Python API, + our busy process       230         8.4
    CLI generate, + our busy process     175        12     (wall 10 s vs 75 s)

On a quiet host two threads win (the committed classroom run, load 1.2: API 667 tok/s
with 2 threads vs 462 with 1, CLI 533 vs 423), but one other busy process drops them to
79 (CLI 66) while one thread keeps 433 (413): one thread gives up at most 1.4x and never
collapses, which is what a shared classroom machine needs.

Order of precedence (first that applies):
  1. an explicit argument (`choose(3)`, `limited(3)`, `--threads 3`);
  2. OMP_NUM_THREADS, then MKL_NUM_THREADS, from the environment (a hub that sets them
     means it), capped at the CPUs this process may use;
  3. the default for the kind of work: "decode" (a small model, one token at a time)
     takes 1; "compute" (pre-fill, scoring, training, a 7B) takes every usable CPU.

"Usable CPUs" is the smaller of the CPU affinity (os.sched_getaffinity: taskset, a
container's cpuset) and the cgroup CPU quota (/sys/fs/cgroup/cpu.max, or cgroup v1's
cpu.cfs_quota_us): a JupyterHub pod limited to 2 CPUs on a 64-core node sees 64 cores in
os.cpu_count() but gets 2 CPUs of time; 64 threads there would collapse.

Nothing happens at import: only `limited` (and `apply`) change torch's setting.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

KINDS = ("decode", "compute")
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")


@dataclass(frozen=True)
class ThreadChoice:
    n: int  # threads to give torch.set_num_threads
    source: str  # why: "argument", "OMP_NUM_THREADS=...", "default (...)"

    def __int__(self) -> int:
        return self.n


def cgroup_cpu_limit(v2: Path = CGROUP_V2, v1: Path = CGROUP_V1) -> float | None:
    """CPUs' worth of time the cgroup quota allows (e.g. 1.5), or None without a quota."""
    try:
        quota, period = v2.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: a quota of -1 means none
        quota = int((v1 / "cpu.cfs_quota_us").read_text())
        period = int((v1 / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def usable_cpus(*, affinity: int | None = None, quota: float | None = None, cgroup: bool = True) -> int:
    """CPUs this process can actually run on: min(affinity, ceil(cgroup quota)), at least 1."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
            affinity = os.cpu_count() or 1
    if quota is None and cgroup:
        quota = cgroup_cpu_limit()
    n = affinity
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _env_threads(environ) -> tuple[int, str] | None:
    for name in ENV_VARS:
        value = environ.get(name, "").strip()
        if not value:
            continue
        try:
            n = int(value.split(",")[0])  # OpenMP allows a list for nested levels: the first is ours
        except ValueError:
            continue  # not a number: OpenMP ignores it too, so do we
        if n > 0:
            return n, f"{name}={value}"
    return None


def choose(n: int | None = None, *, kind: str = "decode", environ=None, cpus: int | None = None) -> ThreadChoice:
    """The thread count for this kind of work (see the module docstring for the order)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of work {kind!r}: use one of {', '.join(KINDS)}")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"threads must be a positive integer, got {n!r}")
        return ThreadChoice(n, "argument")
    cpus = usable_cpus() if cpus is None else cpus
    env = _env_threads(os.environ if environ is None else environ)
    if env is not None:
        # capped: a hub image often sets OMP_NUM_THREADS to the node's cores, not the pod's
        return ThreadChoice(min(env[0], cpus), env[1] + (f", capped at {cpus} usable CPUs" if env[0] > cpus else ""))
    if kind == "decode":
        return ThreadChoice(1, "default (small-model decode: one thread)")
    return ThreadChoice(cpus, f"default (compute: {cpus} usable CPUs)")


def apply(n: int | None = None, *, kind: str = "decode") -> ThreadChoice:
    """Set torch's intra-op threads by the policy, for good (a script's first line)."""
    import torch

    choice = choose(n, kind=kind)
    torch.set_num_threads(choice.n)
    return choice


# Below this many parameters a decode step is a few dozen small matrix-vector products
# (the shipped model: 6.6M): splitting them costs more in hand-offs than it saves.
SMALL_MODEL_PARAMS = 100_000_000


def kind_for(model) -> str:
    """"decode" (one thread by default) for a small model, "compute" for a large one."""
    return "decode" if sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS else "compute"


@contextmanager
def limited(n: int | None = None, *, kind: str = "decode") -> Iterator[ThreadChoice]:
    """torch.set_num_threads(policy) inside the block; the caller's own setting after it,
    also when the block raises."""
    import torch

    choice = choose(n, kind=kind)
    before = torch.get_num_threads()
    torch.set_num_threads(choice.n)
    try:
        yield choice
    finally:
        torch.set_num_threads(before)


__all__ = ["KINDS", "ThreadChoice", "apply", "cgroup_cpu_limit", "choose", "limited", "usable_cpus"]
