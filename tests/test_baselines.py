"""Reference baselines: the majority label, the k-nearest vote and the nearest training output, computed from the
embedding index with no model call, stored, and read again with no index query."""

from __future__ import annotations

import pytest

from workspace.core import baselines
from workspace.core.baselines import reference_baselines
from workspace.core.demo_policies import nearest, retrieve
from workspace.storage import tables


@pytest.fixture
def tiny(ws, tiny_tickets):
    return ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')


@pytest.fixture
def local():
    from workspace.storage.backends import get_backend

    return get_backend('local')


@pytest.fixture
def queries(monkeypatch):
    """Count the examples whose neighbours are read from the embedding index."""
    asked: list[str] = []

    def counted(policy, examples, *, dataset):
        asked.extend(str(e['example_id']) for e in examples)
        return retrieve(policy, examples, dataset=dataset)

    monkeypatch.setattr(baselines, 'retrieve', counted)
    return asked


def _vote(labels, k):
    top = labels[:k]
    best = max(top.count(label) for label in top)
    return next(label for label in top if top.count(label) == best)


def test_label_baselines_are_the_vote_of_the_retrieved_neighbours_with_no_model_call(ws, tiny, local, queries):
    requests_before, calls_before = tables.requests().count(), local.calls
    refs = reference_baselines(tiny, 'dev')
    assert local.calls == calls_before and tables.requests().count() == requests_before  # 0 model calls

    assert [r.kind for r in refs.items] == ['knn_vote', 'majority'] and refs.n == 6
    vote, majority = refs.get('knn_vote'), refs.get('majority')
    # train has two tickets per label: the majority is the first label of the tie, answered everywhere
    assert majority.name == 'majority (BILLING)' and set(majority.predictions.values()) == {'BILLING'}
    assert majority.metrics['accuracy'] == pytest.approx(2 / 6)
    # the vote is the one the embedding index gives, with the k chosen on dev (here dev is the split itself)
    policy = nearest(tiny, k=6, split='train', order='nearest_first')
    label = {r['example_id']: r['expected'] for r in tiny.rows('train')}
    dev = tiny.rows('dev')
    found = retrieve(policy, dev, dataset='tiny')
    expected = {r['example_id']: _vote([label[i] for i in found[r['example_id']].ids], vote.k) for r in dev}
    assert vote.predictions == expected and vote.name == f'{vote.k}-nearest vote'
    assert any('chosen on dev itself' in n for n in refs.notes)
    assert refs.sentence('macro_f1') == (
        f'{vote.k}-nearest vote {vote.metrics["macro_f1"]:.3f}; majority (BILLING) {majority.metrics["macro_f1"]:.3f}'
    )


def test_neighbours_are_stored_and_only_new_rows_are_read_again(ws, tiny, queries):
    reference_baselines(tiny, 'dev')
    first = len(queries)
    assert first == 6  # dev is also where k is chosen: its neighbours are read once
    again = reference_baselines(tiny, 'dev')
    assert len(queries) == first  # read back from the table, no index query

    tiny.append([{'id': 'c1', 'text': 'Refund the double charge on my card.', 'category': 'BILLING', 'split': 'dev'}])
    grown = reference_baselines(tiny, 'dev')
    assert queries[first:] == ['c1'] and grown.n == 7  # one query, for the new row only

    # a corrected expected output changes the scores with no query
    tiny.correct('c1', 'DELIVERY')
    corrected = reference_baselines(tiny, 'dev')
    assert queries[first:] == ['c1'] and corrected.get('majority').metrics != grown.get('majority').metrics
    assert again.get('knn_vote').predictions.items() <= grown.get('knn_vote').predictions.items()

    # rows added to the pool can change anyone's neighbours: the pool's neighbours are read again
    tiny.append([{'id': 'c2', 'text': 'The courier never came.', 'category': 'DELIVERY', 'split': 'train'}])
    reference_baselines(tiny, 'dev')
    assert len(queries) == first + 1 + 7


def test_a_text_dataset_gets_the_nearest_training_output(ws, local):
    rows = [
        {'id': 't1', 'mr': 'name[Aromi], food[Italian]', 'ref': 'Aromi serves Italian food.', 'split': 'train'},
        {'id': 't2', 'mr': 'name[Blue Spice], area[riverside]', 'ref': 'Blue Spice is by the river.', 'split': 'train'},
        {'id': 'd1', 'mr': 'name[Aromi], food[Chinese]', 'ref': 'Aromi serves Chinese food.', 'split': 'dev'},
    ]
    data = ws.import_dataset('mrs', rows, input='mr', expected='ref', split='split', id='id', task='text')
    calls = local.calls
    refs = reference_baselines(data, 'dev')
    assert local.calls == calls
    (item,) = refs.items
    assert item.kind == 'nearest_output' and item.predictions == {'d1': 'Aromi serves Italian food.'}
    assert 0.5 < item.metrics['rouge_l'] < 1.0


def test_a_dataset_without_a_pool_has_no_baselines_and_says_why(ws):
    rows = [{'id': f'x{i}', 'text': f'ticket {i}', 'category': 'A' if i % 2 else 'B', 'split': 'dev'} for i in range(4)]
    data = ws.import_dataset('no_pool', rows, input='text', expected='category', split='split', id='id')
    refs = reference_baselines(data, 'dev')
    assert not refs and "has no 'train' split" in refs.notes[0]


def test_the_summary_the_comparison_and_the_report_show_the_baselines_with_no_model_call(ws, tiny, local, tmp_path):
    from workspace.analysis.compare import build_comparison
    from workspace.ui.report import write_report
    from workspace.ui.views import render_summary

    template = 'Ticket: {{ text }}\nCategory:'
    v1 = ws.create_version('shown', template=template, output=ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL']))
    v2 = ws.edit(v1, demos=ws.nearest(tiny, k=2))
    run = ws.evaluate(v1, tiny, 'dev', progress=False)
    ws.evaluate(v2, tiny, 'dev', progress=False)
    calls = local.calls
    summary = run.summary()
    vote = summary.references.get('knn_vote')
    text = str(summary)
    assert f'{vote.name} (no model)' in text and f'macro-F1 {vote.metrics["macro_f1"]:.3f}' in text
    assert 'majority (BILLING) (no model)' in summary._repr_html_()

    cmp = build_comparison(tiny, [v1, v2], 'dev')
    assert cmp.references.get('knn_vote').predictions == vote.predictions and cmp.references.n == 6
    html = render_summary(cmp)
    assert 'Rows marked reference score the same 6 examples with no model call' in html
    assert f'<span class="pw-muted">{vote.name}</span>' in html  # a row of the quality table
    assert cmp.with_baseline(v2.id).references is cmp.references
    page = write_report(cmp, tmp_path / 'report.html').read_text()
    assert 'Rows marked reference score the same 6 examples' in page
    assert local.calls == calls  # the summary, the comparison and the report: no model call
