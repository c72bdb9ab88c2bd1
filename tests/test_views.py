"""Render functions: each view of a comparison is HTML built from the comparison's data, checked here."""

from __future__ import annotations

import re

import pytest

from workspace import views
from workspace.compare import build_comparison


@pytest.fixture
def cmp(scripted_versions):
    tiny, v1, v2, v3, _ = scripted_versions
    return build_comparison(tiny, [v1, v2, v3], 'dev')


def test_summary_shows_every_version_interval_and_verdict(cmp):
    html = views.render_summary(cmp)
    assert 'class="pw-summary-table"' in html
    for version in cmp.version_ids:
        assert version in html
    assert 'router:v1 (baseline)' in html
    assert '+66.7</span> [' in html  # v2's difference to v1, in points, with its interval
    assert cmp.pairwise['router:v2'].verdict in html
    assert 'router:v3 has 1 rows with a model error' in html  # errors are flagged, not dropped


def test_per_category_has_chart_and_table(cmp):
    html = views.render_per_category(cmp)
    assert html.count('<img class="pw-chart"') == 1 and 'data:image/png;base64,' in html
    for label in ('BILLING', 'DELIVERY', 'TECHNICAL'):
        assert label in html
    assert 'precision' in html and 'recall' in html and 'support' in html


def test_confusions_are_one_heatmap_image(cmp):
    html = views.render_confusions(cmp)
    assert html.count('<img class="pw-chart"') == 1 and 'alt="confusion matrices"' in html


@pytest.mark.parametrize('which,count', [('fixed', 4), ('broken', 0), ('changed', 0), ('all changes', 4), ('all', 6)])
def test_flips_filter_and_expand_to_both_prompts(cmp, which, count):
    html = views.render_flips(cmp, 'router:v2', which)
    assert html.count('<details>') == count
    assert '4 fixed' in html and '0 broken' in html
    if count:
        assert 'v1\nTicket:' in html and 'v2\nTicket:' in html  # both rendered prompts, side by side


def test_flips_show_error_rows(cmp):
    html = views.render_flips(cmp, 'router:v3', 'errors')
    assert html.count('<details>') == 1 and '⚠ error' in html and 'BackendError' in html
    assert '1 with a model error' in html
    with pytest.raises(ValueError, match=r"flip filter 'nope' is not one of"):
        views.render_flips(cmp, 'router:v3', 'nope')


def test_prompt_diff_marks_words(cmp):
    html = views.render_prompt_diff(cmp, 'router:v2')
    assert re.search(r'<del[^>]*>v1</del>', html) and re.search(r'<ins[^>]*>v2</ins>', html)


def test_report_is_a_standalone_document(cmp, tmp_path):
    doc = views.render_report(cmp)
    assert doc.startswith('<!DOCTYPE html>') and doc.endswith('</html>')
    assert 'src="http' not in doc and '<script' not in doc  # opens without a kernel or a network
    assert doc.count('<h3>Prompt diff</h3>') == 2 and doc.count('pw-chart') >= 2


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
    assert 'rouge_l' in views.render_summary(text_cmp)
