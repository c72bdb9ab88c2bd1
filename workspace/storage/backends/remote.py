"""Remote chat models: Groq and any OpenAI-compatible server, with client-side rate limits and retries."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workspace.config import settings
from workspace.errors import BackendError
from workspace.storage.backends.base import Completion, public_url

__all__ = ['ChatBackend', 'RetryPolicy']

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How a remote backend retries 429s, 5xx answers, timeouts and dropped connections."""

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Return the wait before retry number `attempt` (1-based): the server's Retry-After, else jittered 2^n."""
        if retry_after is not None:
            return min(self.max_delay, max(0.0, retry_after))
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


@dataclass
class _RateLimiter:
    requests_per_minute: float
    _next: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, sleep: Callable[[float], None]) -> None:
        if self.requests_per_minute <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + 60.0 / self.requests_per_minute
        if start > now:
            sleep(start - now)


class _BadAnswer(Exception):
    """A 200 answer that is not a usable chat completion (malformed JSON, no choices): retried like a 5xx, since
    a proxy or an overloaded server sends these for a moment, and a later attempt usually gets a real answer."""


def _retryable(exc: Exception) -> tuple[bool, float | None]:
    name = type(exc).__name__
    status = getattr(exc, 'status_code', None)
    if isinstance(exc, (_BadAnswer, json.JSONDecodeError)) or name == 'APIResponseValidationError':
        return True, None
    if name in ('APITimeoutError', 'APIConnectionError') or (status is not None and (status == 429 or status >= 500)):
        headers = getattr(getattr(exc, 'response', None), 'headers', None) or {}
        value = headers.get('retry-after')
        try:
            return True, float(value) if value is not None else None
        except ValueError:
            return True, None
    return False, None


def _choice(out: Any) -> Any:
    """Return the first choice of a chat completion; raise _BadAnswer if the answer has none."""
    choices = getattr(out, 'choices', None)
    if not isinstance(choices, list):
        raise _BadAnswer(f'the endpoint answered without a choice ({str(out)[:120]!r}); is it chat-completions?')
    if not choices or choices[0].message is None:
        raise _BadAnswer('the endpoint answered without a choice (an empty choices list); is it chat-completions?')
    return choices[0]


def _describe(exc: Exception) -> str:
    return f'the answer is not valid JSON ({exc})' if isinstance(exc, json.JSONDecodeError) else str(exc)


def _without_userinfo(url: str | None) -> str | None:
    """Return `url` without a `user:password@` part, which httpx turns into a Basic Authorization header that
    replaces the Bearer key."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    if '@' not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition('@')[2]))


class ChatBackend:
    """A chat-completions API (Groq or OpenAI-compatible), with client-side rate limiting and retries.

    Thread-safe: the request store sends up to `settings().concurrency` requests at once through one backend.
    The retries are the workspace's rather than the SDK's (which are switched off) because a timed-out attempt
    gets its own, smaller budget (`timeout_attempts`): the SDK retries a hung endpoint like a 429, for minutes per
    request. Timeouts and attempts are read from `settings()` at each request.
    """

    def __init__(
        self,
        kind: str,
        model: str,
        *,
        key_env: str,
        base_url: str | None,
        key_required: bool,
        retry: RetryPolicy | None = None,
        requests_per_minute: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.kind = kind
        self.model = model
        self.key_env = key_env
        self.base_url = base_url
        self.key_required = key_required
        self.retry = retry
        self.calls = 0
        self.attempts = 0
        self._sleep = sleep
        self._limiter = _RateLimiter(requests_per_minute)
        self._client: Any = None
        self._lock = threading.Lock()

    def _key(self) -> str | None:
        key = os.environ.get(self.key_env)
        if self.key_required and not key:
            raise BackendError(f'{self.key_env} is not set; export it in the environment that runs the workspace')
        return key

    def check(self) -> None:
        self._key()

    def _make_client(self) -> Any:
        key = self._key()
        url = _without_userinfo(self.base_url)
        if url != self.base_url:
            log.warning(
                '%s: the user and password in the base URL %s are not sent (httpx would send them as Basic auth '
                'in place of the key); the key comes from %s',
                self.kind,
                public_url(self.base_url or ''),
                self.key_env,
            )
        if self.kind == 'groq':
            import groq

            return groq.Groq(api_key=key, base_url=url, max_retries=0)
        import openai

        return openai.OpenAI(api_key=key or 'no-key', base_url=url, max_retries=0)

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.key_env)
        text = text.replace(key, '***') if key else text
        if self.base_url:
            text = text.replace(self.base_url, public_url(self.base_url))
        return text

    def _policy(self) -> tuple[RetryPolicy, int, float]:
        knobs = settings()
        policy = self.retry or RetryPolicy(max_attempts=knobs.max_attempts, base_delay=knobs.retry_base_delay)
        return policy, knobs.timeout_attempts, knobs.request_timeout

    def complete(self, request: Mapping[str, Any]) -> Completion:
        decode = (request.get('constraint') or {}).get('decode', 'mask')
        if decode != 'mask':
            raise BackendError(
                f"decode {decode!r} needs every label's log-likelihood, which {self.kind} does not give; "
                "use ws.choice(labels) (decode='mask') with a remote model, or model='local'"
            )
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            self.calls += 1
        client = self._client
        params = dict(request.get('params') or {})
        if request.get('messages'):  # a chat version's request: its rendered messages, as they are
            messages = [{'role': m['role'], 'content': m['content']} for m in request['messages']]
        else:
            messages = [{'role': 'user', 'content': request['prompt']}]
            if request.get('system'):
                messages.insert(0, {'role': 'system', 'content': request['system']})
        kwargs: dict[str, Any] = {
            'model': self.model,
            'messages': messages,
            'temperature': params.get('temperature', 0.0),
            'max_tokens': params.get('max_tokens', 64),
        }
        for name in ('stop', 'seed', 'top_p'):
            if params.get(name) is not None:
                kwargs[name] = params[name]
        if (request.get('constraint') or {}).get('json_schema') is not None:
            kwargs['response_format'] = {'type': 'json_object'}
        policy, timeout_attempts, timeout = self._policy()
        attempt = timeouts = 0
        while True:
            attempt += 1
            self._limiter.wait(self._sleep)
            with self._lock:
                self.attempts += 1
            start = time.perf_counter()
            try:
                out = client.chat.completions.create(**kwargs, timeout=timeout)
                choice = _choice(out)
            except Exception as exc:
                retry, retry_after = _retryable(exc)
                timed_out = type(exc).__name__ == 'APITimeoutError'
                timeouts += timed_out
                spent = timeouts >= timeout_attempts if timed_out else attempt >= policy.max_attempts
                if not retry or spent:
                    what = f'timed out after {timeout:g} s' if timed_out else self._redact(_describe(exc))
                    kind = 'BadAnswer' if isinstance(exc, _BadAnswer) else type(exc).__name__
                    raise BackendError(
                        f'{self.kind} request failed after {attempt} attempt(s): {kind}: {what}'
                    ) from None
                wait = policy.delay(attempt, retry_after)
                log.info('%s: %s; retry %d in %.2f s', self.kind, type(exc).__name__, attempt, wait)
                self._sleep(wait)
                continue
            usage = out.usage
            return Completion(
                text=choice.message.content or '',
                prompt_tokens=getattr(usage, 'prompt_tokens', None),
                completion_tokens=getattr(usage, 'completion_tokens', None),
                latency_s=time.perf_counter() - start,
                finish_reason=choice.finish_reason,
            )
