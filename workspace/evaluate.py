"""Evaluation: render a version's requests for a dataset split, call the model only for requests the store has
not answered, and write one row per (version, example) whose prediction and scores are computed columns.

The incremental contract, enforced by the content hash of each request (model identity, params, rendered prompt,
output constraint):

- re-running anything unchanged makes no model call;
- a version whose requests differ on k of N rows makes k calls and reuses the other answers, with their lineage;
- m added rows make m calls per evaluated version;
- a corrected expected output makes no call (its scores recompute);
- a new scorer makes no call.
"""

from __future__ import annotations

import difflib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jinja2
import pandas as pd
import pixeltable as pxt

from udfs import parse, scores

from . import backends, calibration, store, tables
from .config import utc_now
from .datasets import Dataset, get_dataset
from .errors import TemplateError, WorkspaceError
from .runs import Run, eval_rows, main_score_name, summarize
from .versions import Version, get_version

__all__ = ['evaluate', 'build_request', 'check_template', 'add_scorer', 'eval_table']

log = logging.getLogger(__name__)


def _constraint(version: Version) -> dict[str, Any] | None:
    if version.output['kind'] == 'choice':
        return calibration.choice_constraint(version)
    if version.output['kind'] == 'json':
        return {'json_schema': version.output.get('schema')}
    return None


def build_request(version: Version, fields: Mapping[str, Any], *, model_id: str | None = None) -> dict[str, Any]:
    """Return the request `version` sends for one example's input fields, with its `hash`."""
    try:
        prompt = version.render(fields)
    except jinja2.UndefinedError as e:
        where = f' for example {fields["example_id"]!r}' if 'example_id' in fields else ''
        raise TemplateError(f'template of {version.id} failed to render{where}: {e.message}') from None
    request: dict[str, Any] = {
        'model': version.model,
        'model_id': model_id or backends.model_identity(version.model),
        'params': dict(version.params),
        'prompt': prompt,
        'constraint': _constraint(version),
    }
    request['hash'] = store.request_hash(request)
    return request


def check_template(version: Version, dataset: Dataset) -> None:
    """Raise TemplateError if the version's template reads a variable the dataset's inputs do not provide."""
    expected_column = dataset.meta.get('expected_column', 'expected')
    for name in sorted(version.variables()):
        if name in dataset.inputs:
            continue
        if name in ('expected', expected_column):
            raise TemplateError(
                f'template of {version.id} reads {{{{ {name} }}}}, the expected output of dataset '
                f'{dataset.name!r}: the answer would leak into the prompt. Use only input fields: '
                + ', '.join(dataset.inputs)
            )
        close = difflib.get_close_matches(name, dataset.inputs, n=1)
        hint = f' Did you mean {{{{ {close[0]} }}}}?' if close else ''
        raise TemplateError(
            f'template of {version.id} reads {{{{ {name} }}}}, which dataset {dataset.name!r} does not have.{hint} '
            f'Its input fields are: {", ".join(dataset.inputs)}'
        )


def _scorer_expr(table: pxt.Table, name: str, knobs: Mapping[str, Any]) -> Any:
    try:
        info = scores.get_scorer(name)
    except KeyError as e:
        raise WorkspaceError(e.args[0]) from None
    if name == 'json_valid':
        return info.udf(table.prediction, table.output_spec['schema'])
    if info.uses_expected:
        return info.udf(table.prediction, table.expected, **knobs)
    return info.udf(table.prediction, **knobs)


def eval_table(dataset: Dataset) -> pxt.Table:
    """Return the dataset's evaluation table, creating it with the task's default scorers on first use."""
    path = tables.eval_path(dataset.name)
    table = tables.open_table(path)
    if table is not None:
        return table
    table = pxt.create_table(
        path,
        {
            'version_id': pxt.String,
            'example_id': pxt.String,
            'prompt': pxt.String,
            'split': pxt.String | None,
            'dataset_version': pxt.Int | None,
            'request_hash': pxt.String,
            'output': pxt.String | None,
            'error': pxt.String | None,
            'latency_s': pxt.Float | None,
            'prompt_tokens': pxt.Int | None,
            'completion_tokens': pxt.Int | None,
            'answered_at': pxt.Timestamp | None,
            'evaluated_at': pxt.Timestamp | None,
            'reused': pxt.Bool | None,
            'output_spec': pxt.Json | None,
            'expected': pxt.Json | None,
        },
        primary_key=['version_id', 'example_id'],
        if_exists='ignore',
    )
    table.add_computed_column(
        prediction=parse.parse_output(table.output, table.output_spec), on_error='ignore', if_exists='ignore'
    )
    for name in scores.DEFAULT_SCORERS[dataset.task]:
        table.add_computed_column(
            **{name: _scorer_expr(table, name, {})},
            custom_metadata={'scorer': name, 'knobs': {}},
            on_error='ignore',
            if_exists='ignore',
        )
    return table


def add_scorer(dataset: Dataset | str, scorer: str, *, column: str | None = None, **knobs: Any) -> str:
    """Add a scorer column to a dataset's evaluations; existing predictions are scored with no model call.

    Knobs go to the scorer, e.g. `add_scorer(tickets, 'regex_match', column='mentions_refund', pattern='REFUND')`.
    Returns the column name.

    >>> add_scorer('support_tickets', 'normalized_match')
    """
    ds = get_dataset(dataset)
    table = eval_table(ds)
    name = column or scorer
    if name in table.columns():
        raise WorkspaceError(f'evaluations of {ds.name!r} already have a column {name!r}; pass column=... to name it')
    table.add_computed_column(
        **{name: _scorer_expr(table, scorer, knobs)},
        custom_metadata={'scorer': scorer, 'knobs': knobs},
        on_error='ignore',
    )
    return name


def evaluate(
    version: Version | str,
    dataset: Dataset | str,
    split: str | None = None,
    *,
    progress: store.Progress = True,
    retry_errors: bool = False,
) -> Run:
    """Evaluate `version` on a dataset split (all rows if `split` is None) and return the run.

    Only requests the store has not answered reach the model. Rows whose model call failed keep the error and
    count in the summary; `retry_errors=True` sends those requests again. `progress` shows a progress bar (True),
    nothing (False), or calls a function with (calls done, calls to make) after each batch.

    >>> run = evaluate('ticket_router:v2', 'support_tickets', split='dev')
    >>> run.summary()
    """
    started, clock = utc_now(), time.perf_counter()
    v = get_version(version)
    ds = get_dataset(dataset)
    check_template(v, ds)
    rows = ds.rows(split)
    dataset_version = ds.version
    model_id = backends.model_identity(v.model)
    if v.output['kind'] == 'choice' and ds.task == 'choice':
        missing = sorted({str(row['expected']) for row in rows} - set(v.labels))
        if missing:
            log.warning('%s cannot answer %s, which dataset %r expects', v.id, ', '.join(missing), ds.name)

    requests = {row['example_id']: build_request(v, row, model_id=model_id) for row in rows}
    table = eval_table(ds)
    frame = eval_rows(ds.name, v.id)
    existing = {ex: (key, error) for ex, key, error in zip(frame['example_id'], frame['request_hash'], frame['error'])}
    stale = [ex for ex, req in requests.items() if ex not in existing or existing[ex][0] != req['hash']]
    failed = [ex for ex in requests if ex not in stale and retry_errors and not pd.isna(existing[ex][1])]

    origin: dict[str, store.Origin] = {}
    for ex in stale + failed:
        origin.setdefault(requests[ex]['hash'], (v.id, ds.name, ex))
    batch = store.answer_many(
        [(requests[ex], origin[requests[ex]['hash']]) for ex in stale + failed],
        retry_errors=retry_errors,
        progress=progress,
    )

    to_write = stale + failed
    evaluated_at = utc_now()
    updates = []
    by_id = {row['example_id']: row for row in rows}
    for ex in to_write:
        key = requests[ex]['hash']
        answer = batch.answers.get(key)
        if answer is None:
            raise WorkspaceError(f'request {key[:12]} for example {ex!r} is missing from the store; evaluate again')
        updates.append(
            {
                'version_id': v.id,
                'example_id': ex,
                'prompt': v.prompt,
                'split': by_id[ex]['split'],
                'dataset_version': dataset_version,
                'request_hash': key,
                'output': answer['text'],
                'error': answer['error'],
                'latency_s': answer['latency_s'],
                'prompt_tokens': answer['prompt_tokens'],
                'completion_tokens': answer['completion_tokens'],
                'answered_at': answer['answered_at'],
                'evaluated_at': evaluated_at,
                'reused': key not in batch.called,
                'output_spec': dict(v.output),
                'expected': by_id[ex]['expected'],
            }
        )
    if updates:
        tables.upsert(table, updates)

    answered_now = {ex for ex in requests if requests[ex]['hash'] in batch.called}
    run = Run(
        run_id=uuid.uuid4().hex[:12],
        version=v,
        dataset=ds.name,
        split=split,
        dataset_version=dataset_version,
        example_ids=tuple(requests),
        calls=batch.calls,
        reused=len(requests) - len(answered_now),
        started_at=started,
        wall_s=0.0,
    )
    summary = summarize(run, run.rows())
    run = run.replace(errors=summary.errors, wall_s=time.perf_counter() - clock)
    tables.runs().insert(
        [
            {
                'run_id': run.run_id,
                'kind': 'evaluate',
                'version_id': v.id,
                'prompt': v.prompt,
                'dataset': ds.name,
                'dataset_version': dataset_version,
                'split': split,
                'n': len(requests),
                'calls': run.calls,
                'reused': run.reused,
                'errors': run.errors,
                'started_at': started,
                'wall_s': run.wall_s,
                'metrics': summary.metrics,
                'example_ids': list(requests),
            }
        ]
    )
    log.info(
        '%s on %s/%s: %d calls, %d reused, %s = %.3f',
        v.id,
        ds.name,
        split,
        run.calls,
        run.reused,
        main_score_name(ds.task),
        summary.metrics.get(main_score_name(ds.task), float('nan')),
    )
    return run
