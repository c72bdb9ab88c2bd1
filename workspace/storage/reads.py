"""Reads of Pixeltable tables, kept per process and keyed by the table's identity and version.

Every write to a Pixeltable table (insert, update, a new computed column) bumps its version, so a read keyed by
(table id, version, what was asked) can never be stale: a later read at the same version is the same frame, and
any write misses. This is what makes a warm re-evaluation or comparison cost no query: the dataset's rows and a
version's evaluation rows are read once per table version.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import pixeltable as pxt

__all__ = ['TableReads', 'table_key', 'READS']

T = TypeVar('T')


def table_key(table: pxt.Table) -> tuple[str, int]:
    """Return (table id, version): what identifies the table's contents right now."""
    meta = table.get_metadata()
    return str(meta['id']), int(meta['version'])


class TableReads:
    """A bounded map from (table id, version, query) to what the query returned, least recently used first out.

    Callers get a copy-free value: treat it as read-only (copy a DataFrame before changing it).
    """

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._values: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, table: pxt.Table, query: Hashable, load: Callable[[], T]) -> T:
        """Return `load()`'s result for `query` on `table` at its current version, reading at most once."""
        key = (*table_key(table), query)
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
