"""The audit log: one append-only table of every change a person or a program made to the workspace.

Each change is recorded by the module that makes it, with one call to `record`: who (the OS user, or `key:<name>`
for a change made over HTTP), when, what kind of change, its subject, and the value before and after. Nothing in
the workspace updates or deletes an audit row; `audit()` reads them.

The rows form a hash chain, so that a change made around the workspace (plain Pixeltable, SQL) shows: each row has
its place `seq` (1, 2, ...), the hash of the row before it (`prev_hash`) and its own `row_hash`, the SHA-256 of its
content and `prev_hash`. Its event id is its place, so two processes appending at once cannot take the same place
(the table's primary key refuses the second, which reads the new tail and tries again). `audit(verify=True)` walks
the chain and names the first broken link (a missing place, a changed row, a row that does not link to the one
before), and also reads Pixeltable's version history of the table, where a delete shows even at the tail, which a
chain alone cannot prove. A table made before the chain existed is chained on first use, oldest row first, and the
upgrade is itself recorded (`audit.chained`). What the chain cannot catch is a rewrite of the whole chain with new
hashes or a revert of the table's last versions: keep the head hash `verify` reports somewhere else to catch those.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import hashlib
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import pandas as pd

from workspace.config import current_user, utc_now
from workspace.display.frames import shown
from workspace.errors import WorkspaceError
from workspace.storage import tables

__all__ = [
    'KINDS',
    'Kind',
    'record',
    'audit',
    'verify_chain',
    'ChainCheck',
    'row_hash',
    'GENESIS',
    'acting_as',
    'actor',
    'changes',
    'parse_since',
]

Kind = Literal[
    'version.created',
    'label.moved',
    'label.rolled_back',
    'rule.created',
    'rule.changed',
    'experiment.started',
    'experiment.stopped',
    'experiment.decided',
    'dataset.imported',
    'dataset.appended',
    'dataset.corrected',
    'optimizer.started',
    'optimizer.finished',
    'key.created',
    'key.revoked',
    'family.merged',
    'family.split',
    'audit.chained',
]
#: Every kind of change the log records.
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]

_actor: contextvars.ContextVar[str | None] = contextvars.ContextVar('workspace_audit_actor', default=None)
# Counts changes recorded by this process, so caches of labels and rules (serve.py) see a change made in the same
# process at once instead of after their time to live.
_changes = itertools.count(1)
_last_change = 0


@contextlib.contextmanager
def acting_as(who: str) -> Iterator[None]:
    """Record changes made inside the block as made by `who` (the HTTP server passes `key:<name>`)."""
    token = _actor.set(who)
    try:
        yield
    finally:
        _actor.reset(token)


def actor() -> str:
    """Return who is making changes now: the name given to `acting_as`, else the OS user."""
    return _actor.get() or current_user()


def changes() -> int:
    """Return how many changes this process has recorded: a cache compares it to know it may be stale."""
    return _last_change


def record(
    kind: Kind, subject: str, *, before: Any = None, after: Any = None, note: str | None = None, by: str | None = None
) -> str:
    """Append one change to the audit log and return its event id.

    >>> record('label.moved', 'ticket_router@production', before='ticket_router:v1', after='ticket_router:v3')
    """
    global _last_change
    if kind not in KINDS:
        raise WorkspaceError(f'audit kind {kind!r} is not one of: {", ".join(KINDS)}')
    content = {
        'at': utc_now(),
        'actor': by or actor(),
        'kind': kind,
        'subject': subject,
        'before': _jsonable(before),
        'after': _jsonable(after),
        'note': note or None,
    }
    row = _append(_table(), content)
    _last_change = next(_changes)
    return str(row['event_id'])


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, dict)):
        # What the JSON column gives back, so the hash of a row read later is the hash written now.
        return json.loads(json.dumps(value, default=str, ensure_ascii=False))
    return str(value)


# --- the hash chain ---------------------------------------------------------------------------------------------

#: The `prev_hash` of the first row.
GENESIS = '0' * 64
_HASHED = ('seq', 'prev_hash', 'event_id', 'actor', 'kind', 'subject', 'before', 'after', 'note')


def _utc(at: datetime.datetime) -> str:
    return (at if at.tzinfo else at.replace(tzinfo=datetime.timezone.utc)).astimezone(datetime.timezone.utc).isoformat()


def row_hash(row: Mapping[str, Any]) -> str:
    """Return the SHA-256 of an audit row's content and the hash of the row before it."""
    body = {name: row.get(name) for name in _HASHED}
    body['at'] = _utc(row['at'])
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _event_id(seq: int) -> str:
    return f'{seq:012d}'


def _tail(t: Any) -> tuple[int, str]:
    """Return the place and hash of the last chained row ((0, GENESIS) for an empty chain)."""
    rows = t.where(t.seq != None).order_by(t.seq, asc=False).limit(1).select(t.seq, t.row_hash).collect()  # noqa: E711
    return (int(rows[0]['seq']), rows[0]['row_hash']) if len(rows) else (0, GENESIS)


def _append(t: Any, content: Mapping[str, Any]) -> dict[str, Any]:
    """Insert a row after the tail of the chain; if another process took that place first, try the next one."""
    for _ in range(20):
        seq, prev = _tail(t)
        row = {**content, 'seq': seq + 1, 'prev_hash': prev, 'event_id': _event_id(seq + 1)}
        row['row_hash'] = row_hash(row)
        try:
            t.insert([row])
            return row
        except Exception as e:
            if not tables.is_duplicate_key(e):
                raise
    raise WorkspaceError('could not append to the audit log: 20 other changes were recorded at the same moment')


def _table() -> Any:
    """Return the audit table, chaining the rows an earlier release (or a process without the chain) wrote."""
    t = tables.audit()
    if t.where(t.seq == None).count():  # noqa: E711 (Pixeltable's IS NULL)
        _chain_unchained(t)
    return t


def _chain_unchained(t: Any) -> None:
    rows = t.where(t.seq == None).order_by(t.at, t.event_id).collect()  # noqa: E711
    seq, prev = _tail(t)
    updates = []
    for row in rows:
        seq += 1
        linked = {**dict(row), 'seq': seq, 'prev_hash': prev}
        prev = row_hash(linked)
        updates.append({'event_id': row['event_id'], 'seq': seq, 'prev_hash': linked['prev_hash'], 'row_hash': prev})
    t.batch_update(updates)
    version = t.get_metadata()['version']
    _append(t, {
        'at': utc_now(), 'actor': actor(), 'kind': 'audit.chained', 'subject': 'audit',
        'before': None, 'after': {'rows': len(updates), 'table_version': version}, 'note': None,
    })  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ChainCheck:
    """What `audit(verify=True)` found: whether the chain holds, its first broken link, and changes to the table
    made around the workspace (deletes, or updates after the chain was made) by Pixeltable table version."""

    ok: bool
    rows: int
    head: str  # the last row's hash: kept elsewhere, it shows a later cut or rewrite of the tail
    broken: dict[str, Any] | None
    tampering: list[dict[str, Any]]

    def __str__(self) -> str:
        if self.ok:
            return f'the audit log holds: {self.rows} rows chained, head {self.head[:16]}'
        lines = [f'the audit log was changed outside the workspace ({self.rows} rows read)']
        if self.broken is not None:
            b = self.broken
            lines.append(
                f'first broken link: row {b["seq"]} ({b["kind"]} {b["subject"]!r} at {b["at"]}): {b["problem"]}'
            )
        lines += [f'table version {t["version"]} at {t["at"]}: {t["problem"]}' for t in self.tampering]
        return '\n'.join(lines)


def _first_break(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    expected, prev = 1, GENESIS
    for row in rows:
        problem = None
        if row['seq'] is None:
            problem = 'it is not chained'
        elif row['seq'] < expected:
            problem = f'a second row at place {row["seq"]}'
        elif row['seq'] > expected:
            gap = f'row {expected}' if row['seq'] == expected + 1 else f'rows {expected} to {row["seq"] - 1}'
            problem = f'{gap} before it {"is" if row["seq"] == expected + 1 else "are"} missing (deleted)'
        elif row['prev_hash'] != prev:
            problem = 'it does not link to the row before it (that row was changed or replaced)'
        elif row_hash(row) != row['row_hash']:
            problem = 'its content was changed after it was written'
        if problem is not None:
            return {k: row[k] for k in ('seq', 'event_id', 'at', 'kind', 'subject')} | {'problem': problem}
        expected, prev = row['seq'] + 1, row['row_hash']
    return None


def _tampering(t: Any, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return the versions of the table that deleted rows, or updated rows after they were chained."""
    chained = max(
        (int((r['after'] or {}).get('table_version', 0)) for r in rows if r['kind'] == 'audit.chained'), default=0
    )
    found = []
    for v in sorted(t.get_versions(), key=lambda v: v['version']):
        if v['deletes']:
            found.append({'version': v['version'], 'at': v['created_at'], 'problem': f'{v["deletes"]} row(s) deleted'})
        elif v['updates'] and v['version'] > chained:
            found.append({'version': v['version'], 'at': v['created_at'], 'problem': f'{v["updates"]} row(s) updated'})
    return found


def verify_chain() -> ChainCheck:
    """Walk the audit log's hash chain and its table history; return what holds and the first broken link.

    >>> print(verify_chain())
    the audit log holds: 24 rows chained, head 3f1c0a9e5b7d2c41
    """
    t = _table()
    rows = [dict(r) for r in t.order_by(t.seq, t.at).collect()]
    broken = _first_break(rows)
    tampering = _tampering(t, rows)
    head = rows[-1]['row_hash'] if rows else GENESIS
    return ChainCheck(broken is None and not tampering, len(rows), head or GENESIS, broken, tampering)


_AGO = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$')
_UNITS = {'s': 'seconds', 'm': 'minutes', 'h': 'hours', 'd': 'days', 'w': 'weeks'}


def _since(since: datetime.datetime | datetime.timedelta | str) -> datetime.datetime:
    if isinstance(since, datetime.timedelta):
        return utc_now() - since
    if isinstance(since, datetime.datetime):
        return since if since.tzinfo else since.replace(tzinfo=datetime.timezone.utc)
    match = _AGO.match(str(since))
    if match:
        return utc_now() - datetime.timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        return _since(datetime.datetime.fromisoformat(str(since)))
    except ValueError:
        raise WorkspaceError(
            f"since={since!r} is not a time; give a datetime, a timedelta, an ISO date or an age such as '2h' or '7d'"
        ) from None


def parse_since(when: datetime.datetime | datetime.timedelta | str) -> datetime.datetime:
    """Return the time a `since=` argument names: a datetime (UTC if naive), a timedelta or an age ('2h', '7d')
    before now, or an ISO date.

    >>> parse_since('2h') < utc_now()
    True
    """
    return _since(when)


_Since = datetime.datetime | datetime.timedelta | str | None


@overload
def audit(
    since: _Since = None, kind: str | None = None, *, subject: str | None = None, limit: int | None = None,
    verify: Literal[False] = False,
) -> pd.DataFrame: ...  # fmt: skip


@overload
def audit(
    since: _Since = None, kind: str | None = None, *, subject: str | None = None, limit: int | None = None,
    verify: Literal[True],
) -> ChainCheck: ...  # fmt: skip


def audit(
    since: _Since = None,
    kind: str | None = None,
    *,
    subject: str | None = None,
    limit: int | None = None,
    verify: bool = False,
) -> pd.DataFrame | ChainCheck:
    """Return the audit log, newest first: when, who, kind, subject, before, after, note.

    `since` is a datetime, a timedelta or an age ('30m', '2h', '7d'); `kind` is a kind (`label.moved`) or its
    first part (`label`); `subject` keeps changes to one thing (a version id, `prompt@label`, a rule name).
    `verify=True` instead checks that no row was deleted or changed outside the workspace and returns a
    `ChainCheck` (`.ok`, `.broken`: the first broken link; printing it says what was found).

    >>> audit(since='7d', kind='label')
    >>> print(audit(verify=True))
    """
    if verify:
        return verify_chain()
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise WorkspaceError(f'limit={limit!r} is not valid; give a whole number of rows, 1 or more, or None for all')
    t = _table()
    conditions: list[Any] = []
    if since is not None:
        conditions.append(t.at >= _since(since))
    if kind is not None:
        kinds = [k for k in KINDS if k == kind or k.startswith(f'{kind}.')]
        if not kinds:
            raise WorkspaceError(f'audit kind {kind!r} is not known; kinds: {", ".join(KINDS)}')
        conditions.append(t.kind.isin(kinds))
    if subject is not None:
        conditions.append(t.subject == subject)
    query: Any = t
    if conditions:
        where: Any = conditions[0]
        for c in conditions[1:]:
            where = where & c
        query = t.where(where)
    query = query.select(t.at, t.actor, t.kind, t.subject, t.before, t.after, t.note).order_by(t.at, asc=False)
    if limit is not None:
        query = query.limit(limit)
    return shown(query.collect().to_pandas())
