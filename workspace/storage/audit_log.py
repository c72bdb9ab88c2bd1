"""The audit log: one append-only table of every change a person or a program made to the workspace.

Each change is recorded by the module that makes it, with one call to `record`: who (the OS user, or `key:<name>`
for a change made over HTTP), when, what kind of change, its subject, and the value before and after. Nothing in
the workspace updates or deletes an audit row; `audit()` reads them.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import itertools
import re
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import pandas as pd

from workspace.config import current_user, utc_now
from workspace.errors import WorkspaceError
from workspace.storage import tables

__all__ = ['KINDS', 'Kind', 'record', 'audit', 'acting_as', 'actor', 'changes', 'parse_since']

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
    event_id = uuid.uuid4().hex
    row = {
        'event_id': event_id,
        'at': utc_now(),
        'actor': by or actor(),
        'kind': kind,
        'subject': subject,
        'before': _jsonable(before),
        'after': _jsonable(after),
        'note': note or None,
    }
    tables.audit().insert([row])
    _last_change = next(_changes)
    return event_id


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return str(value)


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


def audit(
    since: datetime.datetime | datetime.timedelta | str | None = None,
    kind: str | None = None,
    *,
    subject: str | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Return the audit log, newest first: when, who, kind, subject, before, after, note.

    `since` is a datetime, a timedelta or an age ('30m', '2h', '7d'); `kind` is a kind (`label.moved`) or its
    first part (`label`); `subject` keeps changes to one thing (a version id, `prompt@label`, a rule name).

    >>> audit(since='7d', kind='label')
    """
    t = tables.audit()
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
    return query.collect().to_pandas()
