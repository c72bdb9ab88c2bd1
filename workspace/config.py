"""Where the workspace keeps its data, and the one place Pixeltable is initialised."""

from __future__ import annotations

import datetime
import getpass
import logging
import os
import threading
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import WorkspaceError

__all__ = ['project_root', 'pixeltable_home', 'connect', 'utc_now', 'current_user', 'ROOT_DIR', 'Settings', 'settings']

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
    #: Seconds between writes of answered requests to the store: an interrupted run loses at most this much work.
    flush_seconds: float = 2.0
    #: Seconds to wait for a request another process is answering before giving up.
    claim_wait: float = 900.0
    #: Seconds without a heartbeat after which another host's claim on a request is taken over.
    claim_stale: float = 120.0
    #: Client-side requests per minute for Groq and for OpenAI-compatible servers (0: no limit).
    groq_rpm: float = 30.0
    openai_rpm: float = 0.0
    #: Context window, in tokens, of local GGUF models.
    local_n_ctx: int = 4096


_ENV_NAMES = {f.name: f'WORKSPACE_{f.name.upper()}' for f in fields(Settings)}


def settings() -> Settings:
    """Return the settings, each from its `WORKSPACE_<NAME>` environment variable or its default.

    >>> settings().concurrency
    8
    """
    values: dict[str, float | int] = {}
    for f in fields(Settings):
        raw = os.environ.get(_ENV_NAMES[f.name])
        if raw is None or raw.strip() == '':
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
