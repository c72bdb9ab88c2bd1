"""Benchmark: the incremental contract's call counts, the workspace's overhead over a plain llama.cpp loop, and a
no-op re-evaluation, on the bundled tickets and (when present) ../shared/datasets/poem_sentiment/dev.csv."""

from __future__ import annotations

import random
import time
from typing import Any

from common import ROOT, SHARED

import workspace as ws
from workspace.jobs.quickstart import FEW_SHOT_TEMPLATE, few_shot_demos
from workspace.storage import backends

POEMS = SHARED / 'poem_sentiment'


def _plain_loop(prompts: list[str], params: dict[str, Any], labels: list[str] | None) -> tuple[float, list[str]]:
    """Time llama-cpp-python alone, as a plain loop would use it (its defaults: prefix reuse, 512-token batches), on
    the same prompts with the same decoding params (and, for a choice, the same label mask); return (seconds,
    answers)."""
    import llama_cpp

    local = backends.get_backend('local')
    llm = llama_cpp.Llama(
        model_path=str(local.path), n_ctx=local.n_ctx, n_threads=local.n_threads, seed=0, verbose=False
    )
    llm.create_completion(prompt='warm up', max_tokens=1)
    answers = []
    start = time.perf_counter()
    for prompt in prompts:
        out = llm.create_completion(
            prompt=prompt,
            max_tokens=params['max_tokens'],
            temperature=params['temperature'],
            stop=params.get('stop') or [],
            seed=params['seed'],
            logits_processor=local._label_mask(llm, {'choice': labels}) if labels else None,
        )
        answers.append(out['choices'][0]['text'])
    wall = time.perf_counter() - start
    llm.close()
    return wall, answers


def _backend_loop(requests: list[dict[str, Any]], order: list[int] | None = None) -> tuple[float, list[str]]:
    """Time the workspace's own local backend in a plain loop on the same requests (in `order`): its deterministic
    decoding without the store, tables and bookkeeping, so the ratio against it is the workspace's machinery alone.
    Return (seconds, answers in request order)."""
    local = backends.get_backend('local')
    answers: dict[int, str] = {}
    start = time.perf_counter()
    for i in order if order is not None else range(len(requests)):
        answers[i] = local.complete(requests[i])['text']
    return time.perf_counter() - start, [answers[i] for i in range(len(requests))]


def _first_run(version: ws.Version, dataset: ws.Dataset, labels: list[str] | None) -> list[str]:
    """The first run of a version beside a plain llama-cpp-python loop and the workspace's backend in a plain loop,
    on the same rendered prompts; then the backend's answers forward, reversed and shuffled."""
    from workspace.core.versions import build_request

    rows = dataset.rows()
    requests = [build_request(version, row) for row in rows]
    run, first = _timed(lambda: ws.evaluate(version, dataset, progress=False))
    plain, plain_answers = _plain_loop([r['prompt'] for r in requests], dict(version.params), labels)
    own, forward = _backend_loop(requests)
    n = len(requests)
    orders = {'reversed': list(range(n))[::-1], 'shuffled': random.Random(0).sample(range(n), n)}
    same = all(_backend_loop(requests, order)[1] == forward for order in orders.values())
    stored = list(run.rows()['output'])
    kind = 'choice' if labels else 'text'
    metric = 'accuracy' if labels else 'rouge_l'
    return [
        f'| {kind} | {first:.2f} | {plain:.2f} | **{first / plain:.2f}x** | {own:.2f} | **{first / own:.3f}x** | '
        f'{"yes" if same and stored == forward else "**no**"} | '
        f'{sum(a != b for a, b in zip(plain_answers, forward))} of {n} | '
        f'{run.summary().metrics.get(metric, float("nan")):.3f} |'
    ]


def _first_runs(dataset: ws.Dataset, demos: list[dict[str, Any]], text_field: str) -> list[str]:
    """The first-run table: a choice and a text version of the few-shot prompt, each beside the plain loops."""
    # A header paragraph of their own: their requests are new to the store (the contract below asks afresh too)
    template = 'Examples:\n\n' + FEW_SHOT_TEMPLATE.replace('text', text_field)
    labels = dataset.labels()
    choice = ws.create_version(f'first_{dataset.name}', template=template, demos=demos, output=ws.choice(labels))
    text = ws.create_version(f'first_text_{dataset.name}', template=template, demos=demos, output=ws.text())
    return [
        '',
        f'First run of a new version on {len(dataset)} rows, beside a plain llama-cpp-python loop on the same '
        'rendered prompts (its defaults: prefix reuse on, 512-token batches; the same params and label mask) and '
        "beside the workspace's own local backend in a plain loop (no store, no tables: the ratio is the "
        "workspace's machinery). Answers identical: the backend's answers forward, reversed and shuffled, and the "
        'stored ones, are the same text.',
        '',
        '| output | first run s | plain loop s | first run / plain loop | backend loop s | machinery '
        '| answers identical in any order | answers differing from the plain loop | score |',
        '|---|---:|---:|---:|---:|---:|---|---:|---:|',
        *_first_run(choice, dataset, labels),
        *_first_run(text, dataset, None),
    ]


def _grammar_vs_mask(prompts: list[str], labels: list[str]) -> tuple[float, float]:
    """Mean seconds per call with llama.cpp's GBNF grammar and with the workspace's label mask."""
    import llama_cpp

    local = backends.get_backend('local')
    llm = llama_cpp.Llama(
        model_path=str(local.path), n_ctx=local.n_ctx, n_threads=local.n_threads, seed=0, verbose=False
    )
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
    llm.close()
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
    *,
    first_runs: bool = False,
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
    from workspace.core.evaluate import eval_table

    _, made = _timed(lambda: eval_table(dataset))  # once per dataset: not part of a version's first run
    lines_first = _first_runs(dataset, demos, text_field) if first_runs else []
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
    sample = [v1.render({text_field: r[text_field]}) for r in dataset.rows()[:24]]
    grammar_s, mask_s = _grammar_vs_mask(sample, labels)
    lines += [
        '',
        f'- no-op re-evaluation of {n} rows: **{noop_wall:.3f} s**, 0 model calls',
        f'- accuracy of the few-shot version: {first.summary().metrics["accuracy"]:.3f}',
        f"- the dataset's evaluation table made before the first run (once per dataset): {made:.2f} s",
        f'- label constraint, {len(sample)} calls: GBNF grammar {1000 * grammar_s:.0f} ms/call, '
        f'token mask {1000 * mask_s:.0f} ms/call',
        *lines_first,
    ]
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
        lines += [''] + bench_dataset(poems, demos, 'text', extra, (first_id, 'no_impact'), 'love', first_runs=True)
    else:
        lines += ['', f'(poem_sentiment skipped: {poems_csv} not found)']
    return lines
