"""Reads of Pixeltable tables, kept per process and keyed by the table's identity and version.

Every write to a Pixeltable table (insert, update, a new computed column) bumps its version, so a read keyed by
(table id, version, what was asked) can never be stale: a later read at the same version is the same frame, and
any write misses. This is what makes a warm re-evaluation or comparison cost one small query per table: the
table's catalog record, to learn its version; the dataset's rows, a version's evaluation rows and a table's
metadata are read once per table version.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pixeltable as pxt

__all__ = ['TableReads', 'TableState', 'table_state', 'table_key', 'metadata', 'scope', 'scoped', 'READS']

T = TypeVar('T')
P = ParamSpec('P')


@dataclass(frozen=True)
class TableState:
    """What a table's catalog record says now: its id, version, name and directory."""

    id: str
    version: int
    name: str
    dir_id: str


_scope: contextvars.ContextVar[dict[Any, tuple[int, TableState]] | None] = contextvars.ContextVar(
    'workspace_reads_scope', default=None
)


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """Read each table's catalog record once in the block: later reads reuse it while this process has not written
    the table since (Pixeltable's in-process version of the table tells). A write by another process during the
    block is seen by the next call. Nested blocks share the outermost.

    >>> with scope():
    ...     runs = [evaluate(v, dataset) for v in versions]
    """
    if _scope.get() is not None:
        yield
        return
    token = _scope.set({})
    try:
        yield
    finally:
        _scope.reset(token)


def scoped(fn: Callable[P, T]) -> Callable[P, T]:
    """Run every call of `fn` in a `scope()`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with scope():
            return fn(*args, **kwargs)

    return wrapper


def table_state(table: pxt.Table) -> TableState | None:
    """Return the table's state from its catalog record (one query), or None if it was dropped.

    Hand-written on Pixeltable's catalog because its public `get_metadata()` rebuilds the table's path directory by
    directory (seven queries) to report a version this reads in one; it falls back to it on another release.
    """
    memo = _scope.get()
    if memo is not None:
        seen = memo.get(table._id)
        if seen is not None and seen[0] == table._get_version():
            return seen[1]
    state = _read_state(table)
    pinned = _pinned_version(table)
    if state is not None and pinned is not None:  # a handle on a past version (`path:version`): its contents
        state = dataclasses.replace(state, version=pinned)
    if memo is not None and state is not None and state.version >= 0:
        memo[table._id] = (table._get_version(), state)
    return state


def _pinned_version(table: pxt.Table) -> int | None:
    """Return the version a handle opened as `path:version` is pinned to, or None for a live table."""
    try:
        version = table._tbl_version_path.tbl_version.effective_version  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - another Pixeltable release: treated as live
        return None
    return None if version is None else int(version)


def _read_state(table: pxt.Table) -> TableState | None:
    try:
        from pixeltable.catalog import retrying_read
        from pixeltable.runtime import get_runtime
    except ImportError:  # pragma: no cover - another Pixeltable release
        meta = table.get_metadata()
        return TableState(str(meta['id']), int(meta['version']), str(meta['name']), '')
    try:
        record = retrying_read(lambda: get_runtime().catalog.read_tbl_record(table._id))
    except pxt.Error:
        return None
    md = record.md
    pending = md.get('pending_stmt')
    if pending is not None:  # being dropped, or its schema changed by another process right now
        from pixeltable.metadata.schema import TableStatement

        return None if int(pending) == TableStatement.DROP_TABLE.value else TableState(str(table._id), -1, '', '')
    return TableState(str(table._id), int(md['current_version']), str(md['name']), str(record.dir_id))


def table_key(table: pxt.Table) -> tuple[str, int]:
    """Return (table id, version): what identifies the table's contents right now."""
    state = table_state(table)
    if state is None:
        raise pxt.Error('the table was dropped while it was read; run the call again')  # type: ignore[arg-type]
    return state.id, state.version


class TableReads:
    """A bounded map from (table id, version, query) to what the query returned, least recently used first out.

    Callers get a copy-free value: treat it as read-only (copy a DataFrame before changing it).
    """

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._values: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, table: pxt.Table, query: Hashable, load: Callable[[], T]) -> T:
        """Return `load()`'s result for `query` on `table` at its current version, reading at most once."""
        table_id, version = table_key(table)
        key = (table_id, version, query)
        with self._lock:
            if version >= 0 and key in self._values:
                self._values.move_to_end(key)
                self.hits += 1
                return self._values[key]  # type: ignore[no-any-return]
        value = load()
        if version < 0:  # an operation is under way on the table: nothing to key the read by
            return value
        with self._lock:
            self.misses += 1
            self._values[key] = value
            while len(self._values) > self.max_entries:
                self._values.popitem(last=False)
        return value

    def get_at(self, table_id: str, version: int, query: Hashable, load: Callable[[], T]) -> T:
        """Return `load()`'s result for `query` on a table at a version pinned by the caller (a run's rows): the
        key is known without asking the table, so a repeated read costs no query at all."""
        key = (str(table_id), int(version), query)
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                self.hits += 1
                return self._values[key]  # type: ignore[no-any-return]
        value = load()
        with self._lock:
            self.misses += 1
            self._values[key] = value
            while len(self._values) > self.max_entries:
                self._values.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every read."""
        with self._lock:
            self._values.clear()


#: The process's reads. Bounded, and never stale (see the module docstring).
READS = TableReads()


def metadata(table: pxt.Table) -> Any:
    """Return `table.get_metadata()`, read once per table version (its columns, custom metadata, ...)."""
    return READS.get(table, 'metadata', table.get_metadata)
