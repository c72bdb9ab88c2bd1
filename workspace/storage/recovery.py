"""Recovery after a crash: who owns a piece of unfinished work (a staging table, a running notebook), whether that
owner is gone, and a pause point that lets the tests kill a process at a dangerous moment.

An owner is a process on a host, started at a time. On the same host it is gone when its process has ended or the
process id now belongs to a process started later (the id was reused). A process on another host cannot be asked,
so its unfinished work counts as abandoned once it is older than a staleness limit the caller states.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from dataclasses import dataclass

import psutil

__all__ = ['Owner', 'pause_point']


def _host_tag(host: str) -> str:
    return hashlib.sha256(host.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Owner:
    """The process that does a piece of work: a tag of its host name, its process id and when it started."""

    host_tag: str
    pid: int
    started: float  # Unix time

    @classmethod
    def current(cls) -> Owner:
        """Return this process, now."""
        return cls(_host_tag(socket.gethostname()), os.getpid(), time.time())

    @classmethod
    def of(cls, host: str | None, pid: int | None, started: float) -> Owner:
        """Return the owner recorded as a host name, a process id (0 if unknown) and a start time."""
        return cls(_host_tag(host or ''), pid or 0, started)

    @property
    def token(self) -> str:
        """Return the owner as a name part: `<host tag>_<pid>_<start second>`."""
        return f'{self.host_tag}_{self.pid}_{int(self.started)}'

    @classmethod
    def from_token(cls, token: str) -> Owner | None:
        """Return the owner a `token` names, or None if it is not one."""
        parts = token.split('_')
        if len(parts) != 3 or not all(p.isalnum() for p in parts) or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return cls(parts[0], int(parts[1]), float(parts[2]))

    def is_gone(self, *, stale_after_s: float) -> bool:
        """Return whether the owner can no longer finish its work: on this host, its process has ended; on another
        host, the work started more than `stale_after_s` seconds ago."""
        if self.host_tag != _host_tag(socket.gethostname()) or self.pid <= 0:
            return time.time() - self.started > stale_after_s
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
            # A process created after the work started got the id of the one that ended (1 s for clock rounding).
            return process.create_time() > self.started + 1
        except psutil.NoSuchProcess:
            return True
        except psutil.AccessDenied:
            return False


def pause_point(name: str) -> None:
    """Block forever at this point when `WORKSPACE_TEST_PAUSE` names it, after saying so on stderr.

    Only for tests: the reliability suite sets the variable in a child process and kills it with SIGKILL at the
    point where a crash does the most damage (e.g. between the two moves of a replace-import). Unset, it costs one
    dictionary lookup.
    """
    if os.environ.get('WORKSPACE_TEST_PAUSE') != name:
        return
    print(f'WORKSPACE_TEST_PAUSE reached {name} in process {os.getpid()}', file=sys.stderr, flush=True)
    while True:
        time.sleep(1)
