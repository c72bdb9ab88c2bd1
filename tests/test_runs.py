"""How a run reads in a notebook: its summary, its failures and the lineage of one prediction."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from workspace.core.runs import Lineage


@pytest.fixture
def runs(scripted_versions):
    import workspace as ws

    tiny, v1, v2, v3, _ = scripted_versions
    return tiny, ws.evaluate(v1, tiny, 'dev', progress=False), ws.evaluate(v3, tiny, 'dev', progress=False)


def test_summary_reads_plainly(runs):
    tiny, run, _ = runs
    summary = run.summary()
    assert summary.metrics['exact_match'] == summary.metrics['accuracy']  # the data still has both
    text = str(summary)
    assert 'exact_match' not in text  # the display shows accuracy once
    assert repr(summary) == text  # a notebook's plain-text view reads the same
    assert re.search(rf'^dataset +tiny \(table version {tiny.version}\), split dev, n = 6$', text, re.M)
    assert 'macro-F1' in text and 'mean latency' in text and ' ms' in text
    tokens = next(line for line in text.splitlines() if line.startswith('mean prompt tokens'))
    assert tokens.split()[-1].replace(',', '').isdigit()  # token counts read whole, as everywhere
    accuracy = next(line for line in text.splitlines() if line.startswith('accuracy'))
    assert accuracy.split()[1].endswith('%') and '(95% CI ' in accuracy  # a proportion reads as a percentage
    page = summary._repr_html_()
    assert 'exact_match' not in page and 'table version' in page
    assert 'Rows: expected category' in page and 'background-color' in page  # the confusion matrix is a heatmap


def test_failures_show_left_aligned_wrapped_without_empty_or_repeated_columns(runs):
    _, run, with_errors = runs
    failures = run.failures()
    assert isinstance(failures, pd.DataFrame) and len(failures) == 4
    assert list(failures.columns) == ['example_id', 'text', 'expected', 'prediction', 'output', 'error']  # programs
    assert failures.shown_columns() == ['example_id', 'text', 'expected', 'prediction']  # output = prediction
    page = failures._repr_html_()
    assert 'text-align: left' in page and 'pre-wrap' in page
    assert '>output<' not in page and '>error<' not in page and 'row_heading' not in page  # no index column
    assert 'The parcel has not arrived and tracking has not moved for a week.' in page  # whole, wrapped

    failed = with_errors.failures()
    assert failed.shown_columns() == ['example_id', 'text', 'expected', 'prediction', 'error']
    assert 'BackendError' in failed._repr_html_()
    assert isinstance(run.failures(limit=2), type(failures)) and len(run.failures(limit=2)) == 2


def test_lineage_is_a_small_rich_object(runs):

    tiny, run, _ = runs
    record = run.lineage('a3')
    assert isinstance(record, Lineage)
    assert (
        record['example_id'] == 'a3' and record['dataset_version'] == tiny.version and len(record['request_hash']) == 64
    )
    plain = record.to_dict()
    assert json.loads(json.dumps(plain)) == plain  # plain values: no datetime objects
    assert plain['answered_at'].startswith(str(record['answered_at'].year))
    page = record._repr_html_()
    for part in ('Example', 'Version', 'Request', 'Result', 'table version', 'router:v1', 'BILLING'):
        assert part in page
    assert 'datetime.datetime' not in repr(record) and repr(record).startswith('Lineage of router:v1 on tiny / a3')
