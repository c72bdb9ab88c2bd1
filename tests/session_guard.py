"""A pytest plugin: a test session leaves no process behind.

Every process the session starts (servers, JupyterLab and its kernels, notebooks' kernels, CLI commands, their
PostgreSQL servers) inherits a mark in its environment, `PW_TEST_SESSION=<id>`. When the session ends, whatever
still runs with the session's mark is stopped, and the session fails naming it: a server a test forgot to stop is
a bug of that test, not something to find running hours later. With pytest-xdist the controller owns the mark and
does the check, after its workers are gone; a pytest session started by a test gets a mark of its own.
"""

from __future__ import annotations

import os
import uuid

import pytest

MARK = 'PW_TEST_SESSION'

#: Seconds the processes left at the end get to exit on their own (a server answering its last request).
GRACE_S = float(os.environ.get('PW_TEST_SESSION_GRACE_S', 20))


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, 'workerinput'):  # an xdist worker keeps its controller's mark
        os.environ[MARK] = uuid.uuid4().hex


#: Helpers multiprocessing starts for this very process; they exit with it (a pipe to it closes).
_OWN_HELPERS = ('multiprocessing.resource_tracker', 'multiprocessing.forkserver')


def _marked(mark: str) -> list[object]:
    import psutil

    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(MARK) != mark or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.ppid() == os.getpid() and any(h in ' '.join(process.cmdline()) for h in _OWN_HELPERS):
                continue
            found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _describe(process: object) -> str:
    import psutil

    try:
        return f'pid {process.pid}: {" ".join(process.cmdline())[:200]}'  # type: ignore[attr-defined]
    except psutil.Error:
        return f'pid {process.pid}'  # type: ignore[attr-defined]


def leftovers(mark: str, grace_s: float = GRACE_S) -> list[str]:
    """Return the processes still running with `mark` after `grace_s` seconds, having stopped them (SIGTERM, then
    SIGKILL 10 s later)."""
    import psutil

    left = _marked(mark)
    if left:
        _, left = psutil.wait_procs(left, timeout=grace_s)  # type: ignore[arg-type]
    described = [_describe(p) for p in left]
    for process in left:
        try:
            process.terminate()  # type: ignore[attr-defined]
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(left, timeout=10)  # type: ignore[arg-type]
    for process in alive:
        try:
            process.kill()  # type: ignore[attr-defined]
        except psutil.NoSuchProcess:
            pass
    return described


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session if a process it started is still running (after stopping it)."""
    if hasattr(session.config, 'workerinput') or MARK not in os.environ:
        return
    left = leftovers(os.environ[MARK])
    if left:
        reporter = session.config.pluginmanager.get_plugin('terminalreporter')
        message = 'processes started by this test session were still running at its end (now stopped):\n  '
        message += '\n  '.join(left)
        if reporter is not None:
            reporter.write_line(message, red=True)
        else:
            print(message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
