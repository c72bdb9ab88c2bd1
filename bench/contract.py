"""Benchmark: the incremental contract's call counts, the workspace's overhead over a plain llama.cpp loop, and a
no-op re-evaluation, on the bundled tickets and (when present) ../shared/datasets/poem_sentiment/dev.csv."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import workspace as ws
from workspace.jobs.quickstart import FEW_SHOT_TEMPLATE, few_shot_demos
from workspace.storage import backends

ROOT = Path(__file__).resolve().parent.parent
POEMS = ROOT.parent / 'shared' / 'datasets' / 'poem_sentiment'


def _plain_loop(prompts: list[str], labels: list[str], params: dict[str, Any]) -> float:
    """Time llama-cpp-python alone, as a plain loop would use it (its defaults: prefix reuse, 512-token batches), on
    the same prompts, with the same label constraint and decoding params. The workspace's deterministic decoding
    (aligned 64-token blocks) is part of what the ratio measures."""
    import llama_cpp

    local = backends.get_backend('local')
    llm = llama_cpp.Llama(
        model_path=str(local.path), n_ctx=local.n_ctx, n_threads=local.n_threads, seed=0, verbose=False
    )
    llm.create_completion(prompt='warm up', max_tokens=1)
    start = time.perf_counter()
    for prompt in prompts:
        llm.create_completion(
            prompt=prompt,
            max_tokens=params['max_tokens'],
            temperature=params['temperature'],
            seed=params['seed'],
            logits_processor=local._label_mask(llm, {'choice': labels}),
        )
    wall = time.perf_counter() - start
    llm.close()
    return wall


def _backend_loop(prompts: list[str], labels: list[str], params: dict[str, Any]) -> float:
    """Time the workspace's own local backend in a plain loop on the same prompts: its deterministic decoding
    without the store, tables and bookkeeping, so the ratio against it is the workspace's machinery alone."""
    local = backends.get_backend('local')
    start = time.perf_counter()
    for prompt in prompts:
        local.complete({'prompt': prompt, 'params': dict(params), 'constraint': {'choice': labels}})
    return time.perf_counter() - start


def _grammar_vs_mask(prompts: list[str], labels: list[str]) -> tuple[float, float]:
    """Mean seconds per call with llama.cpp's GBNF grammar and with the workspace's label mask."""
    import llama_cpp

    local = backends.get_backend('local')
    llm = local._load()
    grammar = llama_cpp.LlamaGrammar.from_string(backends.choice_grammar(labels), verbose=False)
    timings = []
    for use_grammar in (True, False):
        start = time.perf_counter()
        for prompt in prompts:
            llm.create_completion(
                prompt=prompt,
                max_tokens=16,
                temperature=0.0,
                grammar=grammar if use_grammar else None,
                logits_processor=None if use_grammar else local._label_mask(llm, {'choice': labels}),
            )
        timings.append((time.perf_counter() - start) / len(prompts))
    return timings[0], timings[1]


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def bench_dataset(
    dataset: ws.Dataset,
    demos: list[dict[str, Any]],
    text_field: str,
    added: list[dict[str, Any]],
    fix: tuple[str, str],
    keyword: str,
) -> list[str]:
    labels = dataset.labels()
    split = None
    n = len(dataset)
    lines = [f'### {dataset.name} ({n} rows, {len(labels)} labels, all splits)', '']
    v1 = ws.create_version(
        f'bench_{dataset.name}',
        template=FEW_SHOT_TEMPLATE.replace('text', text_field),
        demos=demos,
        output=ws.choice(labels),
    )
    local = backends.get_backend('local')
    # Warm up the model and Pixeltable's insert path on two rows of a throwaway version, so that neither side of
    # the overhead comparison pays first-call costs.
    warm = ws.create_version(
        f'bench_warmup_{dataset.name}', template='{{ ' + text_field + ' }}', output=ws.choice(labels)
    )
    ws.evaluate(
        warm,
        ws.import_dataset(
            f'{dataset.name}_warmup',
            dataset.to_pandas().head(2),
            input=text_field,
            expected='expected',
            split='split',
            id='example_id',
            if_exists='replace',
        ),
        progress=False,
    )
    rows = []

    def step(change: str, allowed: str, fn: Any) -> Any:
        before = local.calls
        run, wall = _timed(fn)
        calls = local.calls - before
        rows.append((change, calls, allowed, run.calls if hasattr(run, 'calls') else calls, wall))
        return run, wall

    first, eval_wall = step(
        'new version, every request new', str(n), lambda: ws.evaluate(v1, dataset, split, progress=False)
    )
    _, noop_wall = step('re-run unchanged', '0', lambda: ws.evaluate(v1, dataset, split, progress=False))
    hint = "{% if '" + keyword + "' in " + text_field + ' | lower %}Note the word ' + keyword + '.\n{% endif %}'
    rendered = [r for r in dataset.rows() if keyword in str(r[text_field]).lower()]
    v2 = ws.edit(v1, template=hint + v1.template)
    k = len(rendered)
    step(f'edit that changes k = {k} requests', str(k), lambda: ws.evaluate(v2, dataset, split, progress=False))
    dataset.append(added)
    m = len(added)
    step(f'm = {m} rows added, version 1', str(m), lambda: ws.evaluate(v1, dataset, split, progress=False))
    step(f'm = {m} rows added, version 2', f'<= {m}', lambda: ws.evaluate(v2, dataset, split, progress=False))
    dataset.correct(*fix)
    step('expected output corrected', '0', lambda: ws.evaluate(v2, dataset, split, progress=False))
    step(
        'new scorer (normalized_match)',
        '0',
        lambda: (ws.add_scorer(dataset, 'normalized_match'), ws.evaluate(v2, dataset, split, progress=False))[1],
    )

    lines += ['| change | model calls | allowed | wall s |', '|---|---:|---:|---:|']
    lines += [f'| {c} | {calls} | {a} | {w:.2f} |' for c, calls, a, _, w in rows]
    prompts = [v1.render({text_field: r[text_field]}) for r in dataset.rows()[:n]]
    plain = _plain_loop(prompts, labels, dict(v1.params))
    own = _backend_loop(prompts, labels, dict(v1.params))
    lines += [
        '',
        f'- evaluation of {n} new requests: workspace {eval_wall:.1f} s, plain llama-cpp-python loop on the same '
        f'rendered prompts {plain:.1f} s: overhead ratio **{eval_wall / plain:.2f}x** '
        f'({1000 * (eval_wall - plain) / n:.0f} ms per row)',
        f"- the same prompts through the workspace's local backend in a plain loop (its deterministic decoding, no "
        f"store or tables): {own:.1f} s; the workspace's machinery over it: **{eval_wall / own:.2f}x**; its "
        f"decoding over llama.cpp's defaults: {own / plain:.2f}x",
        f'- no-op re-evaluation of {n} rows: **{noop_wall:.2f} s**, 0 model calls',
        f'- accuracy of the few-shot version: {first.summary().metrics["accuracy"]:.3f}',
    ]
    sample = prompts[:24]
    grammar_s, mask_s = _grammar_vs_mask(sample, labels)
    lines.append(
        f'- label constraint, {len(sample)} calls: GBNF grammar {1000 * grammar_s:.0f} ms/call, '
        f'token mask {1000 * mask_s:.0f} ms/call'
    )
    return lines


def run() -> list[str]:
    lines = ['## Incremental contract and overhead (`bench/contract.py`)', '']
    tickets = ws.import_dataset(
        'bench_tickets',
        ROOT / 'datasets' / 'support_tickets.csv',
        input=['text'],
        expected='category',
        split='split',
        id='id',
        if_exists='replace',
    )
    added = [
        {'id': f'x{i:02d}', 'text': text, 'category': label, 'split': 'dev'}
        for i, (text, label) in enumerate(
            [
                ('Where is my parcel? Tracking stopped on Monday.', 'DELIVERY'),
                ('I need a refund for the broken kettle.', 'REFUND'),
                ('Can I change the size on my order before it ships?', 'ORDER'),
                ('My password reset email never arrives.', 'ACCOUNT'),
                ('You charged me twice this month.', 'BILLING'),
                ('Do you ship to Norway and how much is it?', 'SHIPPING'),
                ('The app freezes on the payment screen.', 'TECHNICAL'),
                ('Cancel my subscription before it renews please.', 'CANCEL'),
                ('The courier says delivered but nothing is here.', 'DELIVERY'),
                ('Refund status for order 55123?', 'REFUND'),
            ]
        )
    ]
    lines += bench_dataset(tickets, few_shot_demos(tickets), 'text', added, ('t035', 'REFUND'), 'refund')
    poems_csv = POEMS / 'dev.csv'
    if poems_csv.is_file():
        poems = ws.import_dataset(
            'bench_poems',
            poems_csv,
            input=['text'],
            expected='label',
            id='id',
            split_ratios={'dev': 1.0},
            if_exists='replace',
        )
        extra = [
            {'id': f'p{i}', 'text': t, 'label': lab}
            for i, (t, lab) in enumerate(
                [
                    ('the sun rose golden over happy fields', 'positive'),
                    ('and all my hopes lay broken in the dust', 'negative'),
                    ('the river runs beside the mill', 'no_impact'),
                ]
            )
        ]
        train = ws.import_dataset(
            'bench_poems_train',
            POEMS / 'train.csv',
            input=['text'],
            expected='label',
            id='id',
            split_ratios={'train': 1.0},
            if_exists='replace',
        )
        first_id = poems.rows()[0]['example_id']
        demos = [d for d in few_shot_demos(train) if d['expected'] in poems.labels()]
        lines += [''] + bench_dataset(poems, demos, 'text', extra, (first_id, 'no_impact'), 'love')
    else:
        lines += ['', f'(poem_sentiment skipped: {poems_csv} not found)']
    return lines
