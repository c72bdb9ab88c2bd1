"""Benchmark: the request store's speed targets.

- a warm no-op re-evaluation of 3 versions x 1,000 rows (target <= 0.3 s in all), with the statements it sends;
- `build_comparison` for them (target <= 1 s);
- 105 rows against a local OpenAI-compatible server that answers after 200 ms, at concurrency 8 (target <= 4 s)
  beside the same rows sent one at a time, as promptfoo and the workspace before it did; and against a server that
  answers one request at a time, at the default concurrency (every row answered, no circuit breaker);
- the local decodings: ms per call on the same few-shot prompts, and how many answers change when the prompts are
  decoded forward, reversed and shuffled.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pandas as pd
from common import ROOT, SHARED

import workspace as ws
from workspace.analysis.compare import build_comparison
from workspace.storage import backends

BANKING = SHARED / 'banking77' / 'train.csv'
POEMS = SHARED / 'poem_sentiment'


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _frame(n: int) -> pd.DataFrame:
    if BANKING.is_file():
        return (
            pd.read_csv(BANKING)
            .sample(n=n, random_state=0)
            .reset_index(drop=True)
            .rename(columns={'category': 'label'})
        )
    tickets = pd.read_csv(ROOT / 'datasets' / 'support_tickets.csv')
    frame = pd.concat([tickets] * (n // len(tickets) + 1)).head(n).reset_index(drop=True)
    frame['text'] = [f'{t} (copy {i})' for i, t in enumerate(frame['text'])]
    return frame.rename(columns={'category': 'label'})[['text', 'label']]


def _noop_and_compare(server: Any) -> list[str]:
    from pixeltable.env import Env
    from sqlalchemy import event

    frame = _frame(1000)
    labels = sorted(frame['label'].unique())
    data = ws.import_dataset('bench_store', frame, input='text', expected='label', split_ratios={'dev': 1.0})
    v1 = ws.create_version(
        'bench_store', template='A\nQuery: {{ text }}\nIntent:', model='openai:instant', output=ws.choice(labels)
    )
    versions = [
        v1,
        ws.edit(v1, template='B\nQuery: {{ text }}\nIntent:'),
        ws.edit(v1, template='C\nQuery: {{ text }}\nIntent:'),
    ]
    _, fill = _timed(lambda: [ws.evaluate(v, data, progress=False) for v in versions])
    [ws.evaluate(v, data, progress=False) for v in versions]  # warm
    statements = [0]
    event.listen(Env.get().engine, 'before_cursor_execute', lambda *args: statements.__setitem__(0, statements[0] + 1))
    runs, noop = _timed(lambda: [ws.evaluate(v, data, progress=False) for v in versions])
    sent = statements[0]
    build_comparison(data, versions)  # warm
    _, compare = _timed(lambda: build_comparison(data, versions))
    return [
        f'| warm no-op re-evaluation, 3 versions x 1,000 rows ({sum(r.calls for r in runs)} calls, {sent} SQL '
        f'statements) | {noop:.3f} | <= 0.3 |',
        f'| `build_comparison` of the 3 versions (0 calls) | {compare:.2f} | <= 1 |',
        f'| (first evaluation of the 3,000 requests through the instant server, for reference) | {fill:.1f} | |',
    ]


def _concurrency(server: Any) -> list[str]:
    frame = _frame(105)
    labels = sorted(frame['label'].unique())
    lines = []
    server.delay = 0.2
    for concurrency in (1, 8):
        os.environ['WORKSPACE_CONCURRENCY'] = str(concurrency)
        data = ws.import_dataset(
            f'bench_slow_{concurrency}', frame, input='text', expected='label', split_ratios={'dev': 1.0}
        )
        v = ws.create_version(
            f'bench_slow_{concurrency}',
            template=f'{concurrency}\nQuery: {{{{ text }}}}\nIntent:',
            model='openai:slow',
            output=ws.choice(labels),
        )
        run, wall = _timed(lambda v=v, data=data: ws.evaluate(v, data, progress=False))
        target = '<= 4' if concurrency == 8 else '(serial, as promptfoo)'
        lines.append(
            f'| 105 rows, server answers after 200 ms, concurrency {concurrency} ({run.calls} calls) | {wall:.2f} | {target} |'
        )
    os.environ.pop('WORKSPACE_CONCURRENCY')
    server.delay = 0.0
    return lines


def _one_slot() -> list[str]:
    """A server that answers one request at a time (a llama.cpp server with one slot), 200 ms each, at the default
    concurrency and a request timeout of 2 s (the default 30 s, scaled down with the answer time)."""
    import threading

    from openai_server import Canned, OpenAICompatibleServer, completion_body

    slot = threading.Lock()

    def answer(body: dict[str, Any]) -> Canned:
        with slot:
            time.sleep(0.2)
        return Canned(200, completion_body('x'))

    frame = _frame(105)
    labels = sorted(frame['label'].unique())
    with OpenAICompatibleServer(answer) as server:
        os.environ.update(OPENAI_BASE_URL=f'{server.url}/v1', WORKSPACE_REQUEST_TIMEOUT='2')
        data = ws.import_dataset('bench_one_slot', frame, input='text', expected='label', split_ratios={'dev': 1.0})
        v = ws.create_version(
            'bench_one_slot', template='S\nQuery: {{ text }}\nIntent:', model='openai:slot', output=ws.choice(labels)
        )
        run, wall = _timed(lambda: ws.evaluate(v, data, progress=False))
        sent = len(server.received)
    os.environ.pop('WORKSPACE_REQUEST_TIMEOUT')
    return [
        f'| 105 rows, a server answering one request at a time (200 ms each), default concurrency, 2 s timeout: '
        f'{run.n - run.errors} rows answered, {run.errors} errors, {sent} requests sent | {wall:.2f} | every row, '
        '<= 105 x 0.2 s + a few timeouts |'
    ]


def _determinism() -> list[str]:
    import random

    train, dev = pd.read_csv(POEMS / 'train.csv'), pd.read_csv(POEMS / 'dev.csv')
    label_column = 'label' if 'label' in dev.columns else dev.columns[-1]
    text_column = 'verse_text' if 'verse_text' in dev.columns else dev.columns[0]
    labels = sorted(train[label_column].astype(str).unique())
    demos = ''.join(
        f'Verse: {row[text_column]}\nSentiment: {row[label_column]}\n\n'
        for _, row in train.groupby(label_column).head(1).iterrows()
    )
    prompts = [f'{demos}Verse: {text}\nSentiment:' for text in dev[text_column]]
    constraint = {'choice': labels}
    n = len(prompts)
    orders = [list(range(n)), list(range(n))[::-1], random.Random(0).sample(range(n), n)]
    modes = {
        'llama': "llama.cpp's own prefix reuse",
        'paragraphs': 'the workspace (`paragraphs`): chunks ending at paragraph breaks, shared ones reused',
        'blocks64': 'the workspace until 2026-12 (`blocks64`): aligned 64-token blocks, whole ones reused',
        'scratch': 'every prompt decoded from an empty context',
    }
    lines = []
    for decoding, what in modes.items():
        backend = backends.LocalBackend(backends.embedded_model_path(), decoding=decoding)  # type: ignore[arg-type]
        backend.complete({'prompt': 'warm up', 'params': {'max_tokens': 1}})
        answers, wall = [], 0.0
        for order in orders:
            got: dict[int, str] = {}
            start = time.perf_counter()
            for i in order:
                got[i] = backend.complete(
                    {'prompt': prompts[i], 'params': {'max_tokens': 8}, 'constraint': constraint}
                )['text']
            wall += time.perf_counter() - start
            answers.append([got[i] for i in range(n)])
        changed = sum(len({a[i] for a in answers}) > 1 for i in range(n))
        lines.append(
            f'| {what}: ms per call | {1000 * wall / (3 * n):.0f} | answers that change with the order (forward, '
            f'reversed, shuffled): {changed} of {n} |'
        )
        backend.close()
    return lines


def run() -> list[str]:
    sys.path.insert(0, str(ROOT / 'tests'))
    from openai_server import Canned, OpenAICompatibleServer, completion_body

    def answer(body: dict[str, Any]) -> Canned:
        time.sleep(server.delay)
        return Canned(200, completion_body('x'))

    with OpenAICompatibleServer(answer) as server:
        server.delay = 0.0
        os.environ['OPENAI_BASE_URL'] = f'{server.url}/v1'
        rows = _noop_and_compare(server) + _concurrency(server)
    rows += _one_slot()
    lines = [
        '## Request store (`bench/store.py`)',
        '',
        '| step | wall s | target |',
        '|---|---:|---|',
        *rows,
    ]
    if POEMS.is_dir():
        lines += ['', '| deterministic local answers | figure | note |', '|---|---:|---|', *_determinism()]
    return lines
