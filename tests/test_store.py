"""The request store: hashing, answering once, claims across sessions, concurrency for remote backends, the
circuit breaker, model identity without credentials, and deterministic local answers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest
from openai_server import Canned, OpenAICompatibleServer, completion_body

from workspace.config import utc_now
from workspace.errors import BackendError
from workspace.storage import backends, store, tables


def _request(prompt: str, model: str = 'openai:fake') -> dict:
    return {'model': model, 'params': {'max_tokens': 4, 'temperature': 0.0}, 'prompt': prompt, 'constraint': None}


def test_request_hash_is_the_content_not_the_spec_or_keys():
    a = {'model': 'groq:x', 'model_id': 'groq:x@https://api.groq.com', 'params': {}, 'prompt': 'p', 'constraint': None}
    b = {**a, 'model': 'another-alias', 'api_key': 'secret'}
    assert store.request_hash(a) == store.request_hash(b)
    assert store.request_hash(a) != store.request_hash({**a, 'prompt': 'p '})
    assert store.request_hash(a) != store.request_hash({**a, 'sample': 1})
    assert store.request_hash({**a, 'sample': None}) == store.request_hash(a)  # no sample: the old identity


@pytest.fixture
def server(ws, monkeypatch):
    """A local OpenAI-compatible server answering 'ok:<prompt>' after `server.delay` seconds, counting in-flight
    requests."""
    state = {'in_flight': 0, 'most': 0, 'hold_until': 0}
    changed = threading.Condition()

    def answer(body):
        with changed:
            state['in_flight'] += 1
            state['most'] = max(state['most'], state['in_flight'])
            changed.notify_all()
            # with hold_until set, a request is held until that many are in flight (or 5 s pass), so the most in
            # flight is what the client sends at once, not how fast a loaded machine starts its threads
            changed.wait_for(lambda: state['in_flight'] >= state['hold_until'], timeout=5)
        time.sleep(srv.delay)
        with changed:
            state['in_flight'] -= 1
        return Canned(200, completion_body('ok:' + body['messages'][-1]['content']))

    monkeypatch.setenv('WORKSPACE_MAX_ATTEMPTS', '1')
    with OpenAICompatibleServer(answer) as srv:
        srv.delay = 0.0
        srv.state = state
        monkeypatch.setenv('OPENAI_BASE_URL', f'{srv.url}/v1')
        yield srv


def test_equal_requests_are_answered_once_and_then_never_again(server):
    batch = store.answer_many([(_request(p), (None, None, None)) for p in ['a', 'b', 'a', 'c']])
    assert batch.calls == 3 and len(server.received) == 3
    assert {a['text'] for a in batch.answers.values()} == {'ok:a', 'ok:b', 'ok:c'}
    again = store.answer_many([(_request(p), (None, None, None)) for p in ['c', 'a']])
    assert again.calls == 0 and len(server.received) == 3
    assert all(a['reused'] for a in again.answers.values())
    assert len(tables.claims().collect()) == 0  # claims are released once answered


@pytest.mark.parametrize('concurrency', [1, 3, 8])
def test_remote_requests_are_sent_concurrently_up_to_the_setting(server, monkeypatch, concurrency):
    monkeypatch.setenv('WORKSPACE_CONCURRENCY', str(concurrency))
    server.delay = 0.2
    server.state['hold_until'] = concurrency
    batch = store.answer_many([(_request(f'q{i}'), (None, None, None)) for i in range(16)])
    assert batch.calls == 16 and server.state['most'] == concurrency


def test_a_hung_endpoint_trips_the_breaker_and_marks_nothing_failed(server, monkeypatch):
    monkeypatch.setenv('WORKSPACE_REQUEST_TIMEOUT', '0.2')
    monkeypatch.setenv('WORKSPACE_TIMEOUT_ATTEMPTS', '1')
    monkeypatch.setenv('WORKSPACE_BREAKER_FAILURES', '3')
    monkeypatch.setenv('WORKSPACE_CONCURRENCY', '2')
    server.delay = 2.0
    with pytest.raises(BackendError, match=r'stopped after 3 consecutive failures of the same kind.*timed out'):
        store.answer_many([(_request(f'h{i}'), (None, None, None)) for i in range(40)])
    assert len(server.received) < 10  # it stopped early: 40 requests were never sent
    assert len(tables.requests().collect()) == 0  # the endpoint failed, not the requests: none is marked failed
    assert len(tables.claims().collect()) == 0
    server.delay = 0.0  # the endpoint is fixed: the same requests are sent and answered
    assert store.answer_many([(_request(f'h{i}'), (None, None, None)) for i in range(40)]).calls == 40


def test_a_failure_among_successes_is_stored_on_its_row(server, monkeypatch):
    server.script = [Canned(400, {'error': {'message': 'context length exceeded'}})]
    monkeypatch.setenv('WORKSPACE_CONCURRENCY', '1')
    batch = store.answer_many([(_request(f'r{i}'), (None, None, None)) for i in range(4)])
    errors = [a for a in batch.answers.values() if a['error']]
    assert len(errors) == 1 and 'context length exceeded' in errors[0]['error']
    assert store.answer_many([(_request(f'r{i}'), (None, None, None)) for i in range(4)]).calls == 0
    retried = store.answer_many([(_request(f'r{i}'), (None, None, None)) for i in range(4)], retry_errors=True)
    assert retried.calls == 1 and all(a['error'] is None for a in retried.answers.values())


def _claim(key: str, *, host: str, pid: int, age_s: float = 0.0) -> None:
    import datetime

    at = utc_now() - datetime.timedelta(seconds=age_s)
    tables.claims().insert(
        [
            {
                'request_hash': key,
                'owner': 'other-session',
                'host': host,
                'pid': pid,
                'claimed_at': at,
                'heartbeat_at': at,
            }
        ]
    )


def test_a_request_another_live_process_is_answering_is_waited_for_not_sent(server):
    import socket

    request = _request('shared')
    key = store.request_hash(store._identity(request))
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        _claim(key, host=socket.gethostname(), pid=sleeper.pid)

        def other_process_answers():
            time.sleep(1.0)
            row = store._row(key, store._identity(request), (None, None, None), {'text': 'theirs'}, None)
            tables.requests().insert([row])
            claims = tables.claims()
            claims.delete(where=claims.request_hash == key)

        thread = threading.Thread(target=other_process_answers)
        thread.start()
        batch = store.answer_many([(request, (None, None, None))])
        thread.join()
    finally:
        sleeper.kill()
    assert batch.calls == 0 and batch.waited == {key} and len(server.received) == 0
    assert batch.answers[key]['text'] == 'theirs' and batch.answers[key]['reused']


def test_a_claim_of_a_dead_process_is_taken_over_at_once(server):
    import socket

    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    request = _request('orphan')
    key = store.request_hash(store._identity(request))
    _claim(key, host=socket.gethostname(), pid=dead.pid)
    batch = store.answer_many([(request, (None, None, None))])
    assert batch.calls == 1 and batch.answers[key]['text'] == 'ok:orphan'


def test_an_owner_dying_just_before_its_claims_are_taken_over_is_not_paid_for_again(server, monkeypatch):
    """The owner journals an answer and dies after the waiter's recovery but before the waiter takes its claims
    over: the waiter reads the journal before sending, so the answer is not asked again."""
    import socket

    from workspace.storage import journal

    request = _request('raced')
    key = store.request_hash(store._identity(request))
    owner = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    wal = journal.Journal('owner-session')  # open, so locked: a live session's journal
    wal.sent(key)
    wal.answered(store._row(key, store._identity(request), (None, None, None), {'text': 'paid once'}, None))
    _claim(key, host=socket.gethostname(), pid=owner.pid)
    take_over = store._Session.take_over

    def owner_dies_first(session, keys):
        if owner.poll() is None:  # the owner dies here, after this round's recovery and lookup
            owner.kill()
            owner.wait()
            wal.close(done=False)  # as SIGKILL leaves it: written, unlocked
        return take_over(session, keys)

    monkeypatch.setattr(store._Session, 'take_over', owner_dies_first)
    try:
        batch = store.answer_many([(request, (None, None, None))])
    finally:
        owner.kill()
    assert batch.calls == 0 and len(server.received) == 0
    assert batch.answers[key]['text'] == 'paid once'


def test_a_claim_from_another_host_is_taken_over_only_when_its_heartbeat_is_stale(server, monkeypatch):
    fresh, stale = _request('fresh'), _request('stale')
    _claim(store.request_hash(store._identity(stale)), host='elsewhere', pid=1, age_s=600)
    assert store.answer_many([(stale, (None, None, None))]).calls == 1
    _claim(store.request_hash(store._identity(fresh)), host='elsewhere', pid=1)
    monkeypatch.setenv('WORKSPACE_CLAIM_WAIT', '0.5')
    with pytest.raises(BackendError, match=r'being answered by another process .*WORKSPACE_CLAIM_WAIT'):
        store.answer_many([(fresh, (None, None, None))])
    assert len(server.received) == 1


@pytest.mark.parametrize(
    'url,public',
    [
        ('http://user:secret@host:8080/v1', 'http://host:8080/v1'),
        ('https://api.example.com/v1/', 'https://api.example.com/v1'),
        ('http://host/v1?api-key=abc&api-version=2024', 'http://host/v1?api-key=***&api-version=2024'),
        ('http://host/v1?sig=xyz', 'http://host/v1?sig=***'),
    ],
)
def test_public_url_drops_credentials(url, public):
    assert backends.public_url(url) == public


def test_every_endpoint_is_part_of_the_model_identity_and_no_credential_is(monkeypatch):
    monkeypatch.setenv('GROQ_BASE_URL', 'http://one:8000')
    first = backends.model_identity('groq:llama')
    monkeypatch.setenv('GROQ_BASE_URL', 'http://two:8000')
    assert backends.model_identity('groq:llama') != first == 'groq:llama@http://one:8000'
    monkeypatch.setenv('OPENAI_BASE_URL', 'http://user:hunter2@three:9000/v1')
    assert backends.model_identity('openai:m') == 'openai:m@http://three:9000/v1'


def test_settings_are_checked():
    from workspace.config import settings
    from workspace.errors import WorkspaceError

    os.environ['WORKSPACE_CONCURRENCY'] = 'many'
    try:
        with pytest.raises(WorkspaceError, match=r"WORKSPACE_CONCURRENCY='many' is not a number"):
            settings()
        os.environ['WORKSPACE_CONCURRENCY'] = '0'
        with pytest.raises(WorkspaceError, match='out of range'):
            settings()
    finally:
        del os.environ['WORKSPACE_CONCURRENCY']
    assert settings().concurrency == 8


@pytest.mark.parametrize(
    'fault,message',
    [
        (Canned(200, {}, raw=b'{"choices": [ {"mess'), 'JSONDecodeError|Expecting|Unterminated|APIResponse'),
        (Canned(200, {'unexpected': True}), 'without a choice'),
        (Canned(500, {'error': {'message': 'boom'}}), 'InternalServerError'),
        (Canned(0, {}, reset=True), 'APIConnectionError'),
    ],
)
def test_a_faulty_answer_is_recorded_on_its_row_and_the_others_are_answered(server, monkeypatch, fault, message):
    monkeypatch.setenv('WORKSPACE_CONCURRENCY', '1')
    server.script = [fault]
    batch = store.answer_many([(_request(f'f{i}'), (None, None, None)) for i in range(3)])
    errors = [a['error'] for a in batch.answers.values() if a['error']]
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert sorted(a['text'] for a in batch.answers.values() if a['text']) == ['ok:f1', 'ok:f2']


def test_429_is_retried_after_the_servers_retry_after_or_a_backoff(server, monkeypatch):
    monkeypatch.setenv('WORKSPACE_MAX_ATTEMPTS', '3')
    monkeypatch.setenv('WORKSPACE_RETRY_BASE_DELAY', '0.05')
    server.script = [
        Canned(429, {'error': {'message': 'slow down'}}, {'retry-after': '0.3'}),
        Canned(429, {'error': {'message': 'slow down'}}),
    ]
    started = time.perf_counter()
    batch = store.answer_many([(_request('patient'), (None, None, None))])
    assert next(iter(batch.answers.values()))['text'] == 'ok:patient' and len(server.received) == 3
    assert time.perf_counter() - started >= 0.3  # it waited as the server asked


@pytest.mark.usefixtures('bare_ws')
def test_a_request_store_made_by_version_0_1_is_upgraded_with_its_answers_and_errors(ws):
    """Version 0.1 called the model in a computed column of the requests table; opening such a store copies its
    answers and errors into today's schema, so no request is asked again."""
    import pixeltable as pxt
    from old_store_udf import complete

    tables.ensure_dirs()
    old = pxt.create_table(
        tables.REQUESTS,
        {
            'request_hash': pxt.String,
            'request': pxt.Json,
            'model_id': pxt.String,
            'created_at': pxt.Timestamp,
            'first_version_id': pxt.String | None,
            'first_dataset': pxt.String | None,
            'first_example_id': pxt.String | None,
        },
        primary_key='request_hash',
    )
    old.add_computed_column(response=complete(old.request), on_error='ignore')
    rows = []
    for prompt in ('hello', 'please fail'):
        request = {
            'model': 'openai:fake',
            'model_id': 'openai:fake@x',
            'params': {},
            'prompt': prompt,
            'constraint': None,
        }
        rows.append(
            {'request_hash': store.request_hash(request), 'request': request, 'model_id': 'openai:fake@x',
             'created_at': utc_now(), 'first_version_id': 'r:v1', 'first_dataset': 'd', 'first_example_id': prompt}
        )  # fmt: skip
    old.insert(rows, on_error='ignore')
    upgraded = tables.requests()
    assert 'error' in upgraded.columns() and upgraded.count() == 2
    answers = store.lookup([r['request_hash'] for r in rows])
    ok, failed = answers[rows[0]['request_hash']], answers[rows[1]['request_hash']]
    assert ok['text'] == 'ok:hello' and ok['error'] is None and ok['reused']
    assert failed['text'] is None and 'the endpoint answered 500' in failed['error']
    assert store.requests_for([rows[0]['request_hash']])[rows[0]['request_hash']]['first_example_id'] == 'hello'
    assert pxt.list_tables(tables.STAGING_DIR) == []


def test_a_one_slot_server_answers_every_row_at_the_default_concurrency(ws, monkeypatch):
    """A server that answers one request at a time (a llama.cpp server with one slot). At the default concurrency
    of 8, requests queue there until they time out; the store backs off to what the server takes and answers every
    row. Times are scaled down 20-fold: a 1.5 s timeout (default 30 s), 0.3 s per answer."""
    slot = threading.Lock()

    def answer(body):
        with slot:  # one at a time; a client that gave up still holds its turn, as on a real server
            time.sleep(0.3)
        return Canned(200, completion_body('ok'))

    for name in ('WORKSPACE_CONCURRENCY', 'WORKSPACE_MAX_ATTEMPTS', 'WORKSPACE_TIMEOUT_ATTEMPTS'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('WORKSPACE_REQUEST_TIMEOUT', '1.5')
    monkeypatch.setenv('WORKSPACE_RETRY_BASE_DELAY', '0.05')
    with OpenAICompatibleServer(answer) as server:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{server.url}/v1')
        batch = store.answer_many([(_request(f'slot{i}'), (None, None, None)) for i in range(24)])
    assert len(batch.answers) == 24 and [a['error'] for a in batch.answers.values() if a['error']] == []
    assert len(server.received) < 24 * 2  # it backed off: few requests were sent twice


def test_the_concurrency_backs_off_on_queueing_and_overload_and_grows_back():
    limiter = store._Concurrency(8)
    assert limiter.allowed == 8
    for k in range(1, 9):  # a one-slot server: the k-th of 8 queued answers takes k times the service time
        limiter.answered(0.3 * k)
    assert limiter.allowed <= 2
    limiter.overloaded()
    assert limiter.allowed == 1
    for _ in range(60):  # answers in time: additive increase back to the configured level
        limiter.answered(0.3)
    assert limiter.allowed == 8


def test_a_store_made_with_the_old_local_decoding_keeps_its_answers_and_the_new_one_asks_afresh(
    ws, tiny_tickets, monkeypatch
):
    tiny = ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')
    v = ws.create_version(
        'router', template='Ticket: {{ text }}\nCategory:', output=ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL'])
    )
    monkeypatch.setenv('WORKSPACE_LOCAL_DECODING', 'blocks64')  # the decoding (and identity) until 2026-12
    old = ws.evaluate(v, tiny, 'dev', progress=False)
    old_rows = old.rows()[['request_hash', 'output']].copy()
    assert old.calls == 6
    monkeypatch.delenv('WORKSPACE_LOCAL_DECODING')
    new = ws.evaluate(v, tiny, 'dev', progress=False)
    assert new.calls == 6  # another decoding is another model identity: asked afresh, not mixed in
    assert set(new.rows()['request_hash']).isdisjoint(old_rows['request_hash'])
    assert ws.evaluate(v, tiny, 'dev', progress=False).calls == 0
    monkeypatch.setenv('WORKSPACE_LOCAL_DECODING', 'blocks64')
    back = ws.evaluate(v, tiny, 'dev', progress=False)
    assert back.calls == 0 and back.rows()[['request_hash', 'output']].equals(old_rows)


def test_a_killed_sessions_journal_is_replayed_into_the_store_once(server):
    """A journal left unlocked (its process died) gives its answers to the table; what it had sent without an
    answer is counted as repeated when it is sent again; a journal still held by a live session is left alone."""
    from workspace.storage import journal

    answered, in_flight = (store._identity(_request(p)) for p in ('done', 'flying'))
    keys = [store.request_hash(r) for r in (answered, in_flight)]
    dead = journal.Journal('dead-session')
    dead.sent(keys[0])
    dead.sent(keys[1])
    dead.answered(store._row(keys[0], answered, (None, None, None), {'text': 'from the journal'}, None))
    dead.close(done=False)  # as SIGKILL leaves it: written, unlocked
    alive = journal.Journal('live-session')
    alive.sent('not-this-one')
    try:
        batch = store.answer_many([(_request(p), (None, None, None)) for p in ('done', 'flying')])
        assert batch.answers[keys[0]]['text'] == 'from the journal' and keys[0] not in batch.called
        assert batch.called == {keys[1]} and batch.repeated == {keys[1]}
        assert len(server.received) == 1
        assert not dead.path.exists() and alive.path.exists()
    finally:
        alive.close(done=True)
