"""Guardrail rules: stored with their history, a computed column on evaluation tables, counted in summaries."""

from __future__ import annotations

import pytest

from workspace import errors
from workspace.analysis.compare import compare_table
from workspace.core.rules import get_rule, list_rules


def test_set_rule_versions_a_changed_rule_and_keeps_its_history(ws):
    r1 = ws.set_rule('no_refunds', 'keyword', words=['refund'])
    assert (r1.id, r1.parent_id, r1.stage, r1.enforcement, r1.prompts) == (
        'no_refunds:v1',
        None,
        'output',
        'warn',
        None,
    )
    assert ws.set_rule('no_refunds', 'keyword', words=['refund']) == r1  # same content: a cell run twice
    r2 = ws.set_rule('no_refunds', 'keyword', words=['refund', 'chargeback'], enforcement='block', prompts=['router'])
    assert (r2.id, r2.parent_id, r2.prompts) == ('no_refunds:v2', 'no_refunds:v1', ('router',))
    off = ws.set_rule(
        'no_refunds', 'keyword', words=['refund', 'chargeback'], enforcement='block', prompts=['router'], active=False
    )
    assert off.id == 'no_refunds:v3' and not off.active
    assert list(list_rules(history=True)['rule']) == ['no_refunds:v1', 'no_refunds:v2', 'no_refunds:v3']
    assert list(list_rules()['rule']) == ['no_refunds:v3']
    assert get_rule('no_refunds:v1').config == {'words': ['refund']}
    log = ws.audit(kind='rule')
    assert list(log['kind']) == ['rule.changed', 'rule.changed', 'rule.created']
    assert log.iloc[0]['before']['active'] is True and log.iloc[0]['after']['active'] is False


@pytest.mark.parametrize(
    ('args', 'kwargs', 'message'),
    [
        (('Bad Name', 'keyword'), {'words': ['x']}, 'rule name'),
        (('r', 'sentiment'), {}, 'rule kind'),
        (('r', 'keyword'), {'words': ['x'], 'stage': 'reply'}, 'stage'),
        (('r', 'keyword'), {'words': ['x'], 'enforcement': 'shout'}, 'enforcement'),
        (('r', 'regex'), {'pattern': '(a)\\1'}, 'RE2'),
        (('r', 'json_schema'), {'schema': {}, 'stage': 'input'}, 'checks the output'),
        (('r', 'judge'), {}, 'judge='),
        (('r', 'judge'), {'judge': 'x:v1', 'stage': 'input'}, 'judges the model'),
    ],
)
def test_set_rule_refuses_bad_rules_with_the_fix(ws, args, kwargs, message):
    with pytest.raises(errors.RuleError, match=message):
        ws.set_rule(*args, **kwargs)
    assert list_rules().empty


def test_rules_are_columns_of_evaluations_counted_in_the_summary(scripted_versions):
    import workspace as ws

    tiny, v1, v2, v3, server = scripted_versions
    run = ws.evaluate(v2, tiny, split='dev', progress=False)
    assert run.summary().metrics['accuracy'] == 1.0
    calls = len(server.received)

    ws.set_rule('no_delivery_talk', 'keyword', stage='input', enforcement='block', words=['parcel', 'courier'])
    ws.set_rule('billing_word', 'regex', stage='output', pattern='BILL')
    ws.set_rule('says_ticket', 'keyword', stage='prompt', words=['ticket'], prompts=['other_prompt'])
    assert len(server.received) == calls  # adding rules makes no model call
    assert 'rule_no_delivery_talk' not in ws.get_run(run.run_id).predictions()  # a past run never changes

    run = ws.evaluate(v2, tiny, split='dev', progress=False)  # the next run is checked against the rules
    assert len(server.received) == calls  # every answer reused; blocked rows are not sent
    frame = ws.get_run(run.run_id).predictions().set_index('example_id')
    assert frame.loc['a3', 'rule_no_delivery_talk'][0]['span'] == [4, 10]
    assert frame.loc['a3', 'rule_no_delivery_talk'][0]['field'] == 'text'
    assert frame.loc['a1', 'rule_no_delivery_talk'] == []
    assert frame.loc['a1', 'rule_billing_word'][0]['match'] == 'BILL'
    assert frame.loc['a1', 'rule_says_ticket'] is None  # a rule for other prompts does not check this one

    summary = ws.get_run(run.run_id).summary()
    m = summary.metrics
    assert (m['violations:no_delivery_talk'], m['violations:billing_word'], m['blocked']) == (2, 2, 2)
    assert m['accuracy'] == pytest.approx(4 / 6)  # blocked rows count as failures
    assert 'blocked by rule no_delivery_talk (input in text) at 4-10' in str(summary)

    ws.set_rule('no_delivery_talk', 'keyword', stage='input', enforcement='warn', words=['parcel', 'courier'])
    assert ws.get_run(run.run_id).summary().metrics['blocked'] == 2  # the blocked run stays as it was
    m = ws.evaluate(v2, tiny, split='dev', progress=False).summary().metrics
    assert m['blocked'] == 0 and m['accuracy'] == 1.0
    assert len(server.received) == calls  # the two rows held back were answered before the rule existed
    ws.set_rule('billing_word', 'regex', stage='output', pattern='BILL', active=False)
    assert 'violations:billing_word' not in ws.evaluate(v2, tiny, split='dev', progress=False).summary().metrics
    assert len(server.received) == calls


def test_a_dataset_evaluated_after_a_rule_exists_gets_its_column(scripted_versions):
    import workspace as ws

    tiny, v1, v2, v3, server = scripted_versions
    ws.set_rule('no_crash', 'keyword', stage='input', words=['crashes'])
    run = ws.evaluate(v2, tiny, split='dev', progress=False)
    assert run.summary().metrics['violations:no_crash'] == 1


def test_the_comparison_shows_violations_per_version_and_fails_blocked_rows(scripted_versions):
    import workspace as ws

    tiny, v1, v2, v3, server = scripted_versions
    ws.set_rule('no_delivery_talk', 'keyword', stage='input', enforcement='block', words=['parcel', 'courier'])
    ws.set_rule('says_billing', 'keyword', stage='output', words=['billing'])
    table = compare_table(tiny, [v1, v2], split='dev')
    # the two blocked rows (a parcel, a courier) are never sent, so they have no output to say 'billing' in
    assert table.loc[v1.id, 'violations:says_billing'] == 4 and table.loc[v2.id, 'violations:says_billing'] == 2
    assert list(table['blocked']) == [2, 2] and list(table['violations:no_delivery_talk']) == [2, 2]
    assert table.loc[v2.id, 'accuracy'] == pytest.approx(4 / 6)  # its two blocked rows count as wrong
