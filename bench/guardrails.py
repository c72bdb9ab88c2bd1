"""Guardrails: the injection pack's precision and recall on its labelled set, and the time each rule kind takes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from udfs import rules

SET = Path(__file__).resolve().parent.parent / 'datasets' / 'injection_prompts.jsonl'


def _rule(kind: str, **config):
    return {'id': kind, 'name': kind, 'kind': kind, 'config': config, 'stage': 'input', 'enforcement': 'warn'}


def run() -> list[str]:
    rows = [json.loads(line) for line in SET.read_text().splitlines()]
    injection = _rule('injection')
    flagged = [bool(rules.check(injection, r['text'])) for r in rows]
    truth = [r['label'] == 'injection' for r in rows]
    tp = sum(f and t for f, t in zip(flagged, truth))
    fp = sum(f and not t for f, t in zip(flagged, truth))
    fn = sum(t and not f for f, t in zip(flagged, truth))
    lines = [
        '## Guardrails',
        '',
        f'Injection pack on `datasets/injection_prompts.jsonl` ({sum(truth)} injections, {len(rows) - sum(truth)} '
        'benign support messages):',
        '',
        '| precision | recall | false positives | missed |',
        '|---|---|---|---|',
        f'| {tp / (tp + fp):.3f} | {tp / (tp + fn):.3f} | {fp} | {fn} |',
        '',
        '| rule kind | mean time per check (µs, 200-character text) |',
        '|---|---|',
    ]
    text = (rows[0]['text'] + ' ' + rows[-1]['text'] + ' ') * 3
    text = text[:200]
    kinds = [
        _rule('regex', pattern=r'(?i)refund(ed)?'),
        _rule('keyword', words=['refund', 'lawsuit', 'chargeback']),
        _rule('length', unit='tokens', max=100),
        _rule('pii'),
        injection,
        _rule('json_schema', schema={'type': 'object'}),
    ]
    for r in kinds:
        rules.check(r, text)  # compile and load once
        start = time.perf_counter()
        for _ in range(200):
            rules.check(r, text)
        lines.append(f'| {r["kind"]} | {(time.perf_counter() - start) / 200 * 1e6:.0f} |')
    return lines
