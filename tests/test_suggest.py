"""Suggestions: the failure analysis a model reads, schema-constrained JSON from the embedded model, robust parsing
of what a remote model answers, edits applied as new versions after a template check, and caching of the answer."""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai_server import Canned, OpenAICompatibleServer, completion_body

from workspace.errors import BackendError, TemplateError, VersionError
from workspace.optimization.suggest import _parse, suggest, suggestion_schema

LABELS = ['BILLING', 'DELIVERY', 'TECHNICAL']
TEMPLATE = 'Ticket: {{ text }}\nCategory:'
GOOD_EDIT = 'Classify the support ticket as BILLING, DELIVERY or TECHNICAL.\n\nTicket: {{ text }}\nCategory:'
ANSWER = {
    'analysis': 'TECHNICAL tickets about checkout errors are read as BILLING because they mention paying.',
    'edits': [
        {'description': 'name the labels before the ticket', 'template': GOOD_EDIT},
        {'description': 'a typo', 'template': 'Ticket: {{ txt }}\nCategory:'},
        {'description': 'broken Jinja', 'template': 'Ticket: {{ text \nCategory:'},
        {'description': 'reads no input', 'template': 'Category:'},
        {'description': 'no template here'},
    ],
    'focus_categories': ['technical', 'BILLING', 'REFUNDS', 'BILLING'],
}


@pytest.fixture
def run(ws, tiny_tickets):
    tiny = ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')
    v1 = ws.create_version('router', template=TEMPLATE, output=ws.choice(LABELS))
    return ws.evaluate(v1, tiny, 'dev', progress=False)


def test_embedded_model_answers_schema_valid_json_once(run):
    from workspace.storage import tables
    from workspace.storage.backends import get_backend

    local = get_backend('local')
    before = local.calls
    s = suggest(run, max_chars=300)
    assert local.calls - before == 1 and not s.reused
    # the grammar keeps the 270M model to the schema: the raw answer is complete, valid JSON of that shape
    jsonschema.validate(json.loads(s.raw), suggestion_schema(LABELS, max_chars=300))
    assert isinstance(s.analysis, str) and set(s.focus_categories) <= set(LABELS)
    assert all(set(e) == {'description', 'template'} for e in s.edits)
    # it read the failure analysis, and its answer is stored with who asked
    assert TEMPLATE in s.prompt and 'Confusion matrix' in s.prompt and 'Failed cases' in s.prompt
    store = tables.requests()
    row = store.where(store.request_hash == s.request_hash).collect()[0]
    assert row['first_version_id'] == f'suggest:{run.run_id}' and row['first_dataset'] == 'tiny'
    assert row['request']['constraint'] == {'json_schema': suggestion_schema(LABELS, max_chars=300)}
    # asking again is answered by the store
    again = suggest(run, max_chars=300)
    assert local.calls - before == 1 and again.reused and again.raw == s.raw and again.edits == s.edits


def test_remote_answer_is_parsed_and_an_edit_applied_as_a_new_version(ws, run, monkeypatch):
    fenced = f'Here is my analysis.\n```json\n{json.dumps(ANSWER)}\n```\nGood luck!'
    with OpenAICompatibleServer(lambda body: Canned(200, completion_body(fenced))) as server:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{server.url}/v1')
        s = suggest(run, model='openai:fake')
        assert len(server.received) == 1
        sent = server.received[0]['body']
        assert sent['response_format'] == {'type': 'json_object'}
        prompt = sent['messages'][-1]['content']
        for part in (TEMPLATE, 'accuracy 0.', 'Per category', 'Confusion matrix', 'Failed cases', 'expected: '):
            assert part in prompt
        failures = run.failures()
        assert f'Failed cases ({len(failures)} of {len(failures)})' in prompt
        assert all(row['text'] in prompt for _, row in failures.iterrows())

        assert s.model == 'openai:fake' and s.raw == fenced and s.analysis == ANSWER['analysis']
        assert [e['description'] for e in s.edits] == [
            'name the labels before the ticket',
            'a typo',
            'broken Jinja',
            'reads no input',
        ]
        assert s.focus_categories == ['TECHNICAL', 'BILLING']  # labels canonicalized, unknown and repeats dropped
        assert 'edit 0: name the labels before the ticket' in str(s) and '<ol' in s._repr_html_()

        v2 = s.apply(0)
        assert v2.parent_id == run.version.id and v2.template == GOOD_EDIT
        assert v2.note == 'name the labels before the ticket' and v2.demos == run.version.demos
        assert v2.meta['suggestion'] == {'run_id': run.run_id, 'model': 'openai:fake', 'request_hash': s.request_hash}
        assert s.apply(0, note='mine').id == v2.id  # same content, same version
        with pytest.raises(TemplateError, match=r'reads \{\{ txt \}\}.* Did you mean \{\{ text \}\}\?'):
            s.apply(1)
        with pytest.raises(TemplateError, match=r'suggested edit 2 for router:v1 does not parse'):
            s.apply(2)
        with pytest.raises(TemplateError, match=r"reads none of the input fields of 'tiny' \(text\)"):
            s.apply(3)
        with pytest.raises(VersionError, match=r'edit 4 does not exist; pick 0 to 3'):
            s.apply(4)
        assert len(ws.list_versions('router')) == 2

        again = suggest(run, model='openai:fake')
        assert again.reused and len(server.received) == 1 and again.edits == s.edits


def test_a_failing_model_is_tried_twice_then_named(run, monkeypatch):
    failing = Canned(500, {'error': {'message': 'the server is on fire'}})
    with OpenAICompatibleServer(lambda body: failing) as server:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{server.url}/v1')
        monkeypatch.setenv('WORKSPACE_MAX_ATTEMPTS', '1')
        with pytest.raises(BackendError, match=r"model 'openai:fake' did not answer the suggestion request: .*fire"):
            suggest(run, model='openai:fake')
        assert len(server.received) == 2


@pytest.mark.parametrize(
    'raw,analysis,edits,focus',
    [
        ('no JSON at all', 'no JSON at all', [], []),
        ('["a", "list"]', '["a", "list"]', [], []),
        ('{"analysis": "x"}', 'x', [], []),
        ('{"edits": {"description": "one", "template": "T {{ text }}"}}', '', [('one', 'T {{ text }}')], []),
        ('{"edits": [{"template": "   "}, "text", {"template": "B"}]}', '', [('', 'B')], []),
        ('{"analysis": 3, "focus_categories": "delivery"}', '3', [], ['DELIVERY']),
        ('{"focus_categories": ["Billing", null, "OTHER"]}', '', [], ['BILLING']),
    ],
)
def test_parse_keeps_whatever_is_usable(raw, analysis, edits, focus):
    got_analysis, got_edits, got_focus = _parse(raw, LABELS)
    assert got_analysis == analysis and got_focus == focus
    assert [(e['description'], e['template']) for e in got_edits] == edits


def test_a_suggestion_that_echoes_the_schema_or_contradicts_the_run_is_marked_unreliable(ws, run, monkeypatch):
    per_category = run.per_category()
    perfect = [c for c in LABELS if per_category.loc[c, 'f1'] >= 1.0]
    echoed = {
        'analysis': '<what goes wrong and why>',
        'edits': [
            {'description': '<the change>', 'template': '<the whole new template>'},
            {'description': 'the same template', 'template': TEMPLATE},
            {'description': 'name the labels', 'template': GOOD_EDIT},
        ],
        'focus_categories': perfect,
    }
    with OpenAICompatibleServer(lambda body: Canned(200, completion_body(json.dumps(echoed)))) as server:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{server.url}/v1')
        s = suggest(run, model='openai:fake')
    assert not s.reliable
    assert 'its analysis copies the placeholder <what goes wrong and why> of the requested JSON' in s.problems
    assert s.edit_problems[0][:2] == [
        'it copies the placeholder <the whole new template> of the requested JSON',
        'its description copies the placeholder <the change>',
    ]
    assert s.edit_problems[1] == ['its template is the current one: it changes nothing'] and s.edit_problems[2] == []
    assert all(
        f'it names {c} as needing work, but the run got every {c} example right (F1 1.0)' in s.problems for c in perfect
    )
    text = str(s)
    assert text.startswith('UNRELIABLE: what openai:fake wrote fails these checks') and 'UNRELIABLE' in repr(s)
    assert 'Unreliable' in s._repr_html_()
    with pytest.raises(
        VersionError, match=r'suggested edit 1 for router:v1 is unreliable: its template is the current one'
    ):
        s.apply(1)
    assert s.apply(2).template == GOOD_EDIT  # an edit with no problem applies as before
    assert s.apply(1, force=True).id == run.version.id  # forced: the same content is the same version
