"""scripts/lab starts JupyterLab the way a student gets it: as root without extra flags, on
notebooks/ (the file browser reaches no test and no solution), idle kernels culled.

The test runs `scripts/lab --no-setup` (the server command without the set-up) with this
interpreter on a free port, polls /api/status with the token until it answers, checks
what the browser would open, then shuts the server down through its API. Only as root,
where Jupyter refuses to start unless scripts/lab adds --allow-root by itself.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from processes import stop

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (scripts/setup run)")
if not hasattr(os, "geteuid") or os.geteuid() != 0:
    pytest.skip("runs as root only: checks that scripts/lab passes --allow-root itself", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(url: str, token: str, follow: bool = True):
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    opener = urllib.request.build_opener() if follow else urllib.request.build_opener(_NoRedirect)
    try:
        return opener.open(req, timeout=5)
    except urllib.error.HTTPError as e:  # a 3xx when not following
        return e


CULL_FLAGS = ("--MappingKernelManager.cull_idle_timeout=1200", "--MappingKernelManager.cull_interval=60",
              "--MappingKernelManager.cull_connected=True", "--MappingKernelManager.cull_busy=False")


def test_scripts_lab_starts_as_root_on_the_notebooks(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "MISTRAL_LAB_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    cmd = [str(REPO / "scripts" / "lab"), "--no-setup", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"]
    log_path = tmp_path / "lab.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    status = json.load(_get(f"{url}/api/status", token))
                    break
                except (OSError, ValueError):
                    if proc.poll() is not None or time.time() > deadline:
                        pytest.fail("scripts/lab did not start JupyterLab:\n" + log_path.read_text()[-3000:])
                    time.sleep(0.5)
            assert "started" in status
            # the browser lands in the lab ...
            first = _get(f"{url}/", token, follow=False)
            assert first.status in (301, 302, 303, 307) and "/lab" in first.headers["Location"]
            assert _get(f"{url}/lab", token).status == 200
            # ... whose root is notebooks/: the notebooks, not the tests or the teacher's course/
            root = json.load(_get(f"{url}/api/contents", token))
            names = {item["name"] for item in root["content"]}
            assert any(n.startswith("03_") and n.endswith(".ipynb") for n in names), names
            assert not names & {"tests", "course", "mistral_lab", "README.md"}, names
            assert _get(f"{url}/api/contents/..%2Fcourse", token, follow=False).status >= 400
            # idle kernels are culled: the flags reach the server (its command line, after exec)
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode().split("\0")
            for flag in CULL_FLAGS:
                assert flag in cmdline, (flag, cmdline)
            assert f"--ServerApp.root_dir={REPO / 'notebooks'}" in cmdline
            assert "mistral_lab: starting JupyterLab" in log_path.read_text()
            req = urllib.request.Request(f"{url}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(req, timeout=10)
            assert proc.wait(timeout=30) == 0
        finally:
            stop(proc)
