"""A class on a real JupyterHub (jupyter/jupyterhub_config.py): the hub, its
configurable-http-proxy and four students' single-user servers, each a system user with a
private home. Through the hub's REST API the test creates the users and starts their
servers; through the proxy it starts a kernel in each student's own server and runs
notebook 03 (real generation on the shipped model) in all four at once, over the kernel's
websocket as JupyterLab does. One student's copy has a broken cell: that student sees the
error, the others finish with the same checked facts. Students cannot read or write each
other's files. Stopping the hub leaves no process behind.

Needs root (system users, setuid spawning), JupyterHub (requirements/test.txt) and the
proxy from npm (scripts/setup test puts it in .venv/node); skipped otherwise, saying which.
Loopback only; bounded in time.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from processes import stop

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "jupyter" / "jupyterhub_config.py"
PROXY = REPO / ".venv" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
HUB = Path(sys.executable).with_name("jupyterhub")
NOTEBOOK = REPO / "notebooks" / "03_rolling_buffer.ipynb"
N_USERS = int(os.environ.get("MISTRAL_LAB_HUB_USERS_N", "4"))
BROKEN = "raise RuntimeError('a broken cell, on purpose')"
DEADLINE_S = 420  # the whole class: servers, four runs of 03 at once on two cores, shutdown

if os.geteuid() != 0:
    pytest.skip("the hub test creates system users: run it as root (as a class machine's hub runs)",
                allow_module_level=True)
if not HUB.exists():
    pytest.skip(f"{HUB} not found: pip install -r requirements/test.txt", allow_module_level=True)
if not PROXY.exists():
    pytest.skip(f"{PROXY} not found: scripts/setup test installs it with npm", allow_module_level=True)
tornado_ws = pytest.importorskip("tornado.websocket")
from tornado.httpclient import HTTPRequest  # noqa: E402


def _free_port_block(n: int = 3) -> int:
    """A port p with p, p+1, p+2 free (the hub's public, internal and proxy API ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + n >= 65535:
            continue
        ok = True
        for q in range(p, p + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", q))
                except OSError:
                    ok = False
                    break
        if ok:
            return p
    raise RuntimeError("no block of three free ports on loopback")


def _reachable(path: Path) -> bool:
    """Every folder above `path` lets other users through, and `path` itself is readable."""
    path = path.resolve()
    return all(os.stat(p).st_mode & 0o001 for p in path.parents) and bool(os.stat(path).st_mode & 0o004)


def _students_python(tmp: Path) -> Path:
    """The interpreter the students' servers run: .venv's, where every student can reach it.
    Where .venv was made from a Python in a private folder (this machine's lies under /root,
    mode 0700), the system's Python of the same version over .venv's own packages: a venv
    of /usr/bin/python3.X whose one .pth file adds .venv's site-packages."""
    ours = Path(sys.executable)
    if _reachable(ours):
        return ours
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.skip(f"{ours.resolve()} is in a folder students cannot reach and there is no {system}")
    tmp.mkdir(mode=0o755)
    venv = tmp / "students_venv"
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    site = next((Path(sys.prefix) / "lib").glob("python3.*/site-packages"))
    # addsitedir, not a bare path: .venv's own .pth files (the editable install of mistral_lab) run too
    (next((venv / "lib").glob("python3.*/site-packages")) / "mistral_lab_venv.pth").write_text(
        f"import site; site.addsitedir({str(site)!r})\n")
    subprocess.run(["chmod", "-R", "o+rX", str(tmp)], check=True)
    return venv / "bin" / "python"


def _api(base: str, token: str, method: str, path: str, body=None):
    req = urllib.request.Request(f"{base}/hub/api{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read()
    return json.loads(text) if text else None


def _procs_of(uids: set[int]) -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if d.stat().st_uid in uids:
                    cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    out.append(f"{d.name} {cmd[:120]}")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass
    return out


def _procs_matching(text: str) -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            if text in cmd:
                out.append(f"{d.name} {cmd[:120]}")
    return out


@pytest.fixture(scope="module")
def klass(tmp_path_factory):
    """The hub with N students whose servers are running; everything stopped and removed after."""
    if not _reachable(REPO / "mistral_lab" / "__init__.py"):
        pytest.skip(f"students cannot reach {REPO} (a folder above it is private): clone it under /srv or /opt")
    base_home = Path(f"/tmp/mistral-lab-hub-homes-{secrets.token_hex(3)}")
    base_home.mkdir(mode=0o755)
    state = tmp_path_factory.mktemp("hub_state")
    python = _students_python(Path(f"/tmp/mistral-lab-hub-python-{secrets.token_hex(3)}"))
    users = [f"mlhub{secrets.token_hex(2)}{i}" for i in range(N_USERS)]
    port, token = _free_port_block(), secrets.token_hex(32)
    created, hub, log = [], None, state / "hub.log"
    try:
        for u in users:
            subprocess.run(["useradd", "-m", "-b", str(base_home), "-s", "/bin/sh", u], check=True,
                           capture_output=True)
            created.append(u)
        env = {**os.environ, "MISTRAL_LAB_HUB_PORT": str(port), "MISTRAL_LAB_HUB_STATE": str(state),
               "MISTRAL_LAB_HUB_USERS": ",".join(users), "MISTRAL_LAB_HUB_API_TOKEN": token,
               "MISTRAL_LAB_HUB_PYTHON": str(python),
               "HF_HUB_OFFLINE": "1"}
        hub = subprocess.Popen([str(HUB), "-f", str(CONFIG)], cwd=state, env=env, stdout=open(log, "wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        while True:
            try:
                _api(base, token, "GET", "/")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if hub.poll() is not None or time.monotonic() - t0 > 90:
                    raise RuntimeError(f"the hub did not come up: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        for u in users:
            try:
                _api(base, token, "POST", f"/users/{u}")
            except urllib.error.HTTPError as e:
                if e.code != 409:  # 409: the hub added the class list itself at start
                    raise
            _api(base, token, "POST", f"/users/{u}/server")
        while True:
            ready = [bool((_api(base, token, "GET", f"/users/{u}")["servers"].get("") or {}).get("ready"))
                     for u in users]
            if all(ready):
                break
            if time.monotonic() - t0 > 240:
                raise RuntimeError(f"servers not ready after 240 s ({ready}): {log.read_text()[-2000:]}")
            time.sleep(1)
        yield {"base": base, "token": token, "users": users, "hub": hub, "log": log, "port": port,
               "homes": {u: Path(pwd.getpwnam(u).pw_dir) for u in users}}
    finally:
        if hub is not None:
            try:
                hub.terminate()
                hub.wait(timeout=60)  # cleanup_servers / cleanup_proxy: the hub stops them
            except subprocess.TimeoutExpired:
                os.killpg(hub.pid, 9)
                hub.wait()
        uids = {pwd.getpwnam(u).pw_uid for u in created}
        left = _procs_of(uids) + _procs_matching(f"--api-port {port + 2}")
        for line in left:  # never leave a class running, even when the test fails
            try:
                os.kill(int(line.split()[0]), 9)
            except ProcessLookupError:
                pass
        for u in created:
            subprocess.run(["userdel", "-r", "-f", u], capture_output=True)
        shutil.rmtree(base_home, ignore_errors=True)
        if python.parent.parent.name == "students_venv":
            shutil.rmtree(python.parent.parent.parent, ignore_errors=True)


async def _run_notebook(base: str, token: str, user: str, cells: list[str]) -> dict:
    """Start a kernel in `user`'s own server through the proxy and run `cells` in order, as
    JupyterLab does over the kernel's websocket. Returns outputs per cell and the first error."""
    headers = {"Authorization": f"token {token}"}
    req = urllib.request.Request(f"{base}/user/{user}/api/kernels", method="POST", data=b"{}", headers=headers)
    kernel = json.loads(await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=60).read()))
    ws_url = f"{base.replace('http', 'ws')}/user/{user}/api/kernels/{kernel['id']}/channels"
    ws = await tornado_ws.websocket_connect(HTTPRequest(ws_url, headers=headers), max_message_size=1 << 28)
    session, outputs, error, t0 = uuid.uuid4().hex, [], None, time.monotonic()
    try:
        for code in cells:
            msg_id = uuid.uuid4().hex
            await ws.write_message(json.dumps({
                "header": {"msg_id": msg_id, "username": user, "session": session, "msg_type": "execute_request",
                           "version": "5.3", "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True}}))
            text, idle, replied = [], False, None
            while not (idle and replied):
                raw = await asyncio.wait_for(ws.read_message(), timeout=300)
                if raw is None:
                    raise RuntimeError(f"{user}: the kernel's websocket closed")
                m = json.loads(raw) if isinstance(raw, str) else {}
                if m.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = m["msg_type"], m["content"]
                if kind == "stream":
                    text.append(content["text"])
                elif kind in ("execute_result", "display_data"):
                    text.append(content["data"].get("text/plain", ""))
                elif kind == "error":
                    error = f"{content['ename']}: {content['evalue']}"
                elif kind == "status" and content["execution_state"] == "idle":
                    idle = True
                elif kind == "execute_reply":
                    replied = content["status"]
            outputs.append("".join(text))
            if replied != "ok":
                break
    finally:
        ws.close()
    return {"outputs": outputs, "error": error, "seconds": time.monotonic() - t0, "kernel": kernel["id"]}


def _cells(broken: bool) -> list[str]:
    nb = json.loads(NOTEBOOK.read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    cells = [c for c in cells if "ex.check_" not in c]  # the exercise cells wait for the student's answer
    if broken:
        cells.insert(3, BROKEN)
    return cells


def test_four_students_run_notebook_03_at_once_each_in_their_own_kernel(klass):
    users = klass["users"]
    plans = {u: _cells(broken=(u == users[-1])) for u in users}

    async def everyone():
        return await asyncio.gather(*(_run_notebook(klass["base"], klass["token"], u, plans[u]) for u in users))

    results = dict(zip(users, asyncio.run(asyncio.wait_for(everyone(), timeout=DEADLINE_S))))
    good = users[:-1]
    for u in good:
        r = results[u]
        assert r["error"] is None, f"{u}: {r['error']}"
        assert len(r["outputs"]) == len(plans[u]), f"{u} stopped early"
    checks = [i for i, c in enumerate(plans[good[0]]) if "✔ check" in c]
    assert checks, "notebook 03 has no checked facts"
    for i in checks:  # the same facts, to the character, in every student's own kernel
        assert len({results[u]["outputs"][i] for u in good}) == 1, f"check cell {i} differs between students"
    bad = results[users[-1]]
    assert bad["error"] == "RuntimeError: a broken cell, on purpose", bad["error"]
    assert len(bad["outputs"]) == 4  # stopped at the broken cell, as Run All stops
    print({u: round(r["seconds"], 1) for u, r in results.items()})


def test_students_cannot_read_or_write_each_others_files(klass):
    a, b = klass["users"][:2]
    home_b = klass["homes"][b]
    assert (home_b / "mistral_lab_notebooks" / NOTEBOOK.name).is_file(), "the notebooks were not placed in the home"
    assert oct(home_b.stat().st_mode & 0o777) == "0o700"
    probe = (f"import pathlib\nfor what, f in [('read', lambda: pathlib.Path('{home_b}/mistral_lab_notebooks/{NOTEBOOK.name}')"
             f".read_bytes()), ('write', lambda: pathlib.Path('{home_b}/from_{a}.txt').write_text('x')), "
             f"('list', lambda: list(pathlib.Path('{home_b}').iterdir()))]:\n"
             f"    try:\n        f(); print(what, 'ALLOWED')\n    except PermissionError:\n        print(what, 'denied')\n"
             f"import os; print('uid', os.getuid())")
    r = asyncio.run(_run_notebook(klass["base"], klass["token"], a, [probe]))
    assert r["error"] is None, r["error"]
    lines = r["outputs"][0].split("\n")
    assert lines[:3] == ["read denied", "write denied", "list denied"], r["outputs"][0]
    assert lines[3] == f"uid {pwd.getpwnam(a).pw_uid}"  # the kernel runs as the student, not as root
    assert not (home_b / f"from_{a}.txt").exists()


def test_zz_stopping_the_hub_leaves_no_process_behind(klass):
    """Named to run last in this module: the fixture's teardown has not run yet, so stop the
    hub here the way a teacher does (SIGTERM) and look for what it left."""
    hub = klass["hub"]
    hub.terminate()
    hub.wait(timeout=60)
    time.sleep(2)
    uids = {pwd.getpwnam(u).pw_uid for u in klass["users"]}
    left = _procs_of(uids) + _procs_matching(f"--api-port {klass['port'] + 2}")
    assert not left, "processes left after the hub stopped:\n" + "\n".join(left)
