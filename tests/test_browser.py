"""The comparison widget and every notebook in a real browser: JupyterLab on localhost (one server for the
session, `tests/browser_lab.py`), notebooks run as a newcomer runs them, in headless Chromium at 1440x900."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_lab import run_all_cells

from workspace.optimization.optimize import list_optimizations

# --- the comparison widget --------------------------------------------------------------------------------------

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

#: Returns the tables of the summary that scroll sideways (a table wider than its box): none should.
SUMMARY_SCROLL_JS = """
() => [...document.querySelectorAll('.pw-compare .pw-summary .pw-scroll')]
  .filter((box) => box.offsetParent !== null && box.scrollWidth > box.clientWidth + 1)
  .map((box) => box.querySelector('table').className + ' ' + box.scrollWidth + ' > ' + box.clientWidth)
"""


def _open_tab(page, name: str, ready: str) -> None:
    page.locator('.pw-compare .lm-TabBar-tab', has_text=name).first.click()
    page.wait_for_selector(f'.pw-compare .widget-tab-contents > .lm-Widget:not(.lm-mod-hidden) {ready}', timeout=60_000)
    page.wait_for_timeout(300)  # images decode and lay out


def _shot(page, path: Path, selector: str = '.pw-compare') -> None:
    """Screenshot the window as a user sees it, scrolled so the element starts at the top."""
    page.evaluate(f"document.querySelector('{selector}').scrollIntoView({{block: 'start'}})")
    page.wait_for_timeout(200)
    page.screenshot(path=str(path))


def _assert_fits(page, tab: str) -> None:
    found = page.evaluate(OVERFLOW_JS)
    assert found['problems'] == [], f'{tab}: {found["problems"][:5]}'
    assert found['pane'][0] <= found['pane'][1] + 1, f'{tab}: the pane scrolls sideways {found["pane"]}'
    assert found['widget'][0] <= found['widget'][1] + 1, f'{tab}: the widget is wider than its cell {found["widget"]}'


TABS = [
    ('Summary', '.pw-summary-table'),
    ('Grid', '.pw-grid-table'),
    ('Per category', 'img.pw-chart'),
    ('Confusion', 'figure img.pw-chart'),
    ('Flips', 'details.pw-flip'),
    ('Diff', '.pw-diff ins'),
    ('Samples', '.pw-samples'),
    ('Cost', 'img.pw-cost-chart'),
    ('Serving', '.pw-serving'),
    ('Edit', 'textarea'),
]


def _grid_count(page) -> str:
    return page.locator('.pw-compare .pw-grid-count').inner_text()


def _wait_grid(page, text: str) -> None:
    page.wait_for_function(
        "(t) => { const c = document.querySelector('.pw-compare .pw-grid-count'); return c && c.textContent.includes(t); }",
        arg=text,
        timeout=30_000,
    )


def _drive_grid(page, shots: Path) -> None:
    """Search, sort and filter the grid as a person would, checking what each shows."""
    assert 'Showing 1–16 of 16 examples' in _grid_count(page)
    search = page.locator('.pw-grid-tab .pw-grid-search input')
    search.fill('order')
    _wait_grid(page, 'matching “order”')
    rows = page.locator('.pw-grid-table tbody tr')
    assert 0 < rows.count() < 16
    assert all('order' in rows.nth(i).inner_text().lower() for i in range(rows.count()))
    selects = page.locator('.pw-grid-tab select')
    selects.nth(0).select_option(label='v4 pass')  # sort by whether v4 passed, failures first
    page.wait_for_selector('.pw-grid-table th .pw-sorted:has-text("pass")', timeout=30_000)
    page.locator('.pw-grid-tab button', has_text='↓').click()
    page.wait_for_selector('.pw-grid-table th .pw-sorted:has-text("▼")', timeout=30_000)
    badges = page.locator('.pw-grid-table tbody tr td:nth-child(7) .pw-badge')  # v4's cell: passes first now
    seen = [badges.nth(i).inner_text() for i in range(badges.count())]
    assert seen == sorted(seen, key=lambda b: 'fail' in b), seen
    search.press('Control+a')
    search.press('Delete')  # as a person clears it (an empty fill sends no input event)
    _wait_grid(page, 'of 16 examples (16 in all)')
    selects.nth(1).select_option(label='outcome')  # filter: the rows where the versions disagree
    selects.nth(2).select_option('=')
    page.locator('.pw-grid-tab input[placeholder^="value"]').fill('mixed')
    _wait_grid(page, 'outcome = mixed')
    outcomes = page.locator('.pw-grid-table tbody td.pw-grid-outcome')
    assert outcomes.count() and {outcomes.nth(i).inner_text() for i in range(outcomes.count())} == {'mixed'}
    _assert_fits(page, 'Grid (filtered)')
    _shot(page, shots / 'compare-2b-grid-filtered.png')


def test_comparison_widget_in_jupyterlab(lab, browser_page, ws):
    """Four versions in a real JupyterLab at 1440x900: each tab fits its pane (wide content scrolls inside it),
    the summary needs no sideways scrolling, the grid is searched, sorted and filtered, the Edit tab refuses a
    template reading an undefined variable before storing a version, and a good edit is saved and evaluated."""
    from conftest import TICKETS_CSV
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    page, shots = browser_page, lab.shots
    console_errors: list[str] = []
    page.on('console', lambda m: console_errors.append(m.text) if m.type == 'error' else None)
    path = lab.write('compare.ipynb', NOTEBOOK.replace('TICKETS_CSV', repr(str(TICKETS_CSV))))
    try:
        run_all_cells(page, lab.url(path), '.pw-summary-table')
        summary = page.locator('.pw-summary-table.pw-quality')
        assert 'baseline' in summary.inner_text() and '@production' in summary.inner_text()
        assert page.locator('.pw-verdicts li').count() == 3
        assert page.evaluate(SUMMARY_SCROLL_JS) == []  # four versions fit at 1440 px without sideways scrolling

        for index, (tab, ready) in enumerate(TABS):
            _open_tab(page, tab, ready)
            if tab == 'Flips':
                page.locator('details.pw-flip > summary').first.click()
            _assert_fits(page, tab)
            _shot(page, shots / f'compare-{index + 1}-{tab.lower().replace(" ", "-")}.png')
            if tab == 'Grid':
                _drive_grid(page, shots)

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
        _shot(page, shots / 'compare-9b-edit-refused.png')

        # a good edit that changes only the tickets about a refund: checked, saved, evaluated
        textarea.fill('Ticket: {{ text }}\n{% if "refund" in text | lower %}(mentions a refund)\n{% endif %}Category:')
        page.get_by_role('button', name='Save version').click()
        page.wait_for_selector('text=Not evaluated yet: Evaluate runs it', timeout=60_000)
        assert len(ws.list_versions('browser_router')) == versions + 1
        evaluate = page.locator('.pw-compare button', has_text='Evaluate (')
        calls = int(evaluate.inner_text().split('(')[1].split()[0])
        assert 0 < calls < 16  # only the rows that mention a refund
        _shot(page, shots / 'compare-9c-edit-saved.png')
        evaluate.click()
        try:  # the bar while the model works, if the screenshot is quick enough to catch it
            page.wait_for_selector('.pw-compare .widget-progress', state='visible', timeout=10_000)
            _shot(page, shots / 'compare-9d-edit-evaluating.png')
        except PlaywrightTimeoutError:
            pass
        done = page.wait_for_selector('text=added to the comparison as a candidate', timeout=120_000)
        assert f'{calls} model call' in done.inner_text()
        _assert_fits(page, 'Edit (evaluated)')
        _shot(page, shots / 'compare-9e-edit-evaluated.png')
        _open_tab(page, 'Summary', '.pw-summary-table')
        assert page.locator('.pw-verdicts li').count() == 4
        _assert_fits(page, 'Summary with five versions')
        assert page.evaluate(SUMMARY_SCROLL_JS) == []
        _shot(page, shots / 'compare-1b-summary-five-versions.png')
    except Exception:
        page.screenshot(path=str(shots / 'compare-failure.png'), full_page=True)
        raise
    assert [m for m in console_errors if 'pw-' in m or 'widget' in m.lower()] == []


# --- every notebook, as a newcomer runs it ---------------------------------------------------------------------


def _outputs(page) -> str:
    return '\n'.join(page.locator('.jp-Notebook .jp-OutputArea').all_inner_texts())


def _shot_end(page, path: Path) -> None:
    """Screenshot the window scrolled to the notebook's last output."""
    page.evaluate("[...document.querySelectorAll('.jp-Notebook .jp-Cell')].pop().scrollIntoView({block: 'end'})")
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))


def _label_by_keyboard(page, keys: str) -> None:
    page.locator('.pw-annotate-card').click()
    for n, key in enumerate(keys, start=2):
        page.keyboard.press(key)
        page.wait_for_function(
            "(n) => document.querySelector('.pw-annotate-row .pw-position').textContent.startsWith('row ' + n + ' ')",
            arg=n,
            timeout=30_000,
        )


#: The notebooks in the groups they run in: 01 to 05 build on each other; 06, 07 and 08 stand alone, so they run as
#: tests of their own (on other workers: the chain alone takes minutes).
NOTEBOOK_GROUPS = {'01-05': ('01', '02', '03', '04', '05'), '06': ('06',), '07': ('07',), '08': ('08',)}


@pytest.mark.parametrize('group', list(NOTEBOOK_GROUPS))
def test_every_notebook_runs_as_opened(lab, browser_page, ws, tiny_tickets, tmp_path, group):
    """Each notebook of notebooks/, opened in JupyterLab where a newcomer finds it (the kernel starts in
    notebooks/, the project's kernel), with small values typed into its parameters cell, runs all its cells
    without an error, in order: 01 to 05 build on each other, 06 to 08 stand alone. 02, 03, 04, 07 and 08 run
    here only (01, 05 and 06 also run headless in test_notebooks.py, and 09 only there): 03 promotes by the
    optimizer's metric; 07 defines rules, serves over HTTP and never shows a key; 08 ingests the bundled log (its
    default path, relative to notebooks/), shows the drift once and evaluates a version made from a family."""
    page, shots = browser_page, lab.shots
    tiny = repr(str(tiny_tickets))
    report = tmp_path / 'report.html'
    steps = [
        ('01_quickstart', f"dataset_name = 'nb_lab'\ndataset_path = {tiny}\nfresh = True"),
        ('02_iterate', "dataset_name = 'nb_lab'\nhint_word = 'charged'"),
        ('03_optimize', "dataset_name = 'nb_lab'\nmax_calls = 40\nmax_candidates = 2\ntest = 'dev'"),
        ('04_diff_report', f"dataset_name = 'nb_lab'\nreport_path = {str(report)!r}"),
        ('05_scheduled_eval', "dataset = 'nb_lab'\nlabel = 'staging'"),
        (
            '06_judges_and_samples',
            f"dataset_name = 'nb_lab_judged'\ndataset_path = {tiny}\nsamples = 2\nannotate_rows = 6",
        ),
        ('07_guardrails_and_serving', f"dataset_name = 'nb_lab_guard'\ndataset_path = {tiny}"),
        ('08_prompt_families', 'dev_share = 0.01'),  # the log's default path, relative to notebooks/
    ]
    steps = [(name, parameters) for name, parameters in steps if name[:2] in NOTEBOOK_GROUPS[group]]
    for name, parameters in steps:
        try:
            run_all_cells(
                page,
                lab.url(f'project/notebooks/{name}.ipynb'),
                parameters=f'\n# small values for the test\n{parameters}\n',
                timeout_s=900,
            )
            text = _outputs(page)
            if name == '01_quickstart':
                assert 'accuracy' in text and 'llama_' not in text
            if name == '02_iterate':
                assert page.locator('.pw-compare .pw-summary-table').count() and 'rows reused' in text
                assert '6 model calls, 0 rows reused: the demos change every request' in text
                assert "1 of 6 requests were new (the tickets that mention 'charged'); 5 rows reused" in text
                assert '0 model calls, 6 rows reused' in text
                assert page.evaluate(SUMMARY_SCROLL_JS) == []
                _shot(page, shots / 'notebook-02-compare.png')
            if name == '03_optimize':
                assert '(decided by macro_f1)' in text  # the promotion names the optimizer's metric
                assert 'trial 2 (trial 2)' not in text
                assert 'kept ticket_router:v2: ' in text or 'replaces ticket_router:v2: macro_f1' in text
                assert 'BILLING' in text and 'production' in text  # the share of answers per label; the promotion
                best = ws.get_version(list_optimizations('ticket_router').iloc[0]['best_version_id'])
                assert 'ticket_router:v2' in (best.id, best.parent_id)  # the optimizer's choice, or its baseline
            if name == '04_diff_report':
                assert 'report written to' in text and report.read_text().startswith('<!DOCTYPE html>')
            if name == '05_scheduled_eval':
                assert 'no regression' in text
            if name == '06_judges_and_samples':
                assert 'judge calls' in text and 'when asked' in text
                _label_by_keyboard(page, 'pfp')
                _shot(page, shots / 'notebook-06-annotate.png', '.pw-annotate-view')
            if name == '07_guardrails_and_serving':
                assert 'guarded_router:v2' in text and 'http://127.0.0.1:' in text and 'pw_' not in text
            if name == '08_prompt_families':
                assert 'Route the support ticket to one team' in text and '{{ email }}' in text
                assert page.locator('.pw-drift img.pw-chart').count() == 1 and '<DriftReport' not in text  # once
                assert 'router_from_log:v1' in text and 'accuracy' in text
            _shot_end(page, shots / f'notebook-{name}.png')
        except Exception:
            page.screenshot(path=str(shots / f'notebook-{name}-failure.png'), full_page=True)
            raise
        finally:
            lab.shutdown_kernels()
    if group == '01-05':
        assert ws.get_version('ticket_router@staging').id == 'ticket_router:v2'
    if group == '07':
        assert ws.get_version('guarded_router@production').id == 'guarded_router:v2'
        assert set(ws.audit(kind='key')['kind']) == {'key.created', 'key.revoked'}
    if group == '08':
        family = ws.get_family(ws.similar('Route the support ticket to one team', k=1)['family_id'][0])
        assert ws.get_version('router_from_log').template == family.jinja
        assert ws.list_runs(prompt='router_from_log').iloc[0]['n'] <= 20
