"""Evaluation with the real embedded model: the incremental contract's call counts, errors recorded per row,
template checks before any call, lineage of reused predictions, and generation and JSON outputs."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import TICKETS_CSV, model_calls as _calls

from workspace import errors
from workspace.core.versions import json_object

LABELS = ['BILLING', 'DELIVERY', 'TECHNICAL']
TEMPLATE = 'Ticket: {{ text }}\nCategory:'
# Renders differently only for tickets that mention a charge: the k rows of the contract.
HINTED = "{% if 'charged' in text %}Charges are BILLING.\n{% endif %}Ticket: {{ text }}\nCategory:"


def test_incremental_contract_call_counts(ws, tiny, local):
    v1 = ws.create_version('router', template=TEMPLATE, output=ws.choice(LABELS))
    run1, calls = _calls(local, lambda: ws.evaluate(v1, tiny, 'dev', progress=False))
    assert calls == run1.calls == 6 and run1.reused == 0

    # re-running anything unchanged: 0 calls
    rerun, calls = _calls(local, lambda: ws.evaluate(v1, tiny, 'dev', progress=False))
    assert calls == rerun.calls == 0 and rerun.reused == 6

    # a new version whose requests differ on k of N rows: k calls, N - k reused with their original lineage
    dev = tiny.rows('dev')
    k = sum('charged' in row['text'] for row in dev)
    assert 0 < k < len(dev)
    v2 = ws.edit(v1, template=HINTED)
    run2, calls = _calls(local, lambda: ws.evaluate(v2, tiny, 'dev', progress=False))
    assert calls == run2.calls == k and run2.reused == len(dev) - k
    plain = next(row['example_id'] for row in dev if 'charged' not in row['text'])
    lineage = run2.lineage(plain)
    assert lineage['reused'] is True
    assert lineage['first_requested_by'] == {'version': v1.id, 'dataset': 'tiny', 'example_id': plain}
    assert lineage['parents'] == [v1.id]
    assert lineage['dataset_version'] == tiny.version and lineage['model'] == 'local'
    assert lineage['model_id'].startswith('local:gemma-3-270m') and len(lineage['request_hash']) == 64

    # m rows added: m calls per evaluated version, fewer where two versions send the same request
    tiny.append(
        [
            {'id': 'c1', 'text': 'I was charged for express shipping twice.', 'category': 'BILLING', 'split': 'dev'},
            {'id': 'c2', 'text': 'The app logs me out every minute.', 'category': 'TECHNICAL', 'split': 'dev'},
        ]
    )
    run, calls = _calls(local, lambda: ws.evaluate(v1, tiny, 'dev', progress=False))
    assert calls == run.calls == 2 and run.n == 8 and run.reused == 6
    run, calls = _calls(local, lambda: ws.evaluate(v2, tiny, 'dev', progress=False))
    assert calls == run.calls == 1 and run.reused == 7  # c2 renders the same for v1 and v2: answered once

    # an expected output corrected: 0 calls, that row's scores recompute
    before = ws.evaluate(v1, tiny, 'dev', progress=False).predictions().set_index('example_id')
    new_label = 'DELIVERY' if before.loc['a1', 'expected'] != 'DELIVERY' else 'TECHNICAL'
    tiny.correct('a1', new_label)
    fixed, calls = _calls(local, lambda: ws.evaluate(v1, tiny, 'dev', progress=False))
    after = fixed.predictions().set_index('example_id')
    assert calls == fixed.calls == 0
    assert after.loc['a1', 'expected'] == new_label
    assert after.loc['a1', 'exact_match'] == float(after.loc['a1', 'prediction'] == new_label)
    assert after.loc['a1', 'dataset_version'] == tiny.version
    assert (after.drop(index='a1')['exact_match'] == before.drop(index='a1')['exact_match']).all()

    # a new scorer: 0 calls, every existing prediction scored
    _, calls = _calls(local, lambda: ws.add_scorer(tiny, 'normalized_match'))
    scored, more = _calls(local, lambda: ws.evaluate(v2, tiny, 'dev', progress=False))
    assert calls == more == scored.calls == 0
    assert scored.predictions()['normalized_match'].notna().all()
    assert 'normalized_match' in scored.summary().metrics

    # every run is recorded with its cost
    runs = ws.list_runs('router')
    assert len(runs) == 8 and sorted(runs['calls']) == sorted([6, 0, k, 2, 1, 0, 0, 0])
    both = ws.list_runs('router', tiny.name)  # two filters make one predicate (Pixeltable takes one where())
    assert list(both['run_id']) == list(runs['run_id'])
    assert ws.list_runs('router', 'no_such_dataset').empty and ws.list_runs('no_such_prompt', tiny.name).empty


def test_summary_confusion_and_failures(ws, tiny):
    v1 = ws.create_version('router', template=TEMPLATE, output=ws.choice(LABELS))
    run = ws.evaluate(v1, tiny, 'dev', progress=False)
    frame = run.predictions()
    assert list(frame['example_id']) == [r['example_id'] for r in tiny.rows('dev')]
    assert set(frame['prediction']) <= set(LABELS)
    summary = run.summary()
    accuracy = (frame['prediction'] == frame['expected']).mean()
    assert summary.metrics['accuracy'] == pytest.approx(accuracy)
    assert 0.0 <= summary.metrics['macro_f1'] <= 1.0
    matrix = run.confusion_matrix()
    assert matrix.to_numpy().sum() == 6 and list(matrix.index) == LABELS
    assert list(run.per_category()['support']) == [2, 2, 2]
    failures = run.failures()
    assert len(failures) == round((1 - accuracy) * 6)
    assert set(failures.columns) >= {'text', 'expected', 'prediction', 'error'}
    text = str(summary)
    assert 'accuracy' in text and 'model calls' in text and 'confusion matrix' in text
    assert '<table' in summary._repr_html_()
    assert ws.get_run(run.run_id).example_ids == run.example_ids


def test_model_error_is_recorded_on_its_row_and_the_run_goes_on(ws, local):
    rows = [
        {'id': 'ok1', 'text': 'I was charged twice.', 'category': 'BILLING', 'split': 'dev'},
        {'id': 'huge', 'text': 'parcel ' * 6000, 'category': 'DELIVERY', 'split': 'dev'},
        {'id': 'ok2', 'text': 'The app crashes.', 'category': 'TECHNICAL', 'split': 'dev'},
    ]
    data = ws.import_dataset('mixed', pd.DataFrame(rows), input='text', expected='category', split='split', id='id')
    v1 = ws.create_version('router', template=TEMPLATE, output=ws.choice(LABELS))
    run = ws.evaluate(v1, data, 'dev', progress=False)
    frame = run.predictions().set_index('example_id')
    assert run.errors == 1 and run.summary().errors == 1
    assert 'exceed context window' in frame.loc['huge', 'error']
    assert pd.isna(frame.loc['huge', 'prediction']) and frame.loc['huge', 'exact_match'] == 0.0
    assert frame.loc[['ok1', 'ok2'], 'prediction'].notna().all()
    assert 'huge' in set(run.failures()['example_id'])
    # unchanged and not asked to retry: no call; asked to retry: one call, the same error again
    rerun, calls = _calls(local, lambda: ws.evaluate(v1, data, 'dev', progress=False))
    assert calls == 0 and rerun.errors == 1
    retried, calls = _calls(local, lambda: ws.evaluate(v1, data, 'dev', progress=False, retry_errors=True))
    assert calls == retried.calls == 1 and retried.errors == 1


def test_template_checked_before_any_model_call(ws, tiny, local):
    typo = ws.create_version('router', template='Ticket: {{ txt }}\nCategory:', output=ws.choice(LABELS))
    before = local.calls
    with pytest.raises(
        errors.TemplateError,
        match=r"reads \{\{ txt \}\}, which dataset 'tiny' does not have. Did you mean \{\{ text \}\}\?",
    ):
        ws.evaluate(typo, tiny, 'dev', progress=False)
    leak = ws.create_version('router', template='{{ text }} -> {{ category }}', output=ws.choice(LABELS))
    with pytest.raises(errors.TemplateError, match=r'the answer would leak into the prompt'):
        ws.evaluate(leak, tiny, 'dev', progress=False)
    bad_demo = ws.create_version(
        'router',
        template='{% for d in demos %}{{ d.body }}{% endfor %}{{ text }}',
        demos=[{'text': 'x', 'expected': 'BILLING'}],
        output=ws.choice(LABELS),
    )
    with pytest.raises(
        errors.TemplateError, match=r"failed to render for example 'a1': 'dict object' has no attribute 'body'"
    ):
        ws.evaluate(bad_demo, tiny, 'dev', progress=False)
    assert local.calls == before
    assert ws.list_runs().empty


def test_generation_scores_multi_reference(ws):
    summaries = ws.import_dataset(
        'summaries',
        TICKETS_CSV.parent / 'ticket_summaries.jsonl',
        input=['ticket'],
        expected='references',
        split='split',
        id='id',
    )
    data = ws.import_dataset(
        'summaries3',
        summaries.to_pandas('dev').head(3)[['example_id', 'ticket', 'expected', 'split']],
        input='ticket',
        expected='expected',
        split='split',
        id='example_id',
    )
    v1 = ws.create_version(
        'summarizer',
        template='Support ticket: {{ ticket }}\nOne-sentence summary:',
        params={'max_tokens': 24, 'stop': ['\n']},
    )
    run = ws.evaluate(v1, data, progress=False)
    metrics = run.summary().metrics
    assert set(metrics) >= {'rouge1', 'rouge2', 'rouge_l', 'bleu', 'chrf'}
    from udfs import scores

    frame = run.predictions()
    for _, row in frame.iterrows():
        assert row['chrf'] == pytest.approx(scores.chrf.py_fn(row['prediction'], list(row['expected'])))
        assert 0.0 <= row['rouge_l'] <= 1.0


def test_json_output_constrained_by_schema(ws):
    schema = {'type': 'object', 'properties': {'category': {'type': 'string'}}, 'required': ['category']}
    rows = [{'text': 'I was charged twice.', 'label': '{"category": "BILLING"}', 'split': 'dev'}]
    data = ws.import_dataset(
        'json_rows', pd.DataFrame(rows), input='text', expected='label', split='split', task='json'
    )
    v1 = ws.create_version(
        'extractor', template='Ticket: {{ text }}\nJSON:', output=json_object(schema), params={'max_tokens': 40}
    )
    run = ws.evaluate(v1, data, progress=False)
    frame = run.predictions()
    assert frame['json_valid'].tolist() == [1.0]
    assert 'category' in frame['prediction'][0]
