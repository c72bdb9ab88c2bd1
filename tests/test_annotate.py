"""Annotations: the widget driven without a kernel (buttons clicked, verdicts stored with who and when), the
judge checked against them with the real embedded model, and the widget once in a real browser."""

from __future__ import annotations

import pytest
from browser_lab import run_all_cells

from workspace.analysis.agreement import judge_agreement
from workspace.analysis.annotations import add_annotation, list_annotations
from workspace.core.judges import correctness_judge

LABELS = ['BILLING', 'DELIVERY', 'TECHNICAL']


@pytest.fixture
def run(ws, tiny):
    v1 = ws.create_version('router', template='Ticket: {{ text }}\nCategory:', output=ws.choice(LABELS))
    return ws.evaluate(v1, tiny, 'dev', progress=False)


def test_widget_records_verdicts_with_who_and_when(ws, run):
    view = ws.annotate(run, n=4, annotator='ana', seed=1)
    session = view.session
    assert len(session.rows) == 4 and 'row 1 of 4' in view.row_html
    first = session.current()
    assert first['text'] in view.row_html and 'pw-reference' in view.row_html
    view.note = 'right category'
    view.press('p')  # what P does in the browser: the card sends the action
    assert view.note == '' and 'row 2 of 4' in view.row_html
    second = session.current()
    view._on_message(view, {'action': 'fail', 'note': 'wrong team'}, [])  # a message from the card, as sent
    assert view.note == ''  # the message's note is stored, never written back to the cleared field
    view.press('ArrowRight')
    view.press('b')  # back to the skipped row
    assert session.current()['example_id'] == session.rows[2]['example_id']
    assert '1 pass, 1 fail, 2 open' in view.status_html and 'ana' in view.status_html
    with pytest.raises(ws.WorkspaceError, match=r"key 'x' does nothing here; the keys are p, f, s"):
        view.press('x')
    bundle = view._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert 'application/vnd.jupyter.widget-view+json' in data and 'pw-annotate' in data['text/html']

    stored = list_annotations(run.dataset, annotator='ana')
    assert list(stored['example_id']) == [first['example_id'], second['example_id']]
    assert list(stored['verdict']) == ['pass', 'fail'] and list(stored['note']) == ['right category', 'wrong team']
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
    done.press('p')
    assert 'All rows seen' in done.row_html and done.done
    done._on_message(done, {'action': 'pass', 'note': 'kept'}, [])  # refused: every row is annotated
    assert 'every row of this session is annotated' in done.status_html and done.note == 'kept'


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

tickets = pd.read_csv(TICKETS_CSV)
rows = tickets[tickets['split'] == 'dev'].groupby('category').head(2).head(12)
data = ws.import_dataset('annotate_tickets', rows, input='text', expected='category', split='split', id='id',
                         if_exists='replace')
v1 = ws.create_version('annotate_router', template='Ticket: {{ text }}\\nCategory:',
                       output=ws.choice(sorted(tickets['category'].unique())))
run = ws.evaluate(v1, data, 'dev', progress=False)
ws.annotate(run, n=12, annotator='browser')
"""

#: Where the keyboard focus is, and whether JupyterLab put the notebook into edit mode.
FOCUS_JS = """
() => ({
  card: document.activeElement && document.activeElement.classList.contains('pw-annotate-card'),
  note: document.activeElement && document.activeElement.classList.contains('pw-annotate-note'),
  mode: window.jupyterapp.shell.currentWidget.content.mode,
})
"""


def _position(page) -> str:
    return page.locator('.pw-annotate-row .pw-position').inner_text()


def _wait_row(page, n: int) -> None:
    page.wait_for_function(
        "(n) => { const p = document.querySelector('.pw-annotate-row .pw-position');"
        " return p && p.textContent.startsWith('row ' + n + ' of'); }",
        arg=n,
        timeout=30_000,
    )


def test_annotation_widget_labels_rows_by_keyboard_in_jupyterlab(lab, browser_page, ws):
    """Ten rows labelled from the keyboard in a real JupyterLab: P passes, F fails, S skips, B goes back, N opens
    the note; Enter never puts the cell into edit mode, and the focus stays on the card after each verdict."""
    from conftest import TICKETS_CSV

    page = browser_page
    path = lab.write('annotate.ipynb', ANNOTATE_NOTEBOOK.replace('TICKETS_CSV', repr(str(TICKETS_CSV))))
    try:
        run_all_cells(page, lab.url(path), '.pw-annotate-card')
        _wait_row(page, 1)
        page.locator('.pw-annotate-card').click()
        page.keyboard.press('Enter')  # JupyterLab's "edit the cell" key: the widget keeps it
        assert page.evaluate(FOCUS_JS) == {'card': True, 'note': False, 'mode': 'command'}
        page.keyboard.press('n')
        assert page.evaluate(FOCUS_JS)['note']
        page.keyboard.type('looks right')
        page.keyboard.press('Enter')  # back to the row, the note kept for the verdict
        assert page.evaluate(FOCUS_JS)['card']
        keys = ['p', 'f', 'p', 'p', 'f', 'p', 'p', 'f', 'p', 'p']
        for n, key in enumerate(keys, start=1):
            page.keyboard.press(key)
            _wait_row(page, n + 1)
            assert page.evaluate(FOCUS_JS) == {'card': True, 'note': False, 'mode': 'command'}, f'after verdict {n}'
        page.keyboard.press('s')  # skip row 11
        _wait_row(page, 12)
        page.keyboard.press('ArrowLeft')  # back to row 11
        _wait_row(page, 11)
        assert '10 pass' not in page.locator('.pw-annotate-status').inner_text()
        assert '7 pass, 3 fail, 2 open' in page.locator('.pw-annotate-status').inner_text()
        page.locator('.pw-annotate-view').scroll_into_view_if_needed()
        page.screenshot(path=str(lab.shots / 'annotate-keyboard.png'))
    except Exception:
        page.screenshot(path=str(lab.shots / 'annotate-failure.png'), full_page=True)
        raise
    stored = list_annotations('annotate_tickets', annotator='browser')
    assert list(stored['verdict']) == ['pass' if k == 'p' else 'fail' for k in keys]
    assert stored['note'].iloc[0] == 'looks right' and stored['note'].iloc[1:].isna().all()
