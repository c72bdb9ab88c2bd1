"""Benchmark: judging 200 rows with a rubric judge on the embedded model, then editing the rubric, then an edit
that changes the judge request on a few rows only; model calls (counted by the backend) and wall time."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import workspace as ws
from workspace.core.judges import rubric_judge
from workspace.jobs.quickstart import FEW_SHOT_TEMPLATE
from workspace.storage import backends

ROOT = Path(__file__).resolve().parent.parent


def _step(rows: list[tuple[str, int, str, int, float]], change: str, allowed: str, fn: Any) -> Any:
    local = backends.get_backend('local')
    before, start = local.calls, time.perf_counter()
    run = fn()
    rows.append((change, local.calls - before, allowed, run.judge_calls, time.perf_counter() - start))
    print(f'judges: {rows[-1]}', file=sys.stderr, flush=True)  # progress: a loaded machine takes long
    return run


def run() -> list[str]:
    tickets = ws.import_dataset(
        'bench_judged',
        ROOT / 'datasets' / 'support_tickets.csv',
        input=['text'],
        expected='category',
        split='split',
        id='id',
        if_exists='replace',
    )
    n = len(tickets)
    version = ws.create_version(
        'bench_judged_router', template=FEW_SHOT_TEMPLATE, demos=tickets.demos(), output=ws.choice(tickets.labels())
    )
    start = time.perf_counter()
    ws.evaluate(version, tickets, progress=False)  # the predictions the judge reads; not part of the figures
    predict_s = time.perf_counter() - start

    judge = rubric_judge('The answer is the support category that fits the ticket.', name='bench_rubric_judge')
    ws.add_scorer(tickets, judge, column='rubric', every_evaluation=True)
    rows: list[tuple[str, int, str, int, float]] = []
    _step(rows, f'judge {n} rows (new judge scorer)', str(n), lambda: ws.evaluate(version, tickets, progress=False))
    _step(rows, 're-run unchanged', '0', lambda: ws.evaluate(version, tickets, progress=False))
    edited = ws.edit(judge, instructions='The answer names the one support category that fits the ticket best.')
    ws.add_scorer(tickets, edited, column='rubric', if_exists='replace', every_evaluation=True)
    _step(rows, 'rubric edited (in every judge prompt)', str(n), lambda: ws.evaluate(version, tickets, progress=False))
    hinted = ws.edit(edited, template="{% if 'refund' in input %}Refunds are billing.\n{% endif %}" + edited.template)
    k = sum('refund' in r['text'] for r in tickets.rows())
    ws.add_scorer(tickets, hinted, column='rubric', if_exists='replace', every_evaluation=True)
    _step(
        rows,
        f'template edit that renders on k = {k} rows',
        str(k),
        lambda: ws.evaluate(version, tickets, progress=False),
    )
    final = ws.evaluate(version, tickets, progress=False).summary().metrics

    lines = [
        '## Judging (`bench/judges.py`)',
        '',
        f'A rubric judge (the embedded model, verdict yes/no) on the bundled support_tickets ({n} rows), judging the '
        f'predictions of a few-shot version (made first, in {predict_s:.1f} s, not counted below).',
        '',
        '| change | model calls | allowed | judge calls in the run | wall s |',
        '|---|---:|---:|---:|---:|',
    ]
    lines += [f'| {c} | {calls} | {a} | {j} | {w:.2f} |' for c, calls, a, j, w in rows]
    judged = rows[0]
    lines += [
        '',
        f'- judging {n} rows: {judged[4]:.1f} s, {1000 * judged[4] / max(judged[1], 1):.0f} ms per judge call',
        f'- the judge passes {final["rubric"]:.3f} of the rows; the version is right on {final["accuracy"]:.3f}',
    ]
    return lines
