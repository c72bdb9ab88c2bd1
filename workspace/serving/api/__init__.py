"""The HTTP API: serve versions to applications in any language (FastAPI under uvicorn).

```
GET  /healthz                     liveness, no key
GET  /v1/prompts/{ref}            a version: template, model, params, output spec   (scope read)
POST /v1/render                   resolve, render, check input and prompt rules      (scope serve)
POST /v1/complete                 render, call the model, check output rules         (scope serve)
POST /v1/outcomes                 log an execution's outcome for its A/B experiment  (scope serve)
GET  /v1/runs, /v1/runs/{id}      evaluation runs as recorded (?rows=true: predictions) (scope read)
GET  /v1/datasets[/{name}]        datasets, `name:3` pinned (?rows=true: examples)    (scope read)
GET  /v1/metrics                  serving metrics per version (?prompt=&since=7d)     (scope read)
GET  /v1/families[/{id}]          prompt families mined from logs, template and slots (scope read)
GET  /v1/experiments/{p}/{e}      an experiment's plan and where it stands            (scope read)
POST /v1/experiments/{p}/{e}/winner  move the label to the winner, stop, audit       (scope admin)
PUT  /v1/labels/{prompt}/{label}  move a label                                       (scope admin)
PUT  /v1/rules/{name}             create or change a rule                            (scope admin)
GET  /v1/audit                    the audit log                                      (scope admin)
```

A key goes in `Authorization: Bearer <key>` (or `X-API-Key`). Each key has a rate limit (requests per second,
bursts up to twice that); over it the server answers 429 with Retry-After. Bodies over `max_body` bytes get 413;
a request line and headers over `max_header` bytes get 431 before any key is checked (uvicorn stops reading them
at the limit). Every error is JSON, `{"error": {"type": ..., "message": ...}}`, never a stack trace.

Nothing runs on the event loop but parsing and routing: each route works on a worker thread and answers 504 after
`request_timeout` seconds, and templates are rendered in worker processes (`render_workers`), each render capped
in time, so one slow template stalls neither the server nor other requests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from workspace.errors import ServeError
from workspace.serving.api import routes
from workspace.serving.api.guard import BodyLimit, Bucket, HeaderLimit, header_limited_protocol
from workspace.serving.api.handlers import install_docs, install_error_handlers
from workspace.serving.serve import Server, ServeSettings

__all__ = ['create_app', 'run', 'start_server', 'RunningServer']


def create_app(
    settings: ServeSettings | None = None, *, writer_process: bool = False, render_workers: bool = True
) -> FastAPI:
    """Return the FastAPI app, with its serving state (catalog refreshed in the background, execution log,
    render worker processes).

    `writer_process=True` writes executions from a separate process (what `prompt-workspace serve` does). Worker
    processes are spawned, so a script that calls this needs multiprocessing's `if __name__ == '__main__':` guard.

    >>> app = create_app()
    """
    settings = settings or ServeSettings.from_env()
    server = Server(settings, background=True, writer_process=writer_process, render_workers=render_workers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.close()  # writes the buffered executions

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # served by install_docs from a packaged copy of Swagger UI: the default loads it from a CDN
        redoc_url=None,
        title='prompt-workspace',
        summary='Prompt versions served to applications: resolve a label, render, check rules, complete.',
        version='1',
    )
    app.add_middleware(BodyLimit, limit=settings.max_body)
    app.add_middleware(HeaderLimit, limit=settings.max_header)  # the last added runs first: before the body
    app.state.server = server
    app.state.buckets = Bucket()
    install_error_handlers(app)
    install_docs(app)
    for router in (routes.health, routes.serving, routes.records, routes.admin):
        app.include_router(router)
    return app


def run(host: str = '127.0.0.1', port: int = 8000, *, settings: ServeSettings | None = None) -> None:
    """Serve the HTTP API with uvicorn until interrupted.

    >>> run(port=8000)
    """
    import uvicorn

    settings = settings or ServeSettings.from_env()
    app = create_app(settings, writer_process=True)
    uvicorn.run(app, **_uvicorn_options(settings), host=host, port=port)


def _uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    return {'http': header_limited_protocol(settings.max_header), 'log_level': 'warning', 'access_log': False}


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

    settings = settings or ServeSettings.from_env()
    config = uvicorn.Config(create_app(settings), host=host, port=port, **_uvicorn_options(settings))
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
