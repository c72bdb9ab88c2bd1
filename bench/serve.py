"""Serving: 50 concurrent clients for 20 seconds against POST /v1/render of `prompt-workspace serve`.

The server runs in its own process on the embedded store (as in production); the clients are asyncio tasks with
one httpx connection pool, each sending its next request as soon as the previous one is answered. Two rules are
active (an injection check on the input, a PII check on the prompt), so the figures include checking them.
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

import httpx

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = int(os.environ.get('BENCH_SERVE_CLIENTS', 50))
SECONDS = float(os.environ.get('BENCH_SERVE_SECONDS', 20))


def _setup() -> str:
    import workspace as ws

    v1 = ws.create_version('ticket_router', template='Ticket: {{ text }}\nCategory:', output=ws.choice(['A', 'B']))
    ws.set_label(v1, 'production')
    ws.set_rule('no_injection', 'injection', stage='input', enforcement='block')
    ws.set_rule('no_pii', 'pii', stage='prompt', enforcement='warn')
    return ws.create_key('bench', 'serve', rate=1_000_000)


async def _client(http: httpx.AsyncClient, stop: float, latencies: list[float], errors: list[str], n: int) -> None:
    i = 0
    while time.perf_counter() < stop:
        body = {'version': 'ticket_router@production', 'fields': {'text': f'My parcel {n}-{i} is late'}, 'unit_id': n}
        start = time.perf_counter()
        try:
            response = await http.post('/v1/render', json=body)
            if response.status_code != 200:
                errors.append(str(response.status_code))
        except httpx.HTTPError as e:
            errors.append(type(e).__name__)
        latencies.append(time.perf_counter() - start)
        i += 1


async def _load(url: str, key: str) -> tuple[list[float], list[str], float]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    headers = {'Authorization': f'Bearer {key}'}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as http:
        for _ in range(20):  # warm up: connections, caches
            await http.post('/v1/render', json={'version': 'ticket_router@production', 'fields': {'text': 'hi'}})
        latencies: list[float] = []
        errors: list[str] = []
        start = time.perf_counter()
        await asyncio.gather(*(_client(http, start + SECONDS, latencies, errors, n) for n in range(CLIENTS)))
        return latencies, errors, time.perf_counter() - start


def run() -> list[str]:
    key = _setup()
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    server = subprocess.Popen([sys.executable, '-m', 'workspace.cli', 'serve', '--port', str(port)], cwd=ROOT, env=env)
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
        latencies, errors, wall = asyncio.run(_load(url, key))
        pending = httpx.get(f'{url}/healthz').json()['executions_pending']
    finally:
        server.terminate()
        server.wait(timeout=60)
    import workspace as ws
    from workspace import tables

    logged = tables.executions().count()
    ms = sorted(x * 1000 for x in latencies)
    p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    del ws
    return [
        '## Serving',
        '',
        f'{CLIENTS} concurrent clients for {SECONDS:g} s against `POST /v1/render` (server in its own process, '
        'embedded store, an injection rule on the input and a PII rule on the prompt):',
        '',
        '| requests | requests/s | p50 (ms) | p99 (ms) | errors | executions logged |',
        '|---|---|---|---|---|---|',
        f'| {len(ms):,} | {len(ms) / wall:,.0f} | {p50:.1f} | {p99:.1f} | {len(errors)} | {logged:,} |',
        '',
        f'(executions still buffered when the load stopped: {pending}; written at shutdown.)',
    ]
