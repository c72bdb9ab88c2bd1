"""The comparison widget's state and wiring, exercised without a kernel: controls change, panes re-render."""

from __future__ import annotations

import pytest

from workspace.compare import build_comparison
from workspace.widgets import CompareState, CompareView


@pytest.fixture
def view(scripted_versions):
    tiny, v1, v2, v3, server = scripted_versions
    return CompareView(CompareState(build_comparison(tiny, [v1, v2, v3], 'dev'))), scripted_versions


def test_initial_view(view):
    view, _ = view
    assert view.baseline.value == 'router:v1'
    assert view.candidates.value == ('router:v2', 'router:v3')
    assert view.focus.value == 'router:v2'
    assert [view.tabs.get_title(i) for i in range(6)] == [
        'Summary',
        'Per category',
        'Confusion',
        'Flips',
        'Diff',
        'Edit',
    ]
    assert 'router:v1 (baseline)' in view.panes['Summary'].value
    assert view.panes['Per category'].value == ''  # rendered when opened: charts take a moment
    view.tabs.selected_index = 1
    assert 'pw-chart' in view.panes['Per category'].value
    view.tabs.selected_index = 4
    assert '<ins' in view.panes['Diff'].value


def test_changing_baseline_recomputes_without_model_calls(view):
    view, (_, _, _, _, server) = view
    calls = len(server.received)
    view.baseline.value = 'router:v2'
    assert view.state.baseline == 'router:v2'
    assert 'router:v2 (baseline)' in view.panes['Summary'].value
    assert 'router:v2' not in view.candidates.value and view.focus.value in view.candidates.value
    assert len(server.received) == calls


def test_focus_and_filter_drive_the_flips_pane(view):
    view, _ = view
    view.tabs.selected_index = 3
    view.flip_filter.value = 'fixed'
    assert view.panes['Flips'].value.count('<details>') == 4
    view.focus.value = 'router:v3'
    view.flip_filter.value = 'errors'
    assert view.panes['Flips'].value.count('<details>') == 1
    view.tabs.selected_index = 4
    assert '>v3</ins>' in view.panes['Diff'].value


def test_removing_every_candidate_leaves_the_baseline_alone(view):
    view, _ = view
    view.candidates.value = ()
    assert view.state.candidates == [] and view.state.focus is None and view.focus.options == ()
    assert 'router:v2' not in view.panes['Summary'].value and 'router:v1 (baseline)' in view.panes['Summary'].value
    view.tabs.selected_index = 3
    assert 'Pick a candidate' in view.panes['Flips'].value
    view.candidates.value = ('router:v3',)
    assert view.state.focus == 'router:v3' and 'router:v3' in view.panes['Flips'].value
    view.tabs.selected_index = 0  # panes that are not visible render when opened
    assert 'router:v3' in view.panes['Summary'].value


def test_save_then_evaluate_adds_the_new_version_with_progress(view):
    view, (_, v1, _, _, server) = view
    assert view.template.value == v1.template
    view.template.value = 'v2\nSupport ticket text, Ticket: {{ text }}\nCategory:'
    view.note.value = 'reworded'
    view.save_button.click()
    saved = view._saved
    assert saved == 'router:v4' and 'parent router:v1' in view.status.value
    assert not view.evaluate_button.disabled
    before = len(server.received)
    view.evaluate_button.click()
    assert len(server.received) - before == 6
    assert view.progress.value == view.progress.max == 6
    assert 'evaluated router:v4: 6 model calls, 0 rows reused' in view.status.value
    assert 'router:v4' in view.candidates.value and view.focus.value == 'router:v4'
    assert 'router:v4' in view.panes['Summary'].value


def test_saving_a_broken_template_reports_the_error(view):
    view, _ = view
    view.template.value = 'Ticket: {{ text '
    view.save_button.click()
    assert 'does not parse' in view.status.value and view.evaluate_button.disabled
