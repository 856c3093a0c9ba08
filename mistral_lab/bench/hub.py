"""A class on a real JupyterHub, driven as a teacher's script would: jupyter/jupyterhub_config.py,
its configurable-http-proxy, N students who are system users, each with their own
single-user server and kernel.

    with Class(4) as k:                        # hub up, 4 users, their servers ready
        results = k.run_all({u: notebook_cells(NOTEBOOK_03) for u in k.users})
    python -m mistral_lab bench classroom --hub --out benchmarks/classroom_hub.json

Users are created for the run (useradd, homes under a fresh folder) and removed after,
with every process they started; the hub listens on loopback only. The notebooks run in
each student's own kernel through the proxy, over the kernel's websocket, as JupyterLab
runs them. Needs root (system users, setuid spawning), JupyterHub and the proxy (scripts/
setup hub or test); `unavailable()` says what is missing.
"""
from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

from .. import threads
from . import classroom
from .kernel_ws import run_cells
from .proc import maps, memory_mib, peak_mib, processes

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "jupyter" / "jupyterhub_config.py"
PROXY = REPO / ".venv" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
NOTEBOOK_03 = REPO / "notebooks" / "03_rolling_buffer.ipynb"
# What notebook 03 generated, read from the student's kernel after its last cell.
TOKENS_03 = "print(len(out.new_tokens) + len(full.new_tokens))"
COUNTS = (1, 4, 8)


def hub_command() -> Path:
    return Path(sys.executable).with_name("jupyterhub")


def unavailable() -> str | None:
    """Why a hub cannot run here, or None."""
    if os.geteuid() != 0:
        return "the hub creates system users and starts each one's server as that user: run it as root"
    if not hub_command().exists():
        return f"{hub_command()} not found: scripts/setup hub (or test) installs JupyterHub"
    if not PROXY.exists():
        return f"{PROXY} not found: scripts/setup hub installs configurable-http-proxy with npm"
    if not _reachable(REPO / "mistral_lab" / "__init__.py"):
        return f"students cannot reach {REPO} (a folder above it is private): put the checkout under /srv or /opt"
    return None


def _reachable(path: Path) -> bool:
    """Every folder above `path` lets other users through, and `path` itself is readable."""
    path = path.resolve()
    return all(os.stat(p).st_mode & 0o001 for p in path.parents) and bool(os.stat(path).st_mode & 0o004)


def students_python(folder: Path) -> Path:
    """The interpreter the students' servers run: .venv's, where every student can reach it.
    Where .venv was made from a Python in a private folder (e.g. under /root, mode 0700),
    the system's Python of the same version over .venv's own packages: a venv of
    /usr/bin/python3.X (in `folder`) whose one .pth file adds .venv's site-packages."""
    ours = Path(sys.executable)
    if _reachable(ours):
        return ours
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        raise RuntimeError(f"{ours.resolve()} lies in a folder students cannot reach and there is no {system}: "
                           f"make .venv from a Python every user can run (scripts/setup with it first on PATH)")
    folder.mkdir(mode=0o755)
    venv = folder / "students_venv"
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    site = next((Path(sys.prefix) / "lib").glob("python3.*/site-packages"))
    # addsitedir, not a bare path: .venv's own .pth files (the editable install of mistral_lab) run too
    (next((venv / "lib").glob("python3.*/site-packages")) / "mistral_lab_venv.pth").write_text(
        f"import site; site.addsitedir({str(site)!r})\n")
    subprocess.run(["chmod", "-R", "o+rX", str(folder)], check=True)
    return venv / "bin" / "python"


def _free_ports(n: int = 3) -> int:
    """A port p with p .. p+n-1 free on loopback (the hub's public, internal and proxy API ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        try:
            for q in range(p, p + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
            return p
        except OSError:
            continue
    raise RuntimeError("no block of three free ports on loopback")


def notebook_cells(path: Path, broken: str | None = None, at: int = 3) -> list[str]:
    """The code cells of a notebook in order, without the exercise checks (they wait for a
    student's answer); `broken` is inserted as cell `at` (a student's deliberate mistake)."""
    nb = json.loads(path.read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    cells = [c for c in cells if "ex.check_" not in c]
    if broken is not None:
        cells.insert(at, broken)
    return cells


class Class:
    """The hub with `n` students whose servers are running; `with` stops and removes it all."""

    def __init__(self, n: int, *, start_timeout: float = 300):
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self.start_timeout = start_timeout
        tag = secrets.token_hex(3)
        self.work = Path(f"/tmp/mistral-lab-hub-{tag}")
        self.users = [f"mlhub{tag}{i}" for i in range(n)]
        self.port, self.token = _free_ports(), secrets.token_hex(32)
        self.base = f"http://127.0.0.1:{self.port}"
        self.created: list[str] = []
        self.hub = None
        self.log = self.work / "state" / "hub.log"
        self.weights = self.work / "weights"  # the class's one copy of the weights (the hub writes it)

    # -- the hub's REST API
    def api(self, method: str, path: str, body=None):
        req = urllib.request.Request(f"{self.base}/hub/api{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
        return json.loads(text) if text else None

    def __enter__(self) -> "Class":
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self.work.mkdir(mode=0o755)
        homes, state = self.work / "homes", self.work / "state"
        homes.mkdir(mode=0o755)
        state.mkdir(mode=0o700)
        python = students_python(self.work / "python")
        for u in self.users:
            subprocess.run(["useradd", "-m", "-b", str(homes), "-s", "/bin/sh", u], check=True, capture_output=True)
            self.created.append(u)
        env = {**os.environ, "MISTRAL_LAB_HUB_PORT": str(self.port), "MISTRAL_LAB_HUB_STATE": str(state),
               "MISTRAL_LAB_HUB_USERS": ",".join(self.users), "MISTRAL_LAB_HUB_API_TOKEN": self.token,
               "MISTRAL_LAB_HUB_PYTHON": str(python), "MISTRAL_LAB_HUB_WEIGHTS": str(self.weights),
               "HF_HUB_OFFLINE": "1"}
        with open(self.log, "wb") as log:
            self.hub = subprocess.Popen([str(hub_command()), "-f", str(CONFIG)], cwd=state, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        while True:
            try:
                self.api("GET", "/")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.hub.poll() is not None or time.monotonic() - t0 > 90:
                    raise RuntimeError(f"the hub did not come up: {self.log.read_text()[-2000:]}")
                time.sleep(0.5)
        for u in self.users:
            try:
                self.api("POST", f"/users/{u}")
            except urllib.error.HTTPError as e:
                if e.code != 409:  # 409: the hub added the class list itself at start
                    raise
            self.api("POST", f"/users/{u}/server")
        while True:
            ready = [bool((self.api("GET", f"/users/{u}")["servers"].get("") or {}).get("ready")) for u in self.users]
            if all(ready):
                break
            if time.monotonic() - t0 > self.start_timeout:
                raise RuntimeError(f"servers not ready after {self.start_timeout:.0f} s: {self.log.read_text()[-2000:]}")
            time.sleep(1)
        self.ready_s = round(time.monotonic() - t0, 1)

    def home(self, user: str) -> Path:
        return Path(pwd.getpwnam(user).pw_dir)

    def uids(self) -> set[int]:
        return {pwd.getpwnam(u).pw_uid for u in self.created}

    def stop_hub(self) -> dict[int, str]:
        """Stop the hub as a teacher does (SIGTERM): it stops the proxy and every server.
        Returns what is still running of it afterwards (nothing, when all went well)."""
        if self.hub is not None and self.hub.poll() is None:
            self.hub.terminate()
            try:
                self.hub.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.hub.pid, 9)
                self.hub.wait()
        deadline = time.monotonic() + 20  # kernels exit a moment after their server: wait for them
        while True:
            left = {**processes(self.uids()), **processes(text=f"--api-port {self.port + 2}")}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        left = self.stop_hub()
        for pid in left:  # never leave a class running, even when something failed
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for u in self.created:
            subprocess.run(["userdel", "-r", "-f", u], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)

    # -- notebooks in the students' kernels
    def run_all(self, plans: dict[str, list[str]], timeout: float = 600) -> dict[str, dict]:
        """Run each user's cells in their own kernel, all users at once."""
        async def everyone():
            return await asyncio.gather(*(self.run(u, cells) for u, cells in plans.items()))
        return dict(zip(plans, asyncio.run(asyncio.wait_for(everyone(), timeout=timeout))))

    async def run(self, user: str, cells: list[str]) -> dict:
        """Run `cells` in a new kernel of `user`'s own server, through the proxy (kernel_ws.run_cells)."""
        return await run_cells(f"{self.base}/user/{user}", self.token, cells, user=user)

    def peaks(self) -> dict[str, dict]:
        """Each user's single-user server and kernel: peak resident memory so far (MiB), the
        kernel's memory now (resident, proportional, its own: proc.memory_mib) and
        whether it maps the class's shared weights."""
        out = {}
        for u in self.users:
            mine = processes({pwd.getpwnam(u).pw_uid})
            kernels = [p for p, c in mine.items() if "ipykernel" in c]
            out[u] = {"server_mib": max((peak_mib(p) for p, c in mine.items() if "jupyterhub.singleuser" in c),
                                        default=None),
                      "kernel_mib": max((peak_mib(p) for p in kernels), default=None),
                      "kernel_now": memory_mib(kernels[0]) if kernels else None,
                      "kernel_maps_shared_weights": bool(kernels) and all(maps(p, self.weights) for p in kernels)}
        return out


def run_class(n: int, progress=print) -> dict:
    """n students open the hub and run notebook 03 at the same moment, each in their kernel."""
    with Class(n) as k:
        results = k.run_all({u: notebook_cells(NOTEBOOK_03) + [TOKENS_03] for u in k.users})
        peaks = k.peaks()
        left = k.stop_hub()
    bad = {u: r["error"] for u, r in results.items() if r["error"]}
    if bad:
        raise RuntimeError(f"notebook 03 failed on the hub: {bad}")
    runs = [r["run_s"] for r in results.values()]
    tokens = sum(int(r["outputs"][-1]) for r in results.values())
    span = max(r["t_end"] for r in results.values()) - min(r["t_start"] for r in results.values())
    row = {"users": n, "servers_ready_s": k.ready_s,
           "notebook_03_s": {"median": round(statistics.median(runs), 2), "slowest": max(runs),
                             "fastest": min(runs)},
           "slowest_over_median": round(max(runs) / statistics.median(runs), 3),
           "kernel_start_s_median": round(statistics.median(r["kernel_start_s"] for r in results.values()), 2),
           "tokens_generated": tokens, "aggregate_tokens_per_s": round(tokens / span, 1),
           "peak_server_mib_max": max(p["server_mib"] for p in peaks.values()),
           "peak_kernel_mib_max": max(p["kernel_mib"] for p in peaks.values()),
           "peak_kernel_mib_median": statistics.median(p["kernel_mib"] for p in peaks.values()),
           # after the run, all kernels alive: what each holds of its own, and its share of what they share
           **{f"kernel_{m}_mib_median": round(statistics.median(p["kernel_now"][m] for p in peaks.values()), 1)
              for m in ("rss", "pss", "uss")},
           "kernels_mapping_shared_weights": sum(p["kernel_maps_shared_weights"] for p in peaks.values()),
           "processes_left": len(left)}
    progress(f"  {n} users: notebook 03 median {row['notebook_03_s']['median']} s, slowest "
             f"{row['notebook_03_s']['slowest']} s; {row['aggregate_tokens_per_s']} tok/s in aggregate; "
             f"kernel peak {row['peak_kernel_mib_max']} MiB (now: PSS {row['kernel_pss_mib_median']}, own "
             f"{row['kernel_uss_mib_median']} MiB), server {row['peak_server_mib_max']} MiB; "
             f"{row['kernels_mapping_shared_weights']} of {n} kernels map the shared weights")
    return row


def measure(counts=COUNTS) -> dict:
    """`python -m mistral_lab bench classroom --hub`: run_class for 1, 4 and 8 users."""
    rows = [run_class(n) for n in counts]
    by = {r["users"]: r for r in rows}
    goal = {}
    if 1 in by and 8 in by:  # the classroom goal (classroom.py), for the students' kernels on the hub
        goal = classroom.goal(by[1]["aggregate_tokens_per_s"], by[8]["aggregate_tokens_per_s"],
                              by[8]["slowest_over_median"], threads.usable_cpus())
        print(f"  goal: 8 users {goal['aggregate_8']} tok/s vs target {goal['target']} "
              f"({'ok' if goal['aggregate_ok'] else 'MISSED'}); slowest/median {goal['slowest_over_median_8']} "
              f"({'ok' if goal['fairness_ok'] else 'MISSED'})")
    return {"goal": goal, "hub": {"jupyterhub": version("jupyterhub"), "configurable_http_proxy": _proxy_version(),
                    "spawner": "LocalProcessSpawner (system users)", "config": "jupyter/jupyterhub_config.py"},
            "notebook": "03_rolling_buffer.ipynb (exercise checks left out)", "classes": rows,
            "slice": classroom.slice_check()}  # the process classroom's: the tokens every student generates


def _proxy_version() -> str:
    package = PROXY.resolve().parents[1] / "package.json"  # node_modules/configurable-http-proxy/package.json
    try:
        return json.loads(package.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"
