"""Demo policies: demos retrieved per example from a pool dataset's embedding index, inside the request."""

from __future__ import annotations

import pytest

from workspace.core import runs

FEW_SHOT = (
    '{% for d in demos %}Ticket: {{ d.text }}\nCategory: {{ d.expected }}\n\n{% endfor %}Ticket: {{ text }}\nCategory:'
)


@pytest.fixture
def tiny(ws, tiny_tickets):
    return ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')


def test_nearest_demos_are_the_most_similar_pool_rows_with_the_nearest_last(ws, tiny):
    from workspace.core import demo_policies as demos

    policy = ws.nearest(tiny, k=2)
    got = demos.retrieve(policy, [{'example_id': 'q', 'text': 'I was billed twice on my card.'}], dataset='other')
    assert [d['expected'] for d in got['q'].demos] == ['BILLING', 'BILLING']
    assert set(got['q'].ids) <= {'b1', 'b2'}
    # an example of the pool never gets itself
    own = demos.retrieve(
        ws.nearest(tiny, k=3, split=None),
        [{'example_id': 'b3', 'text': 'My order says delivered but nothing came.'}],
        dataset='tiny',
    )
    assert 'b3' not in own['b3'].ids and len(own['b3'].ids) == 3


def test_per_label_max_spreads_the_demos_over_labels(ws, tiny):
    from workspace.core import demo_policies as demos

    got = demos.retrieve(
        ws.nearest(tiny, k=3, per_label_max=1), [{'example_id': 'q', 'text': 'charged twice'}], dataset='x'
    )
    labels = [d['expected'] for d in got['q'].demos]
    assert len(labels) == 3 and len(set(labels)) == 3


def test_bad_policies_are_refused_with_the_fix(ws, tiny):
    from workspace.errors import VersionError

    with pytest.raises(VersionError, match=r'nearest\(k=0\) is not valid'):
        ws.nearest(tiny, k=0)
    with pytest.raises(VersionError, match=r"nearest\(field='body'\): dataset 'tiny' has no such input"):
        ws.nearest(tiny, field='body')
    with pytest.raises(VersionError, match=r"nearest\(split='holdout'\)"):
        ws.nearest(tiny, split='holdout')


def _demo_ids(run):
    return {row['example_id']: row['demo_source']['example_ids'] for _, row in run.rows().iterrows()}


def test_a_nearest_policy_evaluates_incrementally_and_names_its_pool_version(ws, tiny):
    from workspace.storage.backends import get_backend

    local = get_backend('local')
    v = ws.create_version(
        'router', template=FEW_SHOT, output=ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL']), demos=ws.nearest(tiny, k=2)
    )
    assert v.demo_policy['k'] == 2 and 'nearest' in repr(ws.list_versions('router')['demos'].iloc[0])
    before = local.calls
    run = ws.evaluate(v, tiny, 'dev', progress=False)
    assert run.calls == 6 == local.calls - before and run.errors == 0
    assert ws.evaluate(v, tiny, 'dev', progress=False).calls == 0  # nothing changed: no call
    lineage = runs.lineage(v, 'tiny', 'a5')
    assert lineage['demos']['dataset'] == 'tiny' and lineage['demos']['split'] == 'train'
    assert len(lineage['demos']['example_ids']) == 2
    first = _demo_ids(run)
    # A pool row very close to one dev ticket changes the neighbours of that ticket (and maybe a few others) only.
    tiny.append(
        [
            {
                'id': 'b7',
                'text': 'The app crashes every time I open my basket, again.',
                'category': 'TECHNICAL',
                'split': 'train',
            }
        ]
    )
    before = local.calls
    again = ws.evaluate(v, tiny, 'dev', progress=False)
    second = _demo_ids(again)
    changed = [ex for ex in first if first[ex] != second[ex]]
    assert again.calls == len(changed) == local.calls - before and 1 <= len(changed) < 6
    after = runs.lineage(v, 'tiny', 'a5')['demos']
    assert 'b7' in after['example_ids'] and after['dataset_version'] > lineage['demos']['dataset_version']


def test_neighbours_labels_and_their_vote_mixed_with_the_model(ws, tiny):
    """restrict='demos' asks for the neighbours' labels only; vote=w reads the stored label scores mixed with the
    neighbours' vote, so versions differing only in w share their requests (the second costs no call)."""
    import math

    from workspace.core import demo_policies as demos
    from workspace.errors import VersionError
    from workspace.storage import store
    from workspace.storage.backends import get_backend

    labels = ['BILLING', 'DELIVERY', 'TECHNICAL']
    policy = ws.nearest(tiny, k=2)
    ranked = ws.create_version(
        'mixed', template=FEW_SHOT, demos=policy, output=ws.choice(labels, decode='rank', restrict='demos')
    )
    run = ws.evaluate(ranked, tiny, 'dev', progress=False)
    rows = run.rows().set_index('example_id')
    found = demos.retrieve(policy, tiny.rows('dev'), dataset='tiny')
    answers = store.lookup(rows['request_hash'])
    for ex, row in rows.iterrows():
        shown = sorted({d['expected'] for d in found[ex].demos})
        assert sorted(answers[row['request_hash']]['scores']) == shown  # only the neighbours' labels were scored
        assert row['prediction'] in shown

    local = get_backend('local')
    before = local.calls
    voted = ws.edit(ranked, output=ws.choice(labels, decode='rank', restrict='demos', vote=0.75))
    mixed = ws.evaluate(voted, tiny, 'dev', progress=False).rows().set_index('example_id')
    assert local.calls == before  # the same requests: answered already
    for ex, row in mixed.iterrows():
        scores = answers[row['request_hash']]['scores']
        total = sum(math.exp(v) for v in scores.values())
        votes = [d['expected'] for d in found[ex].demos]
        mix = {
            label: 0.25 * math.exp(v) / total + 0.75 * votes.count(label) / len(votes) for label, v in scores.items()
        }
        assert row['prediction'] == max(mix, key=lambda label: (round(mix[label], 12), scores[label]))

    # by rank, the i-th nearest demo's vote weighs 1/i (the policy shows the nearest last)
    by_rank = ws.edit(ranked, output=ws.choice(labels, decode='rank', restrict='demos', vote=0.5, vote_by='rank'))
    ranked_rows = ws.evaluate(by_rank, tiny, 'dev', progress=False).rows().set_index('example_id')
    assert local.calls == before
    for ex, row in ranked_rows.iterrows():
        scores = answers[row['request_hash']]['scores']
        total = sum(math.exp(v) for v in scores.values())
        nearest = [d['expected'] for d in reversed(found[ex].demos)]
        weight = {label: sum(1 / (i + 1) for i, v in enumerate(nearest) if v == label) for label in scores}
        norm = sum(weight.values())
        mix = {label: 0.5 * math.exp(v) / total + 0.5 * weight[label] / norm for label, v in scores.items()}
        assert row['prediction'] == max(mix, key=lambda label: (round(mix[label], 12), scores[label]))

    with pytest.raises(VersionError, match=r"vote=0.5 mixes the model's label probabilities .* decode='mask'"):
        ws.choice(labels, vote=0.5)
    with pytest.raises(VersionError, match=r"restrict='labels' is not known; use restrict='demos'"):
        ws.choice(labels, decode='rank', restrict='labels')


@pytest.mark.parametrize('decode', ['mask', 'rank'])
def test_a_request_whose_neighbours_share_one_label_is_answered_without_the_model(ws, tiny, decode):
    """With restrict='demos', a request whose neighbours all carry one label has one possible answer: it is stored
    with 0 tokens and no model call, and a request with two labels still goes to the model."""
    from workspace.core import demo_policies as demos
    from workspace.storage import store
    from workspace.storage.backends import get_backend

    labels = ['BILLING', 'DELIVERY', 'TECHNICAL']
    local = get_backend('local')
    policy = ws.nearest(tiny, k=2)
    version = ws.create_version(
        f'one_{decode}', template=FEW_SHOT, demos=policy, output=ws.choice(labels, decode=decode, restrict='demos')
    )
    before = local.calls
    run = ws.evaluate(version, tiny, 'dev', progress=False)
    rows = run.rows().set_index('example_id')
    found = demos.retrieve(policy, tiny.rows('dev'), dataset='tiny')
    answers = store.lookup(rows['request_hash'])
    single = {ex for ex in rows.index if len({d['expected'] for d in found[ex].demos}) == 1}
    assert single and single != set(rows.index)  # the tickets give both kinds
    assert local.calls - before == len(rows) - len(single) == run.calls  # the run counts model calls
    for ex in single:
        answer = answers[rows.loc[ex, 'request_hash']]
        assert rows.loc[ex, 'prediction'] == found[ex].demos[0]['expected'] == answer['text']
        assert (answer['prompt_tokens'], answer['finish_reason'], answer['error']) == (0, 'only_choice', None)
        assert answer['scores'] == ({found[ex].demos[0]['expected']: 0.0} if decode == 'rank' else None)
    for ex in set(rows.index) - single:
        assert answers[rows.loc[ex, 'request_hash']]['prompt_tokens'] > 0
