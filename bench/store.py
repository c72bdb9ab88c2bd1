"""Benchmark: the request store's speed targets.

- a warm no-op re-evaluation of 3 versions x 1,000 rows (target <= 0.5 s in all);
- `build_comparison` for them (target <= 1 s);
- 105 rows against a local OpenAI-compatible server that answers after 200 ms, at concurrency 8 (target <= 4 s)
  beside the same rows sent one at a time, as promptfoo and the workspace before it did;
- the cost of deterministic local answers: the embedded model decoding every prompt from an empty context
  against llama.cpp's prefix reuse, on the same few-shot prompts, and how often the two disagree.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

import workspace as ws
from workspace.analysis.compare import build_comparison
from workspace.storage import backends

ROOT = Path(__file__).resolve().parent.parent
BANKING = ROOT.parent / 'shared' / 'datasets' / 'banking77' / 'train.csv'
POEMS = ROOT.parent / 'shared' / 'datasets' / 'poem_sentiment'


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
    runs, noop = _timed(lambda: [ws.evaluate(v, data, progress=False) for v in versions])
    build_comparison(data, versions)  # warm
    _, compare = _timed(lambda: build_comparison(data, versions))
    return [
        f'| warm no-op re-evaluation, 3 versions x 1,000 rows ({sum(r.calls for r in runs)} calls) | {noop:.2f} | <= 0.5 |',
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


def _determinism() -> list[str]:
    train, dev = pd.read_csv(POEMS / 'train.csv'), pd.read_csv(POEMS / 'dev.csv')
    label_column = 'label' if 'label' in dev.columns else dev.columns[-1]
    text_column = 'verse_text' if 'verse_text' in dev.columns else dev.columns[0]
    labels = sorted(train[label_column].astype(str).unique())
    demos = ''.join(
        f'Verse: {row[text_column]}\nSentiment: {row[label_column]}\n\n'
        for _, row in train.groupby(label_column).head(1).iterrows()
    )
    prompts = [f'{demos}Verse: {text}\nSentiment:' for text in dev[text_column].head(60)]
    constraint = {'choice': labels}
    outputs, times = {}, {}
    modes = {
        None: "llama.cpp's own prefix reuse",
        64: 'the workspace: whole 64-token blocks reused, decoded in aligned blocks',
        0: 'every prompt decoded from an empty context',
    }
    for block in modes:
        backend = backends.LocalBackend(backends.embedded_model_path(), prefix_block=block)
        backend.complete({'prompt': 'warm up', 'params': {'max_tokens': 1}})

        def answers(order: list[str], b: backends.LocalBackend = backend) -> list[str]:
            return [
                b.complete({'prompt': p, 'params': {'max_tokens': 8}, 'constraint': constraint})['text'] for p in order
            ]

        forward, t1 = _timed(lambda: answers(prompts))
        backward, t2 = _timed(lambda: answers(prompts[::-1]))
        outputs[block] = (forward, backward[::-1])
        times[block] = (t1 + t2) / (2 * len(prompts))
        backend.close()
    return [
        f'| {what}: ms per call | {1000 * times[block]:.0f} | answers that change with the order: '
        f'{sum(a != b for a, b in zip(*outputs[block]))} of {len(prompts)} |'
        for block, what in modes.items()
    ]


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
