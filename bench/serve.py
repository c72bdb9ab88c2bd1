"""Serving: 50 concurrent clients for 20 seconds against POST /v1/render of `prompt-workspace serve`.

The server runs in its own process on the embedded store (as in production); the clients are asyncio tasks in
one process sharing one aiohttp connection pool (aiohttp rather than httpx: on a 2-core machine the load generator
shares the CPU with the server, and aiohttp's client spends about a third of httpx's CPU per request). Two rules
are active (an injection check on the input, a PII check on the prompt), so the figures include checking them.

Two loads: *back-to-back*, each client sending its next request as soon as the previous one is answered (the
server's saturation: latency is then the queue of 50 in-flight requests, Little's law), and *paced*, each client
sending one request every `BENCH_SERVE_INTERVAL_MS` (default 100 ms: 500 requests/s offered), the way 50
application instances would call it.
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


def _setup() -> str:
    import workspace as ws

    v1 = ws.create_version('ticket_router', template='Ticket: {{ text }}\nCategory:', output=ws.choice(['A', 'B']))
    ws.set_label(v1, 'production')
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


async def _load(url: str, key: str, interval: float) -> tuple[list[float], list[str], float]:
    connector = aiohttp.TCPConnector(limit=CLIENTS)
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
        clients = (_client(http, start + SECONDS, latencies, errors, n, interval) for n in range(CLIENTS))
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
        loads = [
            ('back-to-back', *asyncio.run(_load(url, key, 0.0))),
            (f'paced, one request per client every {INTERVAL * 1000:g} ms', *asyncio.run(_load(url, key, INTERVAL))),
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
        f'(executions logged: {logged:,}; still buffered when the load stopped: {pending}, written at shutdown.)',
    ]
