"""The comparison widget in a real browser: JupyterLab on localhost, a notebook that builds the widget on a tiny
dataset with the embedded model, run in headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
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

NOTEBOOK = """\
import pandas as pd
import workspace as ws

rows = [
    {'id': 'k1', 'text': 'I was charged twice for my order.', 'category': 'BILLING', 'split': 'dev'},
    {'id': 'k2', 'text': 'My parcel has not arrived after two weeks.', 'category': 'DELIVERY', 'split': 'dev'},
    {'id': 'k3', 'text': 'The app crashes when I open my basket.', 'category': 'TECHNICAL', 'split': 'dev'},
    {'id': 'k4', 'text': 'Why is there an extra fee on my invoice?', 'category': 'BILLING', 'split': 'dev'},
]
data = ws.import_dataset('browser_tickets', pd.DataFrame(rows), input='text', expected='category',
                         split='split', id='id', if_exists='replace')
labels = ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL'])
v1 = ws.create_version('browser_router', template='Ticket: {{ text }}\\nCategory:', output=labels)
v2 = ws.edit(v1, template='Customer support ticket: {{ text }}\\nThe category is:')
ws.compare(data, [v1, v2], split='dev')
"""


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


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Start JupyterLab on localhost over a folder holding the notebook; yield (notebook URL, folder)."""
    from conftest import ROOT

    from workspace import config

    config.connect()  # the kernel shares this session's Pixeltable home
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK)])
    notebook.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(notebook, tmp_path / 'compare.ipynb')
    port, token = _free_port(), 'pw-browser-test'
    env = {
        **os.environ,
        'PYTHONPATH': str(ROOT),
        'JUPYTER_CONFIG_DIR': str(tmp_path / 'jupyter-config'),
        'JUPYTER_RUNTIME_DIR': str(tmp_path / 'jupyter-runtime'),
    }
    log = (tmp_path / 'jupyterlab.log').open('w')
    process = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'jupyterlab',
            '--no-browser',
            f'--port={port}',
            '--ip=127.0.0.1',
            f'--IdentityProvider.token={token}',
            f'--ServerApp.root_dir={tmp_path}',
            '--LabApp.expose_app_in_browser=True',
            '--ServerApp.allow_root=True',
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
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
            pytest.fail(f'JupyterLab did not start: {(tmp_path / "jupyterlab.log").read_text()[-2000:]}')
        yield f'{base}/lab/tree/compare.ipynb?token={token}', tmp_path
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_comparison_widget_renders_in_jupyterlab(jupyterlab):
    from playwright.sync_api import sync_playwright

    _ensure_chromium()
    url, folder = jupyterlab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        try:
            page.goto(url, timeout=120_000)
            page.wait_for_selector('.jp-Notebook', timeout=120_000)
            # Ready means the notebook's kernel is connected and idle: a command sent earlier is dropped.
            page.wait_for_function(
                '() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;'
                ' const s = w && w.sessionContext; const k = s && s.isReady && s.session && s.session.kernel;'
                " return !!k && k.connectionStatus === 'connected' && k.status === 'idle'; }",
                timeout=180_000,
            )
            assert page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')") is True
            page.wait_for_selector(
                '.pw-summary-table, [data-mime-type="application/vnd.jupyter.error"]', timeout=240_000
            )
            errors = page.locator('[data-mime-type="application/vnd.jupyter.error"]')
            assert errors.count() == 0, errors.first.inner_text()
            summary = page.locator('.pw-summary-table')
            assert 'browser_router:v1 (baseline)' in summary.inner_text()
            assert page.locator('.pw-verdicts li').count() == 1
            page.get_by_role('tab', name='Per category').click()
            chart = page.wait_for_selector('img.pw-chart', state='visible', timeout=30_000)
            assert chart.get_attribute('src').startswith('data:image/png;base64,')
            page.get_by_role('tab', name='Diff').click()
            diff = page.wait_for_selector('.pw-diff', state='visible', timeout=30_000)
            assert 'browser_router:v1' in diff.inner_text() and page.locator('.pw-diff ins').count() >= 1
            page.get_by_role('tab', name='Summary').click()
            page.screenshot(path=str(folder / 'comparison.png'), full_page=True)
        except Exception:
            page.screenshot(path=str(folder / 'failure.png'), full_page=True)
            raise
        finally:
            browser.close()
    assert (folder / 'comparison.png').stat().st_size > 10_000
