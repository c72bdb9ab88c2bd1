"""Labels: movable names on versions (`production`, `staging`, any name), with a history of every move."""

from __future__ import annotations

import re
import uuid

import pandas as pd

from workspace.config import current_user, utc_now
from workspace.core.versions import Version, get_version, label_target
from workspace.display.frames import shown
from workspace.errors import LabelError
from workspace.storage import audit_log, tables
from workspace.storage.reads import READS

__all__ = ['set_label', 'label_history', 'rollback', 'list_labels']

_LABEL_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_.-]{0,63}$')


def _current(prompt: str, label: str) -> str | None:
    t = tables.labels()
    rows = t.where((t.prompt == prompt) & (t.label == label)).select(t.version_id).collect()
    return rows[0]['version_id'] if len(rows) else None


def _record(prompt: str, label: str, version_id: str, previous: str | None, action: str, note: str, by: str) -> None:
    moved_at = utc_now()
    tables.labels().batch_update(
        [{'prompt': prompt, 'label': label, 'version_id': version_id, 'moved_at': moved_at, 'moved_by': by}],
        if_not_exists='insert',
    )
    tables.label_history().insert(
        [
            {
                'event_id': uuid.uuid4().hex,
                'prompt': prompt,
                'label': label,
                'version_id': version_id,
                'previous_id': previous,
                'action': action,
                'moved_at': moved_at,
                'moved_by': by,
                'note': note,
            }
        ]
    )
    audit_log.record(
        'label.rolled_back' if action == 'rollback' else 'label.moved',
        f'{prompt}@{label}',
        before=previous,
        after=version_id,
        note=note,
        by=by,
    )


def set_label(version: Version | str, label: str, *, note: str = '', by: str | None = None) -> str | None:
    """Point `label` of the version's prompt at `version`; return the version it pointed at before, if any.

    >>> set_label(v3, 'production', note='beats v1 on dev')
    """
    v = get_version(version)  # type: ignore[arg-type]
    if not _LABEL_NAME.match(label):
        raise LabelError(f'label {label!r} is not valid; use letters, digits, _ . and -, starting with a letter')
    previous = _current(v.prompt, label)
    if previous == v.id:
        return previous
    _record(v.prompt, label, v.id, previous, 'set' if previous is None else 'move', note, by or current_user())
    return previous


def label_history(prompt: str, label: str | None = None) -> pd.DataFrame:
    """Return every move of the labels of `prompt` (or of one label), newest first."""
    t = tables.label_history()
    where = t.prompt == prompt
    if label is not None:
        where = where & (t.label == label)
    rows = (
        t.where(where)
        .select(t.moved_at, t.label, t.action, t.version_id, t.previous_id, t.moved_by, t.note)
        .order_by(t.moved_at, asc=False)
        .collect()
    )
    return shown(rows.to_pandas())


def rollback(prompt: str, label: str, *, note: str = '', by: str | None = None) -> str:
    """Move `prompt@label` back to the version it pointed at before it reached its current version.

    Rolling back twice walks two releases back, not back and forth. Returns the id the label now points at.
    """
    current = label_target(prompt, label)
    history = label_history(prompt, label)
    arrivals = history[(history['action'] != 'rollback') & (history['version_id'] == current)]
    previous = arrivals.iloc[0]['previous_id'] if len(arrivals) else None
    if previous is None or pd.isna(previous):
        raise LabelError(f'{prompt}@{label} has no earlier version to roll back to (history has {len(history)} moves)')
    _record(prompt, label, previous, current, 'rollback', note, by or current_user())
    return str(previous)


def list_labels(prompt: str | None = None) -> pd.DataFrame:
    """Return the current labels (of one prompt or all) and the versions they point at."""
    t = tables.labels()
    query = t.where(t.prompt == prompt) if prompt else t
    read = READS.get(
        t,
        ('list_labels', prompt),
        lambda: (
            query.select(t.prompt, t.label, t.version_id, t.moved_at, t.moved_by)
            .order_by(t.prompt, t.label)
            .collect()
            .to_pandas()
        ),
    )
    return read.copy()
