"""The routes of the HTTP API: serving (prompts, render, complete, outcomes), administration (labels, rules,
audit) and the server's own (health, docs)."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from workspace.core import rules
from workspace.core.labels import set_label
from workspace.errors import ServeError
from workspace.serving.api.guard import AdminKey, ReadKey, ServeKey
from workspace.serving.serve import DB_LOCK, Server
from workspace.storage import audit_log

__all__ = ['serving', 'admin', 'health']

serving = APIRouter()
admin = APIRouter()
health = APIRouter()


class RenderBody(BaseModel):
    """A request to render (or complete) a version for an application."""

    version: str = Field(description="a version reference: 'prompt@label', 'prompt:v3' or a prompt name")
    fields: dict[str, Any] = Field(default_factory=dict, description='the input fields the template reads')
    unit_id: str | int | None = Field(default=None, description='a stable id of the user or session, for A/B arms')


class OutcomeBody(BaseModel):
    """The outcome of one served execution (0/1, or any number)."""

    execution_id: str
    outcome: float


class LabelBody(BaseModel):
    """Where a label should point."""

    version: str
    note: str = ''


class RuleBody(BaseModel):
    """A rule's content (see ws.set_rule)."""

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


@serving.get('/v1/prompts/{ref}')
def get_prompt(request: Request, ref: str, key: ReadKey) -> dict[str, Any]:
    """Return the version a reference names: `ticket_router@production`, `ticket_router:v3` or a prompt."""
    version, _, _ = _server(request).catalog.resolve(ref)
    return {
        'version_id': version.id,
        'prompt': version.prompt,
        'number': version.number,
        'parent_id': version.parent_id,
        'template': version.template,
        'messages': version.messages,
        'model': version.model,
        'params': dict(version.params),
        'output': dict(version.output),
        'demos': version.demos,
        'instructions': version.instructions,
        'variables': sorted(version.variables()),
    }


# Rendering is CPU work on cached state, so it runs on the event loop rather than hopping to a worker thread;
# only a version or prompt seen for the first time reads the store.
@serving.post('/v1/render')
async def render(request: Request, body: RenderBody, key: ServeKey) -> dict[str, Any]:
    """Resolve the version (or the unit's A/B arm), render it, check input and prompt rules."""
    return _served(_server(request).render(body.version, body.fields, unit_id=body.unit_id, caller=f'key:{key.name}'))


@serving.post('/v1/complete')
def complete(request: Request, body: RenderBody, key: ServeKey) -> dict[str, Any]:
    """Render, call the model through the request store, check output rules."""
    return _served(_server(request).complete(body.version, body.fields, unit_id=body.unit_id, caller=f'key:{key.name}'))


@serving.post('/v1/outcomes')
def outcomes(request: Request, body: OutcomeBody, key: ServeKey) -> dict[str, Any]:
    """Log the outcome of a served execution for its unit's A/B experiment."""
    return {'event_id': _server(request).log_outcome(body.execution_id, body.outcome)}


@admin.put('/v1/labels/{prompt}/{label}')
def move_label(request: Request, prompt: str, label: str, body: LabelBody, key: AdminKey) -> dict[str, Any]:
    """Point a label at a version of the prompt."""
    with DB_LOCK, audit_log.acting_as(f'key:{key.name}'):
        version = _server(request).catalog.resolve(body.version)[0]
        if version.prompt != prompt:
            raise ServeError(f'{version.id} is not a version of {prompt!r}')
        previous = set_label(version, label, note=body.note, by=f'key:{key.name}')
    return {'prompt': prompt, 'label': label, 'version_id': version.id, 'previous_id': previous}


@admin.put('/v1/rules/{name}')
def put_rule(request: Request, name: str, body: RuleBody, key: AdminKey) -> dict[str, Any]:
    """Create or change a rule (a changed rule gets a new version)."""
    with DB_LOCK, audit_log.acting_as(f'key:{key.name}'):
        rule = rules.set_rule(
            name,
            body.kind,
            stage=body.stage,
            enforcement=body.enforcement,
            prompts=body.prompts,
            active=body.active,
            **body.config,
        )
    return {**rule.spec(), 'active': rule.active, 'parent_id': rule.parent_id}


@admin.get('/v1/audit')
def get_audit(
    request: Request, key: AdminKey, since: str | None = None, kind: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Return the audit log, newest first."""
    with DB_LOCK:
        frame = audit_log.audit(since=since, kind=kind, limit=limit)
    frame['at'] = frame['at'].astype(str)
    return frame.astype(object).where(frame.notna(), None).to_dict(orient='records')
