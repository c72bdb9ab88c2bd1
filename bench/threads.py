"""Benchmark: the embedded model's speed by thread count, on an idle machine and with one core kept busy by another
process (a laptop doing other work).

Requests: the first 8 verses of poem_sentiment's dev split (../shared/datasets), each with 4 demos from its train
split, under three outputs (a choice under the mask, calibrated label scores, free text): 24 requests, answered
after one warm-up request by a freshly loaded model with 1 thread, 2 threads (one per core on this machine), and
the default (no WORKSPACE_LOCAL_THREADS: the threads follow the cores other processes leave free, re-measured once
a second). The requests go to the model directly, not through the request store, so each one is decoded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
from common import SHARED, busy_loop

from workspace.core.versions import Version, build_request, choice, text
from workspace.storage import backends
from workspace.storage.backends.local import LocalBackend

TEMPLATE = (
    '{% for d in demos %}Verse: {{ d.text }}\nSentiment: {{ d.expected }}\n\n{% endfor %}Verse: {{ text }}\nSentiment:'
)


def _requests() -> list[dict]:
    dev = pd.read_csv(SHARED / 'poem_sentiment' / 'dev.csv').head(8)
    train = pd.read_csv(SHARED / 'poem_sentiment' / 'train.csv')
    labels = sorted(train['label'].unique())
    demos = [{'text': r.text, 'expected': r.label} for r in train.groupby('label').head(2).head(4).itertuples()]
    requests = []
    for output in (choice(labels), choice(labels, decode='calibrated'), text()):
        params = {
            'temperature': 0.0,
            'max_tokens': 8,
            'seed': 0,
            **({'stop': ['\n']} if output['kind'] == 'text' else {}),
        }
        version = Version(
            id='bench_threads:v1', prompt='bench_threads', number=1, parent_id=None, template=TEMPLATE,
            model='local', params=params, output=output, demos=demos,
        )  # fmt: skip
        requests += [build_request(version, {'text': r.text, 'example_id': str(r.id)}) for r in dev.itertuples()]
    return requests


def _per_request(path: Path, n_ctx: int, threads: int | None, requests: list[dict]) -> tuple[float, list[str]]:
    model = LocalBackend(path, n_ctx=n_ctx, n_threads=threads)
    try:
        model.complete(requests[0])  # warm-up: the load and the first request's allocations
        answers, start = [], time.perf_counter()
        for request in requests:
            answers.append(model.complete(request)['text'])
        return (time.perf_counter() - start) / len(requests), answers
    finally:
        model.close()


def run() -> list[str]:
    if not (SHARED / 'poem_sentiment' / 'dev.csv').is_file():
        return [f'(threads skipped: poem_sentiment is not under {SHARED})']
    local = backends.get_backend('local')
    requests = _requests()
    cores = os.cpu_count() or 1
    rows, answers = [], {}
    for busy in (False, True):
        loop = busy_loop() if busy else None
        try:
            for threads in (1, cores, None):
                seconds, answers[busy, threads] = _per_request(local.path, local.n_ctx, threads, requests)
                rows.append((busy, threads, seconds))
        finally:
            if loop is not None:
                loop.kill()
                loop.wait()
    same = len({tuple(a) for a in answers.values()}) == 1
    lines = [
        '## Threads on a busy machine (`bench/threads.py`)',
        '',
        ' '.join(__doc__.split('\n\n')[1].split()),
        '',
        '| machine | threads | s a request |',
        '|---|---|---:|',
    ]
    for busy, threads, seconds in rows:
        what = 'one core kept busy by another process' if busy else 'idle'
        how = 'default (follows the free cores)' if threads is None else str(threads)
        lines.append(f'| {what} | {how} | {seconds:.3f} |')
    lines += ['', f'- the same answers with every thread count, idle and busy: **{same}**']
    return lines


if __name__ == '__main__':
    print('\n'.join(run()))
