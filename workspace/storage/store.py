"""The request store: one row per distinct model request, identified by the hash of its content.

Everything that calls a model goes through this module (evaluation, the DSPy adapter, suggestions, judges,
serving), and nothing else touches its tables:

```
prompt_workspace/requests   one row per answered request: the request, its answer (text, tokens, latency) or its
                            error, when it was answered, and who asked first (version, dataset, example)
prompt_workspace/claims     one row per request some process is answering right now, with a heartbeat
```

A request is answered at most once, across processes and machines sharing the workspace: before calling a
model a session *claims* the request (a row keyed by its hash, so only one insert can win); a session that finds
a request claimed by another waits for the answer and counts it as reused. A claim whose owner died (its process
is gone from this host, or its heartbeat is older than `claim_stale` seconds) is taken over.

Every answer is written to the session's journal (`workspace.storage.journal`) the moment it arrives, before the
request counts as done, and to the requests table every `flush_seconds` and at the end. A killed session's journal
is replayed by the next store call on the host, so a run killed at any point and started again, or a process that
takes over a dead one's claims, repeats no answered call: only the calls in flight at the kill are sent again, and
`Batch.repeated` counts them. Remote backends answer several requests at once, as many as `_Concurrency` finds the
endpoint can take (from `concurrency` down); the local model one at a time, rows that share a prefix one after
another. After `breaker_failures` consecutive failures of the same kind the session stops with one
`BackendError`: what was answered is kept, requests not sent are not marked failed.

The model call is made here rather than in a Pixeltable computed column of the requests table: a computed column
is evaluated inside the insert's transaction, so it can be neither claimed across processes, nor flushed by time,
nor sent concurrently.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from workspace.config import Settings, settings, utc_now
from workspace.errors import BackendError
from workspace.storage import backends, journal, recovery, tables

__all__ = [
    'Answer',
    'blocked_answer',
    'Origin',
    'Batch',
    'request_hash',
    'answer',
    'answer_many',
    'lookup',
    'requests_for',
    'sent_prompts',
    'Progress',
]

log = logging.getLogger(__name__)

#: The fields of a request that make its identity (the hash); anything else in a request dict is ignored.
IDENTITY = ('model_id', 'params', 'prompt', 'system', 'constraint', 'sample', 'messages')
#: Identity fields hashed only when present, so requests made before they existed keep their hashes.
_OPTIONAL = ('sample', 'messages')

#: Who asks for a request first: (version id, dataset, example id), recorded as the request's lineage.
Origin = tuple[str | None, str | None, str | None]

#: A progress bar (True), nothing (False), or a function called with (requests done, requests to answer).
Progress = bool | Callable[[int, int], None]


class Answer(TypedDict):
    """The store's answer to one request."""

    hash: str
    text: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None
    finish_reason: str | None
    error: str | None
    answered_at: Any
    reused: bool
    scores: dict[str, float] | None


def blocked_answer(key: str, message: str) -> Answer:
    """Return the answer of a request a blocking rule kept from the model: the rule as its error, never sent."""
    return Answer(
        hash=key,
        text=None,
        prompt_tokens=None,
        completion_tokens=None,
        latency_s=None,
        finish_reason=None,
        error=message,
        answered_at=None,
        reused=False,
        scores=None,
    )


def request_hash(request: Mapping[str, Any]) -> str:
    """Return the content hash that identifies a request: model identity, params, prompt, constraint, sample and,
    for a chat request, its messages (only when present: a completion request's hash is what it always was).

    The model spec and any key are not part of it: two specs naming the same model share answers.

    >>> len(request_hash({'model_id': 'local:x', 'params': {}, 'prompt': 'Hi', 'constraint': None}))
    64
    """
    body = {k: request.get(k) for k in IDENTITY if k not in _OPTIONAL or request.get(k) is not None}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _identity(request: Mapping[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in request.items() if k != 'hash'}
    body.setdefault('model_id', backends.model_identity(body['model']))
    return body


# --- reads ---------------------------------------------------------------------------------------------------


def _to_answer(row: Mapping[str, Any], reused: bool) -> Answer:
    response = row.get('response') or {}
    return Answer(
        hash=row['request_hash'],
        text=response.get('text'),
        prompt_tokens=response.get('prompt_tokens'),
        completion_tokens=response.get('completion_tokens'),
        latency_s=response.get('latency_s'),
        finish_reason=response.get('finish_reason'),
        error=row.get('error'),
        answered_at=row.get('answered_at'),
        reused=reused,
        scores=response.get('scores'),
    )


def lookup(hashes: Iterable[str]) -> dict[str, Answer]:
    """Return the stored answers (or errors) to the requests with these hashes; unanswered ones are absent."""
    keys = sorted(set(hashes))
    if not keys:
        return {}
    t = tables.requests()
    rows = t.where(t.request_hash.isin(keys)).select(t.request_hash, t.response, t.error, t.answered_at).collect()
    return {r['request_hash']: _to_answer(r, True) for r in rows}


def requests_for(hashes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Return the stored requests with these hashes, with their lineage: `request`, `answered_at`,
    `first_version_id`, `first_dataset`, `first_example_id`."""
    keys = sorted(set(hashes))
    if not keys:
        return {}
    t = tables.requests()
    rows = (
        t.where(t.request_hash.isin(keys))
        .select(t.request_hash, t.request, t.answered_at, t.first_version_id, t.first_dataset, t.first_example_id)
        .collect()
    )
    return {r['request_hash']: dict(r) for r in rows}


def sent_prompts(since: Any = None) -> list[dict[str, Any]]:
    """Return the prompts the store has sent (answered or failed), oldest first: `request_hash`, `prompt`,
    `model_id`, `created_at`, `response` (the answer's text, or None) and `error`; only those created after `since`
    when given. Prompt families read raw prompts from here (`ws.ingest_prompts('request_store')`)."""
    t = tables.requests()
    query = t.where(t.created_at > since) if since is not None else t
    rows = query.select(t.request_hash, t.request, t.model_id, t.created_at, t.response, t.error).collect()
    out = [
        {
            'request_hash': r['request_hash'],
            'prompt': (r['request'] or {}).get('prompt'),
            'model_id': r['model_id'],
            'created_at': r['created_at'],
            'response': (r['response'] or {}).get('text'),
            'error': r['error'],
        }
        for r in rows
    ]
    return sorted(out, key=lambda r: (r['created_at'], r['request_hash']))


# --- claims and the journal ------------------------------------------------------------------------------------

_HOST = socket.gethostname()
#: Sessions of this process that are answering now: a claim of this process by another session is alive only if
#: its session is in here (an interrupted call in a notebook leaves its claims behind until it is taken over).
_live_sessions: set[str] = set()
_live_lock = threading.Lock()
#: Requests a killed session had sent without hearing back (read from its journal): if this process sends one
#: again, that call is a repeat, and is counted as one.
_in_flight_of_dead: set[str] = set()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _claim_is_dead(claim: Mapping[str, Any], knobs: Settings) -> bool:
    """Return whether the session holding a claim can no longer answer it."""
    if claim['host'] == _HOST:
        if claim['pid'] == os.getpid():
            with _live_lock:
                return claim['owner'] not in _live_sessions
        if not _pid_alive(int(claim['pid'])):
            return True
    age = (utc_now() - claim['heartbeat_at']).total_seconds()
    return age > knobs.claim_stale


def _recover() -> None:
    """Write the answers of killed sessions on this host (their journals) to the requests table, drop their claims,
    and remember what they had in flight. Costs one directory listing when there is nothing to recover."""
    with journal.replay_orphans() as orphans:
        if not orphans:
            return
        rows = {r['request_hash']: r for o in orphans for r in o.rows}
        if rows:
            tables.insert_new(tables.requests(), list(rows.values()), 'request_hash')
        claims = tables.claims()
        claims.delete(where=claims.owner.isin([o.session for o in orphans]))
        with _live_lock:
            _in_flight_of_dead.update(key for o in orphans for key in o.in_flight if key not in rows)


@dataclass
class _Session:
    """One process's turn at answering a set of requests: its claims, its journal, its buffer of answers, its
    counts."""

    knobs: Settings
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    buffer: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    claimed: set[str] = field(default_factory=set)
    repeated: set[str] = field(default_factory=set)
    flushed_at: float = field(default_factory=time.monotonic)
    beat_at: float = field(default_factory=time.monotonic)
    wal: journal.Journal = field(init=False)

    def __post_init__(self) -> None:
        self.wal = journal.Journal(self.owner)

    def __enter__(self) -> _Session:
        with _live_lock:
            _live_sessions.add(self.owner)
        return self

    def __exit__(self, *exc: Any) -> None:
        flushed = False
        try:
            self.flush()
            flushed = True
        finally:
            try:
                self.release(self.claimed)
            finally:
                self.wal.close(done=flushed)
                with _live_lock:
                    _live_sessions.discard(self.owner)

    def claim(self, keys: Sequence[str]) -> set[str]:
        """Claim the requests no one else is answering; return the hashes this session now owns."""
        if not keys:
            return set()
        now = utc_now()
        rows = [
            {
                'request_hash': key,
                'owner': self.owner,
                'host': _HOST,
                'pid': os.getpid(),
                'claimed_at': now,
                'heartbeat_at': now,
            }
            for key in keys
        ]
        won = tables.insert_new(tables.claims(), rows, 'request_hash')
        self.claimed |= won
        return won

    def take_over(self, keys: Sequence[str]) -> set[str]:
        """Claim requests whose claims are held by dead sessions or released; return those won."""
        claims = tables.claims()
        held = {
            r['request_hash']: r
            for r in claims.where(claims.request_hash.isin(list(keys)))
            .select(claims.request_hash, claims.owner, claims.host, claims.pid, claims.heartbeat_at)
            .collect()
        }
        dead: dict[str, list[str]] = {}
        for key, claim in held.items():
            if _claim_is_dead(claim, self.knobs):
                dead.setdefault(claim['owner'], []).append(key)
        for owner, owned in dead.items():
            log.info('taking over %d request(s) from dead session %s', len(owned), owner[:8])
            # Deleted only if still held by the dead owner: two waiters cannot both take one over.
            claims.delete(where=(claims.owner == owner) & claims.request_hash.isin(owned))
        taken = {key for owned in dead.values() for key in owned}
        return self.claim([k for k in keys if k not in held or k in taken])

    def heartbeat(self) -> None:
        if self.claimed and time.monotonic() - self.beat_at > self.knobs.claim_stale / 4:
            claims = tables.claims()
            claims.update({'heartbeat_at': utc_now()}, where=claims.owner == self.owner)
            self.beat_at = time.monotonic()

    def sending(self, key: str) -> None:
        """Record in the journal that a request is about to be sent; count it if a killed session had sent it."""
        self.wal.sent(key)
        if _in_flight_of_dead:
            with _live_lock:
                if key in _in_flight_of_dead:
                    _in_flight_of_dead.discard(key)
                    self.repeated.add(key)

    def add(self, row: dict[str, Any], *, retry: bool) -> None:
        """Take an answer: in the journal at once, in the table at the next flush."""
        self.wal.answered(row)
        recovery.pause_point('store.journaled')
        (self.updates if retry else self.buffer).append(row)
        if time.monotonic() - self.flushed_at >= self.knobs.flush_seconds:
            self.flush()
        else:
            self.heartbeat()

    def flush(self) -> None:
        """Write the buffered answers to the requests table (their claims go when the session ends: a waiter
        finds an answer before it looks at claims)."""
        if self.buffer:
            tables.insert_new(tables.requests(), self.buffer, 'request_hash')
            self.buffer = []
        if self.updates:
            tables.requests().batch_update(self.updates)
            self.updates = []
        self.flushed_at = time.monotonic()
        recovery.pause_point('store.flushed')

    def release(self, keys: Iterable[str]) -> None:
        keys = set(keys) & self.claimed
        if not keys:
            return
        claims = tables.claims()
        if keys == self.claimed:
            claims.delete(where=claims.owner == self.owner)
        else:
            claims.delete(where=(claims.owner == self.owner) & claims.request_hash.isin(sorted(keys)))
        self.claimed -= keys


# --- answering -----------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """What `answer_many` did: every answer by hash, and which were called, waited for or found stored.

    `repeated` are the calls that a killed session had already sent without its answer arriving (in flight when it
    died): the only calls a run started again pays twice. `called` holds every request this session answered,
    `calls` counts those that reached a model (a choice with one possible label is answered without one,
    `backends.complete`).
    """

    answers: dict[str, Answer]
    called: set[str]
    waited: set[str]
    retried: set[str]
    repeated: set[str] = field(default_factory=set)

    @property
    def calls(self) -> int:
        """Return the number of model calls this session made (retries included)."""
        return sum(1 for k in self.called if self.answers[k]['finish_reason'] != backends.ONLY_CHOICE)


#: Markers of an overloaded endpoint in a backend's error: the request is sent again at a lower concurrency.
_OVERLOAD = ('APITimeoutError', 'RateLimitError', 'timed out after')


def _error_kind(error: BaseException) -> str:
    """Return what makes two failures 'the same kind' for the circuit breaker: the error type and its cause."""
    text = str(error)
    for marker in ('APITimeoutError', 'APIConnectionError', 'InternalServerError', 'RateLimitError'):
        if marker in text:
            return marker
    return f'{type(error).__name__}: {text[:60]}'


@dataclass
class _Breaker:
    """Count consecutive failures of one kind; open after `limit` of them."""

    limit: int
    kind: str | None = None
    count: int = 0
    last: str | None = None

    def record(self, error: BaseException | None) -> bool:
        """Record an outcome; return True if the breaker is now open."""
        if error is None:
            self.kind, self.count = None, 0
            return False
        kind = _error_kind(error)
        self.count = self.count + 1 if kind == self.kind else 1
        self.kind, self.last = kind, str(error)
        return self.count >= self.limit


@dataclass
class _Concurrency:
    """How many requests a remote endpoint gets at once: starts at the configured level and finds its capacity.

    An answer slower than `tolerance` times the fastest one seen means requests are queueing at the endpoint: the
    limit shrinks in proportion (a one-slot server answering the k-th of k queued requests after k times its
    service time drives it to 1 or 2). A timeout or a 429 that outlived the backend's retries halves it, and the
    request is sent again rather than failed. Each answer in time lets the limit grow by 1/limit (additive
    increase, as TCP probes for bandwidth), up to the configured level. Hand-written because the SDKs retry one
    request; none sizes a pool of them.
    """

    ceiling: int
    limit: float = 0.0
    fastest: float = math.inf
    tolerance: float = 2.0

    def __post_init__(self) -> None:
        self.limit = float(self.ceiling)

    @property
    def allowed(self) -> int:
        return max(1, int(self.limit))

    def answered(self, latency: float | None) -> None:
        if latency is None or latency <= 0:
            return
        self.fastest = min(self.fastest, latency)
        if latency > self.tolerance * self.fastest:
            self.limit = max(1.0, min(self.limit, self.limit * self.tolerance * self.fastest / latency + 1.0))
        else:
            self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)

    def overloaded(self) -> None:
        self.limit = max(1.0, self.limit / 2)
        log.info('endpoint overloaded: %d request(s) at once from now on', self.allowed)


def _row(key: str, request: Mapping[str, Any], origin: Origin, out: Mapping[str, Any] | None, error: str | None):
    version_id, dataset, example_id = origin
    now = utc_now()
    return {
        'request_hash': key,
        'request': {k: v for k, v in request.items() if k != 'hash'},
        'model_id': request['model_id'],
        'created_at': now,
        'answered_at': now,
        'response': dict(out) if out is not None else None,
        'error': error,
        'first_version_id': version_id,
        'first_dataset': dataset,
        'first_example_id': example_id,
    }


def _call(request: Mapping[str, Any]) -> tuple[dict[str, Any] | None, BaseException | None]:
    try:
        return dict(backends.complete(request)), None
    except Exception as e:  # recorded on the request's row; the run goes on
        return None, e


def _message(error: BaseException) -> str:
    return f'{type(error).__name__}: {error}'


def _progress_bar(progress: Progress, total: int) -> Callable[[int], None]:
    """Return a function to call with the number of requests just done."""
    if progress is True and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc='model calls', unit='call')
        done = [0]

        def update(n: int) -> None:
            done[0] += n
            bar.update(n)
            if done[0] >= total:
                bar.close()

        return update
    if callable(progress):
        count = [0]

        def report(n: int) -> None:
            count[0] += n
            progress(count[0], total)  # type: ignore[operator]

        return report
    return lambda n: None


#: Times a request is sent again because its endpoint was overloaded, before its timeout counts as its answer.
_OVERLOAD_RESENDS = 3

Todo = Sequence[tuple[str, dict[str, Any], Origin]]


@dataclass
class _Sender:
    """Send one session's claimed requests and keep their outcomes (see `_send`)."""

    session: _Session
    retry: set[str]
    tick: Callable[[int], None]
    answers: dict[str, Answer] = field(default_factory=dict)
    held: list[dict[str, Any]] = field(default_factory=list)
    breaker: _Breaker = field(init=False)

    def __post_init__(self) -> None:
        self.breaker = _Breaker(self.session.knobs.breaker_failures)

    def store(self, row: dict[str, Any]) -> None:
        self.session.add(row, retry=row['request_hash'] in self.retry)
        self.answers[row['request_hash']] = _to_answer(row, False)

    def finish(self, key: str, request: dict[str, Any], origin: Origin, out: Any, error: BaseException | None) -> bool:
        """Record one outcome; return True if the breaker opened.

        A failure is kept back until the next success: if the breaker opens first, the failures of its run are
        not stored (the endpoint failed, not those requests), so the next run after a fix sends them again.
        """
        if self.breaker.record(error):
            return True
        row = _row(key, request, origin, out, None if error is None else _message(error))
        if error is None:
            for failed in self.held:
                self.store(failed)
            self.held.clear()
            self.store(row)
        else:
            self.held.append(row)
        self.tick(1)
        return False

    def call(self, key: str, request: Mapping[str, Any]) -> tuple[dict[str, Any] | None, BaseException | None]:
        """Send one request (in a worker thread for remote backends), journaled as sent first."""
        self.session.sending(key)
        return _call(request)

    def local(self, todo: Todo) -> bool:
        """Answer local requests one by one, rows that share a prefix one after another (the model reuses it);
        return True if the breaker opened."""
        for key, request, origin in sorted(todo, key=lambda item: item[1]['prompt']):
            if self.finish(key, request, origin, *self.call(key, request)):
                return True
        return False

    def remote(self, todo: Todo) -> bool:
        """Answer remote requests concurrently, as many at once as `_Concurrency` allows; return True if the
        breaker opened. Requests not sent when it opens stay unanswered and unclaimed."""
        limiter = _Concurrency(self.session.knobs.concurrency)
        queue = list(todo)[::-1]  # popped from the end: in order
        resends: dict[str, int] = {}
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.session.knobs.concurrency)
        pending: dict[concurrent.futures.Future[Any], tuple[str, dict[str, Any], Origin]] = {}
        stopped = False
        try:
            while (queue or pending) and not stopped:
                while queue and len(pending) < limiter.allowed:
                    item = queue.pop()
                    pending[pool.submit(self.call, item[0], item[1])] = item
                done, _ = concurrent.futures.wait(pending, timeout=1.0, return_when='FIRST_COMPLETED')
                self.session.heartbeat()
                for future in done:
                    key, request, origin = item = pending.pop(future)
                    out, error = future.result()
                    if error is not None and any(m in str(error) for m in _OVERLOAD):
                        # an endpoint that answered others is overloaded, one that never answered is down
                        if resends.get(key, 0) < _OVERLOAD_RESENDS and limiter.fastest < math.inf:
                            resends[key] = resends.get(key, 0) + 1
                            limiter.overloaded()
                            queue.append(item)
                            continue
                    if error is None:
                        limiter.answered(out.get('latency_s') if out else None)
                    if not stopped:
                        stopped = self.finish(key, request, origin, out, error)
                    elif error is None:  # answered while the breaker opened: paid for, so kept
                        self.store(_row(key, request, origin, out, None))
        finally:
            # In-flight requests finish in the background; their answers are not waited for.
            pool.shutdown(wait=not stopped and not pending, cancel_futures=True)
        return stopped


def _send(session: _Session, todo: Todo, retry: set[str], tick: Callable[[int], None]) -> dict[str, Answer]:
    """Call the model for claimed requests (concurrently for remote backends), journaling answers as they come."""
    sender = _Sender(session, retry, tick)
    stopped = sender.local([item for item in todo if not backends.is_remote(item[1]['model'])])
    if not stopped:
        stopped = sender.remote([item for item in todo if backends.is_remote(item[1]['model'])])
    if stopped:
        session.flush()
        breaker = sender.breaker
        raise BackendError(
            f'stopped after {breaker.count} consecutive failures of the same kind: {breaker.last}. '
            f'{len(sender.answers)} of {len(todo)} requests were answered and kept; the others were not sent or '
            'not stored. Fix the model or endpoint and run again: answered requests are not sent again'
        )
    for row in sender.held:
        sender.store(row)
    return sender.answers


def _wait(session: _Session, waiting: dict[str, tuple[dict[str, Any], Origin]], retry: set[str], tick: Any):
    """Wait for requests other sessions are answering; answer those whose claims died. Return (answers, called)."""
    answers: dict[str, Answer] = {}
    called: dict[str, Answer] = {}
    deadline = time.monotonic() + session.knobs.claim_wait
    delay = 0.05
    taken: set[str] = set()  # claims taken over from dead sessions, sent after one more recovery and lookup
    while waiting:
        # A session that died while this one waited: its journaled answers, not its calls again (also when it died
        # after the recovery that came before its claims were taken over).
        _recover()
        found = {k: a for k, a in lookup(waiting).items() if k not in retry or a['error'] is None}
        for key in found:
            waiting.pop(key)
        answers |= found
        tick(len(found))
        if not waiting:
            break
        mine = [(key, *waiting.pop(key)) for key in sorted(taken) if key in waiting]
        if mine:
            called |= _send(session, mine, retry, tick)
            taken.clear()
            continue
        taken = session.take_over(sorted(waiting))
        if taken:
            continue
        if time.monotonic() > deadline:
            raise BackendError(
                f'{len(waiting)} request(s) are being answered by another process for over '
                f'{session.knobs.claim_wait:g} s (WORKSPACE_CLAIM_WAIT); run again later, or raise the wait'
            )
        time.sleep(delay)
        delay = min(1.0, delay * 2)
    return answers, called


def answer_many(
    requests: Iterable[tuple[Mapping[str, Any], Origin]],
    *,
    retry_errors: bool = False,
    progress: Progress = False,
) -> Batch:
    """Answer requests, calling a model only for those the store has not answered and no one is answering.

    `requests` are (request, origin) pairs; a request is a dict with `model`, `params`, `prompt`, `constraint`
    (and optionally `model_id`, `system`, `sample`). Requests with equal content are answered once. With
    `retry_errors`, requests whose stored answer is an error are sent again. Raises BackendError if the circuit
    breaker opens or another process holds a request for longer than `claim_wait`.

    >>> batch = answer_many([({'model': 'local', 'params': {}, 'prompt': 'Hi', 'constraint': None}, (None,) * 3)])
    """
    by_hash: dict[str, tuple[dict[str, Any], Origin]] = {}
    for request, origin in requests:
        body = _identity(request)
        by_hash.setdefault(request_hash(body), (body, origin))
    if not by_hash:
        return Batch({}, set(), set(), set())
    _recover()
    stored = lookup(by_hash)
    retry = {k for k, a in stored.items() if a['error'] is not None} if retry_errors else set()
    answers = {k: a for k, a in stored.items() if k not in retry}
    todo = [k for k in by_hash if k not in answers]
    if not todo:
        return Batch(answers, set(), set(), set())
    for model in sorted({by_hash[k][0]['model'] for k in todo}):
        backends.get_backend(model).check()  # a missing key or model file fails before any claim
    tick = _progress_bar(progress, len(todo))
    with _Session(settings()) as session:
        won = session.claim(todo)
        called = _send(session, [(k, *by_hash[k]) for k in todo if k in won], retry, tick)
        others = {k: by_hash[k] for k in todo if k not in won}
        waited, taken = _wait(session, others, retry, tick) if others else ({}, {})
    called |= taken
    answers |= called | waited
    return Batch(answers, set(called), set(waited), retry & set(called), session.repeated)


def answer(request: Mapping[str, Any], *, origin: Origin = (None, None, None), retry_errors: bool = False) -> Answer:
    """Return the store's answer to one request, calling the model only if no one has answered it.

    The answer is written before this returns, so an interrupted caller (an optimizer) never pays for it twice.

    >>> out = answer({'model': 'local', 'params': {'max_tokens': 4}, 'prompt': 'Paris is in', 'constraint': None})
    """
    batch = answer_many([(request, origin)], retry_errors=retry_errors)
    return next(iter(batch.answers.values()))
