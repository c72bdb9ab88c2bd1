"""Who may call the HTTP API: API keys with scopes and per-key rate limits, body and header size limits, and
errors as JSON."""

from __future__ import annotations

import math
import threading
import time
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from workspace.serving import keys
from workspace.serving.serve import Server

__all__ = ['ApiError', 'BodyLimit', 'Bucket', 'json_error', 'ReadKey', 'ServeKey', 'AdminKey']


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

    async def check(
        request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> keys.ApiKey:
        server: Server = request.app.state.server
        key = bearer.credentials if bearer is not None else request.headers.get('x-api-key', '')
        if not key:
            raise ApiError(401, 'missing_key', 'no API key; send it as "Authorization: Bearer <key>"')
        found = keys.verify(key, server.catalog.snapshot().keys)
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
