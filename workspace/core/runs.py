"""Runs: one evaluation of one version on one dataset split, an immutable record.

A run names what it read: the dataset's table version (its examples and expected outputs) and the evaluation
table's version right after the run wrote its rows (`Run.pins`). Pixeltable keeps every version of a table, so a
run reads its rows, predictions and scores as they were when it was made: a later correction, append, new scorer
or re-evaluation makes a new dataset or table version and, evaluated again, a new run, and never changes this one.
`run.reproduce()` re-derives every score from that lineage (the dataset version, the version, the request store)
and reports any difference. Runs recorded before runs were pinned are read at the evaluation table's last
version written before they ended.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import html
import json
import operator
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import pandas as pd
import pixeltable as pxt

from workspace.core import metrics, rules, samples, stats
from workspace.core.baselines import References, reference_baselines
from workspace.core.datasets import get_dataset
from workspace.core.metrics import Skew
from workspace.core.versions import Version, get_version, parent_chain
from workspace.display.formats import count, milliseconds, money, percent, timestamp, tokens
from workspace.display.frames import shown
from workspace.display.results import render_record
from workspace.errors import WorkspaceError
from workspace.storage import costs, reads, store, tables
from workspace.storage.reads import READS

__all__ = [
    'Failures',
    'Lineage',
    'Run',
    'Summary',
    'get_run',
    'judge_score_columns',
    'list_runs',
    'lineage',
    'main_score_name',
    'summarize',
    'table_at',
]

T = TypeVar('T')

_MAIN_SCORE = {'choice': 'accuracy', 'text': 'rouge_l', 'json': 'json_valid'}
_ROW_SCORE = {'choice': 'exact_match', 'text': 'rouge_l', 'json': 'json_valid'}


def main_score_name(task: str) -> str:
    """Return the headline metric of a task: accuracy for labels, ROUGE-L for text, JSON validity for JSON."""
    return _MAIN_SCORE[task]


@dataclass(frozen=True)
class Run:
    """One evaluation of one version on one dataset split: what it cost and where its rows are."""

    run_id: str
    version: Version
    dataset: str
    split: str | None
    dataset_version: int
    example_ids: tuple[str, ...]
    calls: int
    reused: int
    started_at: datetime.datetime
    wall_s: float
    errors: int = 0
    samples: int = 1
    judge_calls: int = 0
    cost_usd: float | None = None
    #: The tables this run read, as {name: [table id, version]}: `evals` (its rows and scores), `samples`.
    pins: dict[str, Any] | None = None
    #: The metrics recorded when the run was made (the runs table); `reproduce()` checks them.
    metrics: dict[str, Any] | None = None
    #: Calls that a killed run had sent without its answer arriving, sent again by this one (paid twice).
    repeated: int = 0

    def replace(self, **changes: Any) -> Run:
        return dataclasses.replace(self, **changes)

    def _pin(self, name: str) -> tuple[str, list[Any]]:
        path = tables.eval_path(self.dataset) if name == 'evals' else f'{tables.SAMPLES_DIR}/{self.dataset}'
        pin = (self.pins or {}).get(name)
        if pin is None:  # a run recorded before runs were pinned
            pin = _pin_by_time(path, self.started_at + datetime.timedelta(seconds=self.wall_s), self.dataset)
        return path, list(pin)

    def pinned(self, name: str = 'evals') -> pxt.Table:
        """Return the table a run read (`'evals'` or `'samples'`) as it was when the run was made (read-only)."""
        path, pin = self._pin(name)
        return table_at(path, pin, what=f'the {name} rows of run {self.run_id}', dataset=self.dataset)

    def _read_pinned(self, query: str, load: Any) -> Any:
        """Return a read of the pinned evaluation table, kept per process: a pinned version never changes."""
        path, pin = self._pin('evals')
        return READS.get_at(pin[0], pin[1], (path, query), lambda: load(self.pinned()))

    def derived(self, what: Hashable, compute: Callable[[], T]) -> T:
        """Return `compute()`, a value derived from this run's rows, kept per process: the rows are pinned, so the
        same version, examples and pinned tables derive the same value (a warm re-run, a comparison measured again
        derive nothing). Treat it as read-only."""
        path, pin = self._pin('evals')
        pins = repr(sorted((self.pins or {}).items()))
        key = (path, 'derived', what, self.version.id, self.example_ids, self.samples, pins)
        return READS.get_at(pin[0], pin[1], key, compute)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return (
            f'<Run {self.run_id} {self.version.id} on {self.dataset}/{self.split or "all"}: n={len(self.example_ids)} '
            f'calls={self.calls} reused={self.reused} errors={self.errors}>'
        )

    def _repr_html_(self) -> str:
        judge = f' and {count(self.judge_calls)} judge calls' if self.judge_calls else ''
        return render_record(
            f'Run {self.run_id}: {self.version.id} on {self.dataset} / {self.split or "all rows"}',
            [
                ('examples', count(self.n)),
                ('model calls', f'{count(self.calls)}{judge}'),
                ('rows reused', f'{count(self.reused)} (answered earlier: no model call)'),
                ('errors', count(self.errors)),
                ('samples per row', count(self.samples) if self.samples > 1 else None),
                ('cost', money(self.cost_usd) if self.cost_usd is not None else None),
                ('wall time', f'{self.wall_s:.2f} s'),
                ('started', timestamp(self.started_at)),
            ],
            notes=['run.summary() has the metrics; run.failures() the examples it got wrong'],
        )

    @property
    def n(self) -> int:
        return len(self.example_ids)

    @property
    def task(self) -> str:
        return get_dataset(self.dataset).task

    def predictions(self) -> pd.DataFrame:
        """Return one row per example: inputs, expected, prediction, raw output, error, scores, latency, tokens.

        As the run made them: a later correction or scorer shows in a new run, never in this one.
        """
        ds = get_dataset(self.dataset)
        frame = self.rows()
        stored = frame['input_fields'] if 'input_fields' in frame.columns else pd.Series(dtype=object)
        if len(stored) == len(frame) and all(isinstance(f, dict) for f in stored):
            inputs = pd.DataFrame([{'example_id': ex, **f} for ex, f in zip(frame['example_id'], stored)])
        else:  # rows written before evaluations kept their inputs: the dataset as it was at the run
            inputs = pd.DataFrame(ds.at(self.dataset_version).rows(), columns=['example_id', *ds.inputs])
        inputs = inputs.reindex(columns=['example_id', *ds.inputs])
        frame = frame.drop(columns=[c for c in ds.inputs if c in frame.columns]).merge(inputs, on='example_id')
        return shown(frame)  # violations, scores and times read plainly in a notebook; the values stay as they are

    def rows(self) -> pd.DataFrame:
        """Return this run's rows of the evaluation table (expected, prediction, scores, ...), without inputs, as
        they were when the run was made."""
        _, pin = self._pin('evals')

        def read() -> pd.DataFrame:
            evals = self.pinned()
            return evals.where(evals.version_id == self.version.id).collect().to_pandas()

        # keyed as `eval_rows` keys its read of the live table: a run that wrote nothing (a warm re-run) reads its
        # rows at the version that read already saw, so they are read once
        frame = READS.get_at(pin[0], pin[1], ('eval_rows', self.version.id), read)
        ids = list(self.example_ids)
        present = frame.set_index('example_id', drop=False)
        missing = [ex for ex in ids if ex not in present.index]
        if missing:
            raise WorkspaceError(
                f'{self.version.id} has no evaluation rows for {len(missing)} examples of {self.dataset!r} '
                f'(e.g. {missing[0]!r}); evaluate it again'
            )
        return present.loc[ids].reset_index(drop=True)

    def score_columns(self) -> list[str]:
        """Return the names of the score columns this run has (those of the evaluation table when it was made)."""
        return list(self._read_pinned('score columns', score_columns))

    def row_scores(self, name: str | None = None) -> list[float]:
        """Return the per-example score (the task's main per-row score unless named), None counted as 0."""
        column = name or _ROW_SCORE[self.task]
        frame = self.rows()
        return [0.0 if pd.isna(v) else float(v) for v in frame[column]]

    def summary(self) -> Summary:
        """Return the run's metrics, per-category table and confusion matrix, and the reference baselines of the
        same rows (the majority label, the k-nearest vote, the nearest training output: no model call)."""
        return summarize(self, references=True)

    def confusion_matrix(self) -> pd.DataFrame:
        """Return counts by expected label (rows) and predicted label (columns)."""
        frame = self.rows()
        return metrics.confusion_matrix(
            [str(e) for e in frame['expected']], _predicted(frame), self._label_order(frame)
        )

    def per_category(self) -> pd.DataFrame:
        """Return precision, recall, F1 and support per expected label."""
        frame = self.rows()
        return metrics.per_category([str(e) for e in frame['expected']], _predicted(frame), self._label_order(frame))

    def failures(self, limit: int | None = None) -> Failures:
        """Return the examples the version got wrong or failed on: example id, inputs, expected, prediction, raw
        output and error. In a notebook it shows left-aligned with wrapped text, without the raw output where it
        only repeats the prediction and without the error column when no row has one."""
        ds = get_dataset(self.dataset)
        frame = self.predictions()
        score = _ROW_SCORE[ds.task]
        wrong = (
            frame[(frame[score].fillna(0) < 1.0) | frame['error'].notna()]
            if ds.task != 'text'
            else frame[frame['error'].notna() | (frame[score].fillna(0) < frame[score].fillna(0).median())]
        )
        columns = ['example_id', *ds.inputs, 'expected', 'prediction', 'output', 'error']
        wrong = Failures(wrong[columns].reset_index(drop=True))
        return wrong.head(limit) if limit is not None else wrong

    def lineage(self, example_id: str) -> Lineage:
        """Return where the prediction and scores for one example of this run come from."""
        if example_id not in self.example_ids:
            raise WorkspaceError(f'run {self.run_id} has no example {example_id!r} of {self.dataset!r}')
        evals = self.pinned()
        found = evals.where((evals.version_id == self.version.id) & (evals.example_id == example_id)).collect()
        record = _lineage_record(self.version, self.dataset, dict(found[0]), score_columns(evals))
        return Lineage({'run': self.run_id, **record, 'dataset_version': self.dataset_version})

    def reproduce(self) -> Any:
        """Re-derive every score of this run from its lineage and return a `Reproduction` listing any difference.

        The examples and expected outputs are read at the run's dataset version, each request is built again from
        the version (and the demos its row names), its answer read from the request store (no model call), then
        parsed and scored by the run's scorers; the run's metrics are computed again from the derived rows.

        >>> run.reproduce()
        <Reproduction of run 3f2a9c1d0b7e: 6 rows, every score reproduced>
        """
        from workspace.core.reproduce import rederive

        derived = rederive(self)
        metrics_now = summarize(self, derived.frame).metrics
        return derived.with_metrics(self.metrics or {}, metrics_now)

    def sample_rows(self, k: int | None = None) -> pd.DataFrame:
        """Return the run's samples, one row per (example, sample index) (see `evaluate(..., samples=k)`)."""
        from workspace.core.samples import sample_rows

        return sample_rows(self, k)

    def _label_order(self, frame: pd.DataFrame) -> list[str]:
        labels = list(self.version.labels)
        seen = {str(e) for e in frame['expected']} | {p for p in _predicted(frame) if p is not None}
        return labels + sorted(seen - set(labels))


class Failures(pd.DataFrame):
    """A run's failed examples: a DataFrame that a notebook shows left-aligned, wrapped, and without columns that
    say nothing (a raw output equal to the prediction, an error column with no error)."""

    @property
    def _constructor(self) -> type[Failures]:
        return Failures

    def shown_columns(self) -> list[str]:
        """Return the columns worth showing: all but a raw output that repeats the prediction and an empty error."""
        hidden = set()
        if {'output', 'prediction'} <= set(self.columns):
            same = [
                (pd.isna(o) and pd.isna(p)) or (not pd.isna(o) and str(o).strip() == str(p))
                for o, p in zip(self['output'], self['prediction'])
            ]
            if all(same):
                hidden.add('output')
        if 'error' in self.columns and self['error'].isna().all():
            hidden.add('error')
        return [c for c in self.columns if c not in hidden]

    def styled(self) -> Any:
        """Return the pandas Styler a notebook shows: text left-aligned and wrapped, one row per example."""
        frame = pd.DataFrame(self[self.shown_columns()])
        long = [c for c in frame.columns if frame[c].astype(str).str.len().max() > 24]
        styler = frame.style.hide(axis='index')
        styler = styler.set_properties(**{'text-align': 'left', 'vertical-align': 'top', 'white-space': 'nowrap'})
        if long:
            styler = styler.set_properties(
                subset=long, **{'white-space': 'pre-wrap', 'min-width': '16em', 'max-width': '40em'}
            )
        if 'error' in frame.columns:
            styler = styler.set_properties(subset=['error'], **{'color': '#c62828'})
        return styler.format(na_rep='').set_table_styles(
            [
                {'selector': 'th', 'props': 'text-align: left; vertical-align: bottom; white-space: nowrap;'},
                {'selector': 'td', 'props': 'padding: 4px 8px; border-bottom: 1px solid #e5e7eb;'},
            ]
        )

    def _repr_html_(self) -> str:  # type: ignore[override]
        if self.empty:
            return '<p>No failures: every example is right.</p>'
        return str(self.styled().to_html())


def _plain(value: Any) -> Any:
    """Return a value as JSON-friendly Python: timestamps as ISO strings, NaN as None."""
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Lineage(Mapping[str, Any]):
    """Where one prediction comes from: dataset and table version, example, version and its parents, model and
    params, request, and result. Reads like a dict (`lineage['request_hash']`); shows as a small table in a
    notebook; `.to_dict()` gives plain values (timestamps as ISO strings) for JSON."""

    _SECTIONS = (
        ('Example', ('run', 'dataset', 'dataset_version', 'split', 'example_id', 'expected')),
        ('Version', ('version', 'parents', 'model', 'model_id', 'params')),
        ('Request', ('request_hash', 'answered_at', 'first_requested_by', 'reused', 'evaluated_at')),
        ('Result', ('prediction', 'error', 'scores')),
    )
    _NAMES = {'dataset_version': 'table version', 'example_id': 'example', 'model_id': 'model identity'}

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict[str, Any]:
        """Return the lineage as plain JSON-friendly values."""
        return _plain(self._data)

    def _shown(self, key: str) -> str:
        value = _plain(self._data.get(key))
        if key == 'parents':
            return ' ← '.join(value) if value else '(none: a first version)'
        if key == 'first_requested_by' and isinstance(value, dict):
            return f'{value.get("version")} on {value.get("dataset")} / {value.get("example_id")}'
        if key == 'reused':
            return 'yes: answered earlier, no model call' if value else 'no: this evaluation called the model'
        if key == 'error' and value is None:
            return 'none'
        if key == 'scores':  # scores are proportions, shown as everywhere else
            return ', '.join(f'{k} {percent(v) if isinstance(v, float) else v}' for k, v in (value or {}).items())
        if key == 'params':
            return ', '.join(f'{k} {v:.3g}' if isinstance(v, float) else f'{k} {v}' for k, v in (value or {}).items())
        if isinstance(value, str) and key.endswith('_at'):
            return value.replace('T', ' ')[:19]
        return '' if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    def __repr__(self) -> str:
        lines = [
            f'Lineage of {self._data.get("version")} on {self._data.get("dataset")} / {self._data.get("example_id")}'
        ]
        for title, keys in self._SECTIONS:
            lines.append(f'{title}:')
            lines += [f'  {self._NAMES.get(k, k.replace("_", " ")):<20} {self._shown(k)}' for k in keys if k in self]
        return '\n'.join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for title, keys in self._SECTIONS:
            rows.append(
                f'<tr><th colspan="2" style="text-align:left;padding:8px 8px 2px;border-bottom:1px solid #d8dee4">'
                f'{title}</th></tr>'
            )
            for key in keys:
                if key in self:
                    value = html.escape(str(self._shown(key)))
                    if key == 'request_hash':
                        value = f'<code title="{value}">{value[:16]}…</code>'
                    rows.append(
                        f'<tr><td style="text-align:left;color:#59636e;padding:2px 12px 2px 8px;white-space:nowrap">'
                        f'{html.escape(self._NAMES.get(key, key.replace("_", " ")))}</td>'
                        f'<td style="text-align:left;padding:2px 8px">{value}</td></tr>'
                    )
        return (
            '<table class="pw-lineage-record" style="border-collapse:collapse;font-size:13px">'
            + ''.join(rows)
            + '</table>'
        )


def eval_rows(dataset: str, version_id: str) -> pd.DataFrame:
    """Return every evaluation row of a version on a dataset (read once per table version; treat as read-only)."""
    evals = tables.open_table(tables.eval_path(dataset))
    if evals is None:
        raise WorkspaceError(f'dataset {dataset!r} has no evaluations; run ws.evaluate first')
    return READS.get(
        evals, ('eval_rows', version_id), lambda: evals.where(evals.version_id == version_id).collect().to_pandas()
    )


def table_at(path: str, pin: Sequence[Any], *, what: str, dataset: str) -> pxt.Table:
    """Return the table at `path` as it was at a pinned [table id, version] (read-only); raise if it is gone."""
    table_id, version = str(pin[0]), int(pin[1])
    live = tables.open_table(path)
    if live is None or str(live.get_metadata()['id']) != table_id:
        raise WorkspaceError(
            f'{what} are gone: dataset {dataset!r} was imported again with if_exists="replace", which drops its '
            'evaluations. The metrics recorded when the run was made are in ws.list_runs()'
        )
    return cast(pxt.Table, pxt.get_table(f'{path}:{version}'))


def _pin_by_time(path: str, ended: datetime.datetime, dataset: str) -> list[Any]:
    """Return [table id, version] of the last version of the table at `path` made before `ended` (for runs
    recorded before runs were pinned: their rows were final when they ended)."""
    live = tables.open_table(path)
    if live is None:
        raise WorkspaceError(f'dataset {dataset!r} has no evaluations any more; this run cannot be read')
    when = ended.timestamp()
    made = [v['version'] for v in live.get_versions() if v['created_at'].timestamp() <= when]
    return [str(live.get_metadata()['id']), max(made) if made else int(live.get_metadata()['version'])]


def score_columns(evals: Any) -> list[str]:
    """Return the scorer columns of an evaluation table, in the order they were added."""
    meta = reads.metadata(evals)['columns']
    return [
        name
        for name, col in meta.items()
        if isinstance(col.get('custom_metadata'), dict) and col['custom_metadata'].get('scorer')
    ]


def judge_score_columns(dataset: str) -> list[str]:
    """Return the judge scorer columns of a dataset's evaluations (they hold scores only where a judge was asked)."""
    evals = tables.open_table(tables.eval_path(dataset))
    if evals is None:
        return []
    meta = reads.metadata(evals)['columns']
    return [n for n, c in meta.items() if (c.get('custom_metadata') or {}).get('scorer') == 'judge']


def _predicted(frame: pd.DataFrame) -> list[str | None]:
    return [None if pd.isna(p) else str(p) for p in frame['prediction']]


@dataclass(frozen=True, repr=False)
class Summary:
    """A run's headline numbers, ready to print or to display in a notebook."""

    run: Run
    metrics: dict[str, Any]
    errors: int
    per_category: pd.DataFrame | None = None
    confusion: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    #: The 95% interval of the headline metric (`main_score_name`): Wilson for a proportion, bootstrap otherwise.
    interval: tuple[float, float] | None = None
    #: One label taking most predictions while the expected labels do not (a collapsed version), if any.
    skew: Skew | None = None
    #: What the same rows score without a model (`workspace.core.baselines`), when asked for.
    references: References | None = None

    @property
    def headline(self) -> str:
        """Return the name of the headline metric (accuracy for labels, ROUGE-L for text, validity for JSON)."""
        return next((name for name in _MAIN_SCORE.values() if name in self.metrics), next(iter(self.metrics)))

    def _metric_rows(self) -> list[tuple[str, str]]:
        """Return the metrics as (name, shown value) through the one formatter: scores as percentages, latency in
        milliseconds, token counts whole, money in dollars; a score equal to accuracy (exact match on labels) is
        left out."""
        rows = []
        accuracy = self.metrics.get('accuracy')
        for name, value in self.metrics.items():
            if name == 'exact_match' and accuracy is not None and abs(value - accuracy) < 1e-12:
                continue  # exact_match on a label task is accuracy under another name (a judge's score is not)
            if name.endswith('_usd'):
                rows.append((name[: -len('_usd')].replace('_', ' ') + ' (USD)', money(value)))
            elif name == 'mean_latency_s':
                rows.append(('mean latency', milliseconds(value)))
            elif name.startswith('mean_') and name.endswith('_tokens'):
                rows.append((name.replace('_', ' '), tokens(value)))
            elif isinstance(value, float):
                shown = percent(value) if 0.0 <= value <= 1.0 else f'{value:,.3f}'  # scores are in [0, 1]
                if name == self.headline and self.interval is not None:
                    shown += f' (95% CI {percent(self.interval[0])} to {percent(self.interval[1])})'
                rows.append(({'macro_f1': 'macro-F1'}.get(name, name), shown))
            else:
                rows.append((name, count(value) if isinstance(value, int) else str(value)))
        return rows

    def _header(self) -> list[tuple[str, str]]:
        r = self.run
        rows = [
            ('version', r.version.id),
            ('dataset', f'{r.dataset} (table version {r.dataset_version}), split {r.split or "all"}, n = {r.n:,}'),
            *self._metric_rows(),
            *self._reference_rows(),
            ('model calls', f'{r.calls:,}' + (f' (and {r.judge_calls:,} judge calls)' if r.judge_calls else '')),
            *([('calls repeated', f'{r.repeated:,} (in flight when an earlier run was killed)')] if r.repeated else []),
            ('rows reused', f'{r.reused:,}'),
            ('errors', f'{self.errors:,}'),
            ('wall time', f'{r.wall_s:.2f} s'),
        ]
        return rows

    def _reference_rows(self) -> list[tuple[str, str]]:
        """Return one row per reference baseline: its metrics on the same rows, computed without a model."""
        if not self.references:
            return []
        rows = []
        for ref in self.references.items:
            shown = ', '.join(f'{ {"macro_f1": "macro-F1"}.get(m, m) } {v:.3f}' for m, v in ref.metrics.items())
            rows.append((f'{ref.name} (no model)', shown))
        return rows

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self._header())
        lines = [f'{k:<{width}}  {v}' for k, v in self._header()]
        if self.per_category is not None:
            formats = {c: percent for c in ('precision', 'recall', 'f1')} | {'support': count}
            lines += ['', 'per category:', self.per_category.to_string(formatters=formats)]
        if self.confusion is not None:
            lines += ['', 'confusion matrix (rows: expected, columns: predicted):', self.confusion.to_string()]
        lines += [f'note: {n}' for n in self.notes]
        return '\n'.join(lines)

    def _repr_html_(self) -> str:
        cell = 'text-align:left;padding:2px 10px 2px 0'
        head = ''.join(
            f'<tr><th style="{cell};white-space:nowrap">{html.escape(k)}</th><td style="{cell}">{html.escape(v)}</td>'
            '</tr>'
            for k, v in self._header()
        )
        parts = [f'<table class="pw-summary">{head}</table>']
        if self.per_category is not None:
            table = self.per_category.style.format(
                {'precision': percent, 'recall': percent, 'f1': percent, 'support': count}
            ).to_html()
            parts.append('<h4>Per category</h4>' + table)
        if self.confusion is not None:
            parts.append(
                '<h4>Confusion matrix</h4><p>Rows: expected category; columns: predicted category.</p>'
                + _confusion_heatmap(self.confusion).to_html()
            )
        parts += [f'<p>{html.escape(n)}</p>' for n in self.notes]
        return '\n'.join(parts)


def _confusion_heatmap(matrix: pd.DataFrame) -> Any:
    """Return a confusion matrix as a pandas Styler heatmap: darker cells hold more examples, zeros are blank."""
    peak = max(int(matrix.to_numpy().max()), 1)
    return (
        matrix.style.background_gradient(cmap='Blues', axis=None, vmin=0, vmax=peak)
        .format(lambda v: '' if v == 0 else str(v))
        .set_properties(**{'text-align': 'center', 'min-width': '2.6em'})
    )


def summarize(run: Run, frame: pd.DataFrame | None = None, *, references: bool = False) -> Summary:
    """Compute a run's summary from its evaluation rows (`run.rows()` unless given: then computed once per process
    for the same pinned rows); with `references`, the reference baselines of the same rows too (the first time,
    one embedding-index query per row; stored)."""
    if frame is None:
        kept = run.derived('summary', lambda: _summary(run, run.rows()))
        summary = dataclasses.replace(kept, run=run, metrics=dict(kept.metrics), notes=list(kept.notes))
    else:
        summary = _summary(run, frame)
    if not references:
        return summary
    refs = reference_baselines(run.dataset, run.split, example_ids=run.example_ids)
    return dataclasses.replace(summary, notes=summary.notes + list(refs.notes), references=refs)


def _summary(run: Run, frame: pd.DataFrame) -> Summary:
    ds = get_dataset(run.dataset)
    frame, ruled = rules.apply_blocks(frame, run.score_columns())
    errors = int((frame['error'].notna() & ~ruled.blocked).sum())  # a row a rule kept from the model is no model error
    values: dict[str, Any] = {}
    per_cat = confusion = None
    if ds.task == 'choice':
        expected = [str(e) for e in frame['expected']]
        order = run._label_order(frame)
        values.update(metrics.classification_summary(expected, _predicted(frame), order))
        values.pop('n', None)
        per_cat = metrics.per_category(expected, _predicted(frame), order)
        confusion = metrics.confusion_matrix(expected, _predicted(frame), order)
    judged = set(judge_score_columns(run.dataset))
    names = [c for c in run.score_columns() if c in frame.columns and c not in judged]
    if names:
        values.update(
            metrics.mean_scores(
                frame[names].astype(object).where(frame[names].notna(), None).to_dict(orient='records'), names
            )
        )
    judge_notes = []
    for name in [c for c in run.score_columns() if c in judged and c in frame.columns]:
        # a judge scores only the rows it was asked to judge: its mean is over those, never over empty cells
        present = frame[name].dropna()
        if len(present):
            values[name] = float(present.mean())
        if len(present) < len(frame):
            judge_notes.append(
                f'judge {name}: {len(present)} of {len(frame)} rows judged; judge the others with '
                f'ws.evaluate(..., judges=[{name!r}])'
            )
    for column in ('latency_s', 'prompt_tokens', 'completion_tokens'):
        series = frame[column].dropna()
        values[f'mean_{column}'] = float(series.mean()) if len(series) else 0.0
    values.update(ruled.metrics())
    notes = ruled.notes() + judge_notes + _extras(run, frame, values)
    if errors:
        notes.append(f'{errors} of {len(frame)} rows have a model error; they count as wrong (see failures())')
    skew = None
    interval: tuple[float, float] | None = None
    if ds.task == 'choice' and len(frame):
        skew = metrics.label_skew(expected, _predicted(frame))
        if skew is not None:
            notes.append(f'{run.version.id} {skew["message"]}: it may have collapsed onto one answer')
        correct = sum(e == p for e, p in zip(expected, _predicted(frame)))
        interval = stats.proportion_interval(correct, len(frame))
    elif len(frame) and _ROW_SCORE[ds.task] in frame.columns:
        column = frame[_ROW_SCORE[ds.task]].fillna(0.0).astype(float)
        if ds.task == 'json':  # validity is a proportion
            interval = stats.proportion_interval(int(column.sum()), len(column))
        else:
            interval = stats.bootstrap_interval(column.tolist())
    return Summary(
        run=run,
        metrics=values,
        errors=errors,
        per_category=per_cat,
        confusion=confusion,
        notes=notes,
        interval=interval,
        skew=skew,
    )


def _extras(run: Run, frame: pd.DataFrame, values: dict[str, Any]) -> list[str]:
    """Add the run's cost in dollars and, with samples, pass@k, pass^k and agreement; return notes."""
    notes = []
    if run.samples > 1:
        values.update(samples.sample_metrics(run))
        frame = samples.sample_rows(run)
    cost = costs.run_cost(costs.frame_costs(frame, run.version.model))
    if cost is None:
        notes.append(f'no price is known for {run.version.model}; its cost is not shown')
    else:
        values['cost_usd'] = cost
        values['cost_per_row_usd'] = cost / max(run.n, 1)
    return notes


def _row_to_run(row: dict[str, Any]) -> Run:
    return Run(
        run_id=row['run_id'],
        version=get_version(row['version_id']),
        dataset=row['dataset'],
        split=row['split'],
        dataset_version=row['dataset_version'],
        example_ids=tuple(row['example_ids'] or ()),
        calls=row['calls'],
        reused=row['reused'],
        started_at=row['started_at'],
        wall_s=row['wall_s'],
        errors=row['errors'],
        samples=row.get('samples') or 1,
        judge_calls=row.get('judge_calls') or 0,
        cost_usd=row.get('cost_usd'),
        pins=row.get('pins'),
        metrics=row.get('metrics'),
        repeated=row.get('repeated') or 0,
    )


def get_run(run_id: str) -> Run:
    """Return a past run by id."""
    t = tables.runs()
    rows = list(t.where(t.run_id == run_id).collect())
    if not rows:
        raise WorkspaceError(f'no run {run_id!r}; list runs with ws.list_runs()')
    return _row_to_run(rows[0])


def list_runs(prompt: str | None = None, dataset: str | None = None) -> pd.DataFrame:
    """Return past evaluation runs, newest first, with their cost and headline metrics."""
    t = tables.runs()
    query: Any = t
    conditions = []
    if prompt:
        conditions.append(t.prompt == prompt)
    if dataset:
        conditions.append(t.dataset == dataset)
    if conditions:  # Pixeltable takes one where() per query, so the filters are combined into one predicate
        query = query.where(functools.reduce(operator.and_, conditions))
    result = (
        query.select(
            t.run_id,
            t.started_at,
            t.version_id,
            t.dataset,
            t.dataset_version,
            t.split,
            t.n,
            t.calls,
            t.reused,
            t.errors,
            t.wall_s,
            t.samples,
            t.judge_calls,
            t.cost_usd,
            t.metrics,
        )
        .order_by(t.started_at, asc=False)
        .collect()
    )
    return shown(result.to_pandas())


def lineage(version: Version | str, dataset: str, example_id: str) -> Lineage:
    """Return where one prediction comes from: dataset and table version, example, version and its parents,
    model and params, request hash, when the model answered it and who asked first. It reads like a dict, shows
    as a table in a notebook, and `.to_dict()` gives plain JSON-friendly values. This reads the version's latest
    evaluation of the example; `run.lineage(example_id)` reads the one a run made.

    >>> lineage('ticket_router:v2', 'support_tickets', 't017')
    """
    v = get_version(version)
    evals = tables.open_table(tables.eval_path(dataset))
    rows: Sequence[dict[str, Any]] = (
        list(evals.where((evals.version_id == v.id) & (evals.example_id == example_id)).collect()) if evals else []
    )
    if not rows:
        raise WorkspaceError(f'{v.id} has no prediction for example {example_id!r} of {dataset!r}; evaluate it first')
    return Lineage(_lineage_record(v, dataset, rows[0], score_columns(evals)))


def _lineage_record(v: Version, dataset: str, row: Mapping[str, Any], score_names: Sequence[str]) -> dict[str, Any]:
    request = store.requests_for([row['request_hash']]).get(row['request_hash'], {})
    return {
        'dataset': dataset,
        'dataset_version': row['dataset_version'],
        'example_id': row['example_id'],
        'split': row['split'],
        'version': v.id,
        'parents': parent_chain(v),
        'model': v.model,
        'model_id': (request.get('request') or {}).get('model_id'),
        'params': dict(v.params),
        'request_hash': row['request_hash'],
        'answered_at': request.get('answered_at'),
        'first_requested_by': {
            'version': request.get('first_version_id'),
            'dataset': request.get('first_dataset'),
            'example_id': request.get('first_example_id'),
        },
        'reused': bool(row['reused']),
        'evaluated_at': row['evaluated_at'],
        'prediction': row['prediction'],
        'expected': row['expected'],
        'error': row['error'],
        'demos': row.get('demo_source'),
        'scores': {name: row[name] for name in score_names if name in row},
    }
