"""Render templates in worker processes, each render with a hard time cap, so that a slow template never holds
the process that serves other requests.

A template is user code: the sandbox (`udfs/render.py`) stops a render past `WORKSPACE_RENDER_TIMEOUT_S` by
checking the clock in every loop, but the render still runs Python in the serving process until then, and its
interpreter lock slows every other request. So a render gets 20 ms on the request's thread (nearly every template
needs well under a millisecond, less than a round trip to another process), and one that needs longer starts
again in a worker process, where it costs the server nothing; a worker that does not answer within the cap (the
render timeout and one second) is killed and replaced, so even a render the sandbox cannot stop ends at the cap. Each worker renders one template at a time; a request waits for an idle
worker within the same cap. Workers run at a lower CPU priority than the server, so a slow template takes the CPU
only when the server does not need it.

Workers are spawned (no fork of a process with threads and database connections) and import only the sandbox:
`udfs.render` imports Pixeltable solely to declare its UDF, so a worker gives it a stand-in `udf` decorator
instead of importing Pixeltable (hundreds of megabytes and seconds per worker).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import sys
import threading
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from workspace.errors import ServeError, TemplateError

__all__ = ['RenderWorkers']

log = logging.getLogger(__name__)


def _import_sandbox() -> Any:
    """Import `udfs.render` in a worker, with a stand-in for Pixeltable's `udf` decorator (see the module doc)."""
    if 'pixeltable' not in sys.modules:
        stand_in = types.ModuleType('pixeltable')
        stand_in.udf = lambda fn=None, **_: fn if fn is not None else (lambda f: f)  # type: ignore[attr-defined]
        sys.modules['pixeltable'] = stand_in
    from udfs import render

    return render


def _run(render: Any, job: tuple[Any, ...], timeout_s: float | None = None) -> tuple[str, str]:
    """Render one job; return ('ok', text), or (kind, message) for a failure: 'timeout', 'limit', 'undefined',
    'sandbox' or 'failed'."""
    template, fields, demos, labels, instructions = job
    try:
        text = render.render(
            template, fields, demos=demos, labels=labels, instructions=instructions, timeout_s=timeout_s
        )
        return 'ok', text
    except jinja2.UndefinedError as e:
        return 'undefined', e.message or 'a variable is undefined'
    except render.RenderTimeoutError as e:
        return 'timeout', str(e.message)
    except render.RenderLimitError as e:
        return 'limit', str(e.message)
    except render.SecurityError as e:
        return 'sandbox', str(e.message)
    except Exception as e:  # a filter or an operator failing on these values: the template's bug
        return 'failed', f'{type(e).__name__}: {e}'


def _serve(conn: Any) -> None:
    """A worker's loop: render each job it receives and send back (kind, text or message) until told to stop."""
    # A lower priority: when a slow template competes for the CPU with the server, the server (and every fast
    # request) comes first.
    os.nice(10)
    render = _import_sandbox()
    conn.send(('ready', ''))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the server went away
        if job is None:
            return
        conn.send(_run(render, job))


def _result(version: Any, kind: str, value: str) -> str:
    """Return the rendered text, or raise what `Version.render` raises for the failure `kind`."""
    if kind == 'ok':
        return value
    if kind == 'undefined':
        raise jinja2.UndefinedError(value)
    what = {'sandbox': 'stopped by the sandbox', 'failed': 'failed to render'}.get(kind, 'stopped')
    raise TemplateError(f'template of {version.id} {what}: {value}')


class _Worker:
    def __init__(self, context: Any) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), name='render-worker', daemon=True)
        self.process.start()
        child.close()

    def ready(self, timeout: float) -> bool:
        return self.conn.poll(timeout) and self.conn.recv()[0] == 'ready'

    def stop(self, *, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class RenderWorkers:
    """Renders for the HTTP server: 20 ms (`first_try_s`) on the calling thread, then in one of `size` worker
    processes, each render there capped at the render time limit plus `grace_s`.

    >>> workers = RenderWorkers(2)
    >>> workers.render(version, {'text': 'My parcel is late'})
    """

    def __init__(self, size: int, *, grace_s: float = 1.0, first_try_s: float = 0.02) -> None:
        self.size = size
        self.grace_s = grace_s
        self.first_try_s = first_try_s
        self._context = multiprocessing.get_context('spawn')
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(size):
            self._add()

    def _add(self) -> None:
        worker = _Worker(self._context)
        with self._lock:
            self._all.add(worker)

        def wait_ready() -> None:
            if worker.ready(120):
                self._idle.put(worker)
            else:
                log.error('a render worker did not start; rendering has %d workers', self.size - 1)

        threading.Thread(target=wait_ready, name='render-worker-start', daemon=True).start()

    def _replace(self, worker: _Worker) -> None:
        with self._lock:
            self._all.discard(worker)
        worker.stop(kill=True)
        if not self._closed:
            self._add()

    def wait_idle(self, timeout: float) -> bool:
        """Return True once a worker is idle, or False after `timeout` seconds (workers start in the background: a
        second or more on a busy machine)."""
        deadline = time.monotonic() + timeout
        while self._idle.qsize() == 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def cap(self) -> float:
        """Return the longest a render may take, waiting for a worker included: the render time limit plus grace."""
        from udfs.render import render_timeout_s

        return render_timeout_s() + self.grace_s

    def render(
        self, version: Any, fields: Mapping[str, Any], *, demos: Sequence[Mapping[str, Any]] | None = None
    ) -> str:
        """Return `version` rendered with `fields`; raise as `Version.render` does (TemplateError, or
        `jinja2.UndefinedError` for a missing field), and TemplateError when the cap is reached.

        The render is tried first on this thread for at most `first_try_s`: nearly every template is done by then,
        and a process round trip would cost more than the render. One that is not goes to a worker, from the start.
        """
        from udfs import render as sandbox

        job = (version.template, dict(fields), list(version.demos if demos is None else demos), list(version.labels),
               version.instructions)  # fmt: skip
        kind, value = _run(sandbox, job, min(self.first_try_s, sandbox.render_timeout_s()))
        if kind == 'timeout' and self.first_try_s < sandbox.render_timeout_s():
            kind, value = self._in_worker(version, job)
        return _result(version, kind, value)

    def _in_worker(self, version: Any, job: tuple[Any, ...]) -> tuple[str, str]:
        cap = self.cap()
        deadline = time.monotonic() + cap
        try:
            worker = self._idle.get(timeout=cap)
        except queue.Empty:
            raise ServeError(
                f'every render worker was busy for {cap:g} s; try again, or run the server with more '
                'WORKSPACE_SERVE_RENDER_WORKERS'
            ) from None
        try:
            worker.conn.send(job)
            if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                self._replace(worker)
                raise TemplateError(
                    f'template of {version.id} stopped: rendering took longer than {cap:g} s and was stopped '
                    '(WORKSPACE_RENDER_TIMEOUT_S); a loop in the template grows with the input'
                )
            kind, value = worker.conn.recv()
        except (EOFError, OSError) as e:
            self._replace(worker)
            raise ServeError(f'the render worker failed ({type(e).__name__}); try again') from None
        self._idle.put(worker)
        return kind, value

    def close(self) -> None:
        """Stop every worker."""
        self._closed = True
        with self._lock:
            workers, self._all = list(self._all), set()
        for worker in workers:
            worker.stop()
