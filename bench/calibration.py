"""Benchmark: how the embedded model chooses a label. The token mask (the default) against rank classification
and contextual calibration (`ws.choice(labels, decode=...)`), on ../shared/datasets/poem_sentiment dev.csv (the
`mixed` label, which dev lacks, dropped from train) and on a stratified dev slice carved from banking77's
train.csv, each with the same few-shot template and one demo per label from train: accuracy and macro-F1 with 95%
intervals, paired tests against the mask, wall time per row. Then how long banking77's prompt is, and what the
three ways of scoring 77 labels cost.

    BENCH_BANKING_PER_LABEL=5 python bench/run.py calibration     # a larger banking77 slice (default 3 per label)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

import workspace as ws
from udfs import render as render_udfs
from workspace.core.metrics import classification_summary
from workspace.core.stats import mcnemar_exact
from workspace.jobs.quickstart import FEW_SHOT_TEMPLATE
from workspace.storage import backends, calibration
from workspace.storage.backends.local import LocalBackend, _logits, _token_logprobs

SHARED = Path(__file__).resolve().parent.parent.parent / 'shared' / 'datasets'
POEMS = SHARED / 'poem_sentiment'
BANKING = SHARED / 'banking77' / 'train.csv'
PER_LABEL = int(os.environ.get('BENCH_BANKING_PER_LABEL', '3'))
RESAMPLES = 2000


def _poems() -> ws.Dataset:
    train = pd.read_csv(POEMS / 'train.csv').assign(split='train')
    dev = pd.read_csv(POEMS / 'dev.csv').assign(split='dev')
    train = train[train['label'].isin(set(dev['label']))]  # dev has no 'mixed' verse
    frame = pd.concat([train, dev]).assign(id=lambda f: f['split'] + '-' + f['id'].astype(str))
    return ws.import_dataset(
        'bench_calib_poems', frame[['id', 'text', 'label', 'split']], input='text', expected='label', split='split',
        id='id', if_exists='replace',
    )  # fmt: skip


def _banking() -> ws.Dataset:
    """banking77 train.csv: PER_LABEL rows of each intent (seeded) as dev, the rest as train (demos)."""
    frame = pd.read_csv(BANKING).assign(id=lambda f: 'b' + f.index.astype(str), split='train')
    dev = frame.groupby('category').sample(n=PER_LABEL, random_state=0).index
    frame.loc[dev, 'split'] = 'dev'
    return ws.import_dataset(
        'bench_calib_banking', frame, input='text', expected='category', split='split', id='id', if_exists='replace'
    )


def _template(question: str, answer: str) -> str:
    return FEW_SHOT_TEMPLATE.replace('Ticket:', f'{question}:').replace('Category:', f'{answer}:')


def _macro_f1(expected: np.ndarray, predicted: np.ndarray, n_labels: int) -> float:
    """Macro-F1 over the labels present in `expected` (as workspace.core.metrics), on integer codes; -1 is no label."""
    hit = predicted == expected
    tp = np.bincount(expected[hit], minlength=n_labels)
    support = np.bincount(expected, minlength=n_labels)
    guessed = np.bincount(predicted[predicted >= 0], minlength=n_labels)
    f1 = 2 * tp / np.maximum(support + guessed, 1)
    return float(f1[support > 0].mean())


def _wilson(correct: int, n: int) -> tuple[float, float]:
    ci = sps.binomtest(correct, n).proportion_ci(confidence_level=0.95, method='wilson')
    return ci.low, ci.high


def _f1_interval(expected: np.ndarray, predicted: np.ndarray, n_labels: int) -> tuple[float, float]:
    """A 95% percentile bootstrap interval of macro-F1, resampling examples."""
    res = sps.bootstrap(
        (np.arange(len(expected)),),
        lambda idx: _macro_f1(expected[idx], predicted[idx], n_labels),
        vectorized=False,
        n_resamples=RESAMPLES,
        method='percentile',
        random_state=0,
    )
    return res.confidence_interval.low, res.confidence_interval.high


def _f1_paired_p(expected: np.ndarray, a: np.ndarray, b: np.ndarray, n_labels: int) -> float:
    """Two-sided p-value of macro-F1(b) - macro-F1(a) by a paired permutation test (swap a and b per example)."""
    res = sps.permutation_test(
        (a, b),
        lambda x, y: _macro_f1(expected, y, n_labels) - _macro_f1(expected, x, n_labels),
        permutation_type='samples',
        vectorized=False,
        n_resamples=RESAMPLES,
        random_state=0,
    )
    return float(res.pvalue)


def bench_decodes(dataset: ws.Dataset, question: str, answer: str) -> list[str]:
    """Evaluate the same few-shot version with each decoding on dev; one table row per decoding."""
    labels = dataset.labels()
    codes = {label: i for i, label in enumerate(labels)}
    local = backends.get_backend('local')
    demos = dataset.demos(1)
    results: dict[str, tuple[np.ndarray, float]] = {}
    expected = np.array([])
    for decode in calibration.DECODES:
        version = ws.create_version(
            f'{dataset.name}_{decode}',
            template=_template(question, answer),
            demos=demos,
            output=ws.choice(labels, decode=decode),
        )
        start = time.perf_counter()
        run = ws.evaluate(version, dataset, 'dev', progress=False)
        wall = time.perf_counter() - start
        print(f'{version.id}: {run.calls} calls in {wall:.0f} s', file=sys.stderr, flush=True)
        frame = run.predictions()
        expected = np.array([codes[str(e)] for e in frame['expected']])
        results[decode] = (np.array([codes.get(p, -1) for p in frame['prediction']]), wall / len(frame))
    n = len(expected)
    tokens = len(local._load().tokenize(ws.get_version(f'{dataset.name}_mask').render({'text': ''}).encode()))
    lines = [
        f'### {dataset.name}: {n} dev rows, {len(labels)} labels, one demo per label ({len(demos)} demos, '
        f'{tokens} prompt tokens before the input)',
        '',
        '| decode | accuracy [95% CI] | macro-F1 [95% CI] | vs mask: accuracy (McNemar p) | vs mask: macro-F1 '
        '(permutation p) | most predicted label | s per row |',
        '|---|---|---|---|---|---|---:|',
    ]
    base = results['mask'][0]
    for decode, (predicted, per_row) in results.items():
        names = [labels[c] if c >= 0 else None for c in predicted]
        summary = classification_summary([labels[c] for c in expected], names, labels)
        correct = int((predicted == expected).sum())
        low, high = _wilson(correct, n)
        f1_low, f1_high = _f1_interval(expected, predicted, len(labels))
        assert abs(summary['macro_f1'] - _macro_f1(expected, predicted, len(labels))) < 1e-12
        top, count = pd.Series(names).value_counts().index[0], int(pd.Series(names).value_counts().iloc[0])
        if decode == 'mask':
            versus = '', ''
        else:
            acc_p = mcnemar_exact(base == expected, predicted == expected).p_value
            f1_diff = summary['macro_f1'] - _macro_f1(expected, base, len(labels))
            versus = (
                f'{(correct - int((base == expected).sum())) / n:+.3f} (p = {acc_p:.3f})',
                f'{f1_diff:+.3f} (p = {_f1_paired_p(expected, base, predicted, len(labels)):.3f})',
            )
        lines.append(
            f'| {decode} | {summary["accuracy"]:.3f} [{low:.3f}, {high:.3f}] | {summary["macro_f1"]:.3f} '
            f'[{f1_low:.3f}, {f1_high:.3f}] | {versus[0]} | {versus[1]} | {top}: {count} of {n} '
            f'(expected {int((expected == codes[top]).sum())}) | {per_row:.2f} |'
        )
    return lines


def bench_prompt_length(dataset: ws.Dataset) -> list[str]:
    """Tokens of banking77's few-shot prompt with 1, 2 and 3 demos per label, against the 4,096-token context."""
    local = backends.get_backend('local')
    assert isinstance(local, LocalBackend)
    llm = local._load()
    labels = dataset.labels()
    trie = local._tries_for(llm, tuple(labels), spaced=True)[0]
    longest = max(len(llm.tokenize(str(r['text']).encode(), add_bos=False)) for r in dataset.rows('dev'))
    lines = [
        f'| demos per label | prompt tokens (demos, then the longest dev query: {longest} tokens) | with the label '
        f'trie ({len(trie.nodes)} tokens) for rank | fits {local.n_ctx} tokens |',
        '|---:|---:|---:|---|',
    ]
    for per_label in (1, 2, 3):
        prompt = render_udfs.render(
            _template('Query', 'Intent'), {'text': ''}, demos=dataset.demos(per_label), labels=labels
        )
        n = len(llm.tokenize(prompt.encode(), add_bos=True)) + longest
        fits = 'yes' if n + len(trie.nodes) <= local.n_ctx else 'mask only' if n + 16 <= local.n_ctx else 'no'
        lines.append(f'| {per_label} | {n} | {n + len(trie.nodes)} | {fits} |')
    return lines


def _walk(local: LocalBackend, llm: Any, tokens: Sequence[int], labels: Sequence[str]) -> dict[str, float]:
    """Score labels by walking their token trie in sequence 0: one decode per label's new tokens, removing the
    cells of the branch left behind (kv_cache_seq_rm). The alternative the workspace does not use."""
    n = len(tokens)
    trie = local._tries_for(llm, tuple(labels), spaced=True)[0]
    logprobs = {(): _token_logprobs(local._prefill(llm, tokens, local.decoding), trie.children[()])}
    path: list[int] = []
    for spelling in sorted(trie.spellings.values()):
        need = list(spelling[:-1])
        common = len(os.path.commonprefix([path, need]))
        if common < len(path):
            llm._ctx.kv_cache_seq_rm(0, n + common, -1)
        if need[common:]:
            llm._batch.set_batch(batch=need[common:], n_past=n + common, logits_all=True)
            llm._ctx.decode(llm._batch)
            for i in range(len(need) - common):
                node = tuple(need[: common + i + 1])
                logprobs[node] = _token_logprobs(_logits(llm, i), trie.children[node])
        path = need
    llm._ctx.kv_cache_seq_rm(0, n, -1)
    return {
        label: sum(logprobs[s[:i]][t] for i, t in enumerate(s)) for label, s in trie.spellings.items()
    }  # fmt: skip


def _flat(local: LocalBackend, llm: Any, tokens: Sequence[int], labels: Sequence[str]) -> dict[str, float]:
    """Score labels in one batched decode, each label's tokens its own sequence (no token shared between labels)."""
    n = len(tokens)
    trie = local._tries_for(llm, tuple(labels), spaced=True)[0]
    logprobs = {(): _token_logprobs(local._prefill(llm, tokens, local.decoding), trie.children[()])}
    rows = [(seq, s[: i + 1]) for seq, s in enumerate(trie.spellings.values(), 1) for i in range(len(s) - 1)]
    for seq in range(1, len(labels) + 1):
        llm._ctx.kv_cache_seq_cp(0, seq, -1, -1)
    batch = local._batch.batch
    batch.n_tokens = len(rows)
    for j, (seq, node) in enumerate(rows):
        batch.token[j], batch.pos[j], batch.logits[j], batch.n_seq_id[j] = node[-1], n + len(node) - 1, True, 1
        batch.seq_id[j][0] = seq
    llm._ctx.decode(local._batch)
    for j, (_, node) in enumerate(rows):
        logprobs[node] = _token_logprobs(_logits(llm, j), trie.children[node])
    for seq in range(1, len(labels) + 1):
        llm._ctx.kv_cache_seq_rm(seq, -1, -1)
    return {label: sum(logprobs[s[:i]][t] for i, t in enumerate(s)) for label, s in trie.spellings.items()}


def bench_scoring(dataset: ws.Dataset, rows: int = 4) -> list[str]:
    """Time three ways of scoring every banking77 label after the same prompts (the first prompt warms up)."""
    local = backends.get_backend('local')
    assert isinstance(local, LocalBackend)
    llm = local._load()
    labels = dataset.labels()
    version = ws.get_version('bench_calib_banking_rank')
    prompts = [version.render(r) for r in dataset.rows('dev')[: rows + 1]]
    trie = local._tries_for(llm, tuple(labels), spaced=True)[0]
    ways = {
        f'one batched decode of the label trie, tokens shared by labels decoded once ({len(trie.nodes)} tokens; '
        'the workspace)': lambda p: local._score_labels(llm, p, labels, local.decoding)[0],
        'one batched decode, each label its own sequence '
        f'({sum(len(s) - 1 for s in trie.spellings.values())} tokens)': lambda p: _flat(
            local, llm, llm.tokenize(p.encode(), add_bos=True, special=True), labels
        ),
        'trie walk in one sequence, a decode per branch, kv_cache_seq_rm after each': lambda p: _walk(
            local, llm, llm.tokenize(p.encode(), add_bos=True, special=True), labels
        ),
    }
    lines = [
        '| scoring 77 labels after a banking77 prompt | ms per row | same answers as the workspace |',
        '|---|---:|---|',
    ]
    reference: list[str] = []
    for name, score in ways.items():
        with local._lock:
            score(prompts[0])
            start = time.perf_counter()
            answers = [max(labels, key=score(p).get) for p in prompts[1:]]
            per_row = (time.perf_counter() - start) / rows
        reference = reference or answers
        lines.append(f'| {name} | {1000 * per_row:.0f} | {answers == reference} |')
    return lines


def run() -> list[str]:
    lines = ['## Label choice: token mask, rank, calibrated (`bench/calibration.py`)', '']
    if not (POEMS / 'dev.csv').is_file() or not BANKING.is_file():
        return lines + [f'(skipped: {POEMS} or {BANKING} not found)']
    lines += bench_decodes(_poems(), 'Verse', 'Sentiment') + ['']
    banking = _banking()
    lines += bench_decodes(banking, 'Query', 'Intent') + ['']
    lines += bench_prompt_length(banking) + ['']
    lines += bench_scoring(banking)
    return lines
