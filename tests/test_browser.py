"""The comparison widget in a real browser: JupyterLab on localhost, a notebook that builds the widget on a tiny
dataset with the embedded model, run in headless Chromium driven by Playwright."""

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

NOTEBOOK = """\
import pandas as pd
import workspace as ws

tickets = pd.read_csv(TICKETS_CSV)
rows = pd.concat([
    tickets[tickets['split'] == 'dev'].groupby('category').head(2),
    tickets[tickets['split'] == 'train'].groupby('category').head(1),
])
data = ws.import_dataset('browser_tickets', rows, input='text', expected='category', split='split', id='id',
                         if_exists='replace')
labels = ws.choice(sorted(rows['category'].unique()))
demos = data.demos(per_label=1)
v1 = ws.create_version('browser_router', template='Ticket: {{ text }}\\nCategory:', output=labels)
v2 = ws.edit(v1, template='{% for d in demos %}Ticket: {{ d.text }}\\nCategory: {{ d.expected }}\\n\\n'
                          '{% endfor %}Ticket: {{ text }}\\nCategory:', demos=demos)
v3 = ws.edit(v2, demos=demos[::-1])
v4 = ws.edit(v1, template='Ticket: {{ text }}\\n{% if "order" in text | lower %}(about an order)\\n{% endif %}'
                          'Category:')
ws.set_label(v2, 'production')
ws.set_label(v3, 'staging')
ws.compare(data, [v1, v2, v3, v4], split='dev')
"""

#: Settings for the test's JupyterLab: no news or update toasts over the screenshots.
LAB_SETTINGS = {
    '@jupyterlab/apputils-extension/notification.jupyterlab-settings': {
        'fetchNews': 'false',
        'checkForUpdates': False,
        'doNotDisturbMode': True,
    }
}

#: Returns what in the visible tab is wider than the tab's pane without scrolling, or clips its content.
OVERFLOW_JS = """
() => {
  const root = document.querySelector('.pw-compare');
  const pane = root.querySelector('.widget-tab-contents > .lm-Widget:not(.lm-mod-hidden)');
  const name = (el) => el.tagName.toLowerCase() + (el.className && typeof el.className === 'string'
    ? '.' + el.className.trim().split(/\\s+/).join('.') : '') + ' "' + (el.textContent || '').slice(0, 40) + '"';
  const scrolls = (el) => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
  const problems = [];
  for (const [box, selector] of [[root, ':scope > *'], [pane, '*']]) {
    const edge = box.getBoundingClientRect().right;
    for (const el of box.querySelectorAll(selector === '*' ? '*' : ':scope *')) {
      if (box === root && pane.contains(el)) continue;
      const rect = el.getBoundingClientRect();
      if (!rect.width) continue;
      let parent = el.parentElement, inScroller = false;
      for (; parent && parent !== box; parent = parent.parentElement) if (scrolls(parent)) { inScroller = true; break; }
      if (!inScroller && (rect.width > box.clientWidth + 1 || rect.right > edge + 1))
        problems.push('wider than the ' + (box === root ? 'widget' : 'pane') + ' (' + Math.round(rect.right - edge)
                      + ' px past its edge): ' + name(el));
      const style = getComputedStyle(el);
      if (el.clientWidth && el.scrollWidth > el.clientWidth + 1 && !scrolls(el) && style.textOverflow !== 'ellipsis'
          && style.display !== 'inline')
        problems.push('clips (' + el.scrollWidth + ' > ' + el.clientWidth + '): ' + name(el));
    }
  }
  return {pane: [pane.scrollWidth, pane.clientWidth], widget: [root.scrollWidth, root.clientWidth], problems};
}
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
    from conftest import ROOT, TICKETS_CSV

    from workspace import config

    config.connect()  # the kernel shares this session's Pixeltable home
    source = NOTEBOOK.replace('TICKETS_CSV', repr(str(TICKETS_CSV)))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    notebook.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    work = tmp_path / 'work'  # what the file browser shows: the notebook alone
    work.mkdir()
    nbformat.write(notebook, work / 'compare.ipynb')
    for name, values in LAB_SETTINGS.items():
        target = tmp_path / 'lab-settings' / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    port, token = _free_port(), 'pw-browser-test'
    env = {
        **os.environ,
        'PYTHONPATH': str(ROOT),
        'JUPYTER_CONFIG_DIR': str(tmp_path / 'jupyter-config'),
        'JUPYTER_RUNTIME_DIR': str(tmp_path / 'jupyter-runtime'),
        'JUPYTERLAB_SETTINGS_DIR': str(tmp_path / 'lab-settings'),
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
            f'--ServerApp.root_dir={work}',
            '--LabApp.expose_app_in_browser=True',
            '--ServerApp.allow_root=True',
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=work,
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


def run_all_cells(page, url: str, ready: str) -> None:
    """Open the notebook at `url`, run all its cells once the kernel is idle, and wait for `ready` to show;
    fail with the notebook's error if a cell raised."""
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
    page.wait_for_selector(f'{ready}, [data-mime-type="application/vnd.jupyter.error"]', timeout=300_000)
    errors = page.locator('[data-mime-type="application/vnd.jupyter.error"]')
    assert errors.count() == 0, errors.first.inner_text()


def _open_tab(page, name: str, ready: str) -> None:
    page.locator('.pw-compare .lm-TabBar-tab', has_text=name).click()
    page.wait_for_selector(f'.pw-compare .widget-tab-contents > .lm-Widget:not(.lm-mod-hidden) {ready}', timeout=60_000)
    page.wait_for_timeout(300)  # images decode and lay out


def _shot(page, path: Path) -> None:
    """Screenshot the window as a user sees it, scrolled so the widget starts at the top."""
    page.evaluate("document.querySelector('.pw-compare').scrollIntoView({block: 'start'})")
    page.wait_for_timeout(200)
    page.screenshot(path=str(path))


def _assert_fits(page, tab: str) -> None:
    found = page.evaluate(OVERFLOW_JS)
    assert found['problems'] == [], f'{tab}: {found["problems"][:5]}'
    assert found['pane'][0] <= found['pane'][1] + 1, f'{tab}: the pane scrolls sideways {found["pane"]}'
    assert found['widget'][0] <= found['widget'][1] + 1, f'{tab}: the widget is wider than its cell {found["widget"]}'


TABS = [
    ('Summary', '.pw-summary-table'),
    ('Per category', 'img.pw-chart'),
    ('Confusion', 'figure img.pw-chart'),
    ('Flips', 'details.pw-flip'),
    ('Diff', '.pw-diff ins'),
    ('Samples', '.pw-samples'),
    ('Cost', 'img.pw-cost-chart'),
    ('Serving', '.pw-serving'),
    ('Edit', 'textarea'),
]


def test_comparison_widget_in_jupyterlab_fits_every_tab_and_checks_edits(jupyterlab):
    """Four versions in a real JupyterLab at 1440x900: each tab fits its pane (wide content scrolls inside it),
    the Edit tab refuses a template reading an undefined variable before storing a version, and a good edit is
    saved and evaluated. Screenshots of every tab land in the test's tmp dir."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError, sync_playwright

    import workspace as ws

    _ensure_chromium()
    url, folder = jupyterlab
    shots = folder / 'screenshots'
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        console_errors: list[str] = []
        page.on('console', lambda m: console_errors.append(m.text) if m.type == 'error' else None)
        try:
            run_all_cells(page, url, '.pw-summary-table')
            summary = page.locator('.pw-summary-table')
            assert 'baseline' in summary.inner_text() and '@production' in summary.inner_text()
            assert page.locator('.pw-verdicts li').count() == 3

            for index, (tab, ready) in enumerate(TABS):
                _open_tab(page, tab, ready)
                if tab == 'Flips':
                    page.locator('details.pw-flip > summary').first.click()
                _assert_fits(page, tab)
                _shot(page, shots / f'{index + 1}-{tab.lower().replace(" ", "-")}.png')

            # The Edit tab: a template reading a variable the dataset lacks is refused before anything is stored
            assert 'editing browser_router:v1 (baseline)' in page.locator('.pw-compare').inner_text()
            versions = len(ws.list_versions('browser_router'))
            textarea = page.locator('.pw-compare textarea')
            textarea.fill('Ticket: {{ ticket_text }}\nCategory:')
            page.get_by_role('button', name='Save version').click()
            refused = page.wait_for_selector('text=Not saved:', timeout=60_000)
            assert "reads {{ ticket_text }}, which dataset 'browser_tickets' does not have" in refused.inner_text()
            assert len(ws.list_versions('browser_router')) == versions
            _assert_fits(page, 'Edit (refused)')
            _shot(page, shots / '7-edit-refused.png')

            # a good edit that changes only the tickets about a refund: checked, saved, evaluated
            textarea.fill(
                'Ticket: {{ text }}\n{% if "refund" in text | lower %}(mentions a refund)\n{% endif %}Category:'
            )
            page.get_by_role('button', name='Save version').click()
            page.wait_for_selector('text=Not evaluated yet: Evaluate runs it', timeout=60_000)
            assert len(ws.list_versions('browser_router')) == versions + 1
            evaluate = page.locator('.pw-compare button', has_text='Evaluate (')
            calls = int(evaluate.inner_text().split('(')[1].split()[0])
            assert 0 < calls < 16  # only the rows that mention a refund
            _shot(page, shots / '8-edit-saved.png')
            evaluate.click()
            try:  # the bar while the model works, if the screenshot is quick enough to catch it
                page.wait_for_selector('.pw-compare .widget-progress', state='visible', timeout=10_000)
                _shot(page, shots / '8b-edit-evaluating.png')
            except PlaywrightTimeoutError:
                pass
            done = page.wait_for_selector('text=added to the comparison as a candidate', timeout=120_000)
            assert f'{calls} model call' in done.inner_text()
            _assert_fits(page, 'Edit (evaluated)')
            _shot(page, shots / '9-edit-evaluated.png')
            _open_tab(page, 'Summary', '.pw-summary-table')
            assert page.locator('.pw-verdicts li').count() == 4
            _assert_fits(page, 'Summary with five versions')
        except Exception:
            page.screenshot(path=str(folder / 'failure.png'), full_page=True)
            raise
        finally:
            browser.close()
    assert [m for m in console_errors if 'pw-' in m or 'widget' in m.lower()] == []
    assert len(list(shots.glob('[1-9]-*.png'))) == 12  # nine tabs, then the edit's three steps
