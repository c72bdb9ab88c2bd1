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

    # adding a judge scorer makes no call; an evaluation that does not ask for it makes none either; the next
    # evaluation attached with every_evaluation judges each row once
    column, calls = _calls(local, lambda: ws.add_scorer(tiny, judge, column='judged'))
    assert column == 'judged' and calls == 0
    unasked, calls = _calls(local, lambda: ws.evaluate(v1, tiny, 'dev', progress=False))
    assert calls == unasked.judge_calls == 0 and 'judged' not in unasked.summary().metrics
    ws.add_scorer(tiny, judge, column='judged', if_exists='replace', every_evaluation=True)
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
    ws.add_scorer(tiny, edited, column='judged', if_exists='replace', every_evaluation=True)
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
    run, calls = _calls(local, lambda: ws.evaluate(v1, tiny, 'dev', judges=['caps'], progress=False))
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


def test_a_judge_runs_only_where_asked(ws, tiny, local, caplog):
    """A judge attached to a dataset in one notebook makes no call in another notebook's evaluation or comparison
    unless that one asks for it; asked, it says its judge calls before it starts, counts them apart and its
    scores reach the summary and the comparison. Attached for every evaluation, it warns each time it calls."""
    import logging

    from workspace.analysis.compare import build_comparison
    from workspace.core.evaluate import list_scorers

    v1 = ws.create_version('router', template=TEMPLATE, output=ws.choice(LABELS))
    v2 = ws.edit(v1, template=HINTED)
    ws.evaluate(v1, tiny, 'dev', progress=False)
    ws.add_scorer(tiny, correctness_judge(), column='judged_correct')  # "notebook 06"
    scorers = list_scorers(tiny).set_index('column')
    assert scorers.loc['judged_correct', 'tier'] == 'judge'
    assert scorers.loc['judged_correct', 'runs'] == "when asked: evaluate(..., judges=['judged_correct'])"
    assert scorers.loc['exact_match', 'runs'] == 'every row, no model call'

    # "notebook 07": an evaluation of another version and a comparison make only their own model calls
    run2, calls = _calls(local, lambda: ws.evaluate(v2, tiny, 'dev', progress=False))
    assert run2.judge_calls == 0 and calls == run2.calls
    cmp, calls = _calls(local, lambda: build_comparison(tiny, [v1, v2], 'dev'))
    assert calls == 0 and 'judged_correct' not in cmp.table.columns

    # asked: the calls are said before they start and counted as judge calls
    with caplog.at_level(logging.INFO, logger='workspace.core.judges'):
        judged, calls = _calls(local, lambda: ws.evaluate(v2, tiny, 'dev', judges=['judged_correct'], progress=False))
    assert judged.calls == 0 and judged.judge_calls == calls == 6
    assert 'judged_correct judges 6 rows of router:v2 with correctness_judge:v1: 6 judge calls' in caplog.text
    assert 'judge calls' in str(judged.summary()) and 0 <= judged.summary().metrics['judged_correct'] <= 1
    cmp = build_comparison(tiny, [v1, v2], 'dev')
    assert cmp.table.loc['router:v2', 'judged_correct'] == judged.summary().metrics['judged_correct']
    assert cmp.table.loc['router:v2', 'judged_correct_n'] == 6 and cmp.table.loc['router:v1', 'judged_correct_n'] == 0
    with pytest.raises(
        ws.WorkspaceError,
        match=r"judges='nope' is not a judge column of this dataset; its judge "
        r'columns: judged_correct',
    ):
        ws.evaluate(v2, tiny, 'dev', judges=['nope'], progress=False)

    # attached for every evaluation: rows are judged without asking, with a warning that says the cost
    ws.add_scorer(tiny, rubric_judge('Names one category.', name='caps_judge'), column='caps', every_evaluation=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='workspace.core.judges'):
        run1, calls = _calls(local, lambda: ws.evaluate(v1, tiny, 'dev', progress=False))
    assert run1.judge_calls == calls == 6 and 'caps judges 6 rows of router:v1' in caplog.text
    assert 'every evaluation of this dataset' in caplog.text
