"""The comparison widget's state and wiring, exercised without a kernel: controls change, panes re-render."""

from __future__ import annotations

import html

import pytest

from workspace.analysis.compare import build_comparison
from workspace.analysis.comparison_state import CompareState
from workspace.errors import TemplateError
from workspace.ui.widgets import CompareView, render_tab


@pytest.fixture
def view(scripted_versions):
    tiny, v1, v2, v3, server = scripted_versions
    return CompareView(CompareState(build_comparison(tiny, [v1, v2, v3], 'dev'))), scripted_versions


def _checked(view) -> list[str]:
    return [v for v, box in view.candidate_boxes.items() if box.value]


def test_initial_view(view):
    view, _ = view
    assert view.baseline.value == 'router:v1'
    assert _checked(view) == ['router:v2', 'router:v3']
    assert (
        view.candidate_boxes['router:v1'].disabled and 'v1 (baseline)' == view.candidate_boxes['router:v1'].description
    )
    assert view.focus.value == 'router:v2'
    assert [view.tabs.get_title(i) for i in range(10)] == [
        'Summary',
        'Grid',
        'Per category',
        'Confusion',
        'Flips',
        'Diff',
        'Samples',
        'Cost',
        'Serving',
        'Edit',
    ]
    assert 'pw-tag-baseline">baseline' in view.panes['Summary'].value
    assert view.panes['Per category'].value == ''  # rendered when opened: charts take a moment
    view.tabs.selected_index = 2
    assert 'pw-chart' in view.panes['Per category'].value
    view.tabs.selected_index = 5
    assert '<ins' in view.panes['Diff'].value
    assert 'Comparing 2 candidates against <b>router:v1</b> on tiny / dev (6 examples)' in view.status.value
    assert view.progress_row.layout.display == 'none'


def test_changing_baseline_keeps_the_old_one_as_a_candidate_without_model_calls(view):
    view, (_, _, _, _, server) = view
    calls = len(server.received)
    view.baseline.value = 'router:v2'
    assert view.state.baseline == 'router:v2' and view.state.candidates == ['router:v1', 'router:v3']
    assert _checked(view) == ['router:v1', 'router:v3'] and view.candidate_boxes['router:v2'].disabled
    assert view.focus.value in view.state.candidates
    assert '<b title="router:v2">v2</b><span class="pw-tag pw-tag-baseline">' in view.panes['Summary'].value
    assert len(server.received) == calls


def test_focus_filter_and_pages_drive_the_flips_pane(view):
    view, _ = view
    view.tabs.selected_index = 4
    assert ('fixed (4)', 'fixed') in view.flip_filter.options and (
        'any change (4)',
        'any change',
    ) in view.flip_filter.options
    view.flip_filter.value = 'fixed'
    assert view.panes['Flips'].value.count('<details class="pw-flip">') == 4
    assert 'Ticket: The parcel has not arrived' in view.panes['Flips'].value  # each row's rendered prompts
    view.focus.value = 'router:v3'
    assert ('model error (1)', 'model error') in view.flip_filter.options
    view.flip_filter.value = 'model error'
    assert view.panes['Flips'].value.count('<details class="pw-flip">') == 1
    view.tabs.selected_index = 5
    assert '>v3</ins>' in view.panes['Diff'].value

    view.state.flips_per_page = 4
    view.tabs.selected_index = 4
    view.flip_filter.value = 'every example'
    assert 'page 1 of 2' in view.panes['Flips'].value and view.previous_page.disabled
    view.next_page.click()
    assert 'Showing 5–6 of 6' in view.panes['Flips'].value and view.next_page.disabled
    view.previous_page.click()
    assert 'Showing 1–4 of 6' in view.panes['Flips'].value


def test_removing_every_candidate_leaves_the_baseline_alone(view):
    view, _ = view
    view.candidate_boxes['router:v2'].value = False
    view.candidate_boxes['router:v3'].value = False
    assert view.state.candidates == [] and view.state.focus is None and view.focus.options == ()
    assert '>v2</b>' not in view.panes['Summary'].value and 'pw-tag-baseline' in view.panes['Summary'].value
    view.tabs.selected_index = 4
    assert 'Pick a candidate' in view.panes['Flips'].value
    view.candidate_boxes['router:v3'].value = True
    assert view.state.focus == 'router:v3' and 'router:v3 against router:v1' in view.panes['Flips'].value
    view.tabs.selected_index = 0  # panes that are not visible render when opened
    assert '>v3</b>' in view.panes['Summary'].value


def test_pickers_offer_every_version_of_the_prompt_with_labels(view):
    import workspace as ws

    view, (_, v1, _, _, server) = view
    elsewhere = ws.edit(v1, template='v2\nTicket: {{ text }}\nCategory is:', note='made in another notebook')
    ws.set_label(elsewhere, 'staging')
    view.reload_button.click()
    assert 'found router:v4' in view.status.value
    box = view.candidate_boxes['router:v4']
    assert box.description == 'v4 @staging' and not box.value and box.tooltip == 'made in another notebook'
    assert ('router:v4 @staging', 'router:v4') in view.baseline.options
    before = len(server.received)
    box.value = True  # not evaluated in this view yet: ticking it evaluates it
    assert len(server.received) - before == 6
    assert view.state.candidates == ['router:v2', 'router:v3', 'router:v4']
    assert '>v4</b>' in view.panes['Summary'].value and '@staging' in view.panes['Summary'].value
    assert view.progress.value == view.progress.max == 6 and view.progress_label.value == '6 / 6 calls'


def test_edit_says_which_version_and_edits_any_selected_one(view):
    view, (_, v1, v2, _, _) = view
    assert view.editing.value.endswith('editing <b>router:v1</b> (baseline)</div>')
    assert view.template.value == v1.template
    assert [value for _, value in view.edit_source.options] == ['router:v1', 'router:v2', 'router:v3']
    view.edit_source.value = 'router:v2'
    assert 'editing <b>router:v2</b></div>' in view.editing.value and view.template.value == v2.template
    assert 'its parent is router:v2' in view.edit_status.value


@pytest.mark.parametrize(
    ('template', 'message'),
    [
        ('v1\nTicket: {{ txt }}\nCategory:', "reads {{ txt }}, which dataset 'tiny' does not have. Did you mean"),
        ('v1\nTicket: {{ text }} {{ category }}\nCategory:', 'the answer would leak into the prompt'),
        ('v1\nTicket: {{ text ', 'the template does not parse'),
        ('v1\nTicket: {{ text.__class__ }}\nCategory:', 'stopped by the sandbox'),
    ],
)
def test_save_refuses_a_broken_template_before_storing_it(view, template, message):
    import workspace as ws

    view, _ = view
    versions = len(ws.list_versions('router'))
    view.template.value = template
    view.save_button.click()
    shown = html.unescape(view.edit_status.value)
    assert 'Not saved: ' in shown and message in shown
    assert len(ws.list_versions('router')) == versions and view.evaluate_button.disabled
    with pytest.raises(TemplateError):
        view.state.save(template)


def test_saving_an_unchanged_template_makes_no_version(view):
    import workspace as ws

    view, _ = view
    versions = len(ws.list_versions('router'))
    view.save_button.click()
    assert "The template is the same as router:v1's: no new version saved" in view.edit_status.value
    assert len(ws.list_versions('router')) == versions and view.evaluate_button.disabled


def test_save_then_evaluate_shows_progress_and_disables_the_controls(view):
    view, (_, v1, _, _, server) = view
    view.template.value = 'v2\nSupport ticket text, Ticket: {{ text }}\nCategory:'
    assert 'unsaved changes to router:v1' in view.edit_status.value
    view.note.value = 'reworded'
    view.save_button.click()
    assert 'Saved <b>router:v4</b> (parent router:v1)' in view.edit_status.value
    assert 'Not evaluated yet' in view.edit_status.value and '6 model calls' in view.edit_status.value
    assert '<ins>Support ticket text, </ins>Ticket:' in view.preview.value
    assert view.evaluate_button.description == 'Evaluate (6 model calls)' and not view.evaluate_button.disabled
    assert 'router:v4' in view.candidate_boxes and not view.candidate_boxes['router:v4'].value
    assert 'editing <b>router:v4</b> (saved, not evaluated yet)' in view.editing.value  # further edits start here

    during = []
    view.progress.observe(
        lambda _: during.append(
            (
                view.save_button.disabled,
                view.evaluate_button.disabled,
                view.template.disabled,
                view.baseline.disabled,
                view.candidate_boxes['router:v2'].disabled,
                view.progress_row.layout.display,
            )
        ),
        names='value',
    )
    labels = []
    view.progress_label.observe(lambda change: labels.append(change['new']), names='value')
    before = len(server.received)
    view.evaluate_button.click()
    assert len(server.received) - before == 6
    assert labels[0] == '0 / 6 calls' and labels[-1] == '6 / 6 calls'  # the count is known before the first call
    assert [label.split(' / ')[0] for label in labels] == sorted(label.split(' / ')[0] for label in labels)
    assert during and all(d == (True, True, True, True, True, 'flex') for d in during)
    assert view.progress.value == view.progress.max == 6 and view.progress_label.value == '6 / 6 calls'
    assert 'Evaluated <b>router:v4</b> on dev: 6 model calls, 0 rows reused' in view.edit_status.value
    assert view.state.candidates == ['router:v2', 'router:v3', 'router:v4'] and view.focus.value == 'router:v4'
    assert '>v4</b>' in view.panes['Summary'].value and view.editing.value.endswith('editing <b>router:v4</b></div>')
    assert not view.save_button.disabled and not view.candidate_boxes['router:v2'].disabled
    assert view.evaluate_button.disabled and view.progress_row.layout.display == 'none'


def test_an_edit_that_changes_some_rows_makes_only_those_calls(view):
    view, (tiny, _, _, _, server) = view
    edited = "v1\nTicket: {{ text }}{% if 'charged' in text %} (money){% endif %}\nCategory:"
    checked = view.state.check(edited)
    assert (checked.changed, checked.new, checked.total) == (1, 1, 6) and checked.example_id == 'a1'
    view.template.value = edited
    view.save_button.click()
    assert '1 of 6 requests differ from router:v1' in view.preview.value
    assert view.evaluate_button.description == 'Evaluate (1 model call)'
    before = len(server.received)
    view.evaluate_button.click()
    assert len(server.received) - before == 1
    assert 'Evaluated <b>router:v4</b> on dev: 1 model call, 5 rows reused' in view.edit_status.value


def test_saving_content_that_exists_returns_that_version(view):
    view, (_, _, v2, _, _) = view
    view.edit_source.value = 'router:v3'
    view.template.value = v2.template
    view.save_button.click()
    assert 'This content is already <b>router:v2</b>: no new version saved' in view.edit_status.value
    assert 'already in the comparison' in view.edit_status.value


def test_progress_label_counts_calls_and_time_left():
    import ipywidgets as w

    from workspace.ui.widgets import _Clock

    bar, label = w.IntProgress(), w.HTML()
    clock = _Clock(bar, label)
    clock.start -= 2.0  # two seconds in
    clock(8, 24)
    assert (bar.value, bar.max) == (8, 24) and label.value == '8 / 24 calls, about 4 s left'
    clock.start += 1.9
    clock(23, 24)
    assert label.value == '23 / 24 calls, under a second left'
    clock(24, 24)
    assert label.value == '24 / 24 calls'
    clock.judge(2, 6)  # a judge's calls, counted as judge calls (see judges._judge_progress)
    assert label.value.startswith('2 / 6 judge calls') and (bar.value, bar.max) == (2, 6)


def test_samples_and_cost_panes(view):
    """The Samples pane shows the runs that asked each request several times; the Cost pane shows quality
    against cost (a model no price table knows shows n/a)."""
    import workspace as ws

    view, (tiny, v1, v2, v3, server) = view
    view.tabs.selected_index = 6
    assert 'No run here has samples' in view.panes['Samples'].value
    view.tabs.selected_index = 7
    cost = view.panes['Cost'].value
    assert 'pw-cost-chart' in cost and '<td>router:v2</td><td>openai:fake</td>' in cost and 'n/a' in cost

    sampling = ws.edit(v2, params={'temperature': 0.7})
    ws.evaluate(sampling, tiny, 'dev', samples=2, progress=False)
    state = CompareState(build_comparison(tiny, [v1, sampling], 'dev'))
    # the comparison's own runs ask once; the pane shows each version's latest run with samples
    pane = render_tab(state, 'Samples')
    assert f'{sampling.id}: 2 samples per row, 6 rows' in pane and '0 unstable' in pane
    assert f'{v1.id}:' not in render_tab(state, 'Samples')


def test_grid_tab_searches_sorts_filters_and_pages(view):
    view, _ = view
    assert [view.tabs.get_title(i) for i in range(2)] == ['Summary', 'Grid']
    assert view.panes['Grid'].value == ''  # rendered when opened
    view.tabs.selected_index = 1
    pane = view.panes['Grid']
    assert 'Showing 1–6 of 6 examples' in pane.value and pane.value.count('<tr data-example=') == 6
    view.grid_search.value = 'crashes'
    assert 'Showing 1–1 of 1 examples matching “crashes”' in pane.value and 'data-example="a5"' in pane.value
    view.grid_search.value = ''
    view.grid_sort.value = 'router:v1|pass'
    view.grid_order.value = False
    assert pane.value.index('data-example="a1"') < pane.value.index('data-example="a3"')
    assert view.state.grid_query.sort == 'router:v1|pass' and not view.state.grid_query.ascending
    view.grid_filter_column.value = 'router:v1|pass'
    view.grid_filter_op.value = '='
    view.grid_filter_value.value = 'fail'
    assert 'Showing 1–4 of 4 examples, v1 pass = fail' in pane.value
    view.state.grid_query = view.state.grid_query.replace(per_page=3)
    view._query_grid()
    assert 'page 1 of 2' in pane.value and view.grid_previous.disabled and not view.grid_next.disabled
    view.grid_next.click()
    assert 'Showing 4–4 of 4' in pane.value and view.grid_next.disabled
    view.candidate_boxes['router:v3'].value = False  # a version leaves: its columns leave the grid and the pickers
    view.tabs.selected_index = 1
    assert 'v3 output' not in [title for title, _ in view.grid_sort.options] and 'router:v3' not in pane.value


def test_the_serving_pane_shows_how_each_version_is_served(view, monkeypatch):
    import workspace as ws
    from workspace.serving import serve

    view, (tiny, v1, v2, v3, server) = view
    assert 'not served yet' in render_tab(view.state, 'Serving')
    monkeypatch.setattr(serve, '_default', None)
    ws.set_rule('mentions_ticket', 'keyword', stage='prompt', words=['ticket'])
    for text in ('I was charged twice for the same order.', 'My parcel is late'):
        ws.complete(v2.id, {'text': text})
    ws.render(v3.id, {'text': 'x'})
    serve._server().close()
    pane = render_tab(view.state, 'Serving')
    assert 'router:v2' in pane and 'router:v3' in pane and 'mentions_ticket 2' in pane
    stats = view.state.serving().set_index('version_id')
    assert stats.loc['router:v2', 'completions'] == 2 and stats.loc['router:v1', 'requests'] == 0


def test_editing_a_chat_version_in_the_widget_edits_its_messages(view):
    import workspace as ws

    view, (tiny, v1, v2, v3, server) = view
    chat = ws.edit(v2, system='You route tickets.')
    state = view.state
    edited = chat.template.replace('v2\nTicket:', 'v2\nSupport ticket:')
    checked = state.check(edited, source=chat.id)
    assert checked.changed == 6 and 'Support ticket: ' in checked.after and checked.before != checked.after
    saved, created = state.save(edited, source=chat.id)
    assert (
        created
        and saved.parent_id == chat.id
        and saved.messages[0] == {'role': 'system', 'content': 'You route tickets.'}
    )
    assert saved.messages[1]['content'].startswith('v2\nSupport ticket:')
