"""Tests for workspace/diff.py: word ops round-trip, field changes, and both renderings."""

from __future__ import annotations

import doctest
from types import SimpleNamespace
from typing import Any

import pytest

from workspace.analysis import diff
from workspace.analysis.diff import FieldChange, diff_versions, render_diff_html, render_diff_text


def version(id: str = 'ticket_router:v1', **changes: Any) -> SimpleNamespace:
    base: dict[str, Any] = {
        'id': id,
        'prompt': 'ticket_router',
        'number': 1,
        'parent_id': None,
        'template': 'Route this ticket: {{ text }}\nLabels: {{ labels }}',
        'model': 'local',
        'params': {'temperature': 0.0, 'max_tokens': 16},
        'output': {'kind': 'choice', 'labels': ['BILLING', 'SHIPPING']},
        'demos': [{'text': 'Where is my parcel?', 'expected': 'SHIPPING'}],
        'instructions': 'Answer with one label.',
    }
    return SimpleNamespace(**{**base, **changes})


def rebuild(ops: list[tuple[str, str]], side: str) -> str:
    return ''.join(text for op, text in ops if op in ('equal', side))


ROUND_TRIP = [
    ('', ''),
    ('', 'Hello {{ text }}'),
    ('Hello {{ text }}', ''),
    ('Classify: {{ text }}', 'Classify the ticket: {{ text }}\n'),
    (
        '{% for d in demos %}{{ d.text }} -> {{ d.expected }}\n{% endfor %}',
        '{% for d in demos %}Q: {{ d.text }}\n{% endfor %}{{ text }}',
    ),
    ('line one\n\n  line two\tend', 'line one\nline 2\n\n  end  '),
    ('Résumé: naïve café → 東京 😀', 'Resume: naive café → 大阪 😀!'),
    ('a <b> & c', 'a <i> && c'),
    ('same text', 'same text'),
    ('the quick brown fox', 'a slow red fox jumps'),
]


@pytest.mark.parametrize(('old', 'new'), ROUND_TRIP)
def testword_ops_round_trip(old: str, new: str) -> None:
    d = diff_versions(version(template=old, instructions=new), version(template=new, instructions=old))
    assert rebuild(d.template_ops, 'delete') == old
    assert rebuild(d.template_ops, 'insert') == new
    assert rebuild(d.instructions_ops, 'delete') == new
    assert rebuild(d.instructions_ops, 'insert') == old
    assert {op for op, _ in d.template_ops} <= {'equal', 'insert', 'delete'}
    assert all(text for _, text in d.template_ops)
    assert all(x[0] != y[0] for x, y in zip(d.template_ops, d.template_ops[1:]))


def testword_ops_are_word_level() -> None:
    d = diff_versions(version(template='Classify: {{ text }}'), version(template='Categorise: {{ text }}'))
    assert d.template_ops == [('delete', 'Classify'), ('insert', 'Categorise'), ('equal', ': {{ text }}')]
    assert (d.words_inserted, d.words_deleted) == (1, 1)


def test_identical_versions() -> None:
    d = diff_versions(version(), version(id='ticket_router:v2'))
    assert not d.changed
    assert d.fields == []
    assert (d.words_inserted, d.words_deleted) == (0, 0)
    assert render_diff_text(d) == 'No differences.'
    assert 'No differences.' in render_diff_html(d)


def test_param_change() -> None:
    d = diff_versions(version(), version(params={'temperature': 0.7, 'max_tokens': 16, 'seed': 1}))
    assert d.changed
    assert d.fields == [FieldChange('params.seed', None, 1), FieldChange('params.temperature', 0.0, 0.7)]
    text = render_diff_text(d)
    assert 'params.temperature: 0.0 -> 0.7' in text
    assert 'params.seed: null -> 1' in text


def test_removed_param() -> None:
    d = diff_versions(version(params={'temperature': 0.0, 'stop': ['\n']}), version(params={'temperature': 0.0}))
    assert d.fields == [FieldChange('params.stop', ['\n'], None)]
    assert render_diff_text(d) == 'params.stop: ["\\n"] -> null'


def test_model_change() -> None:
    d = diff_versions(version(), version(model='groq:llama-3.1-8b-instant'))
    assert d.fields == [FieldChange('model', 'local', 'groq:llama-3.1-8b-instant')]
    assert render_diff_text(d) == 'model: local -> groq:llama-3.1-8b-instant'


def test_label_added_and_removed() -> None:
    d = diff_versions(version(), version(output={'kind': 'choice', 'labels': ['BILLING', 'REFUND']}))
    [change] = d.fields
    assert change == FieldChange('output.labels', ['BILLING', 'SHIPPING'], ['BILLING', 'REFUND'], '+REFUND -SHIPPING')
    assert 'output.labels: +REFUND -SHIPPING' in render_diff_text(d)


def test_output_kind_and_schema() -> None:
    schema = {'type': 'object', 'properties': {'label': {'type': 'string'}}}
    d = diff_versions(version(), version(output={'kind': 'json', 'schema': schema}))
    assert [c.field for c in d.fields] == ['output.kind', 'output.labels', 'output.schema']
    assert d.fields[0] == FieldChange('output.kind', 'choice', 'json')
    assert d.fields[2] == FieldChange('output.schema', None, schema)


def test_demo_counts() -> None:
    a = [
        {'text': 'Where is my parcel?', 'expected': 'SHIPPING'},
        {'text': 'Charged twice', 'expected': 'BILLING'},
        {'text': 'Wrong size', 'expected': 'SHIPPING'},
    ]
    b = [
        {'expected': 'SHIPPING', 'text': 'Where is my parcel?'},  # same demo, other key order
        {'text': 'Charged twice', 'expected': 'REFUND'},
        {'text': 'Cancel my order', 'expected': 'REFUND'},
        {'text': 'Card declined', 'expected': 'BILLING'},
    ]
    d = diff_versions(version(demos=a), version(demos=b))
    assert d.fields == [FieldChange('demos', 3, 4, '2 added, 1 removed, 1 changed')]
    assert render_diff_text(d) == 'demos: 2 added, 1 removed, 1 changed'


def test_demo_reorder_is_a_change() -> None:
    demos = [{'text': 'a', 'expected': 'X'}, {'text': 'b', 'expected': 'Y'}]
    d = diff_versions(version(demos=demos), version(demos=demos[::-1]))
    assert render_diff_text(d) == 'demos: 0 added, 0 removed, 0 changed, reordered'


def test_instructions_change() -> None:
    d = diff_versions(version(), version(instructions='Answer with exactly one label.'))
    assert d.changed and d.fields == []
    assert ('insert', ' exactly') in d.instructions_ops
    assert d.words_inserted == 1
    text = render_diff_text(d)
    assert '--- ticket_router:v1/instructions' in text
    assert '+Answer with exactly one label.' in text
    assert 'exactly' in render_diff_html(d)


def test_unified_text() -> None:
    template = 'Route this ticket: {{ text }}\nLabels: {{ labels | join(", ") }}'
    d = diff_versions(version(), version(id='ticket_router:v2', template=template))
    lines = render_diff_text(d).splitlines()
    assert lines[:2] == ['--- ticket_router:v1/template', '+++ ticket_router:v2/template']
    assert '-Labels: {{ labels }}' in lines
    assert '+Labels: {{ labels | join(", ") }}' in lines
    assert ' Route this ticket: {{ text }}' in lines
    assert ' Route this ticket: {{ text }}' not in render_diff_text(d, context=0)


def test_unified_text_shows_trailing_newline_change() -> None:
    d = diff_versions(version(template='Hi'), version(template='Hi\n'))
    assert d.changed
    assert '+++ ticket_router:v1/template' in render_diff_text(d)


def test_html_escapes_and_marks_changes() -> None:
    d = diff_versions(
        version(template='Say <b>hi</b> & {{ text }}'),
        version(id='ticket_router:v2', template='Say <b>hello</b> & {{ text }} now', params={'stop': ['<b>']}),
    )
    out = render_diff_html(d)
    assert '<b>' not in out
    assert '&lt;b&gt;' in out and '&amp;' in out and '{{ text }}' in out
    assert '<del style=' in out and '>hi</del>' in out
    assert '<ins style=' in out and '>hello</ins>' in out
    assert 'ticket_router:v1 → ticket_router:v2' in out
    assert out.startswith('<div class="pw-diff"')
    assert 'params.stop' in out
    assert '<script' not in out and 'http' not in out


def test_html_lists_field_changes() -> None:
    out = render_diff_html(diff_versions(version(), version(model='groq:llama-3.1-8b-instant')))
    assert '<table' in out and 'groq:llama-3.1-8b-instant' in out
    assert 'Instructions' not in out


def test_public_names_are_exported_and_documented() -> None:
    assert sorted(diff.__all__) == sorted(
        name
        for name, value in vars(diff).items()
        if not name.startswith('_') and getattr(value, '__module__', None) == diff.__name__ and callable(value)
    )
    for name in diff.__all__:
        assert getattr(diff, name).__doc__


def test_doctests() -> None:
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    pure = [diff.diff_versions, diff.render_diff_html, diff.render_diff_text, diff.word_ops]
    for test in (t for fn in pure for t in finder.find(fn, globs=vars(diff).copy())):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_template_diff_keeps_tags_whole_and_follows_the_structure():
    """A zero-shot template turned few-shot: the diff inserts the demo loop as one block and keeps the ticket line
    equal, instead of interleaving fragments of `{{ d.text }}` and `{{ text }}`."""
    zero = version(template='Classify the ticket: {{ labels | join(", ") }}.\n\nTicket: {{ text }}\nCategory:')
    few = version(
        'ticket_router:v2',
        template='{% for d in demos %}Ticket: {{ d.text }}\nCategory: {{ d.expected }}\n\n{% endfor %}'
        'Ticket: {{ text }}\nCategory:',
    )
    ops = diff_versions(zero, few).template_ops
    assert ops[-1] == ('equal', 'Ticket: {{ text }}\nCategory:')
    for _, text in ops:  # no op splits a tag: each opens and closes the tags it holds
        assert text.count('{{') == text.count('}}') and text.count('{%') == text.count('%}'), ops
    changed = [text for op, text in ops if op != 'equal']
    assert not any(text.strip() in ('{', '}', '{{', '}}', '.', ':') for text in changed)
    assert ''.join(t for op, t in ops if op != 'insert') == zero.template
    assert ''.join(t for op, t in ops if op != 'delete') == few.template


def test_chat_messages_diff_by_role_and_a_change_of_shape_is_a_setting():
    from udfs.render import transcript

    system = [{'role': 'system', 'content': 'Route tickets.'}, {'role': 'user', 'content': 'Ticket: {{ text }}'}]
    edited = [{'role': 'system', 'content': 'Route support tickets.'}, system[1]]
    a = version('r:v1', template=transcript(system), messages=system)
    b = version('r:v2', template=transcript(edited), messages=edited)
    d = diff_versions(a, b)
    assert d.text_title == 'Messages' and d.fields == [] and ('insert', ' support') in d.template_ops
    assert '>Messages<' in render_diff_html(d) and 'r:v1/messages' in render_diff_text(d)
    plain = version('r:v0', template='Ticket: {{ text }}')
    shape = diff_versions(plain, a)
    assert shape.fields == [
        FieldChange('messages', None, ['system', 'user'], 'a completion template -> 2 messages (system, user)')
    ]


def test_demos_retrieved_per_example_diff_by_their_policy():
    from types import SimpleNamespace as V

    from workspace.analysis.diff import diff_versions

    policy = {'policy': 'nearest', 'dataset': 'tiny', 'split': 'train', 'field': 'text', 'k': 2}
    fixed = V(id='r:v1', template='T', instructions='', model='local', params={}, output={}, demos=[{'text': 'a'}])
    retrieved = V(**{**vars(fixed), 'id': 'r:v2', 'demos': policy})
    (change,) = [f for f in diff_versions(fixed, retrieved).fields if f.field == 'demos']
    assert change.summary == '1 fixed -> nearest 2 of tiny/train'
    wider = V(**{**vars(retrieved), 'id': 'r:v3', 'demos': {**policy, 'k': 8}})
    assert [f.summary for f in diff_versions(retrieved, wider).fields] == [
        'nearest 2 of tiny/train -> nearest 8 of tiny/train'
    ]
    assert diff_versions(retrieved, retrieved).fields == []
