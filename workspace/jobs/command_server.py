"""A resident process that keeps the workspace loaded, so that short commands start in a fraction of a second.

Importing Pixeltable takes 2 to 3 s and reading its catalog about 1 s more, so a command that has nothing to do
(an evaluation whose every request was answered before) took 5 to 6 s, nearly all of it start-up. As Bazel,
Gradle and mypy's daemon do, a command typed at a terminal leaves a server behind that keeps everything loaded for
the next commands; it exits after some idle minutes (and stops the embedded PostgreSQL server if nothing else
uses it). Each command still runs with its own arguments, working directory and environment (API keys included:
they travel over a socket only this user can open and are never written anywhere), and prints to its own terminal.

- A server serves one workspace: one Pixeltable home, one Python, one set of `WORKSPACE_*`/`PIXELTABLE_*`
  settings; another combination gets a server of its own.
- It runs one command at a time; a command that finds it busy runs in its own process as before. A server whose
  code or installed packages changed since it started refuses commands and exits; the command runs in its own
  process.
- Ctrl-C at the terminal interrupts the command in the server as it would in its own process.
- Only commands that read and write the workspace are sent to it (`FORWARDED`); `lab`, `run`, `demo`, `serve` and
  `doctor` start processes of their own and always run in the command's process.

`WORKSPACE_CLI_SERVER`: `auto` (default: use a running server; a command typed at a terminal starts one when
none runs), `on` (also start one when not at a terminal: scripts, cron), `off` (never use one).
`WORKSPACE_CLI_SERVER_IDLE_MINUTES`: minutes without a command after which the server exits (default 15).
`prompt-workspace server start|stop|status` controls it by hand. Its socket and log are in a private folder of the
temporary directory (`prompt-workspace-<uid>`); the log is removed when the server exits cleanly.

This module is imported by every command before anything heavy: the client side uses the standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = [
    'FORWARDED',
    'MODE_ENV',
    'IDLE_ENV',
    'forward',
    'start',
    'stop',
    'status',
    'maybe_start_after',
    'serve',
]

MODE_ENV = 'WORKSPACE_CLI_SERVER'
IDLE_ENV = 'WORKSPACE_CLI_SERVER_IDLE_MINUTES'
DEFAULT_IDLE_MINUTES = 15.0

#: Commands sent to a running server: they read and write the workspace and print. The others start processes
#: of their own (JupyterLab, kernels, an HTTP server) or check the installation, and run where they were typed.
FORWARDED = frozenset(
    {
        'init',
        'import',
        'versions',
        'eval',
        'compare',
        'optimize',
        'label',
        'runs',
        'keys',
        'audit',
        'rules',
        'export',
        'import-prompt',
        'changelog',
        'models',
    }
)

#: Seconds a command waits for a running server to take it or say it is busy.
ANSWER_TIMEOUT_S = 30.0
#: Seconds a new server gets to load the workspace and listen before `start` gives up waiting.
START_TIMEOUT_S = 120.0


def mode() -> str:
    value = os.environ.get(MODE_ENV, 'auto').strip().lower() or 'auto'
    if value not in ('auto', 'on', 'off'):
        # The client cannot raise the workspace's error type without importing more; the message says the fix.
        print(f'warning: {MODE_ENV}={value!r} is not auto, on or off; using auto', file=sys.stderr)
        return 'auto'
    return value


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand of a command line (the first argument that is not an option), or None."""
    for arg in argv:
        if not arg.startswith('-'):
            return arg
    return None


def _settings_env(env: dict[str, str]) -> list[tuple[str, str]]:
    """The environment a process reads once and keeps: which workspace it serves (Pixeltable's home and
    database) and how the embedded model runs. The rest (`WORKSPACE_*` settings, API keys) is read per command,
    and each command brings its own."""
    return sorted(
        (k, v) for k, v in env.items() if k.startswith(('PIXELTABLE_', 'WORKSPACE_LOCAL_', 'OMP_', 'OPENBLAS_'))
    )


def _home() -> Path:
    from workspace.config import pixeltable_home

    return pixeltable_home().expanduser().resolve()


def _folder() -> Path:
    """The user's folder for server sockets and logs: created private, and refused if anyone else could use it."""
    folder = Path(tempfile.gettempdir()) / f'prompt-workspace-{os.getuid()}'
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f'{folder} is not private to this user; remove it and run the command again')
    return folder


def _key() -> str:
    parts = [str(_home()), sys.executable, json.dumps(_settings_env(dict(os.environ)))]
    return hashlib.sha256('\0'.join(parts).encode()).hexdigest()[:20]


def address() -> Path:
    """The socket of the server for this workspace (short: a Unix socket path may hold at most 107 bytes)."""
    return _folder() / f'{_key()}.sock'


def _log_path() -> Path:
    return _folder() / f'{_key()}.log'


def fingerprint() -> str:
    """What a server's code is: the workspace's and UDFs' source files and the installed packages. A server whose
    fingerprint differs from the command's was started from other code and must not run it."""
    import sysconfig

    package = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for folder in (package, package.parent / 'udfs'):
        for path in sorted(folder.rglob('*.py')):
            info = path.stat()
            h.update(f'{path}\0{info.st_mtime_ns}\0{info.st_size}\n'.encode())
    site = Path(sysconfig.get_paths()['purelib'])
    if site.is_dir():
        h.update(f'{site}\0{site.stat().st_mtime_ns}'.encode())
    h.update(sys.executable.encode())
    return h.hexdigest()


def _connect(path: Path) -> Connection | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:  # no server, or a socket left by one that died
        sock.close()
        return None
    return Connection(sock.detach())


def _request(kind: str) -> Any:
    """Send a control request (`status`, `stop`) to the running server; None when none runs."""
    try:
        path = address()
    except PermissionError:
        return None
    conn = _connect(path) if path.exists() else None
    if conn is None:
        return None
    with conn:
        conn.send({'kind': kind})
        try:
            return conn.recv()
        except EOFError:
            return None


def forward(argv: Sequence[str]) -> int | None:
    """Run a command in the server for this workspace and return its exit code; None if no server ran it (none
    runs, it is busy, or it runs other code): the caller then runs the command itself."""
    if mode() == 'off' or _command_of(argv) not in FORWARDED:
        return None
    try:
        path = address()
    except PermissionError as e:
        print(f'warning: {e}', file=sys.stderr)
        return None
    conn = _connect(path) if path.exists() else None
    if conn is None:
        return None
    with conn:
        try:
            conn.send(
                {
                    'kind': 'command',
                    'argv': list(argv),
                    'cwd': os.getcwd(),
                    'env': dict(os.environ),
                    'fingerprint': fingerprint(),
                    'tty': [sys.stdout.isatty(), sys.stderr.isatty()],
                }
            )
            # The server answers at once from a thread of its own; one that does not within this time is stuck
            # (or the machine is): run the command here.
            if not conn.poll(ANSWER_TIMEOUT_S):
                print(f'warning: the command server did not answer; see {_log_path()}', file=sys.stderr)
                return None
            answer = conn.recv()
        except (EOFError, OSError):  # the server went away before taking the command: nothing ran
            return None
        if answer != 'started':  # 'busy' or 'stale'
            return None
        return _relay(conn)


def _relay(conn: Connection) -> int:
    """Print what the command prints until it exits; Ctrl-C interrupts it in the server (a second one stops
    waiting). Ctrl-C is taken by a handler, not as KeyboardInterrupt, so that it never cuts a message in two."""
    presses = 0

    def on_ctrl_c(signum: int, frame: Any) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:  # a second Ctrl-C: stop waiting; the server finishes the interruption alone
            raise KeyboardInterrupt
        with contextlib.suppress(OSError):
            conn.send('interrupt')

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_ctrl_c) if main else None
    try:
        while True:
            try:
                kind, payload = conn.recv()
            except EOFError:
                print(
                    f'error: the command server stopped before the command finished; see {_log_path()} '
                    f'(set {MODE_ENV}=off to run commands in their own process)',
                    file=sys.stderr,
                )
                return 1
            if kind == 'exit':
                return int(payload)
            stream = sys.stdout if kind == 'out' else sys.stderr
            stream.write(payload)
            stream.flush()
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _spawn() -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env['PIXELTABLE_HOME'] = str(_home())
    log = open(_log_path(), 'ab')  # noqa: SIM115  (the child holds it; closed here once handed over)
    try:
        return subprocess.Popen(
            [sys.executable, '-m', 'workspace.jobs.cli', 'server', 'run'],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # not stopped by the terminal's Ctrl-C or hang-up
        )
    finally:
        log.close()


def start(wait: bool = True) -> dict[str, Any]:
    """Start a server for this workspace unless one runs; with `wait`, return once it takes commands."""
    running = _request('status')
    if running is not None:
        return dict(running)
    process = _spawn()
    if not wait:
        return {'pid': process.pid, 'state': 'starting'}
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        answer = _request('status')
        if answer is not None:
            return dict(answer)
        if process.poll() is not None:
            raise RuntimeError(f'the command server exited with code {process.returncode}; see {_log_path()}')
        time.sleep(0.1)
    raise RuntimeError(f'the command server did not start within {START_TIMEOUT_S:.0f} s; see {_log_path()}')


def stop() -> bool:
    """Stop this workspace's server (after the command it runs); False if none ran."""
    return _request('stop') is not None


def status() -> dict[str, Any] | None:
    answer = _request('status')
    return dict(answer) if answer is not None else None


def maybe_start_after(argv: Sequence[str], code: int) -> None:
    """After a command ran in its own process: start a server for the next ones, if this is a forwarded command
    that succeeded, typed at a terminal (or `WORKSPACE_CLI_SERVER=on`). Scripts, cron jobs and tests start none by
    default."""
    wanted = mode()
    if wanted == 'off' or code != 0 or _command_of(argv) not in FORWARDED:
        return
    if wanted == 'auto' and not (sys.stdin.isatty() and sys.stdout.isatty()):
        return
    try:
        start(wait=False)
    except OSError as e:
        print(f'warning: could not start the command server: {e}', file=sys.stderr)


# --- the server ------------------------------------------------------------------------------------------------


class _Stream(io.TextIOBase):
    """The command's stdout or stderr: every write goes to the client's terminal."""

    def __init__(self, conn: Connection, kind: str, tty: bool, lock: threading.Lock) -> None:
        self._conn, self._kind, self._tty, self._lock = conn, kind, tty, lock

    def write(self, text: str) -> int:
        if text:
            with self._lock, contextlib.suppress(OSError):  # a client gone: the command goes on, output is lost
                self._conn.send((self._kind, text))
        return len(text)

    def isatty(self) -> bool:
        return self._tty

    def writable(self) -> bool:
        return True


class _Server:
    def __init__(self, path: Path, idle_s: float, command: Callable[[list[str]], int]) -> None:
        self.path, self.idle_s, self.command = path, idle_s, command
        self.code = fingerprint()
        self.jobs: queue.Queue[tuple[Connection, dict[str, Any]] | None] = queue.Queue()
        self.busy: str | None = None
        self.served = 0
        self.last = time.monotonic()
        self.started = time.time()
        self.stopping = False
        self.lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {
            'pid': os.getpid(),
            'state': f'running {self.busy}' if self.busy else 'idle',
            'served': self.served,
            'idle_s': round(time.monotonic() - self.last, 1) if not self.busy else 0.0,
            'idle_limit_s': self.idle_s,
            'since': self.started,
            'socket': str(self.path),
        }

    def listen(self, sock: socket.socket) -> None:
        """Accept connections (a thread): answer control requests at once, hand commands to the main thread."""
        sock.settimeout(1.0)
        try:
            while not self.stopping:
                try:
                    client, _ = sock.accept()
                except TimeoutError:
                    client = None
                if client is not None:
                    client.settimeout(None)
                    self.take(Connection(client.detach()))
                with self.lock:  # status requests do not count as use
                    if not self.busy and time.monotonic() - self.last > self.idle_s:
                        self.stopping = True
        finally:
            # No longer listening: a command arriving now must find no server (and run in its own process), not
            # wait in the socket's queue for an accept that never comes.
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            sock.close()
            self.jobs.put(None)

    def take(self, conn: Connection) -> None:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            conn.close()
            return
        kind = request.get('kind')
        with self.lock:
            if kind == 'status':
                conn.send(self.describe())
            elif kind == 'stop':
                self.stopping = True
                conn.send(self.describe())
            elif kind == 'command' and request.get('fingerprint') != self.code:
                conn.send('stale')  # the code changed since this server started: it must not run the command
                self.stopping = True
            elif kind == 'command' and (self.busy or self.stopping):
                conn.send('busy')
            elif kind == 'command':
                self.busy = ' '.join(request['argv'][:2])
                conn.send('started')
                self.jobs.put((conn, request))
                return
        conn.close()

    def run(self, conn: Connection, request: dict[str, Any]) -> None:
        """Run one command in this (the main) thread, as its own process would, with the client's surroundings."""
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        write_lock = threading.Lock()
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(conn, done), daemon=True)
        code = 1
        try:
            os.environ.clear()
            os.environ.update(request['env'])
            os.environ['PIXELTABLE_HOME'] = saved_env['PIXELTABLE_HOME']
            os.chdir(request['cwd'])
            out = _Stream(conn, 'out', request['tty'][0], write_lock)
            err = _Stream(conn, 'err', request['tty'][1], write_lock)
            watcher.start()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # type: ignore[type-var]
                code = _exit_code(self.command, request['argv'])
        finally:
            done.set()
            _join_ignoring_interrupts(watcher)
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
            with write_lock, contextlib.suppress(OSError):
                conn.send(('exit', code))
            conn.close()
            with self.lock:
                self.busy = None
                self.served += 1
                self.last = time.monotonic()

    @staticmethod
    def _watch(conn: Connection, done: threading.Event) -> None:
        """Interrupt the command when its client asks (Ctrl-C) or goes away."""
        import _thread

        while not done.is_set():
            try:
                if conn.poll(0.2):
                    conn.recv()  # 'interrupt'
                    if not done.is_set():
                        _thread.interrupt_main()
                    return
            except (EOFError, OSError):
                if not done.is_set():
                    _thread.interrupt_main()
                return


def _join_ignoring_interrupts(thread: threading.Thread) -> None:
    """Wait for the watcher, which may have interrupted this thread just as the command ended."""
    while thread.is_alive():
        with contextlib.suppress(KeyboardInterrupt):
            thread.join()


def _exit_code(main: Callable[[list[str]], int], argv: list[str]) -> int:
    try:
        return int(main(argv))
    except SystemExit as e:  # argparse's errors and --help
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


def _preload() -> None:
    """Load what commands use, so that the first command is as fast as the next ones."""
    from workspace import config

    config.connect()
    import scipy.stats  # noqa: F401  (intervals and tests of every summary)

    import workspace.analysis.compare  # noqa: F401
    import workspace.core.evaluate  # noqa: F401


def serve(command: Callable[[list[str]], int], idle_minutes: float | None = None) -> None:
    """Run a server for this workspace until it has been idle `idle_minutes`, running each command it takes with
    `command` (the command line's `run_here`, which imports this module). `prompt-workspace server run` is this,
    in the foreground."""
    idle = float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_MINUTES) if idle_minutes is None else idle_minutes
    path, log = address(), _log_path()
    if threading.current_thread() is threading.main_thread():
        # A client's Ctrl-C reaches a command as KeyboardInterrupt (`_thread.interrupt_main`), which does nothing
        # while SIGINT is ignored; a process started in the background of a script inherits it ignored (and
        # Python then keeps it so). The server runs in a session of its own: no terminal's Ctrl-C reaches it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _preload()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Another server may have bound it while this one loaded: the first one keeps it.
    if path.exists():
        if _request('status') is not None:
            print(f'{time.strftime("%F %T")} a server already serves {path}; exiting', flush=True)
            return
        path.unlink()
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)
    server = _Server(path, idle * 60, command)
    print(f'{time.strftime("%F %T")} pid {os.getpid()} serving {path} (idle limit {idle:g} min)', flush=True)
    listener = threading.Thread(target=server.listen, args=(sock,), daemon=True)
    listener.start()
    try:
        while (job := _next_job(server)) is not None:
            with contextlib.suppress(KeyboardInterrupt):  # a late Ctrl-C of a command that has ended
                server.run(*job)
    finally:
        server.stopping = True
        listener.join(timeout=5)
        print(f'{time.strftime("%F %T")} pid {os.getpid()} stopped after {server.served} commands', flush=True)
    # A clean exit leaves no log behind (one a workspace would pile up in the temporary folder); a server that
    # failed keeps it, and a command that found it gone names it.
    with contextlib.suppress(OSError):
        log.unlink()


def _next_job(server: _Server) -> tuple[Connection, dict[str, Any]] | None:
    while True:
        try:
            return server.jobs.get()
        except KeyboardInterrupt:  # a client's Ctrl-C that arrived after its command ended
            continue
