"""Hostile and runaway templates: SSTI payloads are refused by `create_version` before anything is stored; templates
that build huge values or loop too long stop with a TemplateError naming the limit, at creation when placeholder
inputs already show it, else at evaluation, before any request is sent."""

from __future__ import annotations

import time

import pytest
from openai_server import Canned, OpenAICompatibleServer, completion_body

from workspace import errors

# (payload, the construct the message names)
SSTI = [
    (
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        'the attribute .__class__ (template line 1), the attribute .__mro__ (template line 1), the attribute '
        '.__subclasses__ (template line 1)',
    ),
    ('{{ text.__class__ }}', 'the attribute .__class__'),
    ('{{ self.__init__.__globals__ }}', 'the attribute .__init__'),
    ('{{ cycler.__init__.__globals__.os.popen("id").read() }}', 'the attribute .__init__'),
    ('{{ namespace.__init__.__globals__ }}', 'the attribute .__init__'),
    ("{{ text['__class__'] }}", "the attribute ['__class__']"),
    ("{{ text|attr('__class__') }}", "the attribute |attr('__class__')"),
    ("{{ text|attr('\\x5f\\x5fclass\\x5f\\x5f') }}", "the attribute |attr('__class__')"),
    ('{{ dict.mro() }}', 'the attribute .mro'),
    ("{{ '{0.__class__}'.format(text) }}", 'the format field {0.__class__}, which reads an attribute'),
    ('{{ demos.append(1) }}', 'the call .append(), which would change a value in place'),
    ('{{ labels.pop() }}', 'the call .pop()'),
    ("{% include 'other' %}", '{% include %}, but a template cannot load other templates'),
    ("{% import 'macros' as m %}", '{% import %}'),
    ("{% extends 'base' %}", '{% extends %}'),
    # built at run time, so only the trial render at creation sees it
    ("{{ text|attr(['_', '_class_', '_']|join) }}", "access to attribute '__class__' of 'str' object is unsafe"),
    ("{% set n = '__' ~ 'class' ~ '__' %}{{ (text|attr(n)) }}", "access to attribute '__class__'"),
]


@pytest.mark.parametrize('template,construct', SSTI, ids=[f'ssti{i}' for i in range(len(SSTI))])
def test_ssti_payload_is_refused_before_the_version_is_stored(ws, template, construct):
    with pytest.raises(errors.TemplateError) as refused:
        ws.create_version('hostile', template=template, output=ws.choice(['A', 'B']))
    message = str(refused.value)
    assert message.startswith("template of prompt 'hostile' is refused: it uses ")
    assert construct in message and 'which the sandbox forbids' in message
    assert ws.list_versions().empty


RUNAWAY = [
    ("{{ 'x' * 10000000 }}", r'str \* 10000000 would be 10,000,000 long, over the limit of 1,000,000'),
    ('{{ 9 ** 9999999 }}', r'the number 9 \*\* 9999999 \(in digits\) would be 9,542,425 long'),
    ("{{ 'x'|center(100000000) }}", r'center\(100000000\) would be 100,000,000 long'),
    ("{{ '%099999999d' % 1 }}", r'a field of a % format would be 99,999,999 long'),
    ("{{ range(100000)|join('x' * 999999) }}", r'join\(\) would be 99,998,900,001 long'),
    (
        "{% set ns = namespace(s='ab') %}{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        r'a string joined with ~ would be 1,048,576 long',
    ),
    ("{% for i in range(20000) %}{{ 'x' * 100 }}{% endfor %}", r'the prompt would be 1,000,001 long'),
    (
        '{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}',
        r'rendering took longer than 0.5 s \(WORKSPACE_RENDER_TIMEOUT_S\); a loop in the template runs too long',
    ),
]


@pytest.mark.parametrize('template,message', RUNAWAY, ids=[f'runaway{i}' for i in range(len(RUNAWAY))])
def test_runaway_template_is_refused_at_creation(ws, monkeypatch, template, message):
    monkeypatch.setenv('WORKSPACE_RENDER_TIMEOUT_S', '0.5')
    started = time.perf_counter()
    with pytest.raises(
        errors.TemplateError, match=r"^template of prompt 'runaway' is refused: with placeholder inputs, "
    ):
        ws.create_version('runaway', template='{{ text }}' + template)
    with pytest.raises(errors.TemplateError, match=message):
        ws.create_version('runaway', template='{{ text }}' + template)
    assert time.perf_counter() - started < 5
    assert ws.list_versions().empty


def test_limits_are_settings(ws, monkeypatch):
    monkeypatch.setenv('WORKSPACE_MAX_PROMPT_CHARS', '50')
    with pytest.raises(errors.TemplateError, match=r'over the limit of 50 \(WORKSPACE_MAX_PROMPT_CHARS\)'):
        ws.create_version('small', template="{{ text }}{{ '-' * 60 }}")
    monkeypatch.setenv('WORKSPACE_MAX_PROMPT_CHARS', '100')
    assert ws.create_version('small', template="{{ text }}{{ '-' * 60 }}").number == 1


# Templates that pass with placeholder inputs but break a limit on the real rows: evaluation stops with a
# TemplateError before sending anything.
AT_EVALUATION = [
    ('{{ text * 20000 }}', r'template of runaway:v1 stopped: str \* 20000 would be .* over the limit of 1,000,000'),
    (
        '{% for a in text %}{% for b in text %}{% for c in text %}{% endfor %}{% endfor %}{% endfor %}',
        r'template of runaway:v1 stopped: rendering took longer than 0.5 s',
    ),
    (
        "{% set n = text[:2] ~ 'class' ~ text[:2] %}{{ text|attr(n) }}",
        r"template of runaway:v1 stopped by the sandbox: access to attribute '__class__' of 'str' object is unsafe",
    ),
    ('{{ text|int / 0 }}', r'template of runaway:v1 failed to render: ZeroDivisionError'),
]


@pytest.mark.parametrize('template,message', AT_EVALUATION, ids=[f'evaluation{i}' for i in range(len(AT_EVALUATION))])
def test_render_error_at_evaluation_is_a_clear_template_error(ws, monkeypatch, template, message):
    monkeypatch.setenv('WORKSPACE_RENDER_TIMEOUT_S', '0.5')
    monkeypatch.setenv('WORKSPACE_MAX_ATTEMPTS', '1')
    with OpenAICompatibleServer(lambda body: Canned(200, completion_body('A'))) as server:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{server.url}/v1')
        text = '__' + 'a long ticket text of two hundred characters, ' * 4
        data = ws.import_dataset(
            'rows', [{'text': text, 'label': 'A'}], input='text', expected='label', split_ratios={'dev': 1}
        )
        version = ws.create_version('runaway', template=template, model='openai:fake', output=ws.choice(['A', 'B']))
        with pytest.raises(errors.TemplateError, match=message):
            ws.evaluate(version, data, split='dev')
    assert server.received == []
