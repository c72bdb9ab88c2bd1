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
    # the table version the run read (a summary's reference baselines may add an embedding index: a newer version)
    assert re.search(rf'^dataset +tiny \(table version {run.dataset_version}\), split dev, n = 6$', text, re.M)
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


# --- runs are immutable records ---------------------------------------------------------------------------------


def test_a_run_never_changes_after_a_correction_and_a_new_run_reads_the_new_version(scripted_versions):
    import workspace as ws

    tiny, v1, _, _, server = scripted_versions
    run = ws.evaluate(v1, tiny, 'dev', progress=False)  # v1 always answers BILLING: right on a1 and a2
    version_before = tiny.version
    assert run.dataset_version == version_before
    assert run.summary().metrics['accuracy'] == pytest.approx(2 / 6)
    sent = len(server.received)

    assert tiny.correct('a1', 'DELIVERY') > version_before
    tiny.append([{'id': 'c1', 'text': 'Refund the double charge.', 'category': 'BILLING', 'split': 'dev'}])
    for same in (run, ws.get_run(run.run_id)):  # in memory and read back: the scores it was made with
        assert same.summary().metrics['accuracy'] == pytest.approx(2 / 6)
        frame = same.predictions().set_index('example_id')
        assert frame.loc['a1', 'expected'] == 'BILLING' and frame.loc['a1', 'exact_match'] == 1.0
        assert 'c1' not in frame.index and same.lineage('a1')['dataset_version'] == version_before

    again = ws.evaluate(v1, tiny, 'dev', progress=False)  # a new run on the new version: only c1 is a new request
    assert again.run_id != run.run_id and again.dataset_version == tiny.version > version_before
    assert again.calls == 1 and len(server.received) == sent + 1
    assert again.summary().metrics['accuracy'] == pytest.approx(2 / 7)
    assert run.summary().metrics['accuracy'] == pytest.approx(2 / 6)


def test_evaluate_a_pinned_dataset_version_reuses_the_stored_answers(scripted_versions):
    import workspace as ws
    from workspace import errors

    tiny, v1, v2, _, server = scripted_versions
    original = ws.evaluate(v2, tiny, 'dev', progress=False)  # v2 is always right
    pinned = tiny.version
    tiny.correct('a3', 'TECHNICAL')
    assert ws.evaluate(v2, tiny, 'dev', progress=False).summary().metrics['accuracy'] == pytest.approx(5 / 6)
    sent = len(server.received)

    for old in (
        ws.evaluate(v2, f'tiny:{pinned}', 'dev', progress=False),
        ws.evaluate(v2, tiny, 'dev', dataset_version=pinned, progress=False),
    ):
        assert old.calls == 0 and old.dataset_version == pinned
        assert old.summary().metrics['accuracy'] == pytest.approx(1.0)
        assert old.predictions().set_index('example_id').loc['a3', 'expected'] == 'DELIVERY'
    assert len(server.received) == sent  # every answer came from the store
    assert original.summary().metrics['accuracy'] == pytest.approx(1.0)

    old_rows = ws.get_dataset(f'tiny:{pinned}')
    assert old_rows.ref == f'tiny:{pinned}' and len(old_rows) == 12
    assert {r['example_id']: r['expected'] for r in old_rows.rows('dev')}['a3'] == 'DELIVERY'
    with pytest.raises(
        errors.DatasetError, match=r"tiny:\d+ is dataset 'tiny' pinned to table version \d+.*get_dataset\('tiny'\)"
    ):
        old_rows.correct('a3', 'BILLING')
    with pytest.raises(
        errors.DatasetError, match=r"dataset 'tiny' has no table version 99; its versions with rows are 1 to"
    ):
        ws.evaluate(v2, 'tiny:99', 'dev', progress=False)


def test_reproduce_rederives_every_score_and_reports_differences(scripted_versions):
    import workspace as ws
    from workspace.storage import tables

    tiny, v1, _, v3, _ = scripted_versions
    ws.add_scorer(tiny, 'regex_match', column='says_billing', pattern='BILLING', only_if='exact_match', only_if_min=0.0)
    run = ws.evaluate(v3, tiny, 'dev', progress=False)  # right on every row but a5, whose request fails
    tiny.correct('a2', 'TECHNICAL')
    result = run.reproduce()
    assert result.ok and result.n == 6 and result.differences.empty, result
    assert set(result.metrics['metric']) >= {'accuracy', 'exact_match', 'says_billing'} and result.metrics['same'].all()
    assert 'every score reproduced' in repr(result)

    # an answer changed in the request store by hand: the row, its prediction and score and the metrics differ
    key = run.lineage('a1')['request_hash']
    t = tables.requests()
    t.update(
        {'response': {'text': 'TECHNICAL', 'prompt_tokens': 11, 'completion_tokens': 2, 'latency_s': 0.0}},
        where=t.request_hash == key,
    )
    changed = ws.get_run(run.run_id).reproduce()
    assert not changed.ok
    fields = set(changed.differences.loc[changed.differences['example_id'] == 'a1', 'field'])
    assert fields == {'output', 'prediction', 'exact_match', 'says_billing'}
    row = changed.metrics.set_index('metric').loc['accuracy']
    assert row['recorded'] == pytest.approx(5 / 6) and row['derived'] == pytest.approx(4 / 6) and not row['same']
    assert "a1: prediction recorded 'BILLING', derived 'TECHNICAL'" in repr(changed)
    assert run.summary().metrics['accuracy'] == pytest.approx(5 / 6)  # the run itself never changes


def test_a_run_recorded_before_runs_were_pinned_reads_its_rows_as_they_were(scripted_versions):
    import workspace as ws
    from workspace.storage import tables

    tiny, v1, _, _, _ = scripted_versions
    run = ws.evaluate(v1, tiny, 'dev', progress=False)
    t = tables.runs()
    t.update({'pins': None}, where=t.run_id == run.run_id)  # as an earlier release wrote it
    tiny.correct('a1', 'TECHNICAL')
    ws.evaluate(v1, tiny, 'dev', progress=False)
    legacy = ws.get_run(run.run_id)
    assert legacy.pins is None
    assert legacy.summary().metrics['accuracy'] == pytest.approx(2 / 6)
    assert legacy.predictions().set_index('example_id').loc['a1', 'expected'] == 'BILLING'
    assert legacy.reproduce().ok


def test_a_workspace_made_before_pins_chat_messages_and_plans_opens(scripted_versions):
    """Tables made by the previous release lack the columns added since (runs.pins, versions.messages,
    experiments.plan and decision, changelogs.problems); opening them adds the columns, and the old rows read."""
    import workspace as ws
    from workspace.serving.experiments import declare_winner, start_experiment
    from workspace.storage import tables

    tiny, v1, v2, _, _ = scripted_versions
    run = ws.evaluate(v1, tiny, 'dev', progress=False)
    start_experiment('router', {'v1': 50, 'v2': 50}, experiment='old')
    for table, columns in (
        (tables.runs(), ['pins']),
        (tables.versions(), ['messages']),
        (tables.experiments(), ['plan', 'decided_at', 'decision']),
    ):
        for column in columns:
            table.drop_column(column)
    assert 'messages' not in tables.open_table(tables.VERSIONS).columns()

    assert ws.get_version(v1.id).messages is None and 'messages' in tables.open_table(tables.VERSIONS).columns()
    old = ws.get_run(run.run_id)
    assert old.pins is None and old.summary().metrics['accuracy'] == pytest.approx(2 / 6) and old.reproduce().ok
    chat = ws.edit(v2, system='You route tickets.')  # new versions are written next to the old rows
    assert ws.get_version(chat.id).messages[0]['role'] == 'system' and ws.get_version(v2.id).messages is None
    assert declare_winner('router', experiment='old', arm='v2').winner == 'v2'
    assert ws.get_version('router@production').id == v2.id
