"""How the HTTP API answers failures: every error a JSON body naming the problem, never a stack trace; and its
offline docs page."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from workspace.errors import (
    BackendError,
    GuardrailViolation,
    LabelError,
    RuleError,
    ServeError,
    TemplateError,
    VersionError,
    WorkspaceError,
)
from workspace.serving.api.guard import ApiError, json_error

__all__ = ['install_error_handlers', 'install_docs']

log = logging.getLogger('workspace.serving.api')

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


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception a route raises with a JSON error and the status its kind calls for."""

    @app.exception_handler(ApiError)
    async def _on_error(request: Request, e: ApiError) -> JSONResponse:
        return json_error(e.status, e.kind, e.message, e.headers)

    @app.exception_handler(GuardrailViolation)
    async def _on_violation(request: Request, e: GuardrailViolation) -> JSONResponse:
        return json_error(422, 'guardrail_violation', str(e), violation=e.violation, violations=e.violations)

    @app.exception_handler(WorkspaceError)
    async def _on_workspace_error(request: Request, e: WorkspaceError) -> JSONResponse:
        status = next(code for cls, code in _STATUS if isinstance(e, cls))
        return json_error(status, type(e).__name__, str(e))

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        if any(err.get('type') == 'json_invalid' for err in errors):
            detail = next(err for err in errors if err.get('type') == 'json_invalid')
            reason = (detail.get('ctx') or {}).get('error', 'invalid JSON')
            return json_error(400, 'malformed_json', f'the body is not valid JSON: {reason}')
        parts = [_invalid(request, err) for err in errors[:5]]
        in_body = all(err['loc'][:1] == ('body',) for err in errors)
        return json_error(422, 'invalid_body' if in_body else 'invalid_request', '; '.join(parts))

    @app.exception_handler(HTTPException)
    async def _on_http(request: Request, e: HTTPException) -> JSONResponse:
        kind = {404: 'not_found', 405: 'method_not_allowed'}.get(e.status_code, 'http_error')
        return json_error(e.status_code, kind, str(e.detail), getattr(e, 'headers', None))

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, e: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.exception('incident %s on %s %s', incident, request.method, request.url.path)
        return json_error(500, 'internal_error', f'the server failed; incident {incident} is in its log')


def _invalid(request: Request, err: dict[str, Any]) -> str:
    """Return one validation error as `where: what`, naming the known fields when an unknown one was sent."""
    where = '.'.join(str(p) for p in err['loc'][1:]) or str(err['loc'][0])
    if err.get('type') != 'extra_forbidden':
        return f'{where}: {err["msg"]}'
    route = request.scope.get('route')
    body = getattr(getattr(getattr(route, 'body_field', None), 'field_info', None), 'annotation', None)
    known = ', '.join(getattr(body, 'model_fields', {})) or 'see /docs'
    return f'{where}: is not a field of this request; its fields are: {known}'


def install_docs(app: FastAPI) -> None:
    """Serve the OpenAPI docs page from a packaged copy of Swagger UI (the default loads it from a CDN)."""
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
