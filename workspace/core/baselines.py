"""Reference baselines: what a split scores without a model call, shown beside a version's score so that its value
is visible (a version that scores less than the vote of its own retrieved neighbours adds nothing).

- `majority`: the most frequent label of the pool split (train), answered on every row;
- `knn_vote`: each example's label is the vote of its k nearest pool examples by the project's embedder (the
  retrieval demo policies use, `demo_policies.retrieve`; ties go to the label of the nearer neighbour), with k
  chosen by macro-F1 on the dev split (or, without one, leave-one-out on the pool);
- `nearest_output` (text tasks): the expected output of the nearest pool example.

Nothing here calls a model. The neighbours are the costly part (one index query per example), so they are
computed once per dataset, pool and example and stored in `prompt_workspace/reference_neighbours`, keyed by the
pool's contents: reading the baselines again makes no query, rows added to another split cost one query each,
and rows added to the pool recompute the neighbours (they may change). Votes and scores are computed from the
stored neighbours with the current expected outputs, so a corrected expected output shows at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pandas as pd

from udfs import scores as scorers
from workspace.config import utc_now
from workspace.core import metrics
from workspace.core.datasets import Dataset, get_dataset
from workspace.core.demo_policies import nearest, retrieve
from workspace.storage import tables
from workspace.storage.reads import READS, table_key

__all__ = ['K_CHOICES', 'Reference', 'References', 'reference_baselines']

#: The k a nearest-neighbour vote may use; the one with the best macro-F1 on dev is chosen.
K_CHOICES: tuple[int, ...] = (1, 3, 5, 8, 16, 32)
#: Examples whose neighbours are read to choose k without a dev split (leave-one-out on the pool).
_LOO_SAMPLE = 300

Kind = Literal['majority', 'knn_vote', 'nearest_output']


@dataclass(frozen=True)
class Reference:
    """One reference baseline on a split: its predictions by example id and its metrics."""

    kind: Kind
    name: str  # '8-nearest vote', 'majority (no_impact)', 'nearest training output'
    predictions: dict[str, Any]
    metrics: dict[str, float]
    k: int | None = None

    def __repr__(self) -> str:
        shown = ', '.join(f'{m} {v:.3f}' for m, v in self.metrics.items())
        return f'<Reference {self.name}: {shown}>'


@dataclass(frozen=True)
class References:
    """The reference baselines of one dataset split, computed without a model call."""

    dataset: str
    split: str | None
    pool: str
    n: int
    items: tuple[Reference, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.items)

    def get(self, kind: Kind) -> Reference | None:
        """Return the baseline of one kind, if there is one."""
        return next((r for r in self.items if r.kind == kind), None)

    def sentence(self, metric: str | None = None) -> str:
        """Say the baselines in a few words: '8-nearest vote 0.504; majority 0.270' (by `metric`, else the first
        each has)."""
        parts = []
        for ref in self.items:
            name = metric if metric in ref.metrics else next(iter(ref.metrics))
            parts.append(f'{ref.name} {ref.metrics[name]:.3f}')
        return '; '.join(parts)

    def to_frame(self) -> pd.DataFrame:
        """Return one row per baseline: its name, k and metrics."""
        return pd.DataFrame([{'baseline': r.name, 'k': r.k, **r.metrics} for r in self.items])

    def restricted(self, example_ids: Sequence[str], expected: Mapping[str, Any], task: str) -> References:
        """Return the same baselines scored on `example_ids` only (e.g. the examples a comparison covers)."""
        ids = [ex for ex in example_ids if ex in expected]
        items = tuple(
            replace(
                r,
                predictions={ex: r.predictions.get(ex) for ex in ids},
                metrics=_metrics(task, [expected[ex] for ex in ids], [r.predictions.get(ex) for ex in ids]),
            )
            for r in self.items
        )
        return replace(self, n=len(ids), items=items)

    def __repr__(self) -> str:
        where = f'{self.dataset}/{self.split or "all"}'
        return f'<References on {where} (n = {self.n}, pool {self.pool}): {self.sentence() or "none"}>'


def _metrics(task: str, expected: Sequence[Any], predicted: Sequence[Any]) -> dict[str, float]:
    if not expected:
        return {}
    if task == 'choice':
        truth = [str(e) for e in expected]
        guess = [None if p is None else str(p) for p in predicted]
        return {name: metrics.split_metric(name, truth, guess) for name in ('macro_f1', 'accuracy')}
    rouge: Any = scorers.rouge_l
    values = [float(rouge.py_fn(p, e)) for p, e in zip(predicted, expected)]
    return {'rouge_l': sum(values) / len(values)}


def _pool_key(pool_rows: Sequence[Mapping[str, Any]], field: str) -> str:
    body = json.dumps([(r['example_id'], str(r[field])) for r in pool_rows], ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _neighbours(
    ds: Dataset, rows: Sequence[Mapping[str, Any]], pool: str, pool_rows: Sequence[Mapping[str, Any]]
) -> dict[str, list[str]]:
    """Return each row's nearest pool example ids, nearest first: stored ones read, missing or stale ones
    retrieved (one embedding-index query each) and stored."""
    field_name = ds.inputs[0]
    key = _pool_key(pool_rows, field_name)
    t = tables.reference_neighbours()
    stored = {
        r['example_id']: r['neighbour_ids']
        for r in t.where((t.dataset == ds.name) & (t.pool == pool) & (t.field == field_name) & (t.pool_key == key))
        .select(t.example_id, t.neighbour_ids)
        .collect()
    }
    missing = [r for r in rows if r['example_id'] not in stored]
    if missing:
        policy = nearest(ds, k=max(K_CHOICES), split=pool, order='nearest_first')
        found = retrieve(policy, missing, dataset=ds.name)
        now = utc_now()
        new = [
            {
                'dataset': ds.name,
                'pool': pool,
                'field': field_name,
                'example_id': str(r['example_id']),
                'pool_key': key,
                'neighbour_ids': list(found[str(r['example_id'])].ids),
                'computed_at': now,
            }
            for r in missing
        ]
        tables.upsert(t, new)
        stored.update({row['example_id']: row['neighbour_ids'] for row in new})
    return {str(r['example_id']): list(stored[str(r['example_id'])]) for r in rows}


def _vote(labels: Sequence[str], k: int) -> str | None:
    """Return the most frequent of the first k labels (nearest first); a tie goes to the nearer neighbour's."""
    top = list(labels[:k])
    if not top:
        return None
    counts = {label: top.count(label) for label in top}
    best = max(counts.values())
    return next(label for label in top if counts[label] == best)


def _choose_k(expected: Mapping[str, str], labels_by_example: Mapping[str, Sequence[str]]) -> int:
    """Return the k whose vote has the best macro-F1 on these examples (ties to the smaller k)."""
    ids = list(labels_by_example)
    truth = [str(expected[ex]) for ex in ids]

    def score(k: int) -> float:
        return metrics.split_metric('macro_f1', truth, [_vote(labels_by_example[ex], k) for ex in ids])

    return max(K_CHOICES, key=lambda k: (round(score(k), 9), -k))


def reference_baselines(
    dataset: Dataset | str,
    split: str | None = None,
    *,
    pool: str = 'train',
    dev: str = 'dev',
    example_ids: Sequence[str] | None = None,
) -> References:
    """Return the reference baselines of a dataset split (all rows if `split` is None): for labels the majority
    label and the k-nearest vote (k chosen on `dev`), for text the nearest pool example's output. No model call.

    The pool is the `pool` split (train); an example of the pool is never its own neighbour. A dataset without
    that split has no baselines (and a note saying so).

    >>> print(reference_baselines('support_tickets', 'test').sentence('macro_f1'))
    8-nearest vote 0.812; majority (BILLING) 0.133
    """
    ds = get_dataset(dataset)
    # Kept per version of the dataset and of the stored neighbours: a warm call (a comparison shown again, a
    # summary) reads neither the neighbours nor the embedding index. Read-only, like every kept read.
    ids = tuple(example_ids) if example_ids is not None else None
    key = ('reference_baselines', split, pool, dev, ids, table_key(tables.reference_neighbours()))
    return READS.get(ds.table, key, lambda: _references(ds, split, pool, dev, example_ids))


def _references(ds: Dataset, split: str | None, pool: str, dev: str, example_ids: Sequence[str] | None) -> References:
    if ds.task == 'json' or pool not in ds.splits():
        note = f'no reference baselines: dataset {ds.name!r} has no {pool!r} split to vote from'
        return References(ds.name, split, pool, 0, (), (note,) if ds.task != 'json' else ())
    rows = ds.rows(split)
    if example_ids is not None:
        wanted = set(example_ids)
        rows = [r for r in rows if r['example_id'] in wanted]
    pool_rows = ds.rows(pool)
    label_of = {str(r['example_id']): r['expected'] for r in pool_rows}
    expected = [r['expected'] for r in rows]
    ids = [str(r['example_id']) for r in rows]
    near = _neighbours(ds, rows, pool, pool_rows)
    notes: list[str] = []
    if ds.task != 'choice':
        first = {ex: label_of[n[0]] if n else None for ex, n in near.items()}
        predictions = {ex: _first_reference(first[ex]) for ex in ids}
        item = Reference(
            'nearest_output',
            f'nearest {pool} output',
            predictions,
            _metrics(ds.task, expected, list(predictions.values())),
            1,
        )
        return References(ds.name, split, pool, len(rows), (item,), ())
    k, chosen_on = _k_for(ds, pool, dev, pool_rows, label_of)
    if chosen_on == split:
        notes.append(f"the vote's k = {k} was chosen on {split} itself: its score there is optimistic")
    vote = {ex: _vote([str(label_of[n]) for n in near[ex]], k) for ex in ids}
    counts = pd.Series([str(label_of[ex]) for ex in label_of]).value_counts()
    majority_label = str(sorted(counts[counts == counts.max()].index)[0])
    majority = dict.fromkeys(ids, majority_label)
    items = (
        Reference('knn_vote', f'{k}-nearest vote', vote, _metrics('choice', expected, [vote[ex] for ex in ids]), k),
        Reference(
            'majority',
            f'majority ({majority_label})',
            majority,
            _metrics('choice', expected, [majority[ex] for ex in ids]),
        ),
    )
    return References(ds.name, split, pool, len(rows), items, tuple(notes))


def _first_reference(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _k_for(
    ds: Dataset, pool: str, dev: str, pool_rows: Sequence[Mapping[str, Any]], label_of: Mapping[str, Any]
) -> tuple[int, str]:
    """Return the vote's k and the split it was chosen on: `dev` if the dataset has one, else the pool itself
    (leave-one-out, on a fixed sample of it)."""
    if dev in ds.splits() and dev != pool:
        on, chosen_rows = dev, ds.rows(dev)
    else:
        on = pool
        step = max(1, len(pool_rows) // _LOO_SAMPLE)
        chosen_rows = [dict(r) for r in pool_rows][::step][:_LOO_SAMPLE]
    near = _neighbours(ds, chosen_rows, pool, pool_rows)
    truth = {str(r['example_id']): str(r['expected']) for r in chosen_rows}
    return _choose_k(truth, {ex: [str(label_of[n]) for n in near[ex]] for ex in truth}), on
