"""Serving: resolve a version (a label, or a unit's A/B arm), render it, check the rules, call the model, log it.

The same resolution, rendering and rules as in a notebook, fast enough for every request of an application:

- resolutions come from a `Catalog`, a snapshot of labels, active rules, running experiments and API keys that is
  reloaded every `ttl` seconds (a change made in this process is seen at once); versions are immutable, so they are
  cached for good. A label moved in a notebook reaches a server within `ttl` seconds (2 by default).
- each render or completion is an *execution*: one row in `prompt_workspace/executions`, written by an
  `ExecutionLog` that buffers rows and writes them every `flush_seconds`, when `flush_rows` are waiting, and at
  exit, so a request never waits for the store.

Reads of the catalog and changes hold `DB_LOCK`, so they reach Pixeltable one at a time. A model call does not:
it can take a minute, and holding the lock that long would stall every other request; the request store's own
reads and writes around it run on the request's thread (Pixeltable gives each thread its own connection and
transaction).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import multiprocessing
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import jinja2

from udfs import parse
from udfs.render import transcript
from workspace import config
from workspace.config import current_user, utc_now
from workspace.core import rules
from workspace.core.rules import Rule, Violation
from workspace.core.versions import Version, build_request, get_version
from workspace.errors import GuardrailViolation, LabelError, ServeError, VersionError, WorkspaceError
from workspace.serving import experiments, keys
from workspace.serving.render_workers import RenderWorkers
from workspace.serving.traffic import Assigner, log_outcome
from workspace.storage import audit_log, store, tables

__all__ = [
    'ServeSettings',
    'Catalog',
    'ExecutionLog',
    'Server',
    'Rendered',
    'Completion',
    'render',
    'complete',
    'log_execution_outcome',
    'DB_LOCK',
]

log = logging.getLogger(__name__)

#: Held by whoever calls Pixeltable from serving code: the embedded store is used from one thread at a time.
DB_LOCK = threading.RLock()

_REF = re.compile(r'^(?P<prompt>[^:@\s]+)(?::v?(?P<number>\d+)|@(?P<label>[^:@\s]+))?$')


@dataclass(frozen=True)
class ServeSettings:
    """Serving knobs, each from a `WORKSPACE_SERVE_<NAME>` environment variable or its default."""

    #: Seconds a snapshot of labels, rules, experiments and keys is used before it is reloaded.
    ttl: float = 2.0
    #: Seconds between writes of buffered execution rows.
    flush_seconds: float = 1.0
    #: Buffered execution rows that trigger a write before `flush_seconds`.
    flush_rows: int = 500
    #: The largest request body the HTTP server reads, in bytes.
    max_body: int = 64 * 1024
    #: The largest request line and headers the HTTP server reads, in bytes (refused before any key check).
    max_header: int = 32 * 1024
    #: Seconds the HTTP server works on one request before it answers 504 (the model call may still finish).
    request_timeout: float = 60.0
    #: Worker processes the HTTP server renders templates in (each render capped in time, see render_workers.py).
    render_workers: int = 2

    @classmethod
    def from_env(cls) -> ServeSettings:
        """Return the settings from the environment."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f'WORKSPACE_SERVE_{f.name.upper()}')
            if raw is None or not raw.strip():
                continue
            try:
                value = float(raw) if f.type in ('float', float) else int(float(raw))
            except ValueError:
                raise WorkspaceError(f'WORKSPACE_SERVE_{f.name.upper()}={raw!r} is not a number') from None
            if value <= 0:
                raise WorkspaceError(f'WORKSPACE_SERVE_{f.name.upper()}={raw!r} must be positive')
            values[f.name] = value
        return cls(**values)


# --- the catalog ----------------------------------------------------------------------------------------------


@dataclass
class _Snapshot:
    labels: dict[tuple[str, str], str]
    rules: list[Rule]
    experiments: dict[str, tuple[str, Assigner]]
    keys: dict[str, keys.ApiKey]
    loaded_at: float
    change: int
    audited: int  # rows in the audit log when loaded: every change a snapshot holds is audited
    latest: dict[str, str] = field(default_factory=dict)  # prompt -> its latest version id, read on demand


class Catalog:
    """What serving needs to resolve and check a request, reloaded every `ttl` seconds; versions cached for good."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._snapshot: _Snapshot | None = None
        self._versions: dict[str, Version] = {}
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load(self) -> _Snapshot:
        with DB_LOCK:
            change = audit_log.changes()
            # One count tells whether anything changed since the last load (labels, rules, experiments and keys
            # change only with an audit row), so an idle reload costs one small query instead of four.
            audited = tables.audit().count()
            previous = self._snapshot
            if previous is not None and previous.audited == audited:
                return dataclasses.replace(previous, loaded_at=time.monotonic(), change=change)
            t = tables.labels()
            labels = {
                (r['prompt'], r['label']): r['version_id'] for r in t.select(t.prompt, t.label, t.version_id).collect()
            }
            active = rules.active_rules()
            assigners: dict[str, tuple[str, Assigner]] = {}
            for prompt, found in experiments.running().items():
                name, traffic = found[0]['experiment'], found[0]['traffic']
                try:
                    assigners[prompt] = (name, Assigner(prompt, traffic, experiment=name))
                except WorkspaceError as e:
                    log.warning('experiment %s of %s is not served: %s', name, prompt, e)
            known = keys.load_keys()
        return _Snapshot(labels, active, assigners, known, time.monotonic(), change, audited)

    def refresh(self) -> _Snapshot:
        """Reload the snapshot now."""
        with self._load_lock:
            self._snapshot = self._load()
            return self._snapshot

    def snapshot(self) -> _Snapshot:
        """Return the current snapshot, reloading it if it is older than `ttl` (without a refresher thread) or a
        change was made in this process since it was loaded."""
        snap = self._snapshot
        if snap is None or snap.change != audit_log.changes():
            return self.refresh()
        if self._thread is None and time.monotonic() - snap.loaded_at > self.ttl:
            return self.refresh()
        return snap

    def current(self) -> _Snapshot:
        """Return the snapshot as it is, loading it only if there is none yet: never waits for a reload (what the
        HTTP server's key check reads on its event loop; a background thread keeps it fresh)."""
        return self._snapshot if self._snapshot is not None else self.refresh()

    def stale_here(self) -> bool:
        """Return whether this process changed something (a key, a label, a rule) since the snapshot was loaded."""
        return self._snapshot is None or self._snapshot.change != audit_log.changes()

    def start(self) -> None:
        """Reload in a background thread every `ttl` seconds, so no request waits for a reload."""
        if self._thread is not None:
            return
        self.refresh()

        def loop() -> None:
            while not self._stop.wait(self.ttl):
                try:
                    self.refresh()
                except Exception:  # the previous snapshot keeps serving; the next reload tries again
                    log.exception('reloading the serving catalog failed')

        self._thread = threading.Thread(target=loop, name='catalog-refresh', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def version(self, version_id: str) -> Version:
        """Return a version by id (cached: versions never change)."""
        found = self._versions.get(version_id)
        if found is None:
            with DB_LOCK:
                found = get_version(version_id)
            self._versions[version_id] = found
        return found

    def resolve(self, ref: str, unit_id: str | int | None = None) -> tuple[Version, str | None, str | None]:
        """Return (version, experiment, arm) for a reference: `prompt@label`, `prompt:v3` or `prompt` (its
        latest version). With a `unit_id`, a label or prompt reference serves the unit's arm of a running
        experiment of that prompt."""
        match = _REF.match(ref.strip()) if isinstance(ref, str) else None
        if not match:
            raise VersionError(f"{ref!r} is not a version reference; use 'prompt@label', 'prompt:v3' or a prompt name")
        prompt, number, label = match['prompt'], match['number'], match['label']
        if number is not None:
            return self.version(f'{prompt}:v{int(number)}'), None, None
        snap = self.snapshot()
        if unit_id is not None and prompt in snap.experiments:
            name, assigner = snap.experiments[prompt]
            arm = assigner.arm(unit_id)
            return assigner.versions[arm], name, arm
        if label is not None:
            version_id = snap.labels.get((prompt, label))
            if version_id is None:
                have = sorted(lb for p, lb in snap.labels if p == prompt)
                raise LabelError(
                    f'{prompt}@{label} does not exist; labels of {prompt!r}: {", ".join(have) or "none yet"}'
                )
            return self.version(version_id), None, None
        if prompt not in snap.latest:
            with DB_LOCK:
                snap.latest[prompt] = get_version(prompt).id
        return self.version(snap.latest[prompt]), None, None

    def rules_for(self, prompt: str) -> list[Rule]:
        """Return the active rules that check versions of `prompt`."""
        return [r for r in self.snapshot().rules if r.applies_to(prompt)]


# --- the execution log ----------------------------------------------------------------------------------------


class ExecutionLog:
    """A buffer of execution rows, written to the executions table in the background.

    With `process=False` a thread of this process writes them; with `process=True` (the HTTP server) a writer
    process does, so the server's own interpreter never spends its time (and the GIL) on inserts.
    """

    def __init__(self, flush_seconds: float, flush_rows: int, *, process: bool = False) -> None:
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self._rows: list[dict[str, Any]] = []
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # a flush waits for one in flight, so rows it took are written on return
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._queue: Any = None
        self._process: Any = None
        if process:
            context = multiprocessing.get_context('spawn')  # no fork of a process with threads and connections
            self._queue = context.Queue()
            self._process = context.Process(
                target=_write_executions,
                args=(self._queue, flush_seconds, flush_rows, os.getpid()),
                name='execution-writer',
            )
            self._process.start()
        atexit.register(self.close)

    def add(self, row: dict[str, Any]) -> None:
        """Buffer one execution row."""
        with self._lock:
            self._recent[row['execution_id']] = row
            if len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
            if self._queue is not None:
                self._queue.put(row)
                return
            self._rows.append(row)
            full = len(self._rows) >= self.flush_rows
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name='execution-log', daemon=True)
                self._thread.start()
        if full:
            self._wake.set()

    def pending(self) -> int:
        """Return how many rows wait to be written (approximate with a writer process)."""
        queued = self._queue
        return queued.qsize() if queued is not None else len(self._rows)

    def find(self, execution_id: str) -> dict[str, Any] | None:
        """Return a recent row by id, written or not (None if it is older than the last 10,000)."""
        with self._lock:
            return self._recent.get(execution_id)

    def flush(self) -> int:
        """Write the rows buffered in this process now; return how many were written. Every row buffered before
        the call is written when it returns (a write the background thread started is waited for)."""
        with self._flushing:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                with DB_LOCK:
                    tables.executions().insert(rows)
            except Exception:
                log.exception('writing %d execution rows failed; they are kept for the next write', len(rows))
                with self._lock:
                    self._rows = rows + self._rows
                return 0
            return len(rows)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Write what is buffered and stop the writer."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._process is not None:
            self._queue.put(None)
            self._process.join(timeout=60)
            with self._lock:  # released now, so its semaphores are freed before exit instead of reported leaked
                self._queue.close()
                self._queue.join_thread()
                self._queue = None
        self.flush()


#: Rows an ExecutionLog keeps in memory after writing them, so an outcome logged right away finds its execution.
_RECENT = 10_000


def _write_executions(rows_in: Any, flush_seconds: float, flush_rows: int, parent: int) -> None:
    """Run in the writer process: insert rows from the queue every `flush_seconds` or `flush_rows`, until the
    server sends None or exits."""
    import queue

    config.connect()
    table = tables.executions()
    rows: list[dict[str, Any]] = []
    written = time.monotonic()
    done = False
    while not done:
        try:
            item = rows_in.get(timeout=max(0.05, flush_seconds - (time.monotonic() - written)))
            if item is None:
                done = True
            else:
                rows.append(item)
        except queue.Empty:
            done = os.getppid() != parent  # the server died without saying so: write what came, then stop
        if rows and (done or len(rows) >= flush_rows or time.monotonic() - written >= flush_seconds):
            try:
                table.insert(rows)
                rows = []
            except Exception:
                log.exception('writing %d execution rows failed; trying again', len(rows))
            written = time.monotonic()


# --- serving --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt: the text to send, the version it came from, and the warnings of rules that held back."""

    execution_id: str
    version_id: str
    text: str
    warnings: list[Violation]
    unit_id: str | None = None
    experiment: str | None = None
    arm: str | None = None
    #: A chat version's rendered messages (what to send a chat API); None for a completion version.
    messages: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class Completion(Rendered):
    """A completed request: the rendered prompt, the model's output and its parsed prediction."""

    output: str = ''
    prediction: str | None = None
    request_hash: str = ''
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reused: bool = False


@dataclass
class _Call:
    """One render or completion on its way: what was asked, what it resolved to, and what the rules found."""

    kind: str
    ref: str
    started: float
    version: Version
    unit_id: str | None
    experiment: str | None
    arm: str | None
    caller: str | None
    fields: dict[str, Any]
    text: str = ''
    violations: list[Violation] = field(default_factory=list)
    messages: list[dict[str, str]] | None = None


def _fields(fields: Any) -> dict[str, Any]:
    if not isinstance(fields, Mapping):
        raise ServeError(f'fields must be a mapping of input names to values, e.g. {{"text": "..."}}; got {fields!r}')
    return dict(fields)


class Server:
    """Serve versions to an application: resolve, render, check rules, call the model, log executions.

    With `render_workers` (the HTTP server), templates are rendered in worker processes, each render capped in
    time, so that a slow template holds neither this process nor other requests.
    """

    def __init__(
        self,
        settings: ServeSettings | None = None,
        *,
        background: bool = False,
        writer_process: bool = False,
        render_workers: bool = False,
    ) -> None:
        self.settings = settings or ServeSettings.from_env()
        self.catalog = Catalog(self.settings.ttl)
        self.executions = ExecutionLog(self.settings.flush_seconds, self.settings.flush_rows, process=writer_process)
        self.workers = RenderWorkers(self.settings.render_workers) if render_workers else None
        if background:
            self.catalog.start()

    def close(self) -> None:
        """Stop the background threads and worker processes, and write the buffered executions."""
        self.catalog.stop()
        if self.workers is not None:
            self.workers.close()
        self.executions.close()

    def _text(self, version: Version, values: Mapping[str, Any]) -> str:
        if self.workers is None or version.demo_policy is not None:
            return version.render(values)
        return self.workers.render(version, values)

    def _log(
        self,
        call: _Call,
        outcome: str,
        error: str | None = None,
        answer: Mapping[str, Any] | None = None,
    ) -> str:
        execution_id = uuid.uuid4().hex
        version = call.version
        self.executions.add(
            {
                'execution_id': execution_id,
                'at': utc_now(),
                'kind': call.kind,
                'prompt': version.prompt,
                'version_id': version.id,
                'ref': call.ref,
                'unit_id': call.unit_id,
                'experiment': call.experiment,
                'arm': call.arm,
                'outcome': outcome,
                'violations': list(call.violations),
                'latency_s': time.perf_counter() - call.started,
                'request_hash': answer.get('hash') if answer else None,
                'prompt_tokens': answer.get('prompt_tokens') if answer else None,
                'completion_tokens': answer.get('completion_tokens') if answer else None,
                'reused': answer.get('reused') if answer else None,
                'error': error,
                'caller': call.caller or current_user(),
            }
        )
        return execution_id

    def _render(self, kind: str, ref: str, fields: Any, unit_id: Any, caller: str | None) -> _Call:
        """Resolve, check input rules, render, check prompt rules; log the execution if a rule blocks or it fails."""
        started = time.perf_counter()
        values = _fields(fields)
        version, experiment, arm = self.catalog.resolve(ref, unit_id)
        call = _Call(kind, ref, started, version, _unit(unit_id), experiment, arm, caller, values)
        checks = self.catalog.rules_for(version.prompt)
        call.violations = rules.check(checks, 'input', values)
        try:
            rules.raise_if_blocked(call.violations)
            try:
                if version.is_chat:  # the messages to send, and as one text for the prompt rules
                    # On this worker thread, under the sandbox's own time limit: the render workers take one template.
                    call.messages = version.render_messages(values)
                    call.text = transcript(call.messages)
                else:
                    call.text = self._text(version, values)
            except jinja2.UndefinedError as e:
                needed = ', '.join(sorted(version.variables()))
                raise ServeError(f'{version.id} cannot render: {e.message}; it reads the fields {needed}') from None
            call.violations += rules.check(checks, 'prompt', call.text)
            rules.raise_if_blocked(call.violations)
        except GuardrailViolation as e:
            self._log(call, 'blocked', str(e))
            raise
        except WorkspaceError as e:
            self._log(call, 'error', str(e))
            raise
        return call

    def render(
        self, ref: str, fields: Mapping[str, Any], *, unit_id: str | int | None = None, caller: str | None = None
    ) -> Rendered:
        """Resolve `ref` (or the unit's arm), render it with `fields`, check input and prompt rules, log it."""
        call = self._render('render', ref, fields, unit_id, caller)
        execution_id = self._log(call, 'ok')
        return Rendered(
            execution_id,
            call.version.id,
            call.text,
            call.violations,
            call.unit_id,
            call.experiment,
            call.arm,
            messages=call.messages,
        )

    def complete(
        self, ref: str, fields: Mapping[str, Any], *, unit_id: str | int | None = None, caller: str | None = None
    ) -> Completion:
        """Render as `render` does, call the model through the request store, check output rules, log it."""
        call = self._render('complete', ref, fields, unit_id, caller)
        version = call.version
        request = build_request(version, call.fields, prompt=call.text)  # rendered once, above
        answer = store.answer(request, origin=(version.id, None, None))  # not under DB_LOCK: see the module doc
        if answer['error'] is not None:
            message = f'the model failed on {version.id}: {answer["error"]}'
            self._log(call, 'error', message, answer)
            raise ServeError(message)
        output = answer['text'] or ''
        try:
            # A judge rule asks the request store: a model call, so not under DB_LOCK either.
            call.violations += rules.check(self.catalog.rules_for(version.prompt), 'output', output, fields=call.fields)
            rules.raise_if_blocked(call.violations)
        except GuardrailViolation as e:
            self._log(call, 'blocked', str(e), answer)
            raise
        execution_id = self._log(call, 'ok', None, answer)
        return Completion(
            execution_id,
            version.id,
            call.text,
            call.violations,
            call.unit_id,
            call.experiment,
            call.arm,
            messages=call.messages,
            output=output,
            prediction=parse.parse(output, version.output),
            request_hash=answer['hash'],
            prompt_tokens=answer['prompt_tokens'],
            completion_tokens=answer['completion_tokens'],
            reused=bool(answer['reused']),
        )

    def log_outcome(self, execution_id: str, outcome: float) -> str:
        """Store the outcome of a served execution for its unit's A/B experiment; return the event id.

        The execution's id is the outcome's event id, so logging the same outcome twice stores it once.
        """
        row = self.executions.find(execution_id)
        if row is None:
            with DB_LOCK:
                t = tables.executions()
                found = t.where(t.execution_id == execution_id).collect()
            row = found[0] if len(found) else None
        if row is None:
            raise ServeError(f'no execution {execution_id!r}; pass the execution_id a render or complete returned')
        if row['unit_id'] is None or row['version_id'] is None:
            raise ServeError(f'execution {execution_id!r} was served without a unit_id; outcomes are logged per unit')
        with DB_LOCK:
            traffic = experiments.traffic_of(row['prompt'], row['experiment']) if row['experiment'] else None
            return log_outcome(
                row['prompt'],
                row['unit_id'],
                outcome,
                traffic=traffic,
                version=row['version_id'],
                experiment=row['experiment'] or 'default',
                event_id=execution_id,
            )


def _unit(unit_id: Any) -> str | None:
    return None if unit_id is None else str(unit_id)


_default: Server | None = None
_default_lock = threading.Lock()


def _server() -> Server:
    """Return this process's serving state for `render` and `complete`, made on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Server()
        return _default


def render(ref: str, fields: Mapping[str, Any], *, unit_id: str | int | None = None) -> Rendered:
    """Render the version `ref` names for an application, checking input and prompt rules, and log the execution.

    `ref` is `prompt@label`, `prompt:v3` or a prompt name (its latest version); with a `unit_id`, a label or
    prompt reference serves the unit's arm of the prompt's running experiment. A blocking rule raises
    GuardrailViolation naming the rule and the span; warnings come back in `.warnings`. A chat version's rendered
    messages are in `.messages` (`.text` holds them as one text, which the prompt rules check).

    >>> served = render('ticket_router@production', {'text': 'My parcel is late'}, unit_id='user-42')
    >>> served.text, served.version_id, served.warnings
    """
    return _server().render(ref, fields, unit_id=unit_id)


def complete(ref: str, fields: Mapping[str, Any], *, unit_id: str | int | None = None) -> Completion:
    """Render as `render` does, call the model through the request store, check output rules, log the execution.

    >>> served = complete('ticket_router@production', {'text': 'My parcel is late'})
    >>> served.prediction
    """
    return _server().complete(ref, fields, unit_id=unit_id)


def log_execution_outcome(execution_id: str, outcome: float) -> str:
    """Log the outcome (0/1 or a number) of a served execution for its unit's A/B experiment; return the event id.

    >>> log_execution_outcome(served.execution_id, 1)
    """
    return _server().log_outcome(execution_id, outcome)
