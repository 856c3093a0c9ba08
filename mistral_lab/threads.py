"""How many CPU threads torch should use, and a block that uses them and then restores.

    from mistral_lab import threads
    threads.choose()                  # ThreadChoice(n=1, source='default (one thread)')
    with threads.limited(model=model):   # one thread for a small model, every CPU for a large one
        ml.generate(model, ids, 300)
    with threads.limited(4): ...      # an explicit number always wins

Why one thread by default. The shipped model's work -- a decode step, a pre-fill chunk,
a training step -- is a few dozen matrix products of a 256-wide model: splitting each
across threads saves little, and when another process is busy on the same cores (a
classroom, a shared laptop, CI) each hand-off between threads waits for a core the
scheduler gave away, and the threads collapse: scoring 2,048 held-out tokens took 2.75 s with
two threads beside one busy process against 0.80 s with one, a pre-fill 2.45 s against
0.63 s (2 vCPUs, 2026-12-02; idle, two threads were only 1.33x faster at scoring). `python -m mistral_lab
bench threads` measures every kind of work (scoring, pre-fill, decode, a training step)
at one thread and at every usable CPU, on an idle machine and beside a busy process
(benchmarks/threads.json; tests/test_threads.py holds the defaults to it): one thread
gives up some speed on an idle machine and never collapses on a shared one.

Order of precedence (first that applies):
  1. an explicit argument (`choose(3)`, `limited(3)`, `--threads 3`);
  2. OMP_NUM_THREADS, then MKL_NUM_THREADS, from the environment (a hub that sets them
     means it), capped at the CPUs this process may use;
  3. the default for the kind: "one" (a small model, any work) takes 1; "all" (a large
     model such as the 7B, whose products are big enough to split) takes every usable CPU.

"Usable CPUs" is the smaller of the CPU affinity (os.sched_getaffinity: taskset, a
container's cpuset) and the cgroup CPU quota (/sys/fs/cgroup/cpu.max, or cgroup v1's
cpu.cfs_quota_us): a JupyterHub pod limited to 2 CPUs on a 64-core node sees 64 cores in
os.cpu_count() but gets 2 CPUs of time; 64 threads there would collapse.

Nothing happens at import: only `limited` and `apply` change torch's setting.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

KINDS = ("one", "all")
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
# Below this many parameters a model's products are too small to split across threads (the
# shipped model: 6.6M; Mistral 7B: 7.2B).
SMALL_MODEL_PARAMS = 100_000_000


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


def choose(n: int | None = None, *, kind: str = "one", environ=None, cpus: int | None = None) -> ThreadChoice:
    """The thread count for this kind of work (see the module docstring for the order).
    An explicit n above the usable CPUs is capped too: more threads than cores only wait."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of work {kind!r}: use one of {', '.join(KINDS)}")
    cpus = usable_cpus() if cpus is None else cpus
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"threads must be a positive integer, got {n!r}")
        if n > cpus:
            return ThreadChoice(cpus, f"argument {n}, capped at {cpus} usable CPUs")
        return ThreadChoice(n, "argument")
    env = _env_threads(os.environ if environ is None else environ)
    if env is not None:
        # capped: a hub image often sets OMP_NUM_THREADS to the node's cores, not the pod's
        return ThreadChoice(min(env[0], cpus), env[1] + (f", capped at {cpus} usable CPUs" if env[0] > cpus else ""))
    if kind == "one":
        return ThreadChoice(1, "default (one thread)")
    return ThreadChoice(cpus, f"default (all {cpus} usable CPUs)")


def kind_for(model) -> str:
    """"one" for a small model (one thread by default), "all" for a large one; `model` is a
    module or its number of parameters."""
    params = model if isinstance(model, int) else sum(p.numel() for p in model.parameters())
    return "one" if params < SMALL_MODEL_PARAMS else "all"


def apply(n: int | None = None, *, kind: str = "one") -> ThreadChoice:
    """Set torch's intra-op threads by the policy, for good (a notebook's first cell)."""
    choice = choose(n, kind=kind)
    torch.set_num_threads(choice.n)
    return choice


@contextmanager
def limited(n: int | None = None, *, kind: str | None = None, model=None) -> Iterator[ThreadChoice]:
    """torch.set_num_threads(policy) inside the block; the caller's own setting after it,
    also when the block raises. kind: "one" or "all"; default: kind_for(model), or "one"."""
    choice = choose(n, kind=kind or (kind_for(model) if model is not None else "one"))
    before = torch.get_num_threads()
    torch.set_num_threads(choice.n)
    try:
        yield choice
    finally:
        torch.set_num_threads(before)


__all__ = ["KINDS", "SMALL_MODEL_PARAMS", "ThreadChoice", "apply", "cgroup_cpu_limit", "choose", "kind_for",
           "limited", "usable_cpus"]
