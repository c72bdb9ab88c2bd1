"""Model backends: model specs, the embedded model's label constraint, and the Groq and OpenAI-compatible
backends against a local server speaking their protocol (retries, rate limits, errors, keys kept secret)."""

from __future__ import annotations

import json

import pytest
from openai_server import Canned, OpenAICompatibleServer, completion_body

from workspace.core.runs import lineage
from workspace.errors import BackendError
from workspace.storage import backends
from workspace.storage.backends import ChatBackend, RetryPolicy, parse_model
from workspace.storage.backends.remote import _RateLimiter

SECRET = 'gsk_test_secret_value_123'


@pytest.mark.parametrize(
    'spec,expected',
    [
        ('local', ('local', '')),
        ('local:/models/x.gguf', ('local', '/models/x.gguf')),
        ('groq:llama-3.1-8b-instant', ('groq', 'llama-3.1-8b-instant')),
        ('openai:qwen2.5:0.5b', ('openai', 'qwen2.5:0.5b')),
    ],
)
def test_parse_model(spec, expected):
    assert parse_model(spec) == expected


@pytest.mark.parametrize('spec', ['gpt4', 'groq:', 'openai', 'hf:model'])
def test_parse_model_refuses_unknown_forms(spec):
    with pytest.raises(BackendError, match=r"use 'local', 'local:/path/to/model.gguf', 'groq:<model>'"):
        parse_model(spec)


def test_model_identity(tmp_path, monkeypatch):
    assert backends.model_identity('local').startswith('local:gemma-3-270m-q4_k_m.gguf@a5fd3b62230a')
    model = tmp_path / 'tiny.gguf'
    model.write_bytes(b'x' * 10)
    assert backends.model_identity(f'local:{model}') == 'local:tiny.gguf@10+decode=paragraphs64'
    with pytest.raises(BackendError, match=r'does not exist; give the path of a .gguf file'):
        backends.model_identity(f'local:{tmp_path / "missing.gguf"}')
    monkeypatch.setenv('OPENAI_BASE_URL', 'http://127.0.0.1:9/v1')
    assert backends.model_identity('openai:m') == 'openai:m@http://127.0.0.1:9/v1'


def test_label_constraint_spells_exactly_one_label():
    local = backends.get_backend('local')
    labels = ['yes', 'no', 'yesterday', 'TECHNICAL']
    for prompt in ['Is the sky blue? Answer:', 'When was it? Answer:', 'Which team? Answer:', 'Reply:']:
        out = local.complete({'prompt': prompt, 'params': {'max_tokens': 16}, 'constraint': {'choice': labels}})
        assert out['text'].strip() in labels
        assert out['completion_tokens'] <= 4
    assert backends.choice_grammar(['a"b', 'c']) == 'root ::= " "? ("a\\"b" | "c")'


def test_groq_backend_end_to_end_against_local_server(ws, tiny_tickets, monkeypatch):
    monkeypatch.setenv('GROQ_API_KEY', SECRET)
    monkeypatch.setenv('WORKSPACE_GROQ_RPM', '0')
    with OpenAICompatibleServer() as server:
        monkeypatch.setenv('GROQ_BASE_URL', server.url)
        tiny = ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')
        v1 = ws.create_version(
            'router',
            template='Ticket: {{ text }}\nCategory:',
            model='groq:fake-model',
            output=ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL']),
        )
        run = ws.evaluate(v1, tiny, 'dev', progress=False)
        assert run.calls == 6 and run.errors == 0
        assert run.predictions()['output'].notna().all()
        assert {r['path'] for r in server.received} == {'/openai/v1/chat/completions'}
        assert all(r['headers']['Authorization'] == f'Bearer {SECRET}' for r in server.received)
        assert server.received[0]['body']['model'] == 'fake-model'
        assert ws.evaluate(v1, tiny, 'dev', progress=False).calls == 0
        # the key goes over the wire and nowhere else: not in any table
        import pixeltable as pxt

        from workspace import config

        for path in pxt.list_tables(config.ROOT_DIR, recursive=True):
            assert SECRET not in pxt.get_table(path).collect().to_pandas().to_json()


def test_openai_compatible_backend(ws, tiny_tickets, monkeypatch):
    with OpenAICompatibleServer() as server:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{server.url}/v1')
        tiny = ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')
        v1 = ws.create_version(
            'router',
            template='Ticket: {{ text }}\nCategory:',
            model='openai:local-gemma',
            output=ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL']),
        )
        run = ws.evaluate(v1, tiny, 'dev', progress=False)
        assert run.calls == 6 and run.errors == 0
        assert {r['path'] for r in server.received} == {'/v1/chat/completions'}
        assert lineage(v1, 'tiny', 'a1')['model_id'] == f'openai:local-gemma@{server.url}/v1'


def _backend(server: OpenAICompatibleServer, sleeps: list[float], **kwargs) -> ChatBackend:
    return ChatBackend(
        'groq',
        'fake-model',
        key_env='GROQ_API_KEY',
        base_url=server.url,
        key_required=True,
        retry=RetryPolicy(max_attempts=4, base_delay=0.01),
        sleep=sleeps.append,
        **kwargs,
    )


REQUEST = {'prompt': 'Hello', 'params': {'max_tokens': 4}}


def test_retry_on_429_then_success_honours_retry_after(monkeypatch):
    monkeypatch.setenv('GROQ_API_KEY', SECRET)
    with OpenAICompatibleServer(lambda body: Canned(200, completion_body('ok'))) as server:
        server.script = [Canned(429, {'error': {'message': 'rate limited'}}, {'retry-after': '0.25'})]
        sleeps: list[float] = []
        backend = _backend(server, sleeps)
        out = backend.complete(REQUEST)
        assert out['text'] == 'ok' and backend.calls == 1 and backend.attempts == 2
        assert sleeps == [0.25] and len(server.received) == 2


def test_retry_on_5xx_and_timeouts_with_exponential_backoff(monkeypatch):
    monkeypatch.setenv('GROQ_API_KEY', SECRET)
    with OpenAICompatibleServer(lambda body: Canned(200, completion_body('ok'))) as server:
        server.script = [
            Canned(500, {'error': {'message': 'boom'}}),
            Canned(200, completion_body('late'), delay=1.0),  # slower than the timeout
            Canned(503, {'error': {'message': 'unavailable'}}),
        ]
        sleeps: list[float] = []
        monkeypatch.setenv('WORKSPACE_REQUEST_TIMEOUT', '0.3')
        backend = _backend(server, sleeps)
        assert backend.complete(REQUEST)['text'] == 'ok'
        assert backend.attempts == 4
        assert len(sleeps) == 3 and all(0.5 * 0.01 * 2**i <= s <= 0.01 * 2**i for i, s in enumerate(sleeps))


def test_errors_that_retrying_cannot_fix_fail_at_once_without_leaking_the_key(monkeypatch):
    monkeypatch.setenv('GROQ_API_KEY', SECRET)
    with OpenAICompatibleServer(lambda body: Canned(401, {'error': {'message': f'invalid key {SECRET}'}})) as server:
        backend = _backend(server, [])
        with pytest.raises(BackendError) as excinfo:
            backend.complete(REQUEST)
        assert backend.attempts == 1
        assert 'groq request failed after 1 attempt(s)' in str(excinfo.value)
        assert SECRET not in str(excinfo.value) and '***' in str(excinfo.value)


def test_gives_up_after_max_attempts(monkeypatch):
    monkeypatch.setenv('GROQ_API_KEY', SECRET)
    with OpenAICompatibleServer(lambda body: Canned(503, {'error': {'message': 'down'}})) as server:
        backend = _backend(server, [])
        with pytest.raises(BackendError, match=r'failed after 4 attempt\(s\)'):
            backend.complete(REQUEST)


def test_missing_key_fails_before_any_call(ws, tiny_tickets, monkeypatch):
    monkeypatch.delenv('GROQ_API_KEY', raising=False)
    tiny = ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')
    v1 = ws.create_version('router', template='{{ text }}', model='groq:llama-3.1-8b-instant')
    with pytest.raises(BackendError, match=r'GROQ_API_KEY is not set; export it'):
        ws.evaluate(v1, tiny, 'dev', progress=False)
    assert ws.list_runs().empty


def test_a_failing_row_is_recorded_and_the_run_goes_on(ws, tiny_tickets, monkeypatch):
    monkeypatch.setenv('GROQ_API_KEY', SECRET)
    monkeypatch.setenv('WORKSPACE_GROQ_RPM', '0')
    monkeypatch.setenv('WORKSPACE_MAX_ATTEMPTS', '2')
    monkeypatch.setenv('WORKSPACE_RETRY_BASE_DELAY', '0.01')

    def answer(body):
        if 'crashes' in body['messages'][-1]['content']:
            return Canned(500, {'error': {'message': 'upstream exploded'}})
        return Canned(200, completion_body('TECHNICAL'))

    with OpenAICompatibleServer(answer) as server:
        monkeypatch.setenv('GROQ_BASE_URL', server.url)
        tiny = ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')
        v1 = ws.create_version(
            'router',
            template='{{ text }}',
            model='groq:fake-model',
            output=ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL']),
        )
        run = ws.evaluate(v1, tiny, 'dev', progress=False)
        frame = run.predictions().set_index('example_id')
        assert run.errors == 1 and frame.loc['a5', 'error'].startswith('BackendError: groq request failed after 2')
        assert frame.drop(index='a5')['prediction'].eq('TECHNICAL').all()


def test_rate_limiter_spaces_requests():
    sleeps: list[float] = []
    limiter = _RateLimiter(requests_per_minute=120)
    for _ in range(3):
        limiter.wait(sleeps.append)
    # the fake sleep does not pass time, so the third request is booked one interval after the second
    assert len(sleeps) == 2 and 0.45 < sleeps[0] <= 0.5 and 0.95 < sleeps[1] <= 1.0
    unlimited = _RateLimiter(requests_per_minute=0)
    unlimited.wait(sleeps.append)
    assert len(sleeps) == 2


def test_request_hash_ignores_the_spec_and_keys():
    from workspace.storage.store import request_hash

    a = {'model': 'local', 'model_id': 'm@1', 'params': {'t': 0}, 'prompt': 'p', 'constraint': None}
    b = {**a, 'model': 'local:/path/same.gguf'}
    assert request_hash(a) == request_hash(b)
    assert request_hash(a) != request_hash({**a, 'prompt': 'p '})
    assert json.dumps(a)  # requests are plain JSON


def test_llama_cpp_log_goes_to_logging_not_to_stderr(capfd, caplog):
    """llama.cpp logs context set-up ("llama_kv_cache_iswa: using full-size SWA cache") to stderr, which a notebook
    shows in red; the backend sends it to the `workspace.llama_cpp` logger instead."""
    import logging

    from workspace.storage.backends import LocalBackend, embedded_model_path

    backend = LocalBackend(embedded_model_path())
    try:
        with caplog.at_level(logging.DEBUG, logger='workspace.llama_cpp'):
            backend.complete({'prompt': 'Paris is the capital of', 'params': {'max_tokens': 2}})
        out, err = capfd.readouterr()
        assert 'llama_' not in out + err and 'ggml' not in out + err
        assert any(r.name == 'workspace.llama_cpp' for r in caplog.records)  # still there for whoever asks
    finally:
        backend.close()


# --- chat requests ----------------------------------------------------------------------------------------------

CHAT = [
    {'role': 'system', 'content': 'Route the ticket to one of: {{ labels | join(", ") }}. Answer with the category.'},
    {'role': 'user', 'content': 'Ticket: {{ text }}'},
]


def test_a_chat_version_sends_its_messages_to_a_chat_api(ws, tiny_tickets, monkeypatch):
    def answer(body):
        return Canned(200, completion_body('DELIVERY' if 'parcel' in body['messages'][-1]['content'] else 'BILLING'))

    with OpenAICompatibleServer(answer) as server:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{server.url}/v1')
        tiny = ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')
        demos = [{'text': 'My order says delivered but nothing came.', 'expected': 'DELIVERY'}]
        chat = ws.create_version(
            'router',
            messages=CHAT,
            model='openai:fake',
            output=ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL']),
            demos=demos,
        )
        run = ws.evaluate(chat, tiny, 'dev', progress=False)
        assert run.calls == 6 and run.errors == 0 and len(server.received) == 6
        bodies = {b['body']['messages'][-1]['content']: b['body'] for b in server.received}
        body = bodies['Ticket: I was charged twice for the same order.']
        assert body['messages'] == [
            {
                'role': 'system',
                'content': 'Route the ticket to one of: BILLING, DELIVERY, TECHNICAL. Answer with the category.',
            },
            {'role': 'user', 'content': 'Ticket: My order says delivered but nothing came.'},
            {'role': 'assistant', 'content': 'DELIVERY'},
            {'role': 'user', 'content': 'Ticket: I was charged twice for the same order.'},
        ]
        assert body['model'] == 'fake' and body['max_tokens'] == 16
        assert ws.evaluate(chat, tiny, 'dev', progress=False).calls == 0  # the messages are the request's identity
        plain = ws.create_version('router', template='Ticket: {{ text }}', model='openai:fake', output=chat.output)
        ws.evaluate(plain, tiny, 'dev', progress=False)
        assert server.received[-1]['body']['messages'][0]['role'] == 'user'  # a completion is one user message
        from workspace.storage import store

        stored = store.requests_for([run.lineage('a1')['request_hash']])
        assert (
            next(iter(stored.values()))['request']['messages'][-1]['content']
            == 'Ticket: I was charged twice for the same order.'
        )


def test_a_local_model_reads_chat_messages_through_its_chat_template():
    from workspace.storage.backends.local import chat_prompt

    gemma = (
        '{{ bos_token }}{% for m in messages %}<start_of_turn>{{ "model" if m.role == "assistant" else m.role }}\n'
        '{{ m.content }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}'
    )
    messages = [{'role': 'user', 'content': 'Ticket: late parcel'}, {'role': 'assistant', 'content': 'DELIVERY'}]
    messages.append({'role': 'user', 'content': 'Ticket: charged twice'})
    assert chat_prompt(messages, gemma, bos_token='<bos>', eos_token='<eos>') == (
        '<start_of_turn>user\nTicket: late parcel<end_of_turn>\n<start_of_turn>model\nDELIVERY<end_of_turn>\n'
        '<start_of_turn>user\nTicket: charged twice<end_of_turn>\n<start_of_turn>model\n'
    )
    # the embedded base model has no chat template: the messages as text, then the assistant's turn to complete
    assert chat_prompt(messages, None).endswith('[user]\nTicket: charged twice\n\n[assistant]\n')


def test_a_chat_version_evaluates_on_the_embedded_model(ws, tiny, local):
    chat = ws.create_version(
        'router', messages=CHAT, output=ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL']), demos=tiny.demos(per_label=1)
    )
    before = local.calls
    run = ws.evaluate(chat, tiny, 'dev', progress=False)
    assert local.calls - before == 6 == run.calls and run.errors == 0
    assert set(run.predictions()['prediction']) <= {'BILLING', 'DELIVERY', 'TECHNICAL'}
    assert ws.evaluate(chat, tiny, 'dev', progress=False).calls == 0
    rank = ws.edit(chat, output=ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL'], decode='calibrated'))
    assert ws.evaluate(rank, tiny, 'dev', progress=False).errors == 0  # content-free prompts are messages too


# --- deterministic local decoding ------------------------------------------------------------------------------

POEM_LABELS = ['negative', 'no_impact', 'positive']
POEM_TEMPLATE = (
    '{% for d in demos %}Verse: {{ d.text }}\nSentiment: {{ d.expected }}\n\n{% endfor %}Verse: {{ text }}\nSentiment:'
)
POEM_DEMOS = [
    {'text': 'with pale and weary eyes', 'expected': 'negative'},
    {'text': 'the sun rose on the hill', 'expected': 'no_impact'},
    {'text': 'and all was joy and light', 'expected': 'positive'},
    {'text': 'the night was long and cold', 'expected': 'negative'},
    {'text': 'a gate stood by the lane', 'expected': 'no_impact'},
]
POEM_VERSES = [
    'a bird sang in the morning',
    'the grave is cold and dark',
    'her laughter filled the hall with gladness',
    'the road went on by the river',
    'o sweet delight of summer days',
]


def _poem_requests(output: dict, retrieved: bool, verses: list[str] = POEM_VERSES) -> list[dict]:
    """One request per verse: with the version's fixed demos, or with demos retrieved per row (a different subset
    in another order for each verse, as nearest-neighbour retrieval gives)."""
    from workspace.core.versions import Version, build_request

    params = {'temperature': 0.0, 'max_tokens': 8, 'seed': 0, **({'stop': ['\n']} if output['kind'] == 'text' else {})}
    version = Version(
        id='poems:v1', prompt='poems', number=1, parent_id=None, template=POEM_TEMPLATE, model='local',
        params=params, output=output, demos=POEM_DEMOS[:3],
    )  # fmt: skip
    requests = []
    for i, verse in enumerate(verses):
        demos = [POEM_DEMOS[(i + j) % len(POEM_DEMOS)] for j in (2, 0, 3)] if retrieved else None
        requests.append(build_request(version, {'text': verse, 'example_id': f'p{i}'}, demos=demos))
    return requests


def test_local_answers_are_bit_identical_in_any_order():
    """Forward, reversed and shuffled: every prompt's logits and every answer (a choice under the mask, by rank,
    calibrated, free text), with fixed and with retrieved demos, are the same bits whatever was decoded before."""
    import random

    import numpy as np

    from workspace.core.versions import choice, text

    local = backends.get_backend('local')
    llm = local._load()
    outputs = [
        choice(POEM_LABELS),
        choice(POEM_LABELS, decode='rank'),
        choice(POEM_LABELS, decode='calibrated'),
        text(),
    ]
    verses = POEM_VERSES[:3]  # 24 requests: three verses are enough for every order to put a different one first
    requests = [
        r for retrieved in (False, True) for output in outputs for r in _poem_requests(output, retrieved, verses)
    ]
    assert all(r['model_id'].endswith('+decode=paragraphs64') for r in requests)
    shuffled = random.Random(7).sample(range(len(requests)), len(requests))
    results = []
    for order in (list(range(len(requests))), list(range(len(requests)))[::-1], shuffled):
        answers, logits = {}, {}
        for i in order:
            answers[i] = local.complete(requests[i])
            prompt = requests[i]['prompt']
            if prompt in logits:  # the four outputs of one verse send the same prompt: its logits once per order
                continue
            with local._lock:
                tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
                logits[prompt] = np.array(local._prefill(llm, tokens, 'paragraphs')).tobytes()
        results.append(([(a['text'], a.get('scores')) for _, a in sorted(answers.items())], sorted(logits.items())))
    assert results[0] == results[1] == results[2]  # bit for bit: scores are floats, logits raw bytes
    assert {a for a, _ in results[0][0][: len(verses)]} <= {f' {label}' for label in POEM_LABELS}


def test_local_answers_are_the_same_bits_with_one_thread_or_two():
    """WORKSPACE_LOCAL_THREADS changes speed only: reading prompts and decoding with one thread or with two gives
    the same answers and label scores, bit for bit (the test session runs its models with one thread)."""
    from workspace.core.versions import choice, text
    from workspace.storage.backends.local import LocalBackend

    local = backends.get_backend('local')
    requests = [
        r
        for output in (choice(POEM_LABELS), choice(POEM_LABELS, decode='calibrated'), text())
        for r in _poem_requests(output, True, POEM_VERSES[:1])
    ]
    answers = {}
    for threads in (1, 2):
        model = LocalBackend(local.path, n_ctx=local.n_ctx, n_threads=threads)
        try:
            answers[threads] = [(a['text'], a.get('scores')) for a in map(model.complete, requests)]
            assert model._load().context_params.n_threads_batch == threads  # prompts read with as many threads
        finally:
            model.close()
    assert answers[1] == answers[2]


def test_the_default_threads_follow_the_cores_other_processes_leave_free(monkeypatch):
    """Other processes' work is the machine's busy time minus this process's own; the threads are the cores minus
    that work, rounded, at least one, and are re-measured at most once a second."""
    import subprocess
    import sys
    import time

    from workspace.storage.backends import local as local_module

    samples = iter([(0.0, 0.0, 0.0), (1.0, 1.9, 0.95), (2.0, 3.85, 2.85), (2.5, 4.8, 3.3), (3.0, 5.0, 3.3)])
    monkeypatch.setattr(local_module._FreeCores, '_sample', lambda self: next(samples))
    cores = local_module._FreeCores(2)
    assert cores.measure() == 1  # 1.9 s busy in 1 s, 0.95 of it ours: another process held a core
    assert cores.measure() == 2  # 1.95 s busy, 1.9 of it ours (our own threads spinning are not other work)
    assert cores.measure() == 2  # half a second later: not measured again
    assert local_module._FreeCores(1).cores == 1
    monkeypatch.undo()

    loop = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(0.2)
        cores = local_module._FreeCores(2)
        time.sleep(1.2)
        assert cores.measure() == 1  # the busy loop takes one of two cores, whatever else runs
    finally:
        loop.kill()
        loop.wait()


def test_paragraph_chunks_reuse_the_shared_demos_and_end_where_the_prompt_says():
    local = backends.get_backend('local')
    llm = local._load()
    first, second = (r['prompt'] for r in _poem_requests(choice_output(), False)[:2])
    a = llm.tokenize(first.encode(), add_bos=True, special=True)
    b = llm.tokenize(second.encode(), add_bos=True, special=True)
    starts_a, starts_b = local._chunk_starts(llm, a, 'paragraphs'), local._chunk_starts(llm, b, 'paragraphs')
    demos_end = len(llm.tokenize(first.rsplit('Verse: ', 1)[0].encode(), add_bos=True, special=True))
    assert starts_a[-1] == starts_b[-1] == demos_end  # each row decodes only its own part, in one call
    assert len(starts_a) == 1 + len(POEM_DEMOS[:3])  # one chunk per demo paragraph
    long = llm.tokenize(('word ' * 200).encode(), add_bos=True)
    assert local._chunk_starts(llm, long, 'paragraphs') == list(range(0, len(long), 64))  # no break: 64 at most
    with local._lock:
        local._prefill(llm, a, 'paragraphs')
        assert local._reusable(b, 'paragraphs') >= demos_end


def choice_output() -> dict:
    from workspace.core.versions import choice

    return choice(POEM_LABELS)


def test_the_decoding_is_part_of_the_local_model_identity(monkeypatch):
    plain = backends.model_identity('local')
    assert plain.endswith('+decode=paragraphs64')
    monkeypatch.setenv('WORKSPACE_LOCAL_DECODING', 'blocks64')
    assert backends.model_identity('local') == plain.removesuffix('+decode=paragraphs64')  # the identity until now
    monkeypatch.setenv('WORKSPACE_LOCAL_DECODING', 'fastest')
    with pytest.raises(BackendError, match=r"WORKSPACE_LOCAL_DECODING='fastest' is not a decoding; use 'paragraphs'"):
        backends.model_identity('local')
    assert backends.model_identity('openai:m').startswith('openai:m@')  # remote identities do not change
