"""The request store under concurrency, crashes and secrets: two processes on the same requests pay once (in one
Pixeltable home and on a shared PostgreSQL server), an evaluation killed at any point and run again (or taken over
by another process) repeats no answered call and counts the calls it had in flight, and neither an API key nor a
password in an endpoint URL reaches any file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from openai_server import Canned, OpenAICompatibleServer, completion_body

from reliability.conftest import PREAMBLE, child_env, kill_at, paused_at, run_python, spawn_python

ROWS = 48

SETUP = f"""
rows = [{{'id': f'q{{i:03d}}', 'text': f'question number {{i}} about my order', 'category': 'BILLING' if i % 2 else 'DELIVERY',
          'split': 'dev'}} for i in range({ROWS})]
data = ws.import_dataset('shared', rows, input='text', expected='category', split='split', id='id', if_exists='ignore')
version = ws.create_version('shared', template='Q: {{{{ text }}}}\\nA:', model='openai:fake',
                            output=ws.choice(['BILLING', 'DELIVERY']))
"""

EVALUATE = (
    SETUP
    + """
run = ws.evaluate(version, data, 'dev', progress=False)
print(json.dumps({'calls': run.calls, 'reused': run.reused, 'errors': run.errors, 'repeated': run.repeated}))
"""
)


class Counting:
    """A local model server answering after `delay` seconds, counting what it receives per prompt."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.prompts: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, body):
        prompt = body['messages'][-1]['content']
        with self.lock:
            self.prompts.append(prompt)
        time.sleep(self.delay)
        return Canned(200, completion_body('BILLING'))


def _setup_here() -> None:
    """Make the dataset and version in this process, in the session's Pixeltable home where the children find them
    (a child of its own would spend seconds importing the workspace for it)."""
    exec(PREAMBLE + SETUP, {})


def _run_two(env: dict[str, str]) -> list[dict]:
    """Start two processes evaluating the same version at once; return what each reported."""
    procs = [
        subprocess.Popen(
            [sys.executable, '-c', 'import json, os, sys\nimport workspace as ws\n' + EVALUATE],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _check_paid_once(model: Counting, results: list[dict]) -> None:
    assert len(model.prompts) == ROWS == len(set(model.prompts)), 'a request was sent twice'
    assert sum(r['calls'] for r in results) == ROWS and sum(r['reused'] for r in results) == ROWS
    assert all(r['errors'] == 0 for r in results)


def test_two_processes_evaluating_the_same_requests_pay_once(ws):
    model = Counting(delay=0.1)
    with OpenAICompatibleServer(model) as server:
        env = child_env(OPENAI_BASE_URL=f'{server.url}/v1', WORKSPACE_MAX_ATTEMPTS='1', WORKSPACE_CONCURRENCY='4')
        _setup_here()  # the dataset and version exist before the race: the race is on the requests
        results = _run_two(env)
    _check_paid_once(model, results)


def test_two_processes_on_a_shared_postgres_server_pay_once(shared_db):
    model = Counting(delay=0.1)
    with OpenAICompatibleServer(model) as server:
        env = shared_db.env(OPENAI_BASE_URL=f'{server.url}/v1', WORKSPACE_MAX_ATTEMPTS='1', WORKSPACE_CONCURRENCY='4')
        run_python(SETUP, env=env)
        results = _run_two(env)
    _check_paid_once(model, results)


def _stored_prompts(env: dict[str, str]) -> list[str]:
    return run_python(
        'from workspace.storage import tables\nt = tables.requests()\n'
        'print(json.dumps([r["request"]["prompt"] for r in t.select(t.request).collect()]))',
        env=env,
    )


def _check_no_answered_call_repeated(model: Counting, result: dict, in_flight: int) -> None:
    """Every prompt reached the server once, except the calls in flight at the kill (at most `in_flight`), which
    the run reports as repeated."""
    seen: dict[str, int] = {}
    for prompt in model.prompts:
        seen[prompt] = seen.get(prompt, 0) + 1
    assert len(seen) == ROWS and max(seen.values()) <= 2
    twice = sum(1 for n in seen.values() if n == 2)
    assert twice <= in_flight
    assert result['repeated'] == twice and result['errors'] == 0
    assert result['calls'] + result['reused'] >= ROWS


def test_a_killed_evaluation_repeats_no_stored_answer(ws):
    """Killed at a random moment, with answers written to the table every 0.3 s: the rerun asks only what no
    answer was received for (the journal keeps what the table had not been given yet)."""
    model = Counting(delay=0.05)
    with OpenAICompatibleServer(model) as server:
        env = child_env(
            OPENAI_BASE_URL=f'{server.url}/v1', WORKSPACE_MAX_ATTEMPTS='1', WORKSPACE_CONCURRENCY='1',
            WORKSPACE_FLUSH_SECONDS='0.3',
        )  # fmt: skip
        _setup_here()
        child = spawn_python(EVALUATE, env=env)
        try:
            deadline = time.monotonic() + 300
            while len(model.prompts) < ROWS // 2:
                assert child.poll() is None, 'the evaluation finished before it could be killed'
                assert time.monotonic() < deadline
                time.sleep(0.02)
            os.killpg(child.pid, signal.SIGKILL)
        finally:
            child.wait()
        sent_before = list(model.prompts)
        stored = _stored_prompts(env)
        assert set(stored) <= set(sent_before)
        result = run_python(EVALUATE, env=env)  # started again
    assert not set(model.prompts[len(sent_before) :]) & set(stored), 'a stored answer was asked again'
    _check_no_answered_call_repeated(model, result, in_flight=1)
    assert result['calls'] == ROWS - len(set(sent_before)) + result['repeated']


@pytest.mark.parametrize('point', ['store.journaled', 'store.flushed'])
@pytest.mark.parametrize('concurrency', [1, 4])
def test_a_run_killed_at_any_point_repeats_only_calls_in_flight(ws, point, concurrency):
    """SIGKILL right after an answer reached the journal (before the table), or right after a write to the table
    (before the claims are released): the rerun sends again only what was in flight, and says so."""
    model = Counting(delay=0.1)
    with OpenAICompatibleServer(model) as server:
        env = child_env(
            OPENAI_BASE_URL=f'{server.url}/v1', WORKSPACE_MAX_ATTEMPTS='1',
            WORKSPACE_CONCURRENCY=str(concurrency), WORKSPACE_FLUSH_SECONDS='0.5',
        )  # fmt: skip
        _setup_here()
        kill_at(EVALUATE, point, env=env)
        answered_before = len(model.prompts)
        result = run_python(EVALUATE, env=env)
    assert answered_before >= 1
    # the killed process was stopped on an answer it had received: the other workers' calls were in flight
    _check_no_answered_call_repeated(model, result, in_flight=concurrency - 1)


def test_a_process_taking_over_a_killed_ones_claims_repeats_only_calls_in_flight(ws):
    """Two processes on the same requests: the first claims them all and is killed after its first answer; the
    second, waiting on its claims, takes its journaled answers and sends only the rest."""
    model = Counting(delay=0.1)
    with OpenAICompatibleServer(model) as server:
        env = child_env(OPENAI_BASE_URL=f'{server.url}/v1', WORKSPACE_MAX_ATTEMPTS='1', WORKSPACE_CONCURRENCY='4')
        _setup_here()
        with paused_at(EVALUATE, 'store.journaled', env=env):
            second = subprocess.Popen(
                [sys.executable, '-c', 'import json, os, sys\nimport workspace as ws\n' + EVALUATE],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            time.sleep(3)  # it finds every request claimed and waits
        out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    _check_no_answered_call_repeated(model, result, in_flight=3)
    assert result['reused'] >= 1  # the killed process's journaled answers


def _grep(folder: Path, needle: bytes) -> list[str]:
    found = []
    for path in folder.rglob('*'):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def test_no_key_and_no_url_password_reaches_any_file(ws, tmp_path):
    key, password = 'gsk_MARKER_KEY_9f1c2e', 'MARKER_PASSWORD_77aa'

    def answer(body):
        prompt = body['messages'][-1]['content']
        if 'refuse' in prompt:  # an error whose text holds the key, as a real server might echo it
            return Canned(401, {'error': {'message': f'invalid api key {key}'}})
        return Canned(200, completion_body('BILLING'))

    home = Path(os.environ['PIXELTABLE_HOME'])
    with OpenAICompatibleServer(answer) as server:
        url = server.url.replace('http://', f'http://user:{password}@')
        env = child_env(
            OPENAI_BASE_URL=f'{url}/v1', OPENAI_API_KEY=key, GROQ_API_KEY=key, GROQ_BASE_URL=f'{url}/openai/v1',
            WORKSPACE_MAX_ATTEMPTS='1', WORKSPACE_BREAKER_FAILURES='100',
            WORKSPACE_GROQ_RPM='0',  # Groq's client-side pace (30 a minute) is not what this test is about
        )  # fmt: skip
        out = run_python(
            SETUP
            + """
ws.evaluate(version, data, 'dev', progress=False)
groq = ws.edit(version, model='groq:fake')
ws.evaluate(groq, data, 'dev', progress=False)
refused = ws.edit(version, template='refuse {{ text }}')
run = ws.evaluate(refused, data, 'dev', progress=False)
failures = run.failures()
print(json.dumps({'errors': run.errors, 'error': str(failures['error'].iloc[0]), 'lineage': str(run.lineage('q000'))}))
""",
            env=env,
        )
    assert out['errors'] == ROWS and 'invalid api key ***' in out['error']
    assert password not in out['lineage'] and key not in out['error']
    folders = [home, Path.cwd() / 'runs', Path.cwd() / 'reports']
    for needle in (key.encode(), password.encode()):
        leaks = [hit for folder in folders if folder.exists() for hit in _grep(folder, needle)]
        assert leaks == [], f'{needle!r} reached {leaks}'
