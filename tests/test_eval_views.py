"""The pure render functions of the deeper evaluation, checked without a kernel: samples, agreement, models side
by side with cost, changelogs, and dollars for people."""

from __future__ import annotations

import base64
import datetime

import pandas as pd
import pytest

from workspace.analysis.agreement import agreement_stats
from workspace.analysis.changelog import Changelog, Effect
from workspace.core.samples import SampleReport
from workspace.display import results as eval_views


@pytest.mark.parametrize(
    'value, shown',
    [
        (None, 'n/a'),
        (float('nan'), 'n/a'),
        (0.0, '$0'),
        (0.0000171, '$0.0000171'),
        (0.25, '$0.25'),
        (1234.5, '$1,234.50'),
    ],
)
def test_format_usd(value, shown):
    assert eval_views.format_usd(value) == shown


def test_samples_pane_shows_metrics_and_unstable_rows():
    rows = pd.DataFrame(
        {
            'example_id': ['a1', 'a2'],
            'samples': [5, 5],
            'passed': [5, 2],
            'agreement': [1.0, 0.6],
            'modal_prediction': ['BILLING', 'DELIVERY'],
            'unstable': [False, True],
        }
    )
    report = SampleReport('r1', 'router:v2', 5, rows, {'pass@1': (0.7, 0.4, 1.0), 'pass^5': (0.5, 0.0, 1.0)})
    html = eval_views.render_samples_pane([report])
    assert 'router:v2: 5 samples per row, 2 rows' in html and '1 unstable' in html
    assert '70.0% <span class="pw-ci">[40.0%, 100.0%]</span>' in html  # a share reads as a percentage
    assert '<td>a2</td><td>2 of 5</td><td>60.0%</td><td>DELIVERY</td>' in html and '<td>a1</td>' not in html
    assert 'samples=5' in eval_views.render_samples_pane([])


def test_agreement_view():
    agreement = agreement_stats([1, 1, 0, 0, 1], [1, 0, 0, 1, 1], judge_id='correctness_judge:v1', resamples=200)
    html = eval_views.render_agreement(agreement)
    assert 'correctness_judge:v1 against 5 human verdicts' in html
    assert '<tr><td>people pass</td><td>2</td><td>1</td></tr>' in html
    assert '<tr><td>people fail</td><td>1</td><td>1</td></tr>' in html
    assert 'Cohen&#x27;s kappa' in html and 'only 5 annotated rows' in html


def test_cost_quality_table_and_chart():
    table = pd.DataFrame(
        {
            'model': ['local', 'openai:gpt-4o-mini', 'openai:mine'],
            'accuracy': [0.5, 0.9, 0.8],
            'mean_latency_s': [0.2, 0.5, 0.4],
            'mean_tokens': [120.0, 13.0, 13.0],
            'cost_per_row_usd': [0.0, 2.85e-6, float('nan')],
            'cost_usd': [0.0, 1.71e-5, float('nan')],
            'errors': [0, 0, 1],
        },
        index=pd.Index(['r:v1', 'r:v2', 'r:v3'], name='version'),
    )
    html = eval_views.render_cost_quality(table, metric='accuracy')
    assert '<td>r:v2</td><td>openai:gpt-4o-mini</td><td>90.0%</td><td>500 ms</td><td>13</td>' in html
    assert '<td>$0.00000285</td><td>$0.0000171</td>' in html and '<td>n/a</td><td>n/a</td><td>1</td>' in html
    data = html.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(data).startswith(b'\x89PNG') and len(data) > 5_000


def test_changelog_view():
    effect = Effect('tiny', 'dev', 6, ['a1', 'a3'], ['a5'], 0.167, 0.62, 'no detectable difference', ('r1', 'r2'))
    log = Changelog(
        'router:v2',
        'router:v1',
        'The ticket is now introduced as a customer ticket.',
        None,
        'local',
        'ab' * 32,
        datetime.datetime(2026, 11, 26, tzinfo=datetime.timezone.utc),
        ['template: added "Customer"'],
        [effect],
    )
    html = eval_views.render_changelog(log)
    assert 'router:v2 against its parent router:v1' in html and 'customer ticket' in html
    assert 'fixed 2</span>: a1, a3' in html and 'broken 1</span>: a5' in html and 'tiny / dev' in html
    silent = Changelog('router:v2', 'router:v1', None, 'BackendError: down', 'local', 'x', None, [], [])
    html = eval_views.render_changelog(silent)
    assert 'could not describe the change: BackendError: down' in html and 'No measured effect yet' in html
