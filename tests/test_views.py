"""Render functions: each view of a comparison is HTML built from the comparison's data, checked here."""

from __future__ import annotations

import dataclasses
import re

import pytest

from workspace import errors as ws_errors
from workspace.analysis.compare import build_comparison, prompts_for
from workspace.display import formats
from workspace.ui import views

# --- formatting, table-driven ----------------------------------------------------------------------------------


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(views)
    assert result.attempted >= 6 and result.failed == 0


@pytest.mark.parametrize(
    ('p', 'shown'),
    [
        (4.17e-07, '<0.001'),
        (0.0009, '<0.001'),
        (0.001, '0.001'),
        (0.0042, '0.004'),
        (0.0123, '0.01'),
        (0.125, '0.12'),
        (0.6234, '0.62'),
        (1.0, '1.00'),
        (float('nan'), ''),
    ],
)
def test_format_p(p, shown):
    assert formats.format_p(p) == shown


@pytest.mark.parametrize(
    ('diff', 'kwargs', 'shown'),
    [
        (0.521, {}, '+52.1'),
        (-0.0004, {}, '+0.0'),  # a rounded -0.0 reads +0.0
        (-0.25, {}, '-25.0'),
        (0.0352, {'scale': 1000.0, 'digits': 0}, '+35'),
        (-2.6, {'scale': 1.0, 'digits': 0}, '-3'),
        (None, {}, ''),
        (float('nan'), {}, ''),
    ],
)
def test_format_change(diff, kwargs, shown):
    assert views.format_change(diff, **kwargs) == shown


@pytest.mark.parametrize(
    ('low', 'high', 'kwargs', 'shown'),
    [
        (0.375, 0.667, {}, '[37.5, 66.7]'),
        (-0.042, 0.333, {}, '[-4.2, 33.3]'),
        (-0.0004, 0.2, {}, '[0.0, 20.0]'),  # a rounded -0.0 reads 0.0
        (-0.0101, 0.0502, {'scale': 1000.0, 'digits': 0}, '[-10, 50]'),
        (None, 0.2, {}, ''),
        (float('nan'), float('nan'), {}, ''),
    ],
)
def test_format_interval(low, high, kwargs, shown):
    assert views.format_interval(low, high, **kwargs) == shown


@pytest.mark.parametrize(
    ('low', 'high', 'higher_is_better', 'css'),
    [
        (0.01, 0.2, True, 'pw-better'),  # accuracy up
        (-0.2, -0.01, True, 'pw-worse'),  # accuracy down
        (0.01, 0.2, False, 'pw-worse'),  # latency, cost or tokens up
        (-0.2, -0.01, False, 'pw-better'),  # latency, cost or tokens down
        (-0.1, 0.2, True, ''),  # the interval holds 0: no colour
        (-0.1, 0.2, False, ''),
        (None, None, True, ''),
    ],
)
def test_change_class_knows_which_way_is_better(low, high, higher_is_better, css):
    assert views.change_class(low, high, higher_is_better=higher_is_better) == css


@pytest.mark.parametrize(
    ('text', 'limit', 'shown'),
    [
        ('short', 20, 'short'),
        ('My parcel has not arrived after two weeks', 24, 'My parcel has not…'),
        ('line one\nline   two', 40, 'line one line two'),
        ('x' * 30, 10, 'xxxxxxxxx…'),  # no space to cut at: cut the word, still with an ellipsis
    ],
)
def test_clip_cuts_at_a_word_with_an_ellipsis(text, limit, shown):
    assert views.clip(text, limit) == shown
    assert len(views.clip(text, limit)) <= limit


@pytest.mark.parametrize(
    ('ids', 'names'),
    [
        (['r:v1', 'r:v10'], {'r:v1': 'v1', 'r:v10': 'v10'}),
        (['r:v1', 's:v1'], {'r:v1': 'r:v1', 's:v1': 's:v1'}),
    ],
)
def test_short_names(ids, names):
    assert views.short_names(ids) == names


# --- the panes -------------------------------------------------------------------------------------------------


@pytest.fixture
def cmp(scripted_comparison):
    """Three versions of `router` on the tiny tickets (conftest's `scripted_versions`), compared on dev; its tables
    are dropped before any test renders it, so every pane here is shown from the comparison's data alone."""
    return scripted_comparison


@pytest.fixture
def live_cmp(scripted_versions):
    """The same comparison over live tables: flips read each example's rendered prompts from the dataset."""
    tiny, v1, v2, v3, _ = scripted_versions
    return build_comparison(tiny, [v1, v2, v3], 'dev')


def _row(html: str, name: str, table: str = 'pw-quality') -> str:
    """Return the row of a summary table (quality, cost or scores) whose version cell shows `name`."""
    part = html.split(f'pw-summary-table {table}')[1].split('</table>')[0]
    return next(r for r in re.findall(r'<tr>.*?</tr>', part) if re.search(rf'<b title="[^"]*">{name}</b>', r))


def test_summary_reads_at_a_glance(cmp):
    html = views.render_summary(cmp, labels={'router:v2': ['production']})
    assert 'class="pw-summary-table pw-quality"' in html and 'class="pw-summary-table pw-cost"' in html
    assert '<br' not in html.split('pw-summary-table')[1].split('</table>')[0]
    for short in ('v1', 'v2', 'v3'):
        assert f'>{short}</b>' in html
    assert 'pw-tag-baseline">baseline' in _row(html, 'v1') and 'pw-tag-label">@production' in _row(html, 'v2')
    v2 = _row(html, 'v2')
    # accuracy and its change on one scale (percent and points), the interval in small type, p formatted once
    assert '<td class="pw-first">100.0%<span class="pw-ci">[' in v2 and '+66.7</span><span class="pw-ci">[' in v2
    assert '<td>0.12</td>' in v2  # McNemar's exact p = 0.125
    assert 'e-0' not in html and 'p = ' not in v2
    for comparison in cmp.pairwise.values():
        assert comparison.verdict in html
    assert 'between router:v2 and router:v1' in html  # every verdict names both versions
    # the note about v3 sits under v3, flagged in its row
    assert 'data-version="router:v3">router:v3 has 1 rows with a model error' in html
    assert 'pw-tag-warn">⚠ 1' in _row(html, 'v3')


def test_summary_colours_a_latency_increase_red_and_a_decrease_green(cmp):
    table = cmp.table.copy()
    table.loc['router:v2', ['latency_diff', 'latency_ci_low', 'latency_ci_high']] = [0.05, 0.02, 0.08]
    table.loc['router:v3', ['latency_diff', 'latency_ci_low', 'latency_ci_high']] = [-0.05, -0.08, -0.02]
    html = views.render_summary(dataclasses.replace(cmp, table=table))
    assert '<span class="pw-worse">+50</span><span class="pw-ci">[20, 80]</span>' in _row(html, 'v2', 'pw-cost')
    assert '<span class="pw-better">-50</span><span class="pw-ci">[-80, -20]</span>' in _row(html, 'v3', 'pw-cost')


def test_summary_shows_the_exact_token_change_red_when_it_grows(cmp):
    frames = dict(cmp.frames)
    frames['router:v2'] = frames['router:v2'].assign(prompt_tokens=frames['router:v2']['prompt_tokens'] + 40)
    html = views.render_summary(dataclasses.replace(cmp, frames=frames))
    assert '<td><span class="pw-worse">+40</span></td>' in _row(html, 'v2', 'pw-cost')  # exact: no interval


def test_summary_shows_a_headline_interval_when_the_table_has_one(cmp):
    table = cmp.table.assign(accuracy_low=[0.1, 0.9, 0.5], accuracy_high=[0.6, 1.0, 0.95])
    html = views.render_summary(dataclasses.replace(cmp, table=table))
    assert '<td class="pw-first">100.0%<span class="pw-ci">[90.0, 100.0]</span></td>' in _row(html, 'v2')


def test_per_category_has_chart_and_table(cmp):
    html = views.render_per_category(cmp)
    assert html.count('<img class="pw-chart"') == 1 and 'data:image/png;base64,' in html
    width = int(re.search(r'<img class="pw-chart"[^>]* width="(\d+)"', html)[1])
    assert width <= 900  # the dot plot's width does not grow with labels or versions
    for label in ('BILLING', 'DELIVERY', 'TECHNICAL'):
        assert label in html
    assert html.count('>precision</th>') == 3 and '>support</th>' in html
    assert 'v1 (baseline)</th>' in html


def test_confusions_are_titled_small_multiples_on_one_scale(cmp):
    html = views.render_confusions(cmp)
    assert html.count('<figure') == 3 and html.count('<img class="pw-chart"') == 3
    assert 'alt="confusion matrix of v1 (baseline): accuracy 33.3%"' in html
    assert 'alt="confusion matrix of v2: accuracy 100.0%"' in html
    assert 'One colour scale for every matrix (0 to 2 examples)' in html
    widths = {int(w) for w in re.findall(r'<img class="pw-chart"[^>]* width="(\d+)"', html)}
    assert max(widths) <= 480  # two fit side by side in a 1,000 px pane
    assert 'repeat(auto-fill, minmax(min(100%' in html  # the grid wraps instead of overflowing


FLIP_FILTERS = [
    ('fixed', 4), ('broken', 0), ('output changed', 0), ('any change', 4), ('model error', 0), ('every example', 6),
]  # fmt: skip


def test_flips_filter_and_expand_to_both_prompts(live_cmp):
    for which, count in FLIP_FILTERS:  # one comparison for every filter
        html = views.render_flips(live_cmp, 'router:v2', which, prompts=prompts_for)
        assert html.count('<details class="pw-flip">') == count, which
        assert '4 fixed' in html and '0 broken' in html
        if count:
            # both rendered prompts, side by side, with the words that differ marked
            assert '<pre><del>v1</del>\nTicket:' in html and '<pre><ins>v2</ins>\nTicket:' in html
            assert f'Showing 1–{count} of {count} ({which}), page 1 of 1' in html
        else:
            assert f'No example is {which}' in html


def test_flip_counts(live_cmp):
    assert views.flip_counts(live_cmp.flips('router:v3')) == {
        'any change': 4,
        'fixed': 3,
        'broken': 0,
        'output changed': 1,
        'model error': 1,
        'every example': 6,
    }


def test_flips_are_paginated(live_cmp):
    first = views.render_flips(live_cmp, 'router:v2', 'every example', per_page=4)
    assert first.count('<details class="pw-flip">') == 4 and 'Showing 1–4 of 6 (every example), page 1 of 2' in first
    second = views.render_flips(live_cmp, 'router:v2', 'every example', page=1, per_page=4)
    assert second.count('<details class="pw-flip">') == 2 and 'Showing 5–6 of 6' in second
    past = views.render_flips(live_cmp, 'router:v2', 'every example', page=9, per_page=4)
    assert past == second  # past the end: the last page
    ids = re.findall(r'<span class="pw-cell" title="(a\d)">', first + second)
    assert sorted(ids) == ['a1', 'a2', 'a3', 'a4', 'a5', 'a6']


def test_flips_show_error_rows(live_cmp):
    html = views.render_flips(live_cmp, 'router:v3', 'model error')
    assert html.count('<details class="pw-flip">') == 1 and '⚠' in html and 'BackendError' in html
    assert '1 with a model error' in html and 'no answer' in html
    with pytest.raises(ValueError, match=r"flip filter 'nope' is not one of"):
        views.render_flips(live_cmp, 'router:v3', 'nope')


def test_flip_rows_are_one_line_ending_in_an_ellipsis(live_cmp):
    html = views.render_flips(live_cmp, 'router:v2', 'fixed')
    assert re.search(r'\.pw-view \.pw-cell \{[^}]*white-space: nowrap;[^}]*text-overflow: ellipsis', html)
    text = 'The parcel has not arrived and tracking has not moved for a week.'
    assert f'<span class="pw-cell" title="{text}">{text}</span>' in html  # the whole text on hover


def test_prompt_diff_marks_words(cmp):
    html = views.render_prompt_diff(cmp, 'router:v2')
    assert re.search(r'<del[^>]*>v1</del>', html) and re.search(r'<ins[^>]*>v2</ins>', html)


def test_edit_preview_highlights_what_the_edit_changes():
    html = views.render_edit_preview(
        'a1', 'Ticket: x\nCategory:', 'Support ticket: x\nCategory:', source='r:v1', changed=6, total=6
    )
    assert '<ins>Support ticket</ins>: x' in html and '6 of 6 requests differ from r:v1' in html
    same = views.render_edit_preview('a1', 'T: x', 'T: x', source='r:v1', changed=0, total=6)
    assert '(the same as r:v1)' in same and '<ins>' not in same


def test_report_is_a_standalone_document(live_cmp, tmp_path):
    doc = views.render_report(live_cmp)
    assert doc.startswith('<!DOCTYPE html>') and doc.endswith('</html>')
    assert 'src="http' not in doc and '<script' not in doc  # opens without a kernel or a network
    assert doc.count('<style>') == 1  # one stylesheet, shared with the widget
    assert doc.count('<h4>Prompt diff</h4>') == 2 and doc.count('pw-chart') >= 4
    assert 'system-ui' in doc and 'table version' in doc
    # every flip of every candidate, each expanding to both outputs and prompts; none sends the reader elsewhere
    changed = sum(
        views.flip_counts(live_cmp.flips(v))['any change'] for v in live_cmp.version_ids if v != live_cmp.baseline
    )
    assert doc.count('<details class="pw-flip">') == changed and 'in the widget' not in doc
    assert doc.count('<details class="pw-flips-all" open>') == 2  # a page or fewer: shown unfolded


def test_text_task_views(ws, monkeypatch):
    import pandas as pd
    from openai_server import Canned, OpenAICompatibleServer, completion_body

    rows = pd.DataFrame(
        {'text': ['a long ticket', 'another ticket'], 'summary': ['short one', 'short two'], 'split': ['dev', 'dev']}
    )
    with OpenAICompatibleServer(lambda body: Canned(200, completion_body('short one'))) as server:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{server.url}/v1')
        data = ws.import_dataset('summaries', rows, input='text', expected='summary', split='split', task='text')
        v1 = ws.create_version('summarizer', template='A {{ text }}', model='openai:fake')
        v2 = ws.edit(v1, template='B {{ text }}')
        text_cmp = build_comparison(data, [v1, v2], 'dev')
    assert 'rouge_l' in text_cmp.table.columns and 'macro_f1' not in text_cmp.table.columns
    assert 'Per-category views apply to label tasks' in views.render_per_category(text_cmp)
    assert 'Confusion matrices apply to label tasks' in views.render_confusions(text_cmp)
    summary = views.render_summary(text_cmp)
    assert '>rouge_l</th>' in summary and 'sign-flip' in summary


# --- the grid -----------------------------------------------------------------------------------------------------


def test_grid_has_every_example_against_every_version(cmp):
    from workspace.analysis.grid import GridFilter, GridQuery, grid_columns, grid_frame, query_grid

    frame, columns = grid_frame(cmp), grid_columns(cmp, views.short_names(cmp.version_ids))
    assert len(frame) == 6 and list(frame['example_id']) == cmp.common_ids
    row = frame.set_index('example_id').loc['a5']  # v1 says BILLING, v2 is right, v3's call failed
    assert (row['router:v1|pass'], row['router:v2|pass'], row['router:v3|pass']) == (False, True, False)
    assert row['router:v2|output'] == 'TECHNICAL' and 'scripted failure' in row['router:v3|error']
    assert row['outcome'] == 'mixed' and frame.set_index('example_id').loc['a1', 'outcome'] == 'all pass'
    assert [c.title for c in columns[:3]] == ['example', 'text', 'expected']
    assert {'v1 output', 'v1 pass', 'v1 exact_match', 'v3 error', 'outcome'} <= {c.title for c in columns}

    def ids(**query) -> list[str]:
        return list(query_grid(frame, columns, GridQuery(**query)).rows['example_id'])

    assert ids(search='CRASHES every') == ['a5']  # every word, any case, in any text column
    assert ids(search='technical') == ['a5', 'a6']  # expected and outputs are searched
    assert ids(filters=(GridFilter('router:v3|error', 'is not empty'),)) == ['a5']
    assert ids(filters=(GridFilter('router:v1|pass', '=', 'fail'),)) == ['a3', 'a4', 'a5', 'a6']
    assert ids(filters=(GridFilter('router:v1|exact_match', '≥', '50%'), GridFilter('text', 'contains', 'card'))) == [
        'a2'
    ]
    assert ids(sort='router:v1|pass', ascending=False)[:2] == ['a1', 'a2']  # stable: ties keep their order
    assert ids(sort='text') == ['a1', 'a2', 'a5', 'a6', 'a4', 'a3']  # 'I was…', 'My card…', 'The app…', …
    page = query_grid(frame, columns, GridQuery(per_page=4, page=9))
    assert (page.page, page.pages, len(page.rows), page.matches) == (1, 2, 2, 6)  # past the end: the last page
    with pytest.raises(ws_errors.ComparisonError, match=r'give a number, e.g. 0.5 or 50%'):
        query_grid(frame, columns, GridQuery(filters=(GridFilter('router:v1|exact_match', '>', 'lots'),)))

    html = views.render_grid(query_grid(frame, columns, GridQuery(sort='router:v2|exact_match')), cmp)
    assert 'Showing 1–6 of 6 examples' in html and html.count('<tr data-example=') == 6
    assert '✓ pass' in html and '✗ fail' in html and 'scripted failure' in html
    assert 'exact_match 100.0%' not in html  # the badge says it: the cell lists the other scores
    assert 'v2 <span class="pw-sorted">▲ exact_match</span>' in html and 'v1 (baseline)' in html
    empty = views.render_grid(query_grid(frame, columns, GridQuery(search='zebra')), cmp)
    assert 'No example of 6 matching “zebra”' in empty
