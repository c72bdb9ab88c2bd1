"""Where the workspace keeps its data, and the one place Pixeltable is initialised."""

from __future__ import annotations

import datetime
import getpass
import logging
import os
import threading
from pathlib import Path

__all__ = ['project_root', 'pixeltable_home', 'connect', 'utc_now', 'current_user', 'ROOT_DIR']

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
