"""Who may call the HTTP API: API keys with scopes and per-key rate limits, body and header size limits, and
errors as JSON."""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from workspace.serving import keys
from workspace.serving.serve import Server

__all__ = [
    'ApiError',
    'BodyLimit',
    'HeaderLimit',
    'header_limited_protocol',
    'Bucket',
    'json_error',
    'ReadKey',
    'ServeKey',
    'AdminKey',
]


class Bucket:
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


class BodyLimit:
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
            response = json_error(413, 'body_too_large', f'the body is larger than {self.limit} bytes')
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


def _too_large_message(limit: int) -> str:
    return (
        f'the request line and headers are larger than {limit} bytes (WORKSPACE_SERVE_MAX_HEADER); send the key in '
        'Authorization and the data in the body'
    )


class HeaderLimit:
    """Refuse a request whose request line and headers pass `limit` bytes with a JSON 431, before any route (and
    so before any key check) sees it. The server's protocol (`header_limited_protocol`) already stops reading such
    a request at the limit; this covers any other ASGI server the app runs under."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope['type'] == 'http':
            size = len(scope.get('raw_path') or b'') + len(scope.get('query_string') or b'')
            size += sum(len(k) + len(v) + 4 for k, v in scope.get('headers') or [])
            if size > self.limit:
                response = json_error(431, 'headers_too_large', _too_large_message(self.limit))
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def header_limited_protocol(limit: int) -> type:
    """Return uvicorn's httptools protocol that stops reading a request once its request line and headers pass
    `limit` bytes and answers a JSON 431.

    httptools has no limit of its own, so without this a 16 MB header is read whole, into memory, before the app
    can refuse it. The refused connection reads and drops the rest of what the client sends for a moment before
    closing, so that a client still sending its headers receives the answer instead of a reset.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    body = json.dumps({'error': {'type': 'headers_too_large', 'message': _too_large_message(limit)}}).encode()
    answer = (
        b'HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n'
        + f'content-length: {len(body)}\r\nconnection: close\r\n\r\n'.encode()
        + body
    )

    class HeaderLimitedProtocol(HttpToolsProtocol):  # type: ignore[misc]
        _head = 0  # bytes of the request head being read
        _heads = 0  # heads read whole on this connection
        _in_head = True
        _refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # the rest of a refused request, dropped
            heads = self._heads
            super().data_received(data)
            if self._heads != heads:  # a head ended in this chunk: what follows is a body or the next request
                self._head = 0
            elif self._in_head:
                self._head += len(data)
                if self._head > limit:
                    self._refuse()

        def on_headers_complete(self) -> None:
            self._in_head, self._heads = False, self._heads + 1
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head = True  # the next request on this connection starts with its head
            super().on_message_complete()

        def _refuse(self) -> None:
            self._refused = True
            if self.cycle is not None and not self.cycle.response_complete:
                self.transport.close()  # a pipelined request is still being answered: no room for ours
                return
            self.transport.write(answer)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(2.0, self.transport.close)

    return HeaderLimitedProtocol


class ApiError(Exception):
    """An error the API answers with its own status and kind."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def _json_error(status: int, kind: str, message: str, headers: dict[str, str] | None = None, **extra: Any):
    return JSONResponse({'error': {'type': kind, 'message': message, **extra}}, status_code=status, headers=headers)


def json_error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """Return the JSON error every failure of the API answers with: `{"error": {"type", "message", ...}}`."""
    return JSONResponse({'error': {'type': kind, 'message': message, **extra}}, status_code=status, headers=headers)


#: Declares the key in the OpenAPI document, so the docs page has an "Authorize" button; checked by `_guard`.
_BEARER = HTTPBearer(auto_error=False, description='an API key from `prompt-workspace keys create NAME`')


def _guard(needed: str) -> Any:
    """Return a dependency that admits a request whose key has at least the scope `needed`, within its rate."""

    # On the event loop: it reads the keys of the catalog's current snapshot (kept fresh by a background thread)
    # and compares one SHA-256, so it never waits.
    async def check(
        request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> keys.ApiKey:
        server: Server = request.app.state.server
        key = bearer.credentials if bearer is not None else request.headers.get('x-api-key', '')
        if not key:
            raise ApiError(401, 'missing_key', 'no API key; send it as "Authorization: Bearer <key>"')
        found = keys.verify(key, server.catalog.current().keys)
        if found is None and server.catalog.stale_here():  # a key made in this process since the last load
            found = keys.verify(key, (await anyio.to_thread.run_sync(server.catalog.snapshot)).keys)
        if found is None:
            raise ApiError(401, 'invalid_key', 'the API key is wrong or revoked')
        if not keys.allows(found.scope, needed):
            raise ApiError(403, 'forbidden', f'key {found.name!r} has scope {found.scope!r}; this needs {needed!r}')
        wait = request.app.state.buckets.take(found.key_id, found.rate)
        if wait:
            raise ApiError(
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
