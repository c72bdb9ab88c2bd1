"""Small silent failures, each now loud or gone: malformed answers are retried like a 500, bad settings and values
are refused naming what is known, NUL bytes are refused with their line, a folder is named as a folder, and a
password in a base URL does not replace the Bearer key."""

from __future__ import annotations

import base64
import json

import pytest
from openai_server import Canned, OpenAICompatibleServer, completion_body

from workspace.errors import BackendError, ComparisonError, DatasetError, RuleError, WorkspaceError
from workspace.storage.backends.remote import ChatBackend, RetryPolicy

REQUEST = {'prompt': 'Hello', 'params': {'max_tokens': 4}}
NOT_JSON = Canned(200, {}, raw=b'{"choices": [')  # a proxy cut the answer short
NO_CHOICES = Canned(200, {**completion_body('x'), 'choices': []})


def _backend(server: OpenAICompatibleServer, url: str | None = None) -> ChatBackend:
    return ChatBackend(
        'openai',
        'fake-model',
        key_env='OPENAI_API_KEY',
        base_url=url or f'{server.url}/v1',
        key_required=False,
        retry=RetryPolicy(max_attempts=4, base_delay=0.01),
        sleep=lambda s: None,
    )


# --- 5: malformed JSON and empty choices are retried -----------------------------------------------------------


def test_malformed_json_and_empty_choices_are_retried_like_a_500():
    with OpenAICompatibleServer(lambda body: Canned(200, completion_body('ok'))) as server:
        server.script = [NOT_JSON, NO_CHOICES, Canned(500, {'error': {'message': 'boom'}})]
        backend = _backend(server)
        assert backend.complete(REQUEST)['text'] == 'ok'
        assert backend.attempts == 4 and len(server.received) == 4


@pytest.mark.parametrize('canned', [NOT_JSON, NO_CHOICES], ids=['malformed_json', 'empty_choices'])
def test_a_server_that_keeps_answering_badly_fails_with_the_attempt_count(canned):
    with OpenAICompatibleServer(lambda body: canned) as server:
        backend = _backend(server)
        with pytest.raises(BackendError, match=r'failed after 4 attempt\(s\)') as failed:
            backend.complete(REQUEST)
        assert len(server.received) == 4
        assert 'not valid JSON' in str(failed.value) or 'empty choices' in str(failed.value)


def test_the_attempt_count_is_in_the_rows_error(ws, tiny_tickets, monkeypatch):
    monkeypatch.setenv('WORKSPACE_MAX_ATTEMPTS', '3')
    monkeypatch.setenv('WORKSPACE_RETRY_BASE_DELAY', '0.01')
    with OpenAICompatibleServer(lambda body: NO_CHOICES) as server:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{server.url}/v1')
        monkeypatch.setenv('WORKSPACE_BREAKER_FAILURES', '100')
        data = ws.import_dataset('tiny', tiny_tickets, input='text', expected='category', split='split', id='id')
        # two labels: a choice of one is answered without a model call
        labels = ws.choice(['BILLING', 'DELIVERY'])
        version = ws.create_version('r', template='T: {{ text }}', model='openai:fake', output=labels)
        run = ws.evaluate(version, data, 'dev', progress=False)
        errors = set(run.rows()['error'])
        assert len(server.received) == 6 * 3 and run.errors == 6
        assert all('failed after 3 attempt(s)' in e and 'empty choices' in e for e in errors), errors


# --- 6: bad values are refused, naming what is known ------------------------------------------------------------


def test_unknown_rule_settings_are_refused_with_the_known_ones(ws):
    with pytest.raises(RuleError, match=r"does not take the setting\(s\) 'word'.*its settings are: words"):
        ws.set_rule('no_refunds', 'keyword', words=['refund'], word='chargeback')
    with pytest.raises(RuleError, match="did you mean 'pattern'"):
        ws.set_rule('no_urls', 'regex', patern='https?://')
    with pytest.raises(RuleError, match='min_score=7 must be a number from 0 to 1'):
        ws.set_rule('no_pii', 'pii', min_score=7)
    assert ws.set_rule('no_refunds', 'keyword', words=['refund']).number == 1


def test_a_custom_rule_naming_a_missing_module_is_refused(ws):
    with pytest.raises(RuleError, match="module 'udfs.nowhere' cannot be imported"):
        ws.set_rule('mine', 'custom', function='udfs.nowhere.check')
    with pytest.raises(RuleError, match='must name a function in the udfs package'):
        ws.set_rule('mine', 'custom', function='udfsx.rules.no_urls')


def test_audit_limit_and_huge_outcomes_are_refused(ws):
    with pytest.raises(WorkspaceError, match=r'limit=-1 is not valid'):
        ws.audit(limit=-1)
    v1 = ws.create_version('router', template='T: {{ text }}', output=ws.choice(['A', 'B']))
    for value in (1e308, -1e16, float('inf')):
        with pytest.raises(ComparisonError, match='outcome'):
            ws.log_outcome('router', 'u1', value, version=v1)
    ws.log_outcome('router', 'u1', 1e12, version=v1)  # large but fine


# --- 8: NUL bytes, folders, passwords in URLs -------------------------------------------------------------------


def test_a_nul_byte_in_a_csv_field_is_refused_with_its_line(ws, tmp_path):
    path = tmp_path / 'nul.csv'
    path.write_bytes(b'id,text,category,split\na1,fine,BILLING,dev\na2,hello\x00world,BILLING,dev\n')
    with pytest.raises(DatasetError, match=r"nul.csv: line 3, column 'text', holds a NUL byte"):
        ws.import_dataset('nul', path, input='text', expected='category', split='split', id='id')
    assert ws.list_datasets() == []
    jsonl = tmp_path / 'nul.jsonl'
    jsonl.write_text(json.dumps({'id': 'a1', 'text': {'nested': 'a\x00b'}, 'category': 'A'}) + '\n')
    with pytest.raises(DatasetError, match=r"nul.jsonl: line 1, column 'text', holds a NUL byte"):
        ws.import_dataset('nul', jsonl, input='text', expected='category', id='id')


def test_a_folder_is_named_as_a_folder(ws, tmp_path):
    from workspace.jobs.exports import import_prompt

    with pytest.raises(DatasetError, match='is a folder'):
        ws.ingest_prompts(tmp_path)
    with pytest.raises(WorkspaceError, match='prompt file .* is a folder'):
        import_prompt(tmp_path)
    with pytest.raises(WorkspaceError, match='notebook .* is a folder'):
        ws.run_notebook(tmp_path)
    with pytest.raises(BackendError, match='model file .* is a folder'):
        from workspace.storage.backends.base import local_path

        local_path(str(tmp_path))


def test_a_password_in_the_base_url_does_not_replace_the_bearer_key(monkeypatch):
    monkeypatch.setenv('OPENAI_API_KEY', 'sk-the-real-key')
    with OpenAICompatibleServer(lambda body: Canned(200, completion_body('ok'))) as server:
        url = server.url.replace('http://', 'http://alice:s3cret@') + '/v1'
        backend = _backend(server, url)
        assert backend.complete(REQUEST)['text'] == 'ok'
        auth = server.received[-1]['headers'].get('Authorization') or server.received[-1]['headers']['authorization']
        assert auth == 'Bearer sk-the-real-key'
        assert base64.b64encode(b'alice:s3cret').decode() not in json.dumps(server.received[-1]['headers'])
