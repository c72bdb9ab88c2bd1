"""The HTTP API: serve versions to applications in any language (FastAPI under uvicorn).

```
GET  /healthz                     liveness, no key
GET  /v1/prompts/{ref}            a version: template, model, params, output spec   (scope read)
POST /v1/render                   resolve, render, check input and prompt rules      (scope serve)
POST /v1/complete                 render, call the model, check output rules         (scope serve)
POST /v1/outcomes                 log an execution's outcome for its A/B experiment  (scope serve)
PUT  /v1/labels/{prompt}/{label}  move a label                                       (scope admin)
PUT  /v1/rules/{name}             create or change a rule                            (scope admin)
GET  /v1/audit                    the audit log                                      (scope admin)
```

A key goes in `Authorization: Bearer <key>` (or `X-API-Key`). Each key has a rate limit (requests per second,
bursts up to twice that); over it the server answers 429 with Retry-After. Bodies over `max_body` bytes get 413.
Every error is JSON, `{"error": {"type": ..., "message": ...}}`, never a stack trace.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from . import audit_log, keys, rules
from .errors import (
    BackendError,
    GuardrailViolation,
    LabelError,
    RuleError,
    ServeError,
    TemplateError,
    VersionError,
    WorkspaceError,
)
from .serve import DB_LOCK, Server, ServeSettings

__all__ = ['create_app', 'run', 'start_server', 'RunningServer']

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[Exception], int]] = [
    (GuardrailViolation, 422),
    (VersionError, 404),
    (LabelError, 404),
    (RuleError, 400),
    (TemplateError, 400),
    (ServeError, 400),
    (BackendError, 502),
    (WorkspaceError, 400),
]


class _Bucket:
    """A token bucket per key: `rate` tokens a second, up to `2 * rate` saved for a burst.

    Written here rather than taken from a rate-limit package: a dozen lines, in memory, and it tells the wait
    for Retry-After directly.
    """

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str, rate: float) -> float:
        """Take one token; return 0 if there was one, else the seconds until there will be."""
        now = time.monotonic()
        capacity = 2 * rate
        with self._lock:
            tokens, at = self._state.get(key_id, (capacity, now))
            tokens = min(capacity, tokens + (now - at) * rate)
            if tokens >= 1:
                self._state[key_id] = (tokens - 1, now)
                return 0.0
            self._state[key_id] = (tokens, now)
            return (1 - tokens) / rate


class _BodyLimit:
    """Refuse request bodies over `limit` bytes with a JSON 413, whether or not they declare their length.

    Bodies here are small (a version reference and some fields), so the body is read up to the limit and handed
    on whole. Starlette's own limit answers in plain text, which would break the promise of JSON errors.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        declared = dict(scope.get('headers') or []).get(b'content-length')
        too_large = declared is not None and declared.isdigit() and int(declared) > self.limit
        chunks: list[bytes] = []
        size = 0
        while not too_large:
            message = await receive()
            if message['type'] != 'http.request':
                return await self.app(scope, receive, send)
            chunks.append(message.get('body', b''))
            size += len(chunks[-1])
            too_large = size > self.limit
            if not message.get('more_body'):
                break
        if too_large:
            response = _json_error(413, 'body_too_large', f'the body is larger than {self.limit} bytes')
            return await response(scope, receive, send)
        body = b''.join(chunks)
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {'type': 'http.request', 'body': body, 'more_body': False}
            return await receive()

        return await self.app(scope, replay, send)


class _Error(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def _json_error(status: int, kind: str, message: str, headers: dict[str, str] | None = None, **extra: Any):
    return JSONResponse({'error': {'type': kind, 'message': message, **extra}}, status_code=status, headers=headers)


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


#: Declares the key in the OpenAPI document, so the docs page has an "Authorize" button; checked by `_guard`.
_BEARER = HTTPBearer(auto_error=False, description='an API key from `prompt-workspace keys create NAME`')


def _guard(needed: str) -> Any:
    """Return a dependency that admits a request whose key has at least the scope `needed`, within its rate."""

    async def check(
        request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> keys.ApiKey:
        server: Server = request.app.state.server
        key = bearer.credentials if bearer is not None else request.headers.get('x-api-key', '')
        if not key:
            raise _Error(401, 'missing_key', 'no API key; send it as "Authorization: Bearer <key>"')
        found = keys.verify(key, server.catalog.snapshot().keys)
        if found is None:
            raise _Error(401, 'invalid_key', 'the API key is wrong or revoked')
        if not keys.allows(found.scope, needed):
            raise _Error(403, 'forbidden', f'key {found.name!r} has scope {found.scope!r}; this needs {needed!r}')
        wait = request.app.state.buckets.take(found.key_id, found.rate)
        if wait:
            raise _Error(
                429,
                'rate_limited',
                f'key {found.name!r} is over its limit of {found.rate:g} requests per second; retry later',
                {'Retry-After': str(max(1, math.ceil(wait)))},
            )
        return found

    return check


ReadKey = Annotated[keys.ApiKey, Depends(_guard('read'))]
ServeKey = Annotated[keys.ApiKey, Depends(_guard('serve'))]
AdminKey = Annotated[keys.ApiKey, Depends(_guard('admin'))]


def create_app(settings: ServeSettings | None = None, *, writer_process: bool = False) -> FastAPI:
    """Return the FastAPI app, with its serving state (catalog refreshed in the background, execution log).

    `writer_process=True` writes executions from a separate process (what `prompt-workspace serve` does); it
    needs the `if __name__ == '__main__':` guard of multiprocessing in a script that calls it.

    >>> app = create_app()
    """
    settings = settings or ServeSettings.from_env()
    server = Server(settings, background=True, writer_process=writer_process)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.close()  # writes the buffered executions

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # served below from a packaged copy of Swagger UI: the default loads it from a CDN
        redoc_url=None,
        title='prompt-workspace',
        summary='Prompt versions served to applications: resolve a label, render, check rules, complete.',
        version='1',
    )
    app.add_middleware(_BodyLimit, limit=settings.max_body)
    app.state.server = server
    app.state.buckets = _Bucket()

    @app.exception_handler(_Error)
    async def _on_error(request: Request, e: _Error) -> JSONResponse:
        return _json_error(e.status, e.kind, e.message, e.headers)

    @app.exception_handler(GuardrailViolation)
    async def _on_violation(request: Request, e: GuardrailViolation) -> JSONResponse:
        return _json_error(422, 'guardrail_violation', str(e), violation=e.violation, violations=e.violations)

    @app.exception_handler(WorkspaceError)
    async def _on_workspace_error(request: Request, e: WorkspaceError) -> JSONResponse:
        status = next(code for cls, code in _STATUS if isinstance(e, cls))
        return _json_error(status, type(e).__name__, str(e))

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        if any(err.get('type') == 'json_invalid' for err in errors):
            detail = next(err for err in errors if err.get('type') == 'json_invalid')
            reason = (detail.get('ctx') or {}).get('error', 'invalid JSON')
            return _json_error(400, 'malformed_json', f'the body is not valid JSON: {reason}')
        parts = [f'{".".join(str(p) for p in err["loc"][1:]) or "body"}: {err["msg"]}' for err in errors[:5]]
        return _json_error(422, 'invalid_body', '; '.join(parts))

    @app.exception_handler(HTTPException)
    async def _on_http(request: Request, e: HTTPException) -> JSONResponse:
        kind = {404: 'not_found', 405: 'method_not_allowed'}.get(e.status_code, 'http_error')
        return _json_error(e.status_code, kind, str(e.detail), getattr(e, 'headers', None))

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, e: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.exception('incident %s on %s %s', incident, request.method, request.url.path)
        return _json_error(500, 'internal_error', f'the server failed; incident {incident} is in its log')

    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount('/static/swagger', StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name='swagger')

    @app.get('/docs', include_in_schema=False)
    async def docs() -> Any:
        return get_swagger_ui_html(
            openapi_url='/openapi.json',
            title='prompt-workspace API',
            swagger_js_url='/static/swagger/swagger-ui-bundle.js',
            swagger_css_url='/static/swagger/swagger-ui.css',
            swagger_favicon_url='/static/swagger/favicon-32x32.png',
        )

    @app.get('/healthz')
    def healthz() -> dict[str, Any]:
        """Say the server is up, how old its catalog is and how many executions wait to be written."""
        snap = server.catalog.snapshot()
        return {
            'status': 'ok',
            'catalog_age_s': round(time.monotonic() - snap.loaded_at, 3),
            'executions_pending': server.executions.pending(),
        }

    @app.get('/v1/prompts/{ref}')
    def get_prompt(ref: str, key: ReadKey) -> dict[str, Any]:
        """Return the version a reference names: `ticket_router@production`, `ticket_router:v3` or a prompt."""
        version, _, _ = server.catalog.resolve(ref)
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

    # Rendering is CPU work on cached state, so it runs on the event loop rather than hopping to a worker thread;
    # only a version or prompt seen for the first time reads the store.
    @app.post('/v1/render')
    async def render(body: RenderBody, key: ServeKey) -> dict[str, Any]:
        """Resolve the version (or the unit's A/B arm), render it, check input and prompt rules."""
        return _served(server.render(body.version, body.fields, unit_id=body.unit_id, caller=f'key:{key.name}'))

    @app.post('/v1/complete')
    def complete(body: RenderBody, key: ServeKey) -> dict[str, Any]:
        """Render, call the model through the request store, check output rules."""
        return _served(server.complete(body.version, body.fields, unit_id=body.unit_id, caller=f'key:{key.name}'))

    @app.post('/v1/outcomes')
    def outcomes(body: OutcomeBody, key: ServeKey) -> dict[str, Any]:
        """Log the outcome of a served execution for its unit's A/B experiment."""
        return {'event_id': server.log_outcome(body.execution_id, body.outcome)}

    @app.put('/v1/labels/{prompt}/{label}')
    def move_label(prompt: str, label: str, body: LabelBody, key: AdminKey) -> dict[str, Any]:
        """Point a label at a version of the prompt."""
        from .labels import set_label

        with DB_LOCK, audit_log.acting_as(f'key:{key.name}'):
            version = server.catalog.resolve(body.version)[0]
            if version.prompt != prompt:
                raise ServeError(f'{version.id} is not a version of {prompt!r}')
            previous = set_label(version, label, note=body.note, by=f'key:{key.name}')
        return {'prompt': prompt, 'label': label, 'version_id': version.id, 'previous_id': previous}

    @app.put('/v1/rules/{name}')
    def put_rule(name: str, body: RuleBody, key: AdminKey) -> dict[str, Any]:
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

    @app.get('/v1/audit')
    def get_audit(
        key: AdminKey, since: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Return the audit log, newest first."""
        with DB_LOCK:
            frame = audit_log.audit(since=since, kind=kind, limit=limit)
        frame['at'] = frame['at'].astype(str)
        return frame.astype(object).where(frame.notna(), None).to_dict(orient='records')

    return app


def run(host: str = '127.0.0.1', port: int = 8000, *, settings: ServeSettings | None = None) -> None:
    """Serve the HTTP API with uvicorn until interrupted.

    >>> run(port=8000)
    """
    import uvicorn

    app = create_app(settings, writer_process=True)
    uvicorn.run(app, host=host, port=port, log_level='warning', access_log=False)


class RunningServer:
    """The HTTP API running in a background thread of this process (a notebook, a test): its URL, and stop()."""

    def __init__(self, server: Any, thread: threading.Thread, url: str) -> None:
        self._server, self._thread, self.url = server, thread, url

    def __repr__(self) -> str:
        return f'<RunningServer {self.url}>'

    def stop(self) -> None:
        """Stop serving and write the buffered executions."""
        self._server.should_exit = True
        self._thread.join(timeout=10)


def start_server(host: str = '127.0.0.1', port: int = 0, *, settings: ServeSettings | None = None) -> RunningServer:
    """Start the HTTP API in a background thread and return once it answers; port 0 picks a free port.

    >>> server = start_server()
    >>> server.url
    'http://127.0.0.1:43817'
    """
    import uvicorn

    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level='warning', access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name='http-api', daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ServeError(f'the HTTP API did not start on {host}:{port}; is the port in use?')
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(server, thread, f'http://{host}:{bound}')
