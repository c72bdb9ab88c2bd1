"""Benchmark: prompt families on the bundled log (quality against its ground truth) and at 100,000 prompts (speed).

Quality (datasets/prompt_log.jsonl and its truth):
- clustering: adjusted Rand index, homogeneity (purity) and completeness against the true template of each distinct
  prompt (one-off prompts are each their own truth family); the same for Drain3's clusters over the whole log;
- templates: for each true family, the template mined from its members by the token alignment
  (workspace.mining.canonical.mine) and by Drain3 (drain3-improved, masking numbers, the largest cluster's template):
  whether the constant text equals the truth, and the share of (prompt, slot) pairs whose value span is recovered
  exactly;
- drift: the weeks flagged per family against the truth's one drift event (ticket_router from 2026-10-12).

Speed: ingesting 100,000 generated prompts (make_prompt_log.py --n 100000), appending 1,000 more (old rows must
be untouched), and `ws.similar` latency over them.
"""

from __future__ import annotations

import collections
import datetime
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG = ROOT / 'datasets' / 'prompt_log.jsonl'
TRUTH = ROOT / 'datasets' / 'prompt_log_truth.jsonl'


def _truth() -> tuple[list[dict], list[dict], dict]:
    lines = [json.loads(x) for x in LOG.open(encoding='utf-8')]
    truth = [json.loads(x) for x in TRUTH.open(encoding='utf-8')]
    meta = json.loads((ROOT / 'datasets' / 'prompt_log_templates.json').read_text())
    return lines, truth, meta


def _spans_recovered(template, items) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    hit = total = 0
    for text, t in items:
        truth_spans = {tuple(s) for s in t['spans'].values()}
        total += len(truth_spans)
        found = template(text) or []
        hit += len(truth_spans & set(found))
    return hit, total


def _drain(texts: list[str]):  # type: ignore[no-untyped-def]
    from drain3 import TemplateMiner
    from drain3.masking import MaskingInstruction
    from drain3.template_miner_config import TemplateMinerConfig

    config = TemplateMinerConfig()
    config.masking_instructions = [MaskingInstruction(r'\d+(\.\d+)?', 'NUM')]
    config.profiling_enabled = False
    miner = TemplateMiner(config=config)
    clusters = [miner.add_log_message(t)['cluster_id'] for t in texts]
    return miner, clusters


def _quality() -> list[str]:
    from sklearn.metrics import adjusted_rand_score, homogeneity_completeness_v_measure

    import workspace as ws
    from workspace.mining.canonical import mine
    from workspace.mining.prompt_log import prompt_hash
    from workspace.storage import tables

    lines, truth, meta = _truth()
    started = time.perf_counter()
    ws.ingest_prompts(LOG, meta=['app', 'user'], expected='response')
    wall = time.perf_counter() - started
    first = {}
    for line, t in zip(lines, truth):
        first.setdefault(prompt_hash(line['prompt']), t['family'])
    raw = tables.raw_prompts()
    rows = list(raw.select(raw.prompt_hash, raw.prompt, raw.family_id).collect())
    y = [first[r['prompt_hash']] for r in rows]
    ours = [r['family_id'] for r in rows]
    h, c, _ = homogeneity_completeness_v_measure(y, ours)
    out = [
        f'### Prompt families on the bundled log ({len(lines)} lines, {len(rows)} distinct prompts, '
        f'{len(set(y))} true families)\n',
        f'Ingest, embed, assign and mine templates: {wall:.1f} s.\n',
        '| clustering | ARI | homogeneity (purity) | completeness | families |',
        '|---|---:|---:|---:|---:|',
        f'| workspace (embedding candidates, template coverage >= 0.7) | {adjusted_rand_score(y, ours):.4f} | {h:.4f} '
        f'| {c:.4f} | {len(set(ours))} |',
    ]
    if importlib.util.find_spec('drain3') is not None:
        _, clusters = _drain([r['prompt'] for r in rows])
        hd, cd, _ = homogeneity_completeness_v_measure(y, clusters)
        out.append(
            f'| Drain3 (drain3-improved 0.10, default similarity 0.4, numbers masked) | '
            f'{adjusted_rand_score(y, clusters):.4f} | {hd:.4f} | {cd:.4f} | {len(set(clusters))} |'
        )

    # templates per true family, mined from its last 32 distinct members, scored on all its members of that version
    out += ['', '| family | alignment: template exact | alignment: slots exact | Drain3: template exact | Drain3: slots exact |',
            '|---|---|---:|---|---:|']  # fmt: skip
    per_family = collections.defaultdict(list)
    for line, t in zip(lines, truth):
        if t['kind'] == 'template':
            per_family[(t['family'], t['template_version'])].append((line['prompt'], t))
    totals = collections.Counter()
    for (family, number), items in sorted(per_family.items()):
        truth_template = meta['templates'][family][number - 1]['template']
        texts = list(dict.fromkeys(p for p, _ in items))[-32:]
        mined = mine(texts)
        import re

        skeleton = re.sub(r'\{\{ \w+ \}\}', '\x00', truth_template)
        exact = '\x00'.join(mined.pieces) == skeleton
        hit, total = _spans_recovered(mined.spans, items)
        drain_exact, drain_hit = '', 0
        if importlib.util.find_spec('drain3') is not None:
            miner, clusters = _drain(texts)
            biggest = collections.Counter(clusters).most_common(1)[0][0]
            cluster = next(c for c in miner.drain.clusters if c.cluster_id == biggest)
            drain_template = cluster.get_template()
            drain_exact = 'yes' if drain_template == skeleton.replace('\x00', '<*>') else 'no'
            # Drain3 clusters messages with the same number of whitespace tokens: a message's parameters are its
            # tokens where the template has a wildcard (its extract_parameters regex backtracks for minutes here)
            wild = drain_template.split()
            for text, t in items:
                tokens = text.split()
                if len(tokens) != len(wild):
                    continue
                values = {tok for tok, w in zip(tokens, wild) if w in ('<*>', '<NUM>')}
                drain_hit += sum(1 for v in t['slots'].values() if v in values)
        totals.update(hit=hit, total=total, drain=drain_hit, exact=int(exact), drain_exact=int(drain_exact == 'yes'))
        out.append(
            f'| {family} v{number} | {"yes" if exact else "no"} | {hit / total:.3f} | {drain_exact} | '
            f'{drain_hit / total:.3f} |'
        )
    out.append(
        f'| **all** | {totals["exact"]}/{len(per_family)} | {totals["hit"] / totals["total"]:.3f} | '
        f'{totals["drain_exact"]}/{len(per_family)} | {totals["drain"] / totals["total"]:.3f} |'
    )

    # drift: flagged weeks per family of 10+ members
    drift_family = meta['drift']['family']
    drift_from = datetime.date.fromisoformat(meta['drift']['from'])
    flagged = []
    for family_id in ws.families(min_size=10)['family_id']:
        members = ws.get_family(family_id).members()
        name = collections.Counter(first[h] for h in members['prompt_hash']).most_common(1)[0][0]
        report = ws.drift(family_id, window='week')
        for when, reasons in zip(report.flagged['window'], report.flagged['reasons']):
            right = name == drift_family and when.date() == drift_from
            flagged.append(f'{name} week of {when.date()}: {reasons} ({"the drift event" if right else "FALSE FLAG"})')
    out += ['', f'Drift (weekly windows; the truth: {drift_family} from {drift_from}):', '']
    out += [f'- {f}' for f in flagged] or ['- nothing flagged']
    return out


def _speed() -> list[str]:
    import numpy as np

    import workspace as ws
    from workspace.storage import tables

    sys.path.insert(0, str(ROOT / 'datasets'))
    import make_prompt_log

    folder = Path(tempfile.mkdtemp(prefix='pw-bench-log-'))
    make_prompt_log.write(folder, 100_000)
    lines = (folder / 'prompt_log.jsonl').read_text(encoding='utf-8').splitlines(keepends=True)
    extra, base = lines[-1000:], lines[:-1000]
    path = folder / 'log.jsonl'
    path.write_text(''.join(base), encoding='utf-8')
    started = time.perf_counter()
    report = ws.ingest_prompts(path, meta=['app'])
    wall = time.perf_counter() - started
    raw = tables.raw_prompts()
    before = {
        r['prompt_hash']: (r['family_id'], r['confidence'])
        for r in raw.select(raw.prompt_hash, raw.family_id, raw.confidence).collect()
    }
    with path.open('a', encoding='utf-8') as f:
        f.writelines(extra)
    started = time.perf_counter()
    append = ws.ingest_prompts(path, meta=['app'])
    append_wall = time.perf_counter() - started
    after = {
        r['prompt_hash']: (r['family_id'], r['confidence'])
        for r in raw.select(raw.prompt_hash, raw.family_id, raw.confidence).collect()
    }
    moved = sum(1 for h, v in before.items() if after[h] != v)
    queries = [
        'Where is my parcel? It is late.',
        'Translate the text from German to French',
        'SELECT count(*) FROM orders',
    ]
    ws.similar(queries[0])  # warm
    latencies = []
    for q in queries * 5:
        started = time.perf_counter()
        ws.similar(q, k=10)
        latencies.append(time.perf_counter() - started)
    return [
        '',
        f'### 100,000 prompts (make_prompt_log.py --n 100000: {len(base):,} lines, {report.new_prompts:,} distinct)\n',
        '| step | figure |',
        '|---|---:|',
        f'| ingest {len(base):,} lines (read, dedup, embed, assign, mine, store) | {wall:.0f} s, '
        f'{len(base) / wall:,.0f} lines/s |',
        f'| append 1,000 lines ({append.new_lines} new, {append.new_prompts} new prompts) | {append_wall:.1f} s |',
        f'| rows of the first ingest whose family or confidence changed | {moved} |',
        f'| `ws.similar(text, k=10)` over {len(after):,} prompts, median of 15 | {np.median(latencies) * 1000:.0f} ms |',
    ]


def run() -> list[str]:
    return ['## Prompt families (`bench/families.py`)\n', *_quality(), *_speed()]


if __name__ == '__main__':
    import os

    os.environ.setdefault('PIXELTABLE_HOME', tempfile.mkdtemp(prefix='pw-bench-'))
    print('\n'.join(_quality() if sys.argv[1:] == ['quality'] else run()))
