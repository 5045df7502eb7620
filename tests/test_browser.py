"""JupyterLab in a real browser: open the quickstart, run every cell, see a figure and a widget.

Starts JupyterLab on loopback with a random token, drives Debian's headless Chromium with
Playwright, and saves a screenshot to ``reports/browser/``. Skipped, with the reason, only where
Chromium is not installed (``make test`` installs it where it can).
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="Chromium is not installed (apt-get install chromium; `make test` does it as root)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab_server(root: Path):
    """A JupyterLab server on loopback serving ``root``; yields ``(base_url, token)``."""
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_PLATFORM_DIRS": "1"}
    env.pop("MPLBACKEND", None)  # let the kernel use the inline backend
    # The kernel imports the workbench under test (this checkout), not another installed copy.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "jupyterlab.log", "w"),
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "JupyterLab did not start:\n" + (root / "jupyterlab.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on loopback serving a copy of the quickstart notebook."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "00_quickstart.ipynb", as_version=4)
    for cell in nb.cells:  # start from a clean notebook: every output must come from this run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, tmp_path / "00_quickstart.ipynb")
    with jupyterlab_server(tmp_path) as server:
        yield server



def open_notebook(page, base: str, token: str, name: str) -> None:
    """Open ``name`` in JupyterLab and wait for its kernel to be idle."""
    page.goto(f"{base}/lab/tree/{name}?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    # JupyterLab may ask which kernel to start: accept the default (the project's python3).
    try:
        page.click(".jp-Dialog button.jp-mod-accept", timeout=15_000)
    except Exception:  # noqa: BLE001 - no dialog: the kernel started by itself
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)

def test_quickstart_runs_in_jupyterlab_with_figure_and_widget(jupyterlab):
    from playwright.sync_api import sync_playwright

    base, token = jupyterlab
    shots = ROOT / "reports" / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            open_notebook(page, base, token, "00_quickstart.ipynb")
            assert page.locator(".jp-OutputArea-output").count() == 0
            page.click("text=Run", timeout=30_000)
            page.click("text=Run All Cells", timeout=30_000)
            figure = page.wait_for_selector(".jp-OutputArea-output img", timeout=300_000)
            try:
                widget = page.wait_for_selector(".jupyter-widgets.widget-dropdown", timeout=300_000)
            finally:
                page.screenshot(path=str(shots / "quickstart.png"), full_page=True)
            # Every cell has run when no prompt shows "[*]" and the last cell has an output.
            deadline = time.monotonic() + 300
            while page.locator(".jp-InputPrompt:has-text('[*]')").count() and time.monotonic() < deadline:
                time.sleep(1)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                                  ":has-text('Error')").count()
            widget.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "quickstart.png"))
            assert figure.is_visible()
            box = figure.bounding_box()
            assert box and box["width"] > 200 and box["height"] > 150, box
            assert widget.is_visible()
            assert errors == 0, "a cell raised in the browser (see reports/browser/quickstart.png)"
            assert page.locator(".jp-InputPrompt:has-text('[*]')").count() == 0, "cells still running"
        finally:
            browser.close()
