"""Reproducing a run: every score re-derived from what the run's lineage names, and any difference reported.

A run names the dataset's table version, the prompt version and, per row, the request hash, the demos the request
showed (a demo policy's pool, its table version and the demo ids) and the scorer columns the evaluation table had
when the run was made. Re-deriving reads the examples at that dataset version, builds each request again from the
version, reads its answer from the request store (no model call: an answer the store does not hold is reported),
parses it with the version's output spec, and scores it with each column's scorer, knobs and gate; a judge's
score is read from the judge's answer in the store. A difference names the example, what differs, the recorded
value and the derived one; the run's metrics are computed again from the derived rows and compared too.

Rule columns (guardrail violations) are taken as recorded: they check the same stored inputs, prompts and outputs.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import pandas as pd

from udfs import parse, scores
from workspace.core import judges
from workspace.core.datasets import Dataset, get_dataset
from workspace.core.versions import Version, build_request
from workspace.errors import DatasetError, WorkspaceError
from workspace.storage import backends, store

__all__ = ['Reproduction', 'rederive']

_DIFF_COLUMNS = ['example_id', 'field', 'recorded', 'derived']


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _same(a: Any, b: Any) -> bool:
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


@dataclass(frozen=True, repr=False)
class Reproduction:
    """What re-deriving a run found: the rows checked, each difference, and the metrics recorded and derived."""

    run_id: str
    n: int
    #: One row per difference: example id (or None for a metric), field, recorded value, derived value.
    differences: pd.DataFrame
    #: The run's rows with every derived value in place of the recorded one (what the derived metrics read).
    frame: pd.DataFrame
    #: One row per metric: name, recorded, derived, same.
    metrics: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(columns=['metric']))

    @property
    def ok(self) -> bool:
        """Return whether every row and every recorded metric was reproduced exactly."""
        return self.differences.empty and bool(self.metrics.get('same', pd.Series(dtype=bool)).all())

    def with_metrics(self, recorded: Mapping[str, Any], derived: Mapping[str, Any]) -> Reproduction:
        """Return this reproduction with the recorded metrics compared to those derived from its rows."""
        rows = [
            {
                'metric': k,
                'recorded': recorded.get(k),
                'derived': derived.get(k),
                'same': _same(recorded.get(k), derived.get(k)),
            }
            for k in dict.fromkeys([*recorded, *derived])
            if k in recorded  # a metric the run did not record (a scorer added later) is not a difference
        ]
        frame = pd.DataFrame(rows, columns=['metric', 'recorded', 'derived', 'same'])
        return dataclasses.replace(self, metrics=frame)

    def __repr__(self) -> str:
        if self.ok:
            return f'<Reproduction of run {self.run_id}: {self.n} rows, every score reproduced>'
        metric_diffs = int((~self.metrics['same'].astype(bool)).sum()) if len(self.metrics) else 0
        lines = [
            f'<Reproduction of run {self.run_id}: {self.n} rows, {len(self.differences)} differences, '
            f'{metric_diffs} metrics differ>'
        ]
        lines += [
            f'  {r.example_id}: {r.field} recorded {r.recorded!r}, derived {r.derived!r}'
            for r in self.differences.head(20).itertuples()
        ]
        if metric_diffs:
            lines += [
                f'  metric {r.metric}: recorded {r.recorded!r}, derived {r.derived!r}'
                for r in self.metrics[~self.metrics['same'].astype(bool)].itertuples()
            ]
        return '\n'.join(lines)

    def _repr_html_(self) -> str:
        if self.ok:
            return f'<p>Run {html.escape(self.run_id)}: {self.n} rows, every score reproduced from its lineage.</p>'
        head = (
            f'<p>Run {html.escape(self.run_id)}: {self.n} rows, <b>{len(self.differences)} differences</b> between '
            'what was recorded and what its lineage gives now.</p>'
        )
        metric_rows = self.metrics[~self.metrics['same'].astype(bool)] if len(self.metrics) else self.metrics
        return (
            head
            + self.differences.to_html(index=False)
            + (metric_rows.to_html(index=False) if len(metric_rows) else '')
        )


def _pool_demos(row: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Return the demos a policy row showed, read from its pool at the recorded table version."""
    source = row.get('demo_source')
    if not isinstance(source, Mapping):
        return None
    pool = get_dataset(source['dataset'], version=int(source['dataset_version']))
    by_id = {r['example_id']: r for r in pool.rows()}
    ids = list(source.get('example_ids') or [])
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DatasetError(f'demo {missing[0]!r} is not in {pool.ref}; the pool the run read has changed')
    return [{**{n: by_id[i][n] for n in pool.inputs}, 'expected': by_id[i]['expected']} for i in ids]


def _score(
    meta: Mapping[str, Any], v: Version, ds: Dataset, example: Mapping[str, Any], derived: Mapping[str, Any]
) -> Any:
    """Return a scorer column's derived score for one row (a judge's from the store: `judges.NOT_STORED` if the
    store does not hold its answer)."""
    prediction = derived['prediction']
    gate, minimum = meta.get('only_if'), float(meta.get('only_if_min', 1.0))
    if meta.get('scorer') == 'judge':
        if prediction is None or (gate is not None and not judges.gate_passed(derived.get(gate), minimum)):
            return 0.0  # not judged: no prediction, or it failed the cheaper scorer
        return judges.stored_score(meta['judge'], ds, example, prediction)
    info = scores.get_scorer(str(meta['scorer']))
    score = cast(Any, info.udf).py_fn  # the scorer's Python function, as the column calls it
    knobs = dict(meta.get('knobs') or {})
    try:
        if info.name == 'json_valid':
            value = score(prediction, (v.output or {}).get('schema'))
        elif info.uses_expected:
            value = score(prediction, example['expected'], **knobs)
        else:
            value = score(prediction, **knobs)
    except Exception:  # the column records a scorer's error as no score (on_error='ignore')
        value = None
    if gate is not None:
        value = scores.gated.py_fn(value, None if _missing(derived.get(gate)) else derived.get(gate), minimum=minimum)
    return value


def _scorer_columns(evals: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for name, col in evals.get_metadata()['columns'].items():
        meta = col.get('custom_metadata')
        if isinstance(meta, dict) and meta.get('scorer'):
            out[name] = meta
    return out


def rederive(run: Any) -> Reproduction:
    """Re-derive a run's rows from its lineage (see the module docstring); the metrics are compared by the caller."""
    v: Version = run.version
    try:
        ds = get_dataset(run.dataset).at(run.dataset_version)
    except DatasetError as e:
        raise WorkspaceError(f'run {run.run_id} cannot be reproduced: {e}') from None
    examples = {r['example_id']: r for r in ds.rows()}
    recorded = run.rows()
    scorer_meta = _scorer_columns(run.pinned())
    stored = store.requests_for(list(recorded['request_hash']))
    default_model_id: list[str] = []
    diffs: list[dict[str, Any]] = []
    derived_rows: list[dict[str, Any]] = []
    requests: dict[str, dict[str, Any]] = {}
    for row in recorded.to_dict('records'):
        ex = row['example_id']
        example = examples.get(ex)
        if example is None:
            diffs.append({'example_id': ex, 'field': 'example', 'recorded': 'present', 'derived': f'not in {ds.ref}'})
            continue
        model_id = (stored.get(row['request_hash'], {}).get('request') or {}).get('model_id')
        if model_id is None:
            default_model_id = default_model_id or [backends.model_identity(v.model)]
            model_id = default_model_id[0]
        try:
            requests[ex] = build_request(
                v, example, model_id=model_id, demos=_pool_demos(row) if v.demo_policy else None
            )
        except (WorkspaceError, DatasetError) as e:
            diffs.append({'example_id': ex, 'field': 'request', 'recorded': row['request_hash'], 'derived': str(e)})
    answers = store.lookup(r['hash'] for r in requests.values())
    for row in recorded.to_dict('records'):
        ex = row['example_id']
        if ex not in requests:
            derived_rows.append(row)
            continue
        derived = dict(row)
        derived['expected'] = examples[ex]['expected']
        derived['request_hash'] = requests[ex]['hash']
        answer = answers.get(requests[ex]['hash'])
        if answer is None:
            diffs.append(
                {'example_id': ex, 'field': 'answer', 'recorded': row['output'], 'derived': 'not in the request store'}
            )
        derived['output'] = answer['text'] if answer else None
        derived['error'] = answer['error'] if answer else None
        derived['prediction'] = parse.parse(derived['output'], dict(v.output))
        for name, meta in scorer_meta.items():
            derived[name] = _score(meta, v, ds, examples[ex], derived)
        for field in ('expected', 'request_hash', 'output', 'error', 'prediction', *scorer_meta):
            if field in row and not _same(row[field], derived[field]):
                diffs.append({'example_id': ex, 'field': field, 'recorded': row[field], 'derived': derived[field]})
        derived_rows.append(derived)
    frame = pd.DataFrame(derived_rows, columns=recorded.columns)
    return Reproduction(run.run_id, len(recorded), pd.DataFrame(diffs, columns=_DIFF_COLUMNS), frame)
