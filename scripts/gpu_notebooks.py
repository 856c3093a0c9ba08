"""Every notebook through papermill on one checkpoint, timed, with the GPU's peak memory:
what each notebook needs at a size (TEACHING.md's "at 7B size" from a lent GPU).

    python scripts/gpu_notebooks.py --out runs/gpu/notebooks.json                 # random 7B-shaped weights
    python scripts/gpu_notebooks.py --model DIR --device cpu --only 01 --out x.json   # the CPU twin

Without --model it writes random weights of Mistral 7B's shapes (tests/second_checkpoints.write:
the Hugging Face layout, fp16 on disk, Mistral's v1 tokenizer) to --weights (14.5 GB). Each
notebook runs in its own kernel with -p model/device/dtype; its wall time, whether it finished,
its first error in one line, the kernel's peak resident memory and (on CUDA) the most GPU memory
in use while it ran, both polled every 0.5 s (/proc, nvidia-smi), go to --out (files.write_result's
schema). On the CPU with --model assets/model it times the notebooks as a class meets them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from mistral_lab import files  # noqa: E402


def _gpu_used_mib() -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        return max(int(x) for x in out.stdout.split()) if out.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def _children_rss_mib() -> int | None:
    """Resident memory of this process's children (the notebook's kernel), from /proc (Linux)."""
    me, total = str(os.getpid()), 0
    try:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    fields = open(f"/proc/{d}/status").read().split("\n")
                except OSError:
                    continue
                info = dict(line.split(":\t", 1) for line in fields if ":\t" in line)
                if info.get("PPid", "").strip() == me and "VmRSS" in info:
                    total += int(info["VmRSS"].split()[0]) // 1024
    except OSError:
        return None
    return total


class _Peak(threading.Thread):
    """The most GPU memory in use and the most resident memory of the kernel, polled every 0.5 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.rss, self.done = None, None, threading.Event()

    def run(self):
        gpu = _gpu_used_mib() is not None
        while not self.done.wait(0.5):
            if gpu:
                used = _gpu_used_mib()
                self.peak = max(self.peak or 0, used or 0)
            rss = _children_rss_mib()
            if rss:
                self.rss = max(self.rss or 0, rss)


def run_one(nb: Path, model: Path, device: str, dtype: str, out_dir: Path, timeout: int) -> dict:
    import papermill

    peak = _Peak()
    peak.start()
    t0 = time.monotonic()
    row = {"notebook": nb.name, "finished": True, "error": None}
    try:
        papermill.execute_notebook(str(nb), str(out_dir / nb.name), parameters={"model": str(model), "device": device,
                                   "dtype": dtype}, kernel_name="python3", cwd=str(nb.parent), progress_bar=False,
                                   execution_timeout=timeout)
    except Exception as e:  # a notebook that fails is a result: which, and its one line
        row.update(finished=False, error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")
    finally:
        peak.done.set()
        peak.join()
    row.update(seconds=round(time.monotonic() - t0, 1), gpu_peak_mib=peak.peak, kernel_peak_rss_mib=peak.rss)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="a checkpoint folder (default: random 7B-shaped weights in --weights)")
    p.add_argument("--weights", type=Path, default=Path("runs/gpu/mistral-7b-random"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--only", nargs="*", help="notebook numbers, e.g. 01 03 (default: all)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    files.check_writable(a.out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    try:
        import papermill  # noqa: F401
    except ImportError:
        print("skipped: papermill is not installed here (pip install papermill, or carry its wheels in .whl/)")
        return 0
    model = a.model
    if model is None:
        import mistral_lab as ml
        from second_checkpoints import write

        model = a.weights
        if not (model / "config.json").exists():
            write(model, ml.preset("mistral-7b-v0.1"))
    model = model.resolve()  # the kernels run in notebooks/: a relative path would point elsewhere
    notebooks = sorted(p for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb") if not a.only or p.name[:2] in a.only)
    out_dir = a.out.parent / (a.out.stem + "_notebooks")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for nb in notebooks:
        rows.append(run_one(nb, model, a.device, a.dtype, out_dir, a.timeout))
        r = rows[-1]
        print(f"{nb.name:40s} {r['seconds']:7.1f} s  GPU peak {r['gpu_peak_mib']} MiB  kernel RSS {r['kernel_peak_rss_mib']} MiB  "
              + ("ok" if r["finished"] else r["error"]), flush=True)
    files.write_result(a.out, "notebooks", {"model": files.shown_path(model), "device_asked": a.device,
                                            "dtype": a.dtype, "rows": rows},
                       command="python scripts/gpu_notebooks.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0 if all(r["finished"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
