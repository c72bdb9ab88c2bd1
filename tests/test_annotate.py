"""Annotations: the widget driven without a kernel (buttons clicked, verdicts stored with who and when), the
judge checked against them with the real embedded model, and the widget once in a real browser."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import test_browser

from workspace.analysis.agreement import judge_agreement
from workspace.analysis.annotations import add_annotation, list_annotations
from workspace.core.judges import correctness_judge

LABELS = ['BILLING', 'DELIVERY', 'TECHNICAL']
jupyterlab = test_browser.jupyterlab  # the fixture: JupyterLab on localhost over a temporary folder


@pytest.fixture
def run(ws, tiny):
    v1 = ws.create_version('router', template='Ticket: {{ text }}\nCategory:', output=ws.choice(LABELS))
    return ws.evaluate(v1, tiny, 'dev', progress=False)


def test_widget_records_verdicts_with_who_and_when(ws, run):
    view = ws.annotate(run, n=4, annotator='ana', seed=1)
    session = view.session
    assert len(session.rows) == 4 and 'row 1 of 4' in view.pane.value
    first = session.current()
    assert first['text'] in view.pane.value and 'pw-reference' in view.pane.value
    view.note.value = 'right category'
    view.pass_button.click()
    assert view.note.value == '' and 'row 2 of 4' in view.pane.value
    second = session.current()
    view.fail_button.click()
    view.skip_button.click()
    view.back_button.click()  # back to the skipped row
    assert session.current()['example_id'] == session.rows[2]['example_id']
    assert '1 pass, 1 fail, 2 open' in view.status.value and 'ana' in view.status.value

    stored = list_annotations(run.dataset, annotator='ana')
    assert list(stored['example_id']) == [first['example_id'], second['example_id']]
    assert list(stored['verdict']) == ['pass', 'fail'] and stored['note'].iloc[0] == 'right category'
    assert set(stored['version_id']) == {run.version.id} and stored['annotated_at'].notna().all()
    assert stored['request_hash'].iloc[0] == first['request_hash'] and stored['run_id'].iloc[0] == run.run_id

    # a second pass over the run shows rows not yet annotated first; a changed verdict replaces the old one
    again = ws.annotate(run, n=6, annotator='ana', seed=1)
    assert {r['example_id'] for r in again.session.rows[:4]}.isdisjoint(stored['example_id'])
    add_annotation(run, first['example_id'], 'fail', annotator='ana')
    add_annotation(run, first['example_id'], 'pass', annotator='bo')
    stored = list_annotations(run.dataset)
    assert len(stored) == 3
    assert stored.set_index(['example_id', 'annotator']).loc[(first['example_id'], 'ana'), 'verdict'] == 'fail'
    with pytest.raises(ws.WorkspaceError, match=r"verdict 'ok' is not 'pass' or 'fail'"):
        add_annotation(run, first['example_id'], 'ok')
    done = ws.annotate(run, n=1, annotator='cy')
    done.pass_button.click()
    assert 'All rows seen' in done.pane.value and done.pass_button.disabled


def test_judge_agreement_with_people(ws, run, local):
    frame = run.predictions()
    for row in frame.itertuples():
        # a person who passes exactly the right predictions
        add_annotation(run, row.example_id, 'pass' if row.prediction == row.expected else 'fail', annotator='ana')
    judge = correctness_judge()
    agreement = judge_agreement(judge, list_annotations('tiny'))
    assert agreement.n == 6 and agreement.judge_id == judge.id
    t = agreement.table
    assert t['tp'] + t['fn'] == int((frame['prediction'] == frame['expected']).sum())
    human, verdicts = agreement.frame['human'], agreement.frame['judge']
    assert t['tp'] == int((human & verdicts).sum()) and t['tn'] == int((~human & ~verdicts).sum())
    assert 'only 6 annotated rows' in ' '.join(agreement.notes)
    assert 'pw-agreement-table' in agreement._repr_html_() and 'kappa' in str(agreement)
    # asked again, the judge's verdicts come from the store
    before = local.calls
    judge_agreement(judge, list_annotations('tiny'))
    assert local.calls == before
    if agreement.tpr[0] + agreement.tnr[0] > 1:
        corrected = agreement.corrected_pass_rate(run, resamples=500)
        assert 0 <= corrected.low <= corrected.estimate <= corrected.high <= 1 and corrected.judged == 6
    with pytest.raises(ws.WorkspaceError, match=r'no annotations'):
        judge_agreement(judge, list_annotations('nothing_here'))


ANNOTATE_NOTEBOOK = """\
import pandas as pd
import workspace as ws

rows = [
    {'id': 'k1', 'text': 'I was charged twice for my order.', 'category': 'BILLING', 'split': 'dev'},
    {'id': 'k2', 'text': 'My parcel has not arrived after two weeks.', 'category': 'DELIVERY', 'split': 'dev'},
    {'id': 'k3', 'text': 'The app crashes when I open my basket.', 'category': 'TECHNICAL', 'split': 'dev'},
]
data = ws.import_dataset('annotate_tickets', pd.DataFrame(rows), input='text', expected='category',
                         split='split', id='id', if_exists='replace')
v1 = ws.create_version('annotate_router', template='Ticket: {{ text }}\\nCategory:',
                       output=ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL']))
run = ws.evaluate(v1, data, 'dev', progress=False)
ws.annotate(run, n=3, annotator='browser')
"""


def test_annotation_widget_in_jupyterlab(jupyterlab):
    from playwright.sync_api import sync_playwright

    test_browser._ensure_chromium()
    url, folder = jupyterlab
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(ANNOTATE_NOTEBOOK)])
    notebook.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    root = next(p.parent for p in Path(folder).rglob('compare.ipynb'))  # the folder JupyterLab serves
    nbformat.write(notebook, root / 'annotate.ipynb')
    url = url.replace('compare.ipynb', 'annotate.ipynb')
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(test_browser.CHROMIUM), headless=True, args=test_browser.CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={'width': 1280, 'height': 900})
        try:
            test_browser.run_all_cells(page, url, '.pw-annotate')
            assert 'row 1 of 3' in page.locator('.pw-position').inner_text()
            page.get_by_placeholder('a note (optional)').fill('looks right')
            page.get_by_role('button', name='Pass').click()
            page.wait_for_selector('text=row 2 of 3', timeout=30_000)
            page.get_by_role('button', name='Fail').click()
            page.wait_for_selector('text=row 3 of 3', timeout=30_000)
            page.screenshot(path=str(Path(folder) / 'annotate.png'), full_page=True)
        except Exception:
            page.screenshot(path=str(Path(folder) / 'annotate-failure.png'), full_page=True)
            raise
        finally:
            browser.close()
    stored = list_annotations('annotate_tickets', annotator='browser')
    assert list(stored['verdict']) == ['pass', 'fail'] and stored['note'].iloc[0] == 'looks right'
    assert (Path(folder) / 'annotate.png').stat().st_size > 10_000
