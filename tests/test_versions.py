"""Prompt versions: immutable, content-addressed, with parents; references by id, number, label or name."""

from __future__ import annotations

import pytest

from workspace import errors
from workspace.core.labels import label_history, list_labels, rollback
from workspace.core.versions import get_version

TEMPLATE = 'Ticket: {{ text }}\nCategory:'


def test_create_defaults_and_idempotence(ws):
    v1 = ws.create_version('router', template=TEMPLATE, output=ws.choice(['A', 'B']), note='first')
    assert v1.id == 'router:v1' and v1.number == 1 and v1.parent_id is None
    assert v1.params == {'temperature': 0.0, 'max_tokens': 16, 'seed': 0}
    assert v1.variables() == {'text'}
    again = ws.create_version('router', template=TEMPLATE, output=ws.choice(['A', 'B']))
    assert again.id == 'router:v1'  # same content: the same version, so a notebook cell can run twice


def test_edit_makes_child_and_merges_params(ws):
    v1 = ws.create_version('router', template=TEMPLATE, params={'max_tokens': 8})
    v2 = ws.edit(v1, params={'temperature': 0.5}, note='warmer')
    assert v2.id == 'router:v2' and v2.parent_id == 'router:v1'
    assert v2.params['max_tokens'] == 8 and v2.params['temperature'] == 0.5
    v3 = ws.edit('router:v2', template='Support ticket: {{ text }}\nCategory:')
    assert ws.get_version('router').id == 'router:v3'
    assert ws.get_version('router:2').id == 'router:v2'
    from workspace.core.versions import parent_chain

    assert parent_chain(v3) == ['router:v2', 'router:v1']
    assert list(ws.list_versions('router')['version']) == ['router:v1', 'router:v2', 'router:v3']
    assert ws.get_version('router:v1').params == {'temperature': 0.0, 'max_tokens': 8, 'stop': ['\n\n'], 'seed': 0}


BAD_VERSIONS = [
    (dict(template=''), 'TemplateError', r'is empty'),
    (dict(template='{{ text '), 'TemplateError', r'does not parse: .*\(template line 1\)'),
    (dict(template=TEMPLATE, params={'temprature': 0.1}), 'VersionError', r"unknown param 'temprature'"),
    (dict(template=TEMPLATE, params={'max_tokens': '8'}), 'VersionError', r"param 'max_tokens' must be int, got '8'"),
    (dict(template=TEMPLATE, model='gpt4'), 'BackendError', r"unknown model 'gpt4'; use 'local'"),
    (dict(template=TEMPLATE, output={'kind': 'xml'}), 'VersionError', r'output spec .* is not valid'),
]


@pytest.mark.parametrize('kwargs,error,message', BAD_VERSIONS)
def test_bad_versions_are_refused_and_store_nothing(ws, kwargs, error, message):
    v1 = ws.create_version('router', template=TEMPLATE)
    with pytest.raises(getattr(errors, error), match=message):
        ws.create_version('router', **kwargs)
    assert list(ws.list_versions('router')['version']) == [v1.id]


def test_bad_references(ws):
    ws.create_version('router', template=TEMPLATE)
    with pytest.raises(errors.VersionError, match=r"'router' has no version 7; it has v1 to v1"):
        ws.get_version('router:v7')
    with pytest.raises(errors.VersionError, match=r"prompt 'routr' has no versions; known prompts: router"):
        ws.get_version('routr')
    with pytest.raises(errors.LabelError, match=r'router@production does not exist'):
        ws.get_version('router@production')
    with pytest.raises(errors.VersionError, match=r"prompt name 'bad name' is not valid"):
        ws.create_version('bad name', template=TEMPLATE)
    with pytest.raises(errors.VersionError, match=r'choice\(\) needs distinct, non-empty labels'):
        ws.choice(['A', 'A'])


def test_labels_resolve_move_and_roll_back(ws):
    v1 = ws.create_version('router', template=TEMPLATE)
    v2 = ws.edit(v1, template='T: {{ text }}')
    v3 = ws.edit(v2, template='Ticket text: {{ text }}')
    assert ws.set_label(v1, 'production') is None
    assert get_version('router@production').id == v1.id
    assert ws.set_label(v2, 'production', note='release 2') == v1.id
    ws.set_label(v3, 'production')
    assert rollback('router', 'production') == v2.id
    assert rollback('router', 'production') == v1.id  # two rollbacks walk two releases back
    history = label_history('router', 'production')
    assert list(history['action']) == ['rollback', 'rollback', 'move', 'move', 'set']
    assert list(history['version_id']) == [v1.id, v2.id, v3.id, v2.id, v1.id]
    with pytest.raises(errors.LabelError, match=r'has no earlier version to roll back to'):
        rollback('router', 'production')
    labels = list_labels('router')
    assert list(labels['label']) == ['production'] and list(labels['version_id']) == [v1.id]
