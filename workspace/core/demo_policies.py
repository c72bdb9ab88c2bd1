"""Demo policies: a version's few-shot demos picked per example, the nearest ones from a pool dataset.

A version holds fixed demos (a list) or a policy (`nearest(pool, k=8)`). With a policy, evaluation retrieves for
each example the k training examples whose input is most similar (the project's one embedder, behind a Pixeltable
embedding index on the pool, so the pool's embeddings are computed once and as rows are added) and renders them
into the request. The request therefore still holds every demo it shows: its hash, the incremental contract and
the lineage work unchanged, and adding pool rows re-calls only the examples whose neighbours changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import pixeltable as pxt

from workspace.core.datasets import Dataset, get_dataset
from workspace.errors import VersionError
from workspace.storage import reads
from workspace.storage.reads import READS, table_key

__all__ = [
    'DemoPolicy',
    'Retrieved',
    'nearest',
    'is_policy',
    'check_policy',
    'retrieve',
    'pool_version',
    'nearest_first',
]

Order = Literal['nearest_last', 'nearest_first']


class DemoPolicy(TypedDict):
    """Pick `k` demos per example: the most similar rows of a pool dataset's split, by the embedding of `field`."""

    policy: Literal['nearest']
    dataset: str
    split: str | None
    field: str
    k: int
    per_label_max: int | None
    order: Order


def nearest(
    dataset: Dataset | str,
    *,
    k: int = 8,
    split: str | None = 'train',
    field: str | None = None,
    per_label_max: int | None = None,
    order: Order = 'nearest_last',
) -> DemoPolicy:
    """Return a demo policy: for each example, the `k` rows of `dataset`'s `split` most similar to it.

    Similarity is between the embeddings of one input `field` (the dataset's first input by default).
    `per_label_max` caps the demos sharing one expected label, so one label cannot fill the prompt. `order`
    puts the most similar demo last (next to the question, where a small model attends most) or first. An
    example never gets itself as a demo.

    >>> v2 = ws.edit(v1, demos=ws.nearest('support_tickets', k=8, per_label_max=2))
    """
    ds = get_dataset(dataset)
    policy = DemoPolicy(
        policy='nearest',
        dataset=ds.name,
        split=split,
        field=field or ds.inputs[0],
        k=k,
        per_label_max=per_label_max,
        order=order,
    )
    check_policy(policy)
    _pool_table(policy)  # the index is made now, so evaluations and optimizer runs all see one table version
    return policy


def is_policy(demos: Any) -> bool:
    """Return whether a version's `demos` is a policy rather than a list of fixed demos."""
    return isinstance(demos, Mapping) and 'policy' in demos


def check_policy(policy: Mapping[str, Any]) -> None:
    """Raise VersionError naming what is wrong with a demo policy, and the fix."""
    if policy.get('policy') != 'nearest':
        raise VersionError(f'unknown demo policy {policy.get("policy")!r}; use ws.nearest(dataset, k=...)')
    k, cap = policy.get('k'), policy.get('per_label_max')
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 64:
        raise VersionError(f'nearest(k={k!r}) is not valid; give a whole number of demos from 1 to 64')
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise VersionError(f'nearest(per_label_max={cap!r}) is not valid; give a whole number of at least 1, or None')
    if policy.get('order') not in ('nearest_last', 'nearest_first'):
        raise VersionError(
            f"nearest(order={policy.get('order')!r}) is not valid; use 'nearest_last' or 'nearest_first'"
        )
    ds = get_dataset(policy['dataset'])
    if policy.get('field') not in ds.inputs:
        raise VersionError(
            f'nearest(field={policy.get("field")!r}): dataset {ds.name!r} has no such input; its inputs are '
            + ', '.join(ds.inputs)
        )
    if policy.get('split') is not None and policy['split'] not in ds.splits():
        raise VersionError(
            f'nearest(split={policy["split"]!r}): dataset {ds.name!r} has splits {", ".join(ds.splits())}'
        )


def _index_name(field: str) -> str:
    return f'demos_{field}'


def _pool_table(policy: Mapping[str, Any]) -> tuple[Dataset, pxt.Table]:
    """Return the pool dataset and its table, with the embedding index on the policy's field (made on first use:
    Pixeltable embeds the existing rows once, and each row added afterwards as it is inserted)."""
    from udfs.embed import embed_text

    ds = get_dataset(policy['dataset'])
    table = ds.table
    field = policy['field']
    if _index_name(field) not in reads.metadata(table)['indexes']:
        table.add_embedding_index(field, idx_name=_index_name(field), embedding=embed_text, if_exists='ignore')
    return ds, table


def pool_version(policy: Mapping[str, Any]) -> dict[str, Any]:
    """Return what a policy retrieves from right now, for lineage: the pool dataset, split and table version."""
    ds, table = _pool_table(policy)
    return {
        'dataset': ds.name,
        'split': policy['split'],
        'dataset_version': table_key(table)[1],
        'field': policy['field'],
    }


@dataclass(frozen=True)
class Retrieved:
    """The demos retrieved for one example: as rendered (input fields and `expected`), and their example ids."""

    demos: tuple[dict[str, Any], ...]
    ids: tuple[str, ...]


def _neighbours(policy: Mapping[str, Any], ds: Dataset, table: pxt.Table, text: str) -> list[dict[str, Any]]:
    """Return pool rows by falling similarity to `text` (ties by example id), more than k for the filters."""
    field = policy['field']
    similarity = table[field].similarity(string=text, idx=_index_name(field))
    query = table.where(table.split == policy['split']) if policy['split'] is not None else table
    wanted = policy['k'] * (4 if policy['per_label_max'] else 1) + 1  # one more: the example itself may be in it
    rows = (
        query.order_by(similarity, asc=False)
        .limit(wanted)
        .select(table.example_id, *[table[c] for c in ds.inputs], table.expected, score=similarity)
        .collect()
    )
    return sorted((dict(r) for r in rows), key=lambda r: (-round(float(r['score']), 6), r['example_id']))


def retrieve(policy: Mapping[str, Any], examples: Sequence[Mapping[str, Any]], *, dataset: str) -> dict[str, Retrieved]:
    """Return the demos a policy gives each example of `dataset` (dicts with `example_id` and input fields), by
    example id. An example of the pool dataset itself never gets itself as a demo.

    Reads are kept per pool table version, so a repeated evaluation retrieves nothing again.
    """
    ds, table = _pool_table(policy)
    field, k, cap = policy['field'], policy['k'], policy['per_label_max']
    out: dict[str, Retrieved] = {}
    for example in examples:
        text = str(example[field])
        key = ('demos', tuple(sorted((n, str(v)) for n, v in policy.items())), text)
        candidates = READS.get(table, key, lambda text=text: _neighbours(policy, ds, table, text))  # type: ignore[misc]
        chosen: list[Any] = []
        per_label: dict[Any, int] = {}
        for row in candidates:
            if dataset == ds.name and row['example_id'] == example.get('example_id'):
                continue  # never its own demo
            label = str(row['expected'])
            if cap is not None and per_label.get(label, 0) >= cap:
                continue
            per_label[label] = per_label.get(label, 0) + 1
            chosen.append(row)
            if len(chosen) == k:
                break
        if policy['order'] == 'nearest_last':
            chosen.reverse()
        out[str(example['example_id'])] = Retrieved(
            demos=tuple({**{n: row[n] for n in ds.inputs}, 'expected': row['expected']} for row in chosen),
            ids=tuple(row['example_id'] for row in chosen),
        )
    return out


def nearest_first(policy: Mapping[str, Any] | None, demos: Sequence[Any]) -> list[Any]:
    """Return an example's demos nearest first (a neighbours' vote by rank reads them so), whatever order the
    policy renders them in; fixed demos (no policy) as they are."""
    if policy is not None and policy.get('order') == 'nearest_last':
        return list(reversed(demos))
    return list(demos)
