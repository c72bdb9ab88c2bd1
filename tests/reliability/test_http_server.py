"""The HTTP server under a hostile client: one slow template does not stall other requests (renders run in
worker processes with a hard time cap), a 16 MB header is refused before any key check, a request that outlives
its time cap answers 504, and every error is JSON naming the problem (no 500 for bad input)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
from conftest import CLI, ROOT
from openai_server import Canned, OpenAICompatibleServer, completion_body

#: A template accepted at creation (its placeholder input is short) whose loop grows with the square of the input.
SLOW = '{% for a in text %}{% for b in text %}{% endfor %}{% endfor %}Ticket: {{ text }}\nCategory:'
RENDER_TIMEOUT_S = 1.5
REQUEST_TIMEOUT_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _model(body):
    prompt = body['messages'][-1]['content']
    return Canned(200, completion_body('BILLING'), delay=10.0 if 'slowly' in prompt else 0.0)


@pytest.fixture(scope='module')
def served():
    """`prompt-workspace serve` in a new process over a fast and a slow version, with short time limits."""
    import pixeltable as pxt

    import workspace as ws
    from workspace import config
    from workspace.serving.keys import create_key

    config.connect()
    pxt.drop_dir(config.ROOT_DIR, force=True, if_not_exists='ignore')
    with OpenAICompatibleServer(_model) as model:
        os.environ['OPENAI_BASE_URL'] = f'{model.url}/v1'
        labels = ws.choice(['BILLING', 'DELIVERY'])
        ws.create_version('fast', template='Ticket: {{ text }}\nCategory:', model='openai:fake', output=labels)
        ws.create_version('slow', template=SLOW, model='openai:fake', output=labels)
        keys = {'serve': create_key('app', 'serve', rate=10_000), 'admin': create_key('ops', 'admin', rate=1000)}
        port = _free_port()
        env = {
            **os.environ,
            'WORKSPACE_RENDER_TIMEOUT_S': str(RENDER_TIMEOUT_S),
            'WORKSPACE_SERVE_REQUEST_TIMEOUT': str(REQUEST_TIMEOUT_S),
            'WORKSPACE_MAX_ATTEMPTS': '1',
            'WORKSPACE_TIMEOUT_ATTEMPTS': '1',
        }
        process = subprocess.Popen(
            [*CLI, 'serve', '--port', str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        client = httpx.Client(base_url=f'http://127.0.0.1:{port}', timeout=60)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get('/healthz').status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, 'the server did not start'
                time.sleep(0.2)
            yield client, keys, port
        finally:
            process.terminate()
            _, err = process.communicate(timeout=30)
            client.close()
            os.environ.pop('OPENAI_BASE_URL', None)
            assert b'Traceback' not in err, err.decode()[-3000:]
            pxt.drop_dir(config.ROOT_DIR, force=True, if_not_exists='ignore')


def _auth(key: str) -> dict[str, str]:
    return {'Authorization': f'Bearer {key}'}


def _error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body['error']['type'] == kind, body
    return body['error']['message']


def _render(client: httpx.Client, key: str, version: str, text: str) -> httpx.Response:
    return client.post('/v1/render', json={'version': version, 'fields': {'text': text}}, headers=_auth(key))


def test_a_slow_template_stalls_neither_health_checks_nor_other_renders(served):
    client, keys, port = served
    assert _render(client, keys['serve'], 'fast', 'warm up').status_code == 200  # the workers are up
    slow: dict[str, object] = {}

    def render_slowly() -> None:
        with httpx.Client(base_url=f'http://127.0.0.1:{port}', timeout=60) as other:
            started = time.monotonic()
            slow['response'] = _render(other, keys['serve'], 'slow', 'x' * 3000)
            slow['seconds'] = time.monotonic() - started

    thread = threading.Thread(target=render_slowly)
    thread.start()
    time.sleep(0.3)  # the slow render is under way
    latencies = []
    while thread.is_alive() and len(latencies) < 400:
        started = time.monotonic()
        assert client.get('/healthz').status_code == 200
        assert _render(client, keys['serve'], 'fast', 'My parcel is late').json()['text'].startswith('Ticket:')
        latencies.append(time.monotonic() - started)
    thread.join()
    assert slow['seconds'] >= RENDER_TIMEOUT_S * 0.9, slow  # it really was slow, and ran beside the others
    assert 'stopped' in _error(slow['response'], 400, 'TemplateError')
    assert len(latencies) >= 10 and max(latencies) < 1.0, latencies  # on the event loop, one pair took 2 s


def test_a_header_of_16_mb_is_refused_before_the_key_is_checked(served):
    client, keys, _ = served
    huge = {'X-Filler': 'a' * (16 * 1024 * 1024), 'Authorization': 'Bearer not-a-key'}
    refused = client.get('/v1/prompts/fast', headers=huge)
    assert 'WORKSPACE_SERVE_MAX_HEADER' in _error(refused, 431, 'headers_too_large')
    big = {'X-Filler': 'a' * 40_000, **_auth(keys['serve'])}
    _error(client.get('/v1/prompts/fast', headers=big), 431, 'headers_too_large')
    _error(client.get('/v1/prompts/fast', headers={'Authorization': 'Bearer not-a-key'}), 401, 'invalid_key')
    assert client.get('/healthz').status_code == 200  # the server is still up


def test_a_request_past_its_time_cap_answers_504_and_the_server_goes_on(served):
    client, keys, _ = served
    started = time.monotonic()
    body = {'version': 'fast', 'fields': {'text': 'answer slowly please'}}
    late = client.post('/v1/complete', json=body, headers=_auth(keys['serve']))
    assert 'WORKSPACE_SERVE_REQUEST_TIMEOUT' in _error(late, 504, 'timeout')
    assert time.monotonic() - started < REQUEST_TIMEOUT_S + 2
    assert client.get('/healthz').status_code == 200


def test_bad_input_gets_a_json_4xx_naming_the_problem(served):
    client, keys, _ = served
    admin = _auth(keys['admin'])
    assert 'limit' in _error(client.get('/v1/audit', params={'limit': -1}, headers=admin), 422, 'invalid_request')
    missing = {'kind': 'custom', 'config': {'function': 'udfs.no_such_module.check'}}
    assert 'cannot be imported' in _error(client.put('/v1/rules/mine', json=missing, headers=admin), 400, 'RuleError')
    typo = {'kind': 'regex', 'config': {'pattern': 'x', 'patern': 'y'}}
    message = _error(client.put('/v1/rules/typo', json=typo, headers=admin), 400, 'RuleError')
    assert "'patern'" in message and 'its settings are: pattern' in message
    misplaced = {'kind': 'keyword', 'config': {'words': ['x']}, 'enforcment': 'block'}
    message = _error(client.put('/v1/rules/misplaced', json=misplaced, headers=admin), 422, 'invalid_body')
    assert 'enforcment' in message and 'enforcement' in message  # the known fields are named
    served_once = client.post(
        '/v1/render', json={'version': 'fast', 'fields': {'text': 'hi'}, 'unit_id': 'u1'}, headers=_auth(keys['serve'])
    ).json()
    huge = {'execution_id': served_once['execution_id'], 'outcome': 1e308}
    assert 'larger than' in _error(
        client.post('/v1/outcomes', json=huge, headers=_auth(keys['serve'])), 400, 'ComparisonError'
    )


def test_a_render_past_the_hard_cap_is_stopped_and_its_worker_replaced(monkeypatch):
    """The sandbox stops a render at WORKSPACE_RENDER_TIMEOUT_S; a worker past the cap (here its own limit is
    longer than the server's) is killed, and the next render has a worker."""
    import udfs.render  # noqa: F401 (imported by any server already; not timed here)
    from workspace.errors import TemplateError
    from workspace.serving.render_workers import RenderWorkers

    monkeypatch.setenv('WORKSPACE_RENDER_TIMEOUT_S', '60')  # what the workers read
    workers = RenderWorkers(1, grace_s=0.5)
    try:
        version = SimpleNamespace(id='slow:v1', template='Ticket: {{ text }}', demos=[], labels=[], instructions='')
        assert workers.render(version, {'text': 'hi'}) == 'Ticket: hi'  # rendered on this thread
        assert workers.wait_idle(120), 'the render worker did not start in 120 s'
        monkeypatch.setenv('WORKSPACE_RENDER_TIMEOUT_S', '0.5')  # what the server's cap reads: 0.5 + 0.5 s
        version.template = SLOW
        started = time.monotonic()
        with pytest.raises(TemplateError, match='was stopped'):
            workers.render(version, {'text': 'x' * 3000})
        assert time.monotonic() - started < 5
        version.template = 'Ticket: {{ text }}'
        monkeypatch.setenv('WORKSPACE_RENDER_TIMEOUT_S', '60')  # the replacement may take a while to start
        assert workers.render(version, {'text': 'hi'}) == 'Ticket: hi'
    finally:
        workers.close()
