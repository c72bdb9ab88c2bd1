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
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pandas as pd
import pixeltable as pxt

from udfs import parse, scores
from workspace.config import utc_now
from workspace.core import demo_policies as demos, judges as judging, rules, samples as samples_module
from workspace.core.datasets import Dataset, get_dataset
from workspace.core.runs import Run, eval_rows, main_score_name, summarize
from workspace.core.versions import Version, build_request, get_version
from workspace.display.frames import shown
from workspace.errors import TemplateError, WorkspaceError
from workspace.storage import backends, calibration, reads, store, tables
from workspace.storage.reads import READS, table_key

__all__ = ['evaluate', 'check_template', 'add_scorer', 'list_scorers', 'eval_table']

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
    every_evaluation: bool = False,
    **knobs: Any,
) -> str:
    """Add a scorer column to a dataset's evaluations and return its name.

    `scorer` is a scorer's name (existing predictions are scored at once, with no model call) or a judge version
    (`ws.correctness_judge()`, `ws.rubric_judge(...)`). A judge calls a model, so it runs only where asked: an
    evaluation judges its rows when it names the column (`evaluate(..., judges=['judged_correct'])`), or every
    evaluation of the dataset does with `every_evaluation=True`, each saying how many judge calls it will make
    before it starts. Judging calls the judge only for judge requests the store has not answered.
    `list_scorers(dataset)` lists what is attached and when it runs. `only_if` names a cheaper scorer column:
    rows whose score there is below `only_if_min` score 0.0 here, and a judge is not called for them.
    `if_exists='replace'` points an existing column at another scorer or judge version (an edited judge).
    Knobs go to the scorer, e.g. `add_scorer(tickets, 'regex_match', column='mentions_refund', pattern='REFUND')`.

    >>> add_scorer('support_tickets', 'normalized_match')
    >>> add_scorer('extractions', ws.rubric_judge('Names the product.'), column='names_product', only_if='json_valid')
    """
    if every_evaluation and not (isinstance(scorer, Version) or ':' in str(scorer) or '@' in str(scorer)):
        raise WorkspaceError(
            f'every_evaluation applies to judges; {scorer!r} is a scorer that costs no model call and scores every '
            'row already'
        )
    ds = get_dataset(dataset)
    table = eval_table(ds)
    judge = get_version(scorer) if isinstance(scorer, Version) or ':' in scorer or '@' in scorer else None
    if judge is not None:
        judging.judge_spec(judge)  # a version that is not a judge is refused here
        judging.check_judge_template(judge, ds)
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
    wanted = (
        {'scorer': 'judge', 'judge': judge.id, **meta, 'every_evaluation': every_evaluation}
        if judge is not None
        else None
    )
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


def list_scorers(dataset: Dataset | str) -> pd.DataFrame:
    """Return the scorer columns of a dataset's evaluations: column, scorer (a judge's version id), tier, when it
    runs (scorers on every row at no model cost; a judge when an evaluation asks for it, or on every evaluation),
    and its `only_if` gate.

    >>> ws.list_scorers('support_tickets')
    """
    table = eval_table(get_dataset(dataset))
    rows = []
    for name, col in table.get_metadata()['columns'].items():
        meta = col.get('custom_metadata')
        if not isinstance(meta, dict) or not meta.get('scorer'):
            continue
        judge = meta.get('scorer') == 'judge'
        if not judge:
            runs = 'every row, no model call'
        elif meta.get('every_evaluation'):
            runs = 'every evaluation (judge calls)'
        else:
            runs = f'when asked: evaluate(..., judges=[{name!r}])'
        rows.append(
            {
                'column': name,
                'scorer': meta['judge'] if judge else meta['scorer'],
                'tier': meta.get('tier') or ('judge' if judge else scores.get_scorer(meta['scorer']).tier),
                'runs': runs,
                'only_if': meta.get('only_if'),
            }
        )
    return shown(pd.DataFrame(rows, columns=['column', 'scorer', 'tier', 'runs', 'only_if']))


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):  # most expected outputs: no need to serialise them
        return a == b
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _rows_to_write(
    v: Version,
    ds: Dataset,
    requests: Mapping[str, dict[str, Any]],
    expected: Mapping[str, Any],
    retry_errors: bool,
) -> list[str]:
    """Return the examples whose evaluation row is missing, stale (another request, or another expected output:
    a pinned dataset version evaluated after a correction), failed and retried, or kept from the model by a rule
    (checked again: the rule may have changed)."""
    frame = eval_rows(ds.name, v.id)
    existing = {
        ex: (key, error, exp)
        for ex, key, error, exp in zip(frame['example_id'], frame['request_hash'], frame['error'], frame['expected'])
    }
    stale = [
        ex
        for ex, req in requests.items()
        if ex not in existing or existing[ex][0] != req['hash'] or not _same_value(existing[ex][2], expected[ex])
    ]
    failed = [
        ex
        for ex in requests
        if ex not in stale and not pd.isna(existing[ex][1]) and (retry_errors or rules.is_blocked(existing[ex][1]))
    ]
    return stale + failed


def _screen(v: Version, ds: Dataset, requests: Mapping[str, dict[str, Any]], examples: list[str]) -> dict[str, str]:
    """Return {example id: why} for the requests a blocking input or prompt rule keeps from the model."""
    blocking = rules.blocking_rules(v.prompt)
    if not blocking:
        return {}
    by_id = {row['example_id']: row for row in ds.rows()} if examples else {}
    blocked = {}
    for ex in examples:
        fields = {name: by_id[ex][name] for name in ds.inputs}
        found = rules.screen(blocking, fields, requests[ex]['prompt'])
        if found:
            blocked[ex] = rules.blocked_message(found)
    if blocked:
        log.warning('%s: %d request(s) kept from the model by a blocking rule', v.id, len(blocked))
    return blocked


def _sample_requests(
    v: Version, ds: Dataset, requests: Mapping[str, dict[str, Any]], k: int, retry_errors: bool, again: set[str]
) -> dict[tuple[str, int], dict[str, Any]]:
    """Return the sample requests (example id, index) whose stored sample is missing or another request, and
    those of the examples `again` (rows written again: a rule that blocked them may have changed)."""
    if k <= 1:
        return {}
    stored = samples_module.stored_samples(ds.name, v.id)
    wanted = {(ex, i): samples_module.sample_request(req, i) for ex, req in requests.items() for i in range(k)}
    return {
        key: req for key, req in wanted.items() if retry_errors or key[0] in again or stored.get(key) != req['hash']
    }


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


@reads.scoped
def evaluate(
    version: Version | str,
    dataset: Dataset | str,
    split: str | None = None,
    *,
    dataset_version: int | None = None,
    samples: int = 1,
    judges: Sequence[str] | Literal['all'] | None = None,
    progress: store.Progress = True,
    retry_errors: bool = False,
) -> Run:
    """Evaluate `version` on a dataset split (all rows if `split` is None) and return the run.

    `dataset` may name a table version (`'tickets:3'`, or `dataset_version=3`): the examples and expected outputs
    as they were then, answered from the store wherever the request is unchanged. The run is an immutable record:
    it reads its rows at the evaluation table's version it wrote, so later corrections never change its scores.

    Only requests the store has not answered reach the model, and none that a blocking input or prompt rule
    fails: such a row stores the rule and the span as its error and counts as wrong (it is checked again on the
    next evaluation, so a changed rule takes effect). Rows whose model call failed keep the error and count in the
    summary; `retry_errors=True` sends those requests again. `samples=k` asks each request k times
    (the version must sample: temperature above 0); the sample index is part of the request identity, so k = 5
    after k = 3 makes 2 more calls per row, and `ws.sample_report(run)` reads pass@k and pass^k. `judges` names
    the judge columns of the dataset (`add_scorer(dataset, judge, column=...)`) that judge this run's rows, or
    'all'; by default only those attached with `every_evaluation=True` do. Judging calls only for new judge
    requests, counted apart as `run.judge_calls`.
    `progress` shows a progress bar (True), nothing (False), or calls a function with (calls done, calls to make).

    >>> run = evaluate('ticket_router:v2', 'support_tickets', split='dev')
    >>> run.summary()
    """
    started, clock = utc_now(), time.perf_counter()
    v = get_version(version)
    ds = get_dataset(dataset, version=dataset_version)
    check_template(v, ds)
    samples_module.check_samples(v, samples)
    table = eval_table(ds)
    asked_judges = judging.judges_to_run(table, judges)  # an unknown judge column fails before any model call
    rows = ds.rows(split)
    dataset_version = ds.version
    model_id = backends.model_identity(v.model)
    _warn_unanswerable(v, ds, rows)

    policy = v.demo_policy
    requests, retrieved, pool = _build_requests(v, ds, rows, model_id, split)
    to_write = _rows_to_write(v, ds, requests, {row['example_id']: row['expected'] for row in rows}, retry_errors)
    blocked = _screen(v, ds, requests, to_write)
    sampled = _sample_requests(v, ds, requests, samples, retry_errors, set(to_write))
    asked = [(requests[ex], (v.id, ds.name, ex)) for ex in to_write if ex not in blocked]
    asked += [(req, (v.id, ds.name, ex)) for (ex, _), req in sampled.items() if ex not in blocked]
    batch = store.answer_many(asked, retry_errors=retry_errors, progress=progress)

    by_id, written = (
        {row['example_id']: row for row in rows},
        {'dataset_version': dataset_version, 'evaluated_at': utc_now()},
    )
    updates = []
    for ex in to_write:
        source = {**pool, 'example_ids': list(retrieved[ex].ids)} if policy else None
        shown_demos = demos.nearest_first(policy, retrieved[ex].demos) if policy else v.demos
        updates.append(
            _written_row(v, ds, by_id[ex], requests[ex], batch, written, source, shown_demos, blocked.get(ex))
        )
    _store_rows(table, ds, v, updates)
    kept_back = {
        r['hash']: store.blocked_answer(r['hash'], blocked[ex]) for (ex, _), r in sampled.items() if ex in blocked
    }
    samples_module.write_samples(ds.name, v, sampled, {**batch.answers, **kept_back})
    judge_calls = judging.judge_evaluation(
        ds, table, v.id, list(requests), columns=asked_judges, asked=judges is not None, progress=progress
    )

    pins = _pins(table, ds, samples)
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
        pins=pins,
        repeated=len(batch.repeated),
    )
    return _summarized(run, clock)


def _warn_unanswerable(v: Version, ds: Dataset, rows: list[dict[str, Any]]) -> None:
    """Log a warning when the dataset expects classes the version cannot answer."""
    if v.output['kind'] == 'choice' and ds.task == 'choice':
        missing = sorted({str(row['expected']) for row in rows} - set(v.labels))
        if missing:
            log.warning('%s cannot answer %s, which dataset %r expects', v.id, ', '.join(missing), ds.name)


def _store_rows(table: pxt.Table, ds: Dataset, v: Version, updates: list[dict[str, Any]]) -> None:
    """Write the evaluation rows: insert those new to the table, update those of another request or a retry."""
    if not updates:
        return
    # A plain insert is several times cheaper than an upsert, so only rows already present are upserted.
    present = set(eval_rows(ds.name, v.id)['example_id'])
    changed = [u for u in updates if u['example_id'] in present]
    new = [u for u in updates if u['example_id'] not in present]
    try:
        if new:
            table.insert(new)
    except Exception as e:  # another process evaluating the same version wrote some first
        if not tables.is_duplicate_key(e):
            raise
        changed = updates
    if changed:
        tables.upsert(table, changed)


def _summarized(run: Run, clock: float) -> Run:
    """Return the run with its summary (errors, wall time since `clock`, cost, metrics), recorded in the runs table."""
    summary = summarize(run)  # derived once per pinned rows: a warm re-run reads nothing to summarize
    run = run.replace(
        errors=summary.errors,
        wall_s=time.perf_counter() - clock,
        cost_usd=summary.metrics.get('cost_usd'),
        metrics=summary.metrics,
    )
    _record(run, summary)
    return run


def _written_row(
    v: Version,
    ds: Dataset,
    row: Mapping[str, Any],
    request: Mapping[str, Any],
    batch: store.Batch,
    written: Mapping[str, Any],
    demo_source: dict[str, Any] | None,
    shown_demos: Any,
    blocked: str | None = None,
) -> dict[str, Any]:
    """Return the evaluation row to write for one example, from the store's answer to its request (or, for a
    request a blocking rule kept from the model, the rule as its error)."""
    key = request['hash']
    answer = store.blocked_answer(key, blocked) if blocked is not None else batch.answers.get(key)
    if answer is None:
        raise WorkspaceError(
            f'request {key[:12]} for example {row["example_id"]!r} is missing from the store; evaluate again'
        )
    extra = {
        **written,  # the dataset version and the time of this evaluation
        'reused': blocked is None and key not in batch.called,
        'rendered_prompt': request['prompt'],
        'demo_source': demo_source,
    }
    return _eval_row(v, ds, row, key, answer, shown_demos, **extra)


def _build_requests(
    v: Version, ds: Dataset, rows: list[dict[str, Any]], model_id: str, split: str | None
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Return each example's request, the demos a demo policy retrieved for it, and the policy's pool version."""
    policy = v.demo_policy
    retrieved = demos.retrieve(policy, rows, dataset=ds.name) if policy else {}
    pool = demos.pool_version(policy) if policy else {}

    def render() -> dict[str, dict[str, Any]]:
        return {
            row['example_id']: build_request(
                v, row, model_id=model_id, demos=retrieved[row['example_id']].demos if policy else None
            )
            for row in rows
        }

    # A version is immutable: rendered for the same rows, its requests are the same, so a warm re-evaluation does
    # not render them again (retrieved demos depend on a pool too: rendered each time). Read-only.
    if policy:
        return render(), retrieved, pool
    inputs = tuple((row['example_id'], *(row[name] for name in ds.inputs)) for row in rows)
    rendered: dict[str, Any] = READS.get(ds.table, ('requests', v.id, model_id, split, ds.pinned), lambda: {})
    if rendered.get('inputs') != inputs:
        rendered.update(inputs=inputs, requests=render())
    return rendered['requests'], retrieved, pool


def _pins(table: pxt.Table, ds: Dataset, samples: int) -> dict[str, Any]:
    """Return the table versions that hold a run's rows right after it wrote them: {name: [table id, version]}."""
    pins: dict[str, Any] = {'evals': list(table_key(table))}
    if samples > 1:
        pins['samples'] = list(table_key(tables.samples(ds.name)))
    return pins


def _record(run: Run, summary: Any) -> None:
    """Append the run to the runs table, with its cost and metrics, and log it."""
    task = get_dataset(run.dataset).task
    log.info(
        '%s on %s:%s/%s: %d calls, %d reused, %s = %.3f',
        run.version.id,
        run.dataset,
        run.dataset_version,
        run.split,
        run.calls,
        run.reused,
        main_score_name(task),
        summary.metrics.get(main_score_name(task), float('nan')),
    )
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
                'pins': run.pins,
                'repeated': run.repeated,
            }
        ]
    )
