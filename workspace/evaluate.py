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
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jinja2
import pixeltable as pxt

from udfs import parse, scores

from . import backends, rules, tables
from .config import utc_now
from .datasets import Dataset, get_dataset
from .errors import TemplateError, WorkspaceError
from .runs import Run, main_score_name, summarize
from .versions import Version, get_version

__all__ = ['evaluate', 'build_request', 'request_hash', 'check_template', 'add_scorer', 'eval_table']

log = logging.getLogger(__name__)

#: Requests answered per insert: an interrupted evaluation loses at most this many answers.
BATCH_SIZE = 8


def request_hash(request: Mapping[str, Any]) -> str:
    """Return the content hash that identifies a request: model identity, params, prompt and constraint."""
    body = {k: request.get(k) for k in ('model_id', 'params', 'prompt', 'system', 'constraint')}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _constraint(version: Version) -> dict[str, Any] | None:
    if version.output['kind'] == 'choice':
        return {'choice': version.labels}
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
    request['hash'] = request_hash(request)
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
        rules.sync_table(table)
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
            'input_fields': pxt.Json | None,  # what input rules check
            'rendered_prompt': pxt.String | None,  # what prompt rules check
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
    rules.sync_table(table)
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


def _store_row(
    key: str, request: Mapping[str, Any], origin: tuple[str | None, str | None, str | None]
) -> dict[str, Any]:
    """Return the request store row for a new request; `origin` is (version id, dataset, example id)."""
    version_id, dataset, example_id = origin
    return {
        'request_hash': key,
        'request': {k: v for k, v in request.items() if k != 'hash'},
        'model_id': request['model_id'],
        'created_at': utc_now(),
        'first_version_id': version_id,
        'first_dataset': dataset,
        'first_example_id': example_id,
    }


Progress = bool | Callable[[int, int], None]


def _answer(
    store: pxt.Table,
    new: Sequence[tuple[str, dict[str, Any]]],
    origin: Mapping[str, tuple[str, str]],
    dataset: str,
    progress: Progress,
) -> set[str]:
    """Insert new requests into the store in batches (the store's computed column calls the model); return the
    hashes this process inserted, which another process evaluating at the same time may make fewer than asked.

    `progress` is True for a progress bar, or a callback given (calls done, calls to make) after each batch.
    """
    bar = None
    if progress is True and new:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(new), desc='model calls', unit='call')
    inserted: set[str] = set()
    try:
        for start in range(0, len(new), BATCH_SIZE):
            batch = new[start : start + BATCH_SIZE]
            rows = [_store_row(key, request, (origin[key][0], dataset, origin[key][1])) for key, request in batch]
            inserted |= tables.insert_new(store, rows, 'request_hash', on_error='ignore')
            if bar is not None:
                bar.update(len(batch))
            elif callable(progress):
                progress(start + len(batch), len(new))
    finally:
        if bar is not None:
            bar.close()
    return inserted


def _responses(store: pxt.Table, hashes: Iterable[str]) -> dict[str, dict[str, Any]]:
    keys = sorted(set(hashes))
    if not keys:
        return {}
    result = (
        store.where(store.request_hash.isin(keys))
        .select(
            store.request_hash,
            store.response,
            store.created_at,
            errortype=store.response.errortype,
            errormsg=store.response.errormsg,
        )
        .collect()
    )
    return {r['request_hash']: r for r in result}


def _known_hashes(store: pxt.Table, hashes: Iterable[str]) -> set[str]:
    keys = sorted(set(hashes))
    if not keys:
        return set()
    found = store.where(store.request_hash.isin(keys)).select(store.request_hash).collect()
    return {r['request_hash'] for r in found}


def answer(
    request: Mapping[str, Any], *, origin: tuple[str | None, str | None, str | None] = (None, None, None)
) -> dict[str, Any]:
    """Return the store's answer to one request, calling the model only if the store has not answered it.

    The answer is committed before this returns, so an interrupted caller (an optimizer) never pays for it twice.
    `origin` is (version id, dataset, example id) of whoever asks, recorded as the request's lineage if it is new.
    Returns the completion fields plus `hash`, `error` (None if it succeeded) and `reused`.
    """
    body = {k: v for k, v in request.items() if k != 'hash'}
    body.setdefault('model_id', backends.model_identity(body['model']))
    key = request_hash(body)
    store = tables.requests()
    reused = key in _known_hashes(store, [key])
    if not reused:
        reused = not tables.insert_new(store, [_store_row(key, body, origin)], 'request_hash', on_error='ignore')
    row = _responses(store, [key])[key]
    response = row['response'] or {}
    error = None if row['response'] is not None else f'{row["errortype"]}: {row["errormsg"]}'
    return {**response, 'hash': key, 'error': error, 'reused': reused}


def evaluate(
    version: Version | str,
    dataset: Dataset | str,
    split: str | None = None,
    *,
    progress: Progress = True,
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
        missing = sorted(set(ds.labels()) - set(v.labels))
        if missing:
            log.warning('%s cannot answer %s, which dataset %r expects', v.id, ', '.join(missing), ds.name)

    requests = {row['example_id']: build_request(v, row, model_id=model_id) for row in rows}
    table = eval_table(ds)
    existing = {
        r['example_id']: r
        for r in table.where(table.version_id == v.id)
        .select(table.example_id, table.request_hash, table.error)
        .collect()
    }
    stale = [ex for ex, req in requests.items() if ex not in existing or existing[ex]['request_hash'] != req['hash']]
    failed = [ex for ex in requests if ex not in stale and retry_errors and existing[ex]['error'] is not None]

    store = tables.requests()
    known = _known_hashes(store, (requests[ex]['hash'] for ex in stale))
    new: dict[str, dict[str, Any]] = {}
    origin: dict[str, tuple[str, str]] = {}
    for ex in stale:
        key = requests[ex]['hash']
        if key not in known and key not in new:
            new[key] = requests[ex]
            origin[key] = (v.id, ex)
    if new or failed:
        backends.get_backend(v.model).check()
    answered = _answer(store, list(new.items()), origin, ds.name, progress)
    retried = sorted({requests[ex]['hash'] for ex in failed})
    if retried:
        store.recompute_columns('response', where=store.request_hash.isin(retried), errors_only=True)

    to_write = stale + failed
    answers = _responses(store, (requests[ex]['hash'] for ex in to_write))
    evaluated_at = utc_now()
    updates = []
    by_id = {row['example_id']: row for row in rows}
    for ex in to_write:
        key = requests[ex]['hash']
        answer = answers.get(key)
        if answer is None:
            raise WorkspaceError(f'request {key[:12]} for example {ex!r} is missing from the store; evaluate again')
        response = answer['response'] or {}
        error = None if answer['response'] is not None else f'{answer["errortype"]}: {answer["errormsg"]}'
        updates.append(
            {
                'version_id': v.id,
                'example_id': ex,
                'prompt': v.prompt,
                'split': by_id[ex]['split'],
                'dataset_version': dataset_version,
                'request_hash': key,
                'output': response.get('text'),
                'error': error,
                'latency_s': response.get('latency_s'),
                'prompt_tokens': response.get('prompt_tokens'),
                'completion_tokens': response.get('completion_tokens'),
                'answered_at': answer['created_at'],
                'evaluated_at': evaluated_at,
                'reused': key not in answered and key not in retried,
                'output_spec': dict(v.output),
                'expected': by_id[ex]['expected'],
                'input_fields': {name: by_id[ex][name] for name in ds.inputs},
                'rendered_prompt': requests[ex]['prompt'],
            }
        )
    if updates:
        tables.upsert(table, updates)

    calls = len(answered) + len(retried)
    answered_now = {ex for ex in requests if requests[ex]['hash'] in answered or requests[ex]['hash'] in retried}
    run = Run(
        run_id=uuid.uuid4().hex[:12],
        version=v,
        dataset=ds.name,
        split=split,
        dataset_version=dataset_version,
        example_ids=tuple(requests),
        calls=calls,
        reused=len(requests) - len(answered_now),
        started_at=started,
        wall_s=0.0,
    )
    summary = summarize(run)
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
