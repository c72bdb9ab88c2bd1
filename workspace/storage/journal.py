"""The request store's write-ahead journal: each answer is appended to a local file the moment it arrives, before the
store counts the request as done, so a process killed at any point loses no answered call.

A session of the store (`workspace.storage.store`) writes one journal, `<PIXELTABLE_HOME>/journal/<session>.jsonl`,
one JSON line per event: `{"sent": hash}` before a request goes to a model, `{"row": {...}}` with the request's
table row when its answer arrives. The session holds an exclusive `flock` on its file while it lives; the
operating system drops the lock when the process ends, however it ends (SIGKILL included). When its answers are in
the requests table the session deletes the file.

A journal whose lock can be taken is an orphan: its process died before writing its answers to the table. The next
store call on the same host replays it (`replay_orphans`): its answers go into the table, and the requests it had
sent but not heard back from (in flight when it died) are the only calls a rerun repeats; the store counts them.

A line is written with one `write` on a file opened for appending, and read back only if it parses, so a line cut
by a kill is skipped. The file survives the death of the process (it is in the kernel's page cache), not the loss
of the machine's power: it is not fsynced, which would cost a disk flush per answer. Requests hold no credential
(see `workspace.storage.store`); the files are readable by their owner only.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workspace import config

__all__ = ['Journal', 'Orphan', 'folder', 'replay_orphans']

log = logging.getLogger(__name__)


def folder() -> Path:
    """Return the folder of the journals of this workspace's Pixeltable home."""
    return config.pixeltable_home() / 'journal'


def _default(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return {'$datetime': value.isoformat()}
    raise TypeError(f'{type(value).__name__} is not JSON')


def _hook(value: dict[str, Any]) -> Any:
    if len(value) == 1 and '$datetime' in value:
        return datetime.datetime.fromisoformat(value['$datetime'])
    return value


class Journal:
    """The journal of one store session: opened (and locked) at the first event, deleted by `close(done=True)`."""

    def __init__(self, session: str, where: Path | None = None) -> None:
        self.path = (where or folder()) / f'{session}.jsonl'
        self._fd: int | None = None
        self._closed = False
        self._lock = threading.Lock()  # remote requests are journaled from the sending threads

    def _write(self, event: Mapping[str, Any]) -> None:
        line = (json.dumps(event, default=_default, ensure_ascii=False) + '\n').encode()
        with self._lock:
            if self._closed:  # a call left running when the session stopped (the breaker opened)
                return
            self._open()
            os.write(self._fd, line)  # type: ignore[arg-type]

    def _open(self) -> None:
        if self._fd is None:
            # Locked under another name, then renamed: a replay never sees this journal unlocked.
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = self.path.with_suffix('.new')
            self._fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(fresh, self.path)

    def sent(self, key: str) -> None:
        """Record that a request is about to be sent to a model."""
        self._write({'sent': key})

    def answered(self, row: Mapping[str, Any]) -> None:
        """Record a request's answer (its row of the requests table) as it arrives."""
        self._write({'row': row})

    def close(self, *, done: bool) -> None:
        """Close the journal; delete it if `done` (its answers are in the table), else leave it for a replay."""
        with self._lock:
            self._closed = True
            self._close(done)

    def _close(self, done: bool) -> None:
        if self._fd is None:
            return
        if done:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self._fd)  # releases the lock
        self._fd = None


@dataclass
class Orphan:
    """What a dead session's journal holds: its answers' rows, and the requests it sent without an answer."""

    session: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    in_flight: set[str] = field(default_factory=set)


def _read(fd: int) -> Iterator[dict[str, Any]]:
    with os.fdopen(os.dup(fd), 'rb') as f:
        for line in f:
            try:
                yield json.loads(line, object_hook=_hook)
            except ValueError:  # the last line, cut by the kill
                continue


@contextlib.contextmanager
def replay_orphans(where: Path | None = None) -> Iterator[list[Orphan]]:
    """Yield the journals of dead sessions on this host, locked; delete them when the block ends without error.

    The caller writes their rows to the table inside the block: if it fails, or dies, the journals stay for the
    next caller. Two callers never replay the same journal (the lock).
    """
    base = where or folder()
    held: list[tuple[int, Path]] = []
    orphans: list[Orphan] = []
    try:
        with os.scandir(base) as entries:
            paths = [Path(e.path) for e in entries if e.name.endswith('.jsonl')]
    except FileNotFoundError:
        paths = []
    try:
        for path in sorted(paths):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # replayed meanwhile by another process
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its session is alive
                os.close(fd)
                continue
            held.append((fd, path))
            orphan = Orphan(path.name.removesuffix('.jsonl'))
            answered = set()
            for event in _read(fd):
                if 'row' in event:
                    orphan.rows.append(event['row'])
                    answered.add(event['row']['request_hash'])
                elif 'sent' in event:
                    orphan.in_flight.add(event['sent'])
            orphan.in_flight -= answered
            orphans.append(orphan)
        yield orphans
        for _, path in held:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if orphans:
            log.info(
                'replayed %d journal(s) of killed sessions: %d answers', len(orphans), sum(len(o.rows) for o in orphans)
            )
    finally:
        for fd, _ in held:
            os.close(fd)
