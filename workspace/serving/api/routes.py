"""The routes of the HTTP API: serving (prompts, render, complete, outcomes), the workspace's records (runs,
datasets, serving metrics, prompt families: scope read), administration (labels, rules, audit, experiment
decisions) and the server's own (health, docs).

Routes that render or call a model run on a worker thread with a time cap (`_capped`); the records routes are
plain functions, which FastAPI runs on its thread pool: nothing runs on the event loop."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import anyio
import pandas as pd
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from workspace.core import rules
from workspace.core.labels import set_label
from workspace.errors import ServeError
from workspace.serving.api.guard import AdminKey, ApiError, ReadKey, ServeKey
from workspace.serving.serve import DB_LOCK, Server
from workspace.storage import audit_log

__all__ = ['serving', 'records', 'admin', 'health']

serving = APIRouter()
records = APIRouter()
admin = APIRouter()
health = APIRouter()

T = TypeVar('T')


class RenderBody(BaseModel):
    """A request to render (or complete) a version for an application."""

    model_config = ConfigDict(extra='forbid')  # a misspelt field is refused, not ignored

    version: str = Field(description="a version reference: 'prompt@label', 'prompt:v3' or a prompt name")
    fields: dict[str, Any] = Field(default_factory=dict, description='the input fields the template reads')
    unit_id: str | int | None = Field(default=None, description='a stable id of the user or session, for A/B arms')


class OutcomeBody(BaseModel):
    """The outcome of one served execution (0/1, or any number)."""

    model_config = ConfigDict(extra='forbid')  # a misspelt field is refused, not ignored

    execution_id: str
    outcome: float


class LabelBody(BaseModel):
    """Where a label should point."""

    model_config = ConfigDict(extra='forbid')  # a misspelt field is refused, not ignored

    version: str
    note: str = ''


class RuleBody(BaseModel):
    """A rule's content (see ws.set_rule)."""

    model_config = ConfigDict(extra='forbid')  # a misspelt field is refused, not ignored

    kind: Literal['regex', 'keyword', 'length', 'pii', 'injection', 'json_schema', 'judge', 'custom']
    stage: Literal['input', 'prompt', 'output'] = 'output'
    enforcement: Literal['block', 'warn'] = 'warn'
    prompts: list[str] | None = None
    active: bool = True
    config: dict[str, Any] = Field(default_factory=dict)


def _served(result: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(result).items()}


def _server(request: Request) -> Server:
    return request.app.state.server


@health.get('/healthz')
def healthz(request: Request) -> dict[str, Any]:
    """Say the server is up, how old its catalog is and how many executions wait to be written."""
    snap = _server(request).catalog.snapshot()
    return {
        'status': 'ok',
        'catalog_age_s': round(time.monotonic() - snap.loaded_at, 3),
        'executions_pending': _server(request).executions.pending(),
    }


async def _capped(request: Request, work: Callable[[], T]) -> T:
    """Run `work` on a worker thread, never on the event loop; answer 504 if it takes over the server's
    `request_timeout` (the work goes on in the background: a model call still lands in the request store)."""
    cap = _server(request).settings.request_timeout
    try:
        with anyio.fail_after(cap):
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except TimeoutError:
        raise ApiError(
            504, 'timeout', f'the request took longer than {cap:g} s (WORKSPACE_SERVE_REQUEST_TIMEOUT); try again later'
        ) from None


@serving.get('/v1/prompts/{ref}')
async def get_prompt(request: Request, ref: str, key: ReadKey) -> dict[str, Any]:
    """Return the version a reference names: `ticket_router@production`, `ticket_router:v3` or a prompt."""
    version, _, _ = await _capped(request, lambda: _server(request).catalog.resolve(ref))
    return {
        'version_id': version.id,
        'prompt': version.prompt,
        'number': version.number,
        'parent_id': version.parent_id,
        'template': version.template,
        'model': version.model,
        'params': dict(version.params),
        'output': dict(version.output),
        'demos': version.demos,
        'instructions': version.instructions,
        'variables': sorted(version.variables()),
    }


@serving.post('/v1/render')
async def render(request: Request, body: RenderBody, key: ServeKey) -> dict[str, Any]:
    """Resolve the version (or the unit's A/B arm), render it, check input and prompt rules."""
    server = _server(request)
    served = await _capped(
        request, lambda: server.render(body.version, body.fields, unit_id=body.unit_id, caller=f'key:{key.name}')
    )
    return _served(served)


@serving.post('/v1/complete')
async def complete(request: Request, body: RenderBody, key: ServeKey) -> dict[str, Any]:
    """Render, call the model through the request store, check output rules."""
    server = _server(request)
    served = await _capped(
        request, lambda: server.complete(body.version, body.fields, unit_id=body.unit_id, caller=f'key:{key.name}')
    )
    return _served(served)


@serving.post('/v1/outcomes')
async def outcomes(request: Request, body: OutcomeBody, key: ServeKey) -> dict[str, Any]:
    """Log the outcome of a served execution for its unit's A/B experiment."""
    return {'event_id': await _capped(request, lambda: _server(request).log_outcome(body.execution_id, body.outcome))}


@admin.put('/v1/labels/{prompt}/{label}')
async def move_label(request: Request, prompt: str, label: str, body: LabelBody, key: AdminKey) -> dict[str, Any]:
    """Point a label at a version of the prompt."""

    def move() -> dict[str, Any]:
        with DB_LOCK, audit_log.acting_as(f'key:{key.name}'):
            version = _server(request).catalog.resolve(body.version)[0]
            if version.prompt != prompt:
                raise ServeError(f'{version.id} is not a version of {prompt!r}')
            previous = set_label(version, label, note=body.note, by=f'key:{key.name}')
        return {'prompt': prompt, 'label': label, 'version_id': version.id, 'previous_id': previous}

    return await _capped(request, move)


@admin.put('/v1/rules/{name}')
async def put_rule(request: Request, name: str, body: RuleBody, key: AdminKey) -> dict[str, Any]:
    """Create or change a rule (a changed rule gets a new version)."""

    def put() -> rules.Rule:
        with DB_LOCK, audit_log.acting_as(f'key:{key.name}'):
            return rules.set_rule(
                name,
                body.kind,
                stage=body.stage,
                enforcement=body.enforcement,
                prompts=body.prompts,
                active=body.active,
                **body.config,
            )

    rule = await _capped(request, put)
    return {**rule.spec(), 'active': rule.active, 'parent_id': rule.parent_id}


class WinnerBody(BaseModel):
    """How to end an experiment: the label to move, and an arm only to decide by hand."""

    model_config = ConfigDict(extra='forbid')  # a misspelt field is refused, not ignored

    label: str = 'production'
    arm: str | None = None
    note: str = ''


def _decision(decided: Any) -> dict[str, Any]:
    return {
        'prompt': decided.prompt,
        'experiment': decided.experiment,
        'status': decided.status,
        'winner': decided.winner,
        'reason': decided.reason,
        'units': decided.units,
        'p_values': decided.p_values,
        'plan': decided.plan,
    }


@records.get('/v1/experiments/{prompt}/{experiment}')
def experiment_route(prompt: str, experiment: str, key: ReadKey) -> dict[str, Any]:
    """Return where an experiment stands under its plan: collecting (units so far and planned) or decided."""
    from workspace.serving.experiments import experiment_decision

    with DB_LOCK:
        return json.loads(json.dumps(_decision(experiment_decision(prompt, experiment=experiment)), default=str))


@admin.post('/v1/experiments/{prompt}/{experiment}/winner')
def declare_winner_route(prompt: str, experiment: str, body: WinnerBody, key: AdminKey) -> dict[str, Any]:
    """End an experiment: move the label to the winning arm's version, stop it, record the decision."""
    from workspace.serving.experiments import declare_winner

    with DB_LOCK, audit_log.acting_as(f'key:{key.name}'):
        decided = declare_winner(prompt, experiment=experiment, label=body.label, arm=body.arm, note=body.note)
    return json.loads(json.dumps(_decision(decided), default=str))


@admin.get('/v1/audit')
async def get_audit(
    request: Request,
    key: AdminKey,
    since: str | None = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description='the newest rows to return')] = 100,
) -> list[dict[str, Any]]:
    """Return the audit log, newest first."""

    def read() -> list[dict[str, Any]]:
        with DB_LOCK:
            frame = audit_log.audit(since=since, kind=kind, limit=limit)
        frame['at'] = frame['at'].astype(str)
        return frame.astype(object).where(frame.notna(), None).to_dict(orient='records')

    return await _capped(request, read)


# --- the workspace's records (scope read) -----------------------------------------------------------------------


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Return a DataFrame as JSON records: timestamps as ISO text, NaN as null."""
    return json.loads(frame.to_json(orient='records', date_format='iso', default_handler=str))


@records.get('/v1/runs')
def list_runs_route(
    key: ReadKey, prompt: str | None = None, dataset: str | None = None, limit: int = Query(100, ge=1, le=10_000)
) -> list[dict[str, Any]]:
    """Return evaluation runs, newest first, with their dataset version, calls, cost and recorded metrics."""
    from workspace.core.runs import list_runs

    with DB_LOCK:
        return _records(list_runs(prompt, dataset).head(limit))


@records.get('/v1/runs/{run_id}')
def get_run_route(run_id: str, key: ReadKey, rows: bool = False) -> dict[str, Any]:
    """Return one run as recorded (its lineage: version and parents, dataset and table version, the tables it
    read) and, with `rows=true`, its predictions and scores as the run made them."""
    from workspace.core.runs import get_run
    from workspace.core.versions import parent_chain

    with DB_LOCK:
        run = get_run(run_id)
        body: dict[str, Any] = {
            'run_id': run.run_id,
            'version_id': run.version.id,
            'parents': parent_chain(run.version),
            'model': run.version.model,
            'dataset': run.dataset,
            'dataset_version': run.dataset_version,
            'split': run.split,
            'n': run.n,
            'calls': run.calls,
            'reused': run.reused,
            'errors': run.errors,
            'started_at': run.started_at.isoformat(),
            'wall_s': run.wall_s,
            'cost_usd': run.cost_usd,
            'metrics': run.metrics,
            'pins': run.pins,
        }
        if rows:
            frame = run.predictions()
            keep = [
                'example_id',
                'split',
                'expected',
                'prediction',
                'output',
                'error',
                'request_hash',
                *run.score_columns(),
            ]
            body['rows'] = _records(frame[[c for c in keep if c in frame.columns]])
    return json.loads(json.dumps(body, default=str))


@records.get('/v1/datasets')
def list_datasets_route(key: ReadKey) -> list[dict[str, Any]]:
    """Return the datasets: name, task, input fields, table version, rows per split."""
    from workspace.core.datasets import get_dataset, list_datasets

    with DB_LOCK:
        return [_dataset_info(get_dataset(name)) for name in list_datasets()]


def _dataset_info(ds: Any) -> dict[str, Any]:
    splits = ds.splits()
    return {
        'name': ds.ref,
        'task': ds.task,
        'inputs': list(ds.inputs),
        'version': ds.version,
        'rows': sum(splits.values()),
        'splits': splits,
    }


@records.get('/v1/datasets/{name}')
def get_dataset_route(
    name: str,
    key: ReadKey,
    split: str | None = None,
    rows: bool = False,
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    """Return a dataset (`name`, or `name:3` for table version 3) and, with `rows=true`, its examples (one split or
    all, ordered by example id, `limit` from `offset`)."""
    from workspace.core.datasets import get_dataset

    with DB_LOCK:
        ds = get_dataset(name)
        body = _dataset_info(ds)
        if rows:
            body['examples'] = json.loads(json.dumps(ds.rows(split)[offset : offset + limit], default=str))
    return body


@records.get('/v1/metrics')
def metrics_route(
    request: Request, key: ReadKey, prompt: str | None = None, since: str | None = None, until: str | None = None
) -> list[dict[str, Any]]:
    """Return serving metrics per version: requests, outcomes ok/blocked/error, latency percentiles in ms, tokens,
    violations per rule and the outcome applications logged (`since`/`until`: an age such as 7d, or an ISO time).
    Executions another server process buffers count within a second."""
    from workspace.analysis.serving_stats import serving_stats

    _server(request).executions.flush()  # what this server has served so far counts
    with DB_LOCK:
        return _records(serving_stats(prompt, since=since, until=until))


@records.get('/v1/families')
def list_families_route(key: ReadKey, min_size: int = Query(1, ge=1)) -> list[dict[str, Any]]:
    """Return the prompt families mined from raw prompt logs: size, traffic and share, first and last seen,
    template and slots, largest first."""
    from workspace.mining.families import families

    with DB_LOCK:
        return _records(families(min_size=min_size))


@records.get('/v1/families/{family_id}')
def get_family_route(family_id: str, key: ReadKey) -> dict[str, Any]:
    """Return one prompt family: its canonical template (Jinja2) and its typed slots."""
    from workspace.mining.families import get_family

    with DB_LOCK:
        family = get_family(family_id)
        template = family.template  # None while the family is too small to have one
        slots = _records(family.slots()) if template is not None else []
        return {'family_id': family.id, 'size': family.size, 'template': template and template.jinja, 'slots': slots}
