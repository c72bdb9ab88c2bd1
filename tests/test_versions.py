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


# --- chat versions ----------------------------------------------------------------------------------------------

CHAT = [
    {'role': 'system', 'content': 'You route support tickets to one of: {{ labels | join(", ") }}.'},
    {'role': 'user', 'content': 'Ticket: {{ text }}'},
]


def test_a_chat_version_renders_its_messages_with_demos_as_turns(ws):
    demos = [{'text': 'I was charged twice.', 'expected': 'A'}]
    chat = ws.create_version('router', messages=CHAT, output=ws.choice(['A', 'B']), demos=demos)
    assert chat.is_chat and chat.messages == CHAT and chat.variables() == {'text'}
    assert (
        chat.template
        == '[system]\nYou route support tickets to one of: {{ labels | join(", ") }}.\n\n[user]\nTicket: {{ text }}'
    )
    assert 'chat=2 messages' in repr(chat)
    assert ws.create_version('router', messages=CHAT, output=ws.choice(['A', 'B']), demos=demos).id == chat.id
    assert get_version(chat.id).messages == CHAT  # read back from the versions table
    assert chat.render_messages({'text': 'Where is my parcel?'}) == [
        {'role': 'system', 'content': 'You route support tickets to one of: A, B.'},
        {'role': 'user', 'content': 'Ticket: I was charged twice.'},
        {'role': 'assistant', 'content': 'A'},
        {'role': 'user', 'content': 'Ticket: Where is my parcel?'},
    ]
    instructed = ws.edit(chat, instructions='Answer with the category only.')
    assert instructed.render_messages({'text': 'x'})[0]['content'].startswith('Answer with the category only.\n\n')
    # a completion version keeps the content hash and request hash it had before chat versions existed
    plain = ws.create_version('router', template=TEMPLATE, output=ws.choice(['A', 'B']))
    assert plain.content_hash == 'b52a172d3c26d7bbbcf77b53729dcdd811aa77bcd962e027fcae8548f889c4b1'
    from workspace.core.versions import build_request
    from workspace.storage.store import request_hash

    old = {
        'model_id': 'local:x',
        'params': {'temperature': 0.0},
        'prompt': 'Ticket: hi\nCategory:',
        'constraint': {'choice': ['A', 'B']},
    }
    assert request_hash(old) == 'dc8641051b0f7ebb0a8b861f031b5c0aa919ac5c224068927b4673b15b2ec1f0'
    request = build_request(chat, {'text': 'hi'}, model_id='local:x')
    assert request['messages'][-1] == {'role': 'user', 'content': 'Ticket: hi'}
    assert request['prompt'].startswith('[system]\nYou route') and request['prompt'].endswith('[user]\nTicket: hi')
    other = dict(request, messages=[*request['messages'][:-1], {'role': 'user', 'content': 'Ticket: other'}])
    assert request_hash(other) != request['hash'] == request_hash(request)


def test_chat_versions_are_checked_like_templates(ws):
    with pytest.raises(
        errors.TemplateError,
        match=r'message 2 \(user\) of prompt .router. is refused: it uses the attribute .__class__',
    ):
        ws.create_version('router', messages=[CHAT[0], {'role': 'user', 'content': "{{ ''.__class__ }}"}])
    with pytest.raises(errors.TemplateError, match=r'message 1 \(system\) of prompt .router. does not parse'):
        ws.create_version('router', messages=[{'role': 'system', 'content': '{{ oops'}, CHAT[1]])
    with pytest.raises(errors.TemplateError, match=r'last message is a assistant turn; end with the user turn'):
        ws.create_version('router', messages=[*CHAT, {'role': 'assistant', 'content': 'A'}])
    with pytest.raises(errors.TemplateError, match=r"message 1 has role 'tool'; use one of system, user, assistant"):
        ws.create_version('router', messages=[{'role': 'tool', 'content': 'x'}, CHAT[1]])
    with pytest.raises(errors.TemplateError, match=r'either messages=\[...\] or template=...'):
        ws.create_version('router', messages=CHAT, template=TEMPLATE)
    with pytest.raises(errors.TemplateError, match='messages must be a non-empty list'):
        ws.create_version('router', messages='Ticket: {{ text }}')
    assert ws.list_versions().empty  # nothing refused was stored


def test_edits_of_chat_versions(ws):
    plain = ws.create_version('router', template='Ticket: {{ text }}')
    chat = ws.edit(plain, system='You route tickets.')  # a system message makes a chat version of a completion
    assert chat.parent_id == plain.id and chat.messages == [
        {'role': 'system', 'content': 'You route tickets.'},
        {'role': 'user', 'content': 'Ticket: {{ text }}'},
    ]
    turn = ws.edit(chat, template='Support ticket: {{ text }}')  # a template replaces the user turn
    assert turn.messages[0] == chat.messages[0] and turn.messages[1]['content'] == 'Support ticket: {{ text }}'
    system = ws.edit(turn, system='Be brief.')
    assert [m['content'] for m in system.messages] == ['Be brief.', 'Support ticket: {{ text }}']
    text = system.template.replace('Be brief.', 'Be very brief.') + '\n\n[assistant]\nOK\n\n[user]\nAnd {{ text }}'
    parsed = ws.edit(system, template=text)  # the messages as one text, edited: every message
    assert [m['role'] for m in parsed.messages] == ['system', 'user', 'assistant', 'user']
    assert parsed.messages[0]['content'] == 'Be very brief.' and parsed.variables() == {'text'}
    same = ws.edit(parsed, template=parsed.template, params={'max_tokens': 9})  # unchanged text: same messages
    assert same.messages == parsed.messages and same.params['max_tokens'] == 9
    shorthand = ws.create_version('other', system='You route tickets.', template='Ticket: {{ text }}')
    assert shorthand.messages == chat.messages
