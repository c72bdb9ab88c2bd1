"""The browser tests' JupyterLab: one server on localhost for the test session, serving the project (so a notebook
opens and runs as a newcomer's would: its kernel starts in notebooks/) and a folder of notebooks the tests write,
driven in headless Chromium by Playwright at 1440x900. conftest.py registers the fixtures `lab` and
`browser_page`; the helpers open a notebook, set its parameters and run it.

Screenshots land in the session's tmp folder, or in `PW_SCREENSHOTS` when it is set."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

CHROMIUM = Path('/usr/bin/chromium')
CHROMIUM_ARGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
]

VIEWPORT = {'width': 1440, 'height': 900}  # a laptop-sized window

#: Settings for the test's JupyterLab: no news or update toasts over the screenshots, and no autosave, so running
#: the project's notebooks leaves their files as they are.
LAB_SETTINGS = {
    '@jupyterlab/apputils-extension/notification.jupyterlab-settings': {
        'fetchNews': 'false',
        'checkForUpdates': False,
        'doNotDisturbMode': True,
    },
    '@jupyterlab/docmanager-extension/plugin.jupyterlab-settings': {'autosave': False},
    # every cell stays in the page, so a test reads and screenshots outputs that are scrolled out of view
    '@jupyterlab/notebook-extension/tracker.jupyterlab-settings': {'windowingMode': 'none'},
}


def _ensure_chromium() -> None:
    """Install Debian's chromium when it is missing and we may (CI runs as root); otherwise say how."""
    if CHROMIUM.exists():
        return
    if os.geteuid() == 0 and shutil.which('apt-get'):
        subprocess.run(['apt-get', 'update', '-qq'], check=False, capture_output=True)
        subprocess.run(['apt-get', 'install', '-y', '-qq', 'chromium'], check=True, capture_output=True)
    if not CHROMIUM.exists():
        pytest.fail('the browser test needs Debian chromium at /usr/bin/chromium: run `sudo apt-get install chromium`')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Lab:
    """The session's JupyterLab: its address, and the folders it serves (`project` is the project itself)."""

    base: str
    token: str
    root: Path
    work: Path  # notebooks the tests write
    shots: Path  # screenshots

    def url(self, path: str) -> str:
        """Return the address that opens a notebook, by its path under the served folder."""
        return f'{self.base}/lab/tree/{path}?reset&token={self.token}'  # reset: no tab of an earlier test reopens

    def write(self, name: str, source: str) -> str:
        """Write a one-cell notebook the tests run; return its path for `url`."""
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        notebook.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
        nbformat.write(notebook, self.work / name)
        return f'work/{name}'

    def shutdown_kernels(self) -> None:
        """Stop every kernel the server runs (each notebook's), so the next one starts on a quiet machine."""
        with urllib.request.urlopen(f'{self.base}/api/kernels?token={self.token}', timeout=10) as response:
            kernels = json.load(response)
        for kernel in kernels:
            request = urllib.request.Request(
                f'{self.base}/api/kernels/{kernel["id"]}?token={self.token}', method='DELETE'
            )
            urllib.request.urlopen(request, timeout=30).close()


@pytest.fixture(scope='session')
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Start one JupyterLab for the session over a folder holding the project (as `project/`, so notebooks open
    where a newcomer finds them) and the tests' notebooks (`work/`), with the project's kernel registered as
    `prompt-workspace lab` registers it; stop it at the end."""
    from conftest import ROOT

    from workspace import config

    config.connect()  # the kernels share this session's Pixeltable home
    root = tmp_path_factory.mktemp('lab')
    (root / 'work').mkdir()
    (root / 'project').symlink_to(ROOT, target_is_directory=True)
    shots = Path(os.environ.get('PW_SCREENSHOTS') or root / 'screenshots')
    shots.mkdir(parents=True, exist_ok=True)
    data = root / 'jupyter-data'
    spec = data / 'kernels' / 'prompt-workspace' / 'kernel.json'
    spec.parent.mkdir(parents=True)
    spec.write_text(
        json.dumps(
            {
                'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                'display_name': 'Python (prompt-workspace)',
                'language': 'python',
            }
        )
    )
    for name, values in LAB_SETTINGS.items():
        target = root / 'lab-settings' / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    port, token = _free_port(), 'pw-browser-test'
    env = {
        **os.environ,
        'PYTHONPATH': str(ROOT),
        'JUPYTER_CONFIG_DIR': str(root / 'jupyter-config'),
        'JUPYTER_DATA_DIR': str(data),
        'JUPYTER_RUNTIME_DIR': str(root / 'jupyter-runtime'),
        'JUPYTERLAB_SETTINGS_DIR': str(root / 'lab-settings'),
    }
    log = (root / 'jupyterlab.log').open('w')
    process = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'jupyterlab',
            '--no-browser',
            f'--port={port}',
            '--ip=127.0.0.1',
            f'--IdentityProvider.token={token}',
            f'--ServerApp.root_dir={root}',
            '--LabApp.expose_app_in_browser=True',
            '--ServerApp.allow_root=True',
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
        start_new_session=True,  # its own process group: stopping it stops its kernels too
    )
    base = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f'JupyterLab did not start: {(root / "jupyterlab.log").read_text()[-2000:]}')
        yield Lab(base, token, root, root / 'work', shots)
    finally:
        _stop_group(process)
        log.close()


def _stop_group(process: subprocess.Popen) -> None:
    """Stop JupyterLab and every process of its group (its kernels): SIGTERM, then SIGKILL after 15 s."""
    import signal

    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # kernels that outlived their server, or a server that hung
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture
def browser_page(lab: Lab) -> Iterator[object]:
    """A fresh Chromium page at 1440x900; its kernels are stopped afterwards."""
    from playwright.sync_api import sync_playwright

    _ensure_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()
            lab.shutdown_kernels()


#: Sets the source of the notebook's `parameters` cell, as a person editing it would (the file is not saved).
SET_PARAMETERS_JS = """
(source) => {
  const notebook = window.jupyterapp.shell.currentWidget.content;
  const cell = notebook.widgets.find((c) => (c.model.getMetadata('tags') || []).includes('parameters'));
  if (!cell) return false;
  cell.model.sharedModel.setSource(cell.model.sharedModel.getSource() + source);
  return true;
}
"""

#: 'error' when a cell raised, 'done' when every code cell ran and the kernel is idle, else null.
RUN_STATE_JS = """
() => {
  const widget = window.jupyterapp.shell.currentWidget;
  if (!widget || !widget.content) return null;
  if (document.querySelector('[data-mime-type="application/vnd.jupyter.error"]')) return 'error';
  const kernel = widget.sessionContext.session && widget.sessionContext.session.kernel;
  const code = widget.content.widgets.filter((c) => c.model.type === 'code');
  const ran = code.every((c) => c.model.executionCount !== null);
  return ran && kernel && kernel.status === 'idle' ? 'done' : null;
}
"""


def open_notebook(page, url: str) -> None:
    """Open a notebook and wait until its kernel is connected and idle (a command sent earlier is dropped)."""
    page.goto(url, timeout=120_000)
    page.wait_for_selector('.jp-Notebook', timeout=120_000)
    page.wait_for_function(
        '() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;'
        ' const s = w && w.sessionContext; const k = s && s.isReady && s.session && s.session.kernel;'
        " return !!k && k.connectionStatus === 'connected' && k.status === 'idle'; }",
        timeout=180_000,
    )


def _error_text(page) -> str:
    errors = page.locator('[data-mime-type="application/vnd.jupyter.error"]')
    return errors.first.inner_text() if errors.count() else ''


def run_all_cells(page, url: str, ready: str | None = None, *, parameters: str = '', timeout_s: int = 300) -> None:
    """Open the notebook at `url`, append `parameters` to its parameters cell (as a person would type them), run
    all its cells, and wait for `ready` to show (or, without it, for every cell to run); fail with the
    notebook's error if a cell raised."""
    open_notebook(page, url)
    if parameters:
        assert page.evaluate(SET_PARAMETERS_JS, parameters) is True, 'the notebook has no parameters cell'
    assert page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')") is True
    if ready is not None:
        page.wait_for_selector(f'{ready}, [data-mime-type="application/vnd.jupyter.error"]', timeout=timeout_s * 1000)
    else:
        page.wait_for_function(RUN_STATE_JS, timeout=timeout_s * 1000, polling=500)
    error = _error_text(page)
    assert not error, error
