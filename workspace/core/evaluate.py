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
from typing import Any, Literal

import pandas as pd
import pixeltable as pxt

from udfs import parse, scores
from workspace.config import utc_now
from workspace.core import demo_policies as demos, judges, rules, samples as samples_module
from workspace.core.datasets import Dataset, get_dataset
from workspace.core.runs import Run, eval_rows, main_score_name, summarize
from workspace.core.versions import Version, build_request, get_version
from workspace.errors import TemplateError, WorkspaceError
from workspace.storage import backends, calibration, store, tables

__all__ = ['evaluate', 'check_template', 'add_scorer', 'eval_table']

log = logging.getLogger(__name__)


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


def _tier(table: pxt.Table, column: str) -> str:
    columns: dict[str, Any] = dict(table.get_metadata()['columns'])
    meta = (columns.get(column) or {}).get('custom_metadata')
    if not isinstance(meta, dict) or not meta.get('scorer'):
        scorers = [
            c for c, m in table.get_metadata()['columns'].items() if (m.get('custom_metadata') or {}).get('scorer')
        ]
        raise WorkspaceError(f'only_if={column!r} is not a scorer column; the scorer columns are: {", ".join(scorers)}')
    return str(meta.get('tier') or scores.get_scorer(meta['scorer']).tier)


def _check_gate(table: pxt.Table, only_if: str, tier: str) -> None:
    """Raise WorkspaceError unless `only_if` names a scorer column of a tier no more expensive than `tier`."""
    gate_tier = _tier(table, only_if)
    if scores.TIERS.index(gate_tier) > scores.TIERS.index(tier):
        raise WorkspaceError(
            f'only_if={only_if!r} is a {gate_tier} scorer, more expensive than this {tier} one; gate an expensive '
            f'scorer on a cheaper one (tiers, cheapest first: {", ".join(scores.TIERS)})'
        )


def eval_table(dataset: Dataset) -> pxt.Table:
    """Return the dataset's evaluation table, creating it with the task's default scorers on first use."""
    path = tables.eval_path(dataset.name)
    table = tables.open_table(path)
    if table is not None:
        if 'demo_source' not in table.columns():  # made before demo policies existed
            table.add_column(demo_source=pxt.Json | None)
        if 'rendered_prompt' not in table.columns():  # made before rules: add what rule columns read
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
            'demo_source': pxt.Json | None,  # a demo policy's pool (dataset, split, version) and demo ids
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
            custom_metadata={'scorer': name, 'knobs': {}, 'tier': scores.get_scorer(name).tier},
            on_error='ignore',
            if_exists='ignore',
        )
    rules.sync_table(table)
    return table


def add_scorer(
    dataset: Dataset | str,
    scorer: str | Version,
    *,
    column: str | None = None,
    only_if: str | None = None,
    only_if_min: float = 1.0,
    if_exists: Literal['error', 'replace'] = 'error',
    **knobs: Any,
) -> str:
    """Add a scorer column to a dataset's evaluations and return its name.

    `scorer` is a scorer's name (existing predictions are scored at once, with no model call) or a judge version
    (`ws.correctness_judge()`, `ws.rubric_judge(...)`): each later evaluation then judges its rows, calling the
    judge only for judge requests the store has not answered. `only_if` names a cheaper scorer column: rows
    whose score there is below `only_if_min` score 0.0 here, and a judge is not called for them.
    `if_exists='replace'` points an existing column at another scorer or judge version (an edited judge).
    Knobs go to the scorer, e.g. `add_scorer(tickets, 'regex_match', column='mentions_refund', pattern='REFUND')`.

    >>> add_scorer('support_tickets', 'normalized_match')
    >>> add_scorer('extractions', ws.rubric_judge('Names the product.'), column='names_product', only_if='json_valid')
    """
    ds = get_dataset(dataset)
    table = eval_table(ds)
    judge = get_version(scorer) if isinstance(scorer, Version) or ':' in scorer or '@' in scorer else None
    if judge is not None:
        judges.judge_spec(judge)  # a version that is not a judge is refused here
        judges.check_judge_template(judge, ds)
    name = column or (judge.prompt if judge is not None else str(scorer))
    if judge is not None:
        tier = 'judge'
    else:
        try:
            tier = scores.get_scorer(str(scorer)).tier
        except KeyError as e:
            raise WorkspaceError(e.args[0]) from None
    if only_if is not None:  # checked before anything changes: a refused call loses nothing
        _check_gate(table, only_if, tier)
    meta: dict[str, Any] = {'tier': tier, 'only_if': only_if, 'only_if_min': only_if_min}
    wanted = {'scorer': 'judge', 'judge': judge.id, **meta} if judge is not None else None
    if name in table.columns():
        if if_exists != 'replace':
            raise WorkspaceError(
                f'evaluations of {ds.name!r} already have a column {name!r}; pass column=... to name another, or '
                "if_exists='replace' to point it at this scorer"
            )
        current = table.get_metadata()['columns'][name].get('custom_metadata')
        if wanted is not None and current == wanted:
            return name  # already this judge: its scores stay
        table.drop_column(name)
    if judge is not None:
        spec = {'type': pxt.Float | None, 'custom_metadata': wanted}
        table.add_column(**{name: spec})
        return name
    expr = _scorer_expr(table, str(scorer), knobs)
    if only_if is not None:
        expr = scores.gated(expr, table[only_if], minimum=only_if_min)
    table.add_computed_column(
        **{name: expr}, custom_metadata={'scorer': scorer, 'knobs': knobs, **meta}, on_error='ignore'
    )
    return name


def _rows_to_write(v: Version, ds: Dataset, requests: Mapping[str, dict[str, Any]], retry_errors: bool) -> list[str]:
    """Return the examples whose evaluation row is missing, stale (another request), or failed and retried."""
    frame = eval_rows(ds.name, v.id)
    existing = {ex: (key, error) for ex, key, error in zip(frame['example_id'], frame['request_hash'], frame['error'])}
    stale = [ex for ex, req in requests.items() if ex not in existing or existing[ex][0] != req['hash']]
    failed = [ex for ex in requests if ex not in stale and retry_errors and not pd.isna(existing[ex][1])]
    return stale + failed


def _sample_requests(
    v: Version, ds: Dataset, requests: Mapping[str, dict[str, Any]], k: int, retry_errors: bool
) -> dict[tuple[str, int], dict[str, Any]]:
    """Return the sample requests (example id, index) whose stored sample is missing or another request."""
    if k <= 1:
        return {}
    stored = samples_module.stored_samples(ds.name, v.id)
    wanted = {(ex, i): samples_module.sample_request(req, i) for ex, req in requests.items() for i in range(k)}
    return {key: req for key, req in wanted.items() if retry_errors or stored.get(key) != req['hash']}


def _eval_row(
    v: Version,
    ds: Dataset,
    row: Mapping[str, Any],
    key: str,
    answer: store.Answer,
    demos: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    # A version that mixes the model with its demos' vote answers from the stored scores: its output is the
    # combined label (the model's own text stays in the request store, under the same request hash).
    output = calibration.answer_label(v.output, answer['text'], answer['scores'], demos)
    return {
        'version_id': v.id,
        'example_id': row['example_id'],
        'prompt': v.prompt,
        'split': row['split'],
        'request_hash': key,
        'output': output,
        'error': answer['error'],
        'latency_s': answer['latency_s'],
        'prompt_tokens': answer['prompt_tokens'],
        'completion_tokens': answer['completion_tokens'],
        'answered_at': answer['answered_at'],
        'output_spec': dict(v.output),
        'expected': row['expected'],
        'input_fields': {name: row[name] for name in ds.inputs},
        **extra,
    }


def evaluate(
    version: Version | str,
    dataset: Dataset | str,
    split: str | None = None,
    *,
    samples: int = 1,
    progress: store.Progress = True,
    retry_errors: bool = False,
) -> Run:
    """Evaluate `version` on a dataset split (all rows if `split` is None) and return the run.

    Only requests the store has not answered reach the model. Rows whose model call failed keep the error and
    count in the summary; `retry_errors=True` sends those requests again. `samples=k` asks each request k times
    (the version must sample: temperature above 0); the sample index is part of the request identity, so k = 5
    after k = 3 makes 2 more calls per row, and `ws.sample_report(run)` reads pass@k and pass^k. Judge scorers
    of the dataset (`add_scorer(dataset, judge)`) judge the rows, calling only for new judge requests.
    `progress` shows a progress bar (True), nothing (False), or calls a function with (calls done, calls to make).

    >>> run = evaluate('ticket_router:v2', 'support_tickets', split='dev')
    >>> run.summary()
    """
    started, clock = utc_now(), time.perf_counter()
    v = get_version(version)
    ds = get_dataset(dataset)
    check_template(v, ds)
    samples_module.check_samples(v, samples)
    rows = ds.rows(split)
    dataset_version = ds.version
    model_id = backends.model_identity(v.model)
    if v.output['kind'] == 'choice' and ds.task == 'choice':
        missing = sorted({str(row['expected']) for row in rows} - set(v.labels))
        if missing:
            log.warning('%s cannot answer %s, which dataset %r expects', v.id, ', '.join(missing), ds.name)

    policy = v.demo_policy
    retrieved = demos.retrieve(policy, rows, dataset=ds.name) if policy else {}
    pool = demos.pool_version(policy) if policy else {}
    requests = {
        row['example_id']: build_request(
            v, row, model_id=model_id, demos=retrieved[row['example_id']].demos if policy else None
        )
        for row in rows
    }
    table = eval_table(ds)
    to_write = _rows_to_write(v, ds, requests, retry_errors)
    sampled = _sample_requests(v, ds, requests, samples, retry_errors)
    asked = [(requests[ex], (v.id, ds.name, ex)) for ex in to_write]
    asked += [(req, (v.id, ds.name, ex)) for (ex, _), req in sampled.items()]
    batch = store.answer_many(asked, retry_errors=retry_errors, progress=progress)

    evaluated_at = utc_now()
    by_id = {row['example_id']: row for row in rows}
    updates = []
    for ex in to_write:
        key = requests[ex]['hash']
        answer = batch.answers.get(key)
        if answer is None:
            raise WorkspaceError(f'request {key[:12]} for example {ex!r} is missing from the store; evaluate again')
        extra = {
            'dataset_version': dataset_version,
            'evaluated_at': evaluated_at,
            'reused': key not in batch.called,
            'rendered_prompt': requests[ex]['prompt'],
            'demo_source': {**pool, 'example_ids': list(retrieved[ex].ids)} if policy else None,
        }
        shown = demos.nearest_first(policy, retrieved[ex].demos) if policy else v.demos
        updates.append(_eval_row(v, ds, by_id[ex], key, answer, shown, **extra))
    if updates:
        tables.upsert(table, updates)
    samples_module.write_samples(ds.name, v, sampled, batch.answers)
    judge_calls = judges.judge_evaluation(ds, table, v.id, list(requests), progress=progress)

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
        samples=samples,
        judge_calls=judge_calls,
    )
    summary = summarize(run, run.rows())
    run = run.replace(
        errors=summary.errors, wall_s=time.perf_counter() - clock, cost_usd=summary.metrics.get('cost_usd')
    )
    _record(run, summary)
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


def _record(run: Run, summary: Any) -> None:
    """Append the run to the runs table, with its cost and metrics."""
    tables.runs().insert(
        [
            {
                'run_id': run.run_id,
                'kind': 'evaluate',
                'version_id': run.version.id,
                'prompt': run.version.prompt,
                'dataset': run.dataset,
                'dataset_version': run.dataset_version,
                'split': run.split,
                'n': run.n,
                'calls': run.calls,
                'reused': run.reused,
                'errors': run.errors,
                'started_at': run.started_at,
                'wall_s': run.wall_s,
                'metrics': summary.metrics,
                'example_ids': list(run.example_ids),
                'samples': run.samples,
                'judge_calls': run.judge_calls,
                'cost_usd': run.cost_usd,
            }
        ]
    )
