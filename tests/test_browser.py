"""End to end in a real browser: JupyterLab runs notebook 05 and shows its plotly chart and
its ipywidgets slider.

Needs the PyPI package playwright and Debian's chromium (/usr/bin/chromium); skipped
otherwise. Playwright's own browser download (`playwright install`) is never used.
The notebook is copied (outputs cleared) into a temporary root, so the repository's copy
is never touched; the screenshot goes to test-artifacts/browser_05.png.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = "05_memory_at_32k.ipynb"
CHROMIUM = "/usr/bin/chromium"
ARTIFACT = REPO / "test-artifacts" / "browser_05.png"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_without_outputs(src: Path, dst: Path) -> None:
    nb = json.loads(src.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    dst.write_text(json.dumps(nb, indent=1))


@pytest.fixture
def lab(tmp_path):
    """A headless JupyterLab serving a temporary copy of notebook 05; yields its URL."""
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    _copy_without_outputs(REPO / "notebooks" / NOTEBOOK, root / "notebooks" / NOTEBOOK)
    # start the notebook's kernel without the "Select Kernel" dialog, and no news toast
    settings = tmp_path / "settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text('{"autoStartDefault": true}')
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers / CI run as root
        cmd.append("--allow-root")
    log = open(tmp_path / "jupyter.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyter.log").read_text()[-3000:])
                time.sleep(0.5)
        yield f"{url}/lab/tree/notebooks/{NOTEBOOK}?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_notebook_05_renders_plotly_and_slider(lab, tmp_path):
    before = (REPO / "notebooks" / NOTEBOOK).read_bytes()
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=args, headless=True,
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(lab, wait_until="domcontentloaded", timeout=90_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle'], "
                                   ".jp-Toolbar-kernelStatus, .jp-KernelStatus", timeout=90_000)
            page.wait_for_timeout(2000)
            select = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
            if select.is_visible():  # in case the settings above were not honoured
                select.click()
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click(timeout=10_000)
            plot = page.wait_for_selector(".js-plotly-plot, .plot-container", timeout=240_000)
            slider = page.wait_for_selector(".widget-slider", timeout=240_000)
            # Run All is done when every code cell has an execution number (outputs were cleared,
            # so none had one; a failing cell stops the run and this times out)
            page.wait_for_function(
                "() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                ".map(e => e.textContent); return p.length > 0 && p.every(t => /\\[\\d+\\]/.test(t)); }",
                timeout=240_000)
            assert page.locator(".js-plotly-plot").count() >= 1
            assert page.locator(".jupyter-widgets").count() >= 1
            if page.get_by_role("button", name="No", exact=True).is_visible():  # "Jupyter news?" toast
                page.get_by_role("button", name="No", exact=True).click()
            slider.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            ARTIFACT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACT))
            assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").filter(
                has_text="Error").count() == 0
        except Exception:
            ARTIFACT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACT.with_name("browser_05_failure.png")))
            raise
        finally:
            context.close()
    assert (REPO / "notebooks" / NOTEBOOK).read_bytes() == before
