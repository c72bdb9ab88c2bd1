"""Serving: 50 concurrent clients for 20 seconds against POST /v1/render of `prompt-workspace serve`.

The server runs in its own process on the embedded store (as in production); the clients are asyncio tasks in
one process sharing one aiohttp connection pool (aiohttp rather than httpx: on a 2-core machine the load generator
shares the CPU with the server, and aiohttp's client spends about a third of httpx's CPU per request). Two rules
are active (an injection check on the input, a PII check on the prompt), so the figures include checking them.

Two loads: *back-to-back*, each client sending its next request as soon as the previous one is answered (the
server's saturation: latency is then the queue of 50 in-flight requests, Little's law), and *paced*, each client
sending one request every `BENCH_SERVE_INTERVAL_MS` (default 100 ms: 500 requests/s offered), the way 50
application instances would call it. Each load runs twice: alone, and beside one more client that renders a slow
template over and over (a loop that grows with the square of its input, accepted at creation and stopped by the
render time limit, `WORKSPACE_RENDER_TIMEOUT_S`, 5 s by default): the fast clients' p99 should not move.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

from workspace.serving.keys import create_key

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = int(os.environ.get('BENCH_SERVE_CLIENTS', 50))
SECONDS = float(os.environ.get('BENCH_SERVE_SECONDS', 20))
INTERVAL = float(os.environ.get('BENCH_SERVE_INTERVAL_MS', 100)) / 1000


#: A template whose loop grows with the square of its input: quick on the placeholder input it is checked with at
#: creation, 36 million iterations (stopped by the render time limit) on 6,000 characters.
SLOW = '{% for a in text %}{% for b in text %}{% endfor %}{% endfor %}Ticket: {{ text }}\nCategory:'


def _setup() -> str:
    import workspace as ws

    v1 = ws.create_version('ticket_router', template='Ticket: {{ text }}\nCategory:', output=ws.choice(['A', 'B']))
    ws.set_label(v1, 'production')
    ws.create_version('slow_router', template=SLOW, output=ws.choice(['A', 'B']))
    ws.set_rule('no_injection', 'injection', stage='input', enforcement='block')
    ws.set_rule('no_pii', 'pii', stage='prompt', enforcement='warn')
    return create_key('bench', 'serve', rate=1_000_000)


async def _client(
    http: aiohttp.ClientSession, stop: float, latencies: list[float], errors: list[str], n: int, interval: float
) -> None:
    i = 0
    next_at = time.perf_counter() + interval * n / CLIENTS  # paced clients start spread over one interval
    while time.perf_counter() < stop:
        if interval:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += interval
        body = {'version': 'ticket_router@production', 'fields': {'text': f'My parcel {n}-{i} is late'}, 'unit_id': n}
        start = time.perf_counter()
        try:
            async with http.post('/v1/render', json=body) as response:
                await response.read()
                if response.status != 200:
                    errors.append(str(response.status))
        except aiohttp.ClientError as e:
            errors.append(type(e).__name__)
        latencies.append(time.perf_counter() - start)
        i += 1


async def _slow_client(http: aiohttp.ClientSession, stop: float, slow: list[tuple[float, int]]) -> None:
    """Render the slow template again and again until `stop`; record (seconds, status) of each."""
    body = {'version': 'slow_router', 'fields': {'text': 'x' * 6000}}
    while time.perf_counter() < stop:
        start = time.perf_counter()
        async with http.post('/v1/render', json=body) as response:
            await response.read()
            slow.append((time.perf_counter() - start, response.status))


async def _load(
    url: str, key: str, interval: float, slow: list[tuple[float, int]] | None = None
) -> tuple[list[float], list[str], float]:
    connector = aiohttp.TCPConnector(limit=CLIENTS + 1)
    headers = {'Authorization': f'Bearer {key}'}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector, timeout=timeout) as http:
        for _ in range(50):  # warm up: connections, caches
            body = {'version': 'ticket_router@production', 'fields': {'text': 'hi'}}
            async with http.post('/v1/render', json=body) as response:
                await response.read()
        latencies: list[float] = []
        errors: list[str] = []
        start = time.perf_counter()
        clients = [_client(http, start + SECONDS, latencies, errors, n, interval) for n in range(CLIENTS)]
        if slow is not None:
            clients.append(_slow_client(http, start + SECONDS, slow))
        await asyncio.gather(*clients)
        return latencies, errors, time.perf_counter() - start


def _row(name: str, latencies: list[float], errors: list[str], wall: float) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f'| {name} | {len(ms):,} | {len(ms) / wall:,.0f} | {p50:.1f} | {p99:.1f} | {len(errors)} |'


def run() -> list[str]:
    key = _setup()
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    server = subprocess.Popen(
        [sys.executable, '-m', 'workspace.jobs.cli', 'serve', '--port', str(port)], cwd=ROOT, env=env
    )
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f'{url}/healthz').status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('the server did not start')
            time.sleep(0.2)
        paced = f'paced, one request per client every {INTERVAL * 1000:g} ms'
        slow: list[tuple[float, int]] = []
        loads = [
            ('back-to-back', *asyncio.run(_load(url, key, 0.0))),
            ('back-to-back, beside the slow template', *asyncio.run(_load(url, key, 0.0, slow))),
            (paced, *asyncio.run(_load(url, key, INTERVAL))),
            (f'{paced}, beside the slow template', *asyncio.run(_load(url, key, INTERVAL, slow))),
        ]
        pending = httpx.get(f'{url}/healthz').json()['executions_pending']
    finally:
        server.terminate()
        server.wait(timeout=60)
    import workspace as ws
    from workspace.storage import tables

    logged = tables.executions().count()
    del ws
    return [
        '## Serving',
        '',
        f'{CLIENTS} concurrent clients for {SECONDS:g} s each against `POST /v1/render` (server in its own process, '
        'embedded store, an injection rule on the input and a PII rule on the prompt):',
        '',
        '| load | requests | requests/s | p50 (ms) | p99 (ms) | errors |',
        '|---|---|---|---|---|---|',
        *(_row(*load) for load in loads),
        '',
        f'Slow template requests beside them: {len(slow)}, each answered in {min(t for t, _ in slow):.1f} to '
        f'{max(t for t, _ in slow):.1f} s, statuses {sorted({c for _, c in slow})} (400: stopped by the render '
        'time limit).',
        '',
        f'(executions logged: {logged:,}; still buffered when the load stopped: {pending}, written at shutdown.)',
    ]
