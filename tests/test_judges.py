"""Judges with the real embedded model: a judge is a version, judging goes through the request store, and the
call counts follow the incremental contract (new judge, edited judge, new predictions, re-runs); tiers and
only_if gate an expensive scorer on a cheaper one."""

from __future__ import annotations

import pytest
from conftest import model_calls as _calls

from workspace import errors
from workspace.core import judges
from workspace.core.judges import correctness_judge, judge_run, rubric_judge

LABELS = ['BILLING', 'DELIVERY', 'TECHNICAL']
TEMPLATE = 'Ticket: {{ text }}\nCategory:'
HINTED = "{% if 'charged' in text %}Charges are BILLING.\n{% endif %}Ticket: {{ text }}\nCategory:"


def test_judge_call_counts_follow_the_contract(ws, tiny, local):
    v1 = ws.create_version('router', template=TEMPLATE, output=ws.choice(LABELS))
    ws.evaluate(v1, tiny, 'dev', progress=False)
    judge = correctness_judge()
    assert judge.meta['judge']['pass_labels'] == ['yes'] and correctness_judge().id == judge.id

    # adding a judge scorer makes no call; the next evaluation judges each row once
    column, calls = _calls(local, lambda: ws.add_scorer(tiny, judge, column='judged'))
    assert column == 'judged' and calls == 0
    run, calls = _calls(local, lambda: ws.evaluate(v1, tiny, 'dev', progress=False))
    assert run.calls == 0 and run.judge_calls == 6 and calls == 6
    frame = run.predictions()
    assert set(frame['judged']) <= {0.0, 1.0}
    assert 'judged' in run.summary().metrics and 'judge calls' in str(run.summary())
    stored = judge_run(run, judge)
    assert len(stored) == 6 and set(stored['verdict']) <= {'yes', 'no'}
    assert (stored.set_index('example_id')['score'] == frame.set_index('example_id')['judged']).all()

    # re-running: no call of either kind
    rerun, calls = _calls(local, lambda: ws.evaluate(v1, tiny, 'dev', progress=False))
    assert calls == rerun.calls == rerun.judge_calls == 0

    # a new version: each new prediction is judged once; an unchanged prediction has the same judge request
    v2 = ws.edit(v1, template=HINTED)
    run2, calls = _calls(local, lambda: ws.evaluate(v2, tiny, 'dev', progress=False))
    before = frame.set_index('example_id')['prediction']
    after = run2.predictions().set_index('example_id')['prediction']
    new_predictions = int((before != after).sum())
    assert run2.judge_calls == new_predictions and calls == run2.calls + new_predictions

    # an edited judge re-judges only the rows whose judge request changed: the hint renders for 'charged' rows
    edited = ws.edit(
        judge, template="{% if 'charged' in input %}Charges are billing questions.\n{% endif %}" + judge.template
    )
    assert edited.parent_id == judge.id and judges.is_judge(edited)
    ws.add_scorer(tiny, edited, column='judged', if_exists='replace')
    k = sum('charged' in row['text'] for row in tiny.rows('dev'))
    assert 0 < k < 6
    run3, calls = _calls(local, lambda: ws.evaluate(v1, tiny, 'dev', progress=False))
    assert run3.calls == 0 and run3.judge_calls == calls == k
    assert run3.predictions()['judged'].notna().all()
    judgements = judge_run(run3, edited)
    assert set(judgements['judge_id']) == {edited.id} and judgements['reused'].sum() == 6 - k


def test_only_if_gates_the_judge_on_a_cheaper_scorer(ws, tiny, local):
    v1 = ws.create_version('router', template=TEMPLATE, output=ws.choice(LABELS))
    run = ws.evaluate(v1, tiny, 'dev', progress=False)
    right = int(run.predictions()['exact_match'].sum())
    judge = rubric_judge('The answer is a support category written in capital letters.')
    assert judge.instructions.startswith('The answer') and 'Rubric:' in judge.render(
        {'text': 'x', 'input': 'x', 'prediction': 'BILLING', 'expected': 'BILLING'}
    )
    ws.add_scorer(tiny, judge, column='caps', only_if='exact_match')
    run, calls = _calls(local, lambda: ws.evaluate(v1, tiny, 'dev', progress=False))
    frame = run.predictions()
    assert run.judge_calls == calls == right
    assert (frame.loc[frame['exact_match'] < 1, 'caps'] == 0.0).all()

    # a gate must be a scorer column, and no more expensive than the gated scorer
    with pytest.raises(ws.WorkspaceError, match=r"only_if='nope' is not a scorer column; the scorer columns are"):
        ws.add_scorer(tiny, 'normalized_match', only_if='nope')
    with pytest.raises(ws.WorkspaceError, match=r"only_if='caps' is a judge scorer, more expensive"):
        ws.add_scorer(tiny, 'normalized_match', only_if='caps')
    with pytest.raises(ws.WorkspaceError, match=r"already have a column 'caps'"):
        ws.add_scorer(tiny, judge, column='caps')
    with pytest.raises(errors.VersionError, match=r'router:v1 is not a judge'):
        ws.add_scorer(tiny, v1, column='not_a_judge')
    with pytest.raises(ws.WorkspaceError, match=r"only_if='caps' is a judge scorer"):
        ws.add_scorer(tiny, 'exact_match', column='caps', only_if='caps', if_exists='replace')
    # a refused replacement lost nothing, and pointing the column at the same judge keeps its scores
    assert ws.add_scorer(tiny, judge, column='caps', only_if='exact_match', if_exists='replace') == 'caps'
    assert list(run.predictions()['caps']) == list(frame['caps'])
    # a cheaper scorer gated on another: normalized_match counts only where exact_match passed
    ws.add_scorer(tiny, 'normalized_match', column='gated_norm', only_if='exact_match')
    frame = ws.evaluate(v1, tiny, 'dev', progress=False).predictions()
    assert (frame['gated_norm'] == frame['exact_match']).all()


def test_judge_with_rationale_and_score_scale(ws, tiny, local):
    two = ws.import_dataset(
        'two', tiny.to_pandas('dev').head(2), input='text', expected='expected', split='split', id='example_id'
    )
    v1 = ws.create_version('router', template=TEMPLATE, output=ws.choice(LABELS))
    run = ws.evaluate(v1, two, progress=False)
    reasoned = correctness_judge(rationale=True)
    assert reasoned.output['kind'] == 'json'
    frame = judge_run(run, reasoned)
    assert len(frame) == 2
    read = frame.dropna(subset=['verdict'])
    assert len(read) >= 1, frame[['output', 'error']]
    assert set(read['verdict']) <= {'yes', 'no'} and read['rationale'].map(lambda r: isinstance(r, str)).all()

    scored = rubric_judge('Names the category of the ticket.', scale='score', name='scored_judge')
    frame = judge_run(run, scored)
    assert len(frame) == 2 and set(frame['verdict']) <= {'1', '2', '3', '4', '5'}
    for verdict, score, passed in zip(frame['verdict'], frame['score'], frame['passed']):
        assert score == (int(verdict) - 1) / 4 and passed == (int(verdict) >= 4)


@pytest.mark.parametrize(
    'output, kind, expected',
    [
        (' yes', 'choice', ('yes', 1.0, True, None)),
        ('no', 'choice', ('no', 0.0, False, None)),
        ('maybe', 'choice', (None, None, None, None)),
        (None, 'choice', (None, None, None, None)),
        ('{"verdict": "yes", "rationale": "same"}', 'json', ('yes', 1.0, True, 'same')),
        ('{"verdict": "no"', 'json', (None, None, None, None)),
    ],
)
def test_read_verdict(output, kind, expected):
    from workspace.core.judges import read_verdict

    spec = {'scale': 'verdict', 'labels': ['yes', 'no'], 'pass_labels': ['yes'], 'pass_score': 4, 'rationale': False}
    read = read_verdict(output, spec, {'kind': kind, 'labels': ['yes', 'no']})
    assert (read.verdict, read.score, read.passed, read.rationale) == expected


def test_judge_template_checked_before_any_call(ws, tiny, local):
    bad = ws.create_judge('odd_judge', template='Ticket: {{ body }}\nAnswer: {{ prediction }}\nGood?')
    before = local.calls
    with pytest.raises(errors.TemplateError, match=r'judge odd_judge:v1 reads \{\{ body \}\}'):
        ws.add_scorer(tiny, bad)
    with pytest.raises(errors.VersionError, match=r'pass_labels'):
        ws.create_judge('odd_judge', template='{{ prediction }}', labels=['good', 'bad'], pass_labels=['fine'])
    assert local.calls == before
