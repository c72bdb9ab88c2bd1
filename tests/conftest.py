"""Test session setup: a fresh Pixeltable home per session, an empty workspace per test that asks for one."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports Pixeltable: it reads its home once per process.
SESSION_HOME = Path(tempfile.mkdtemp(prefix='pw-test-pxt-'))
os.environ['PIXELTABLE_HOME'] = str(SESSION_HOME)
os.environ.setdefault('LITELLM_LOCAL_MODEL_COST_MAP', 'True')
# One thread per model, BLAS and OpenMP pool: three workers on two cores, each with pools of one thread per core,
# spent much of the suite in llama.cpp's threads spinning at their barriers while another worker held the core.
# Answers do not depend on the thread count (test_backends.py). Kernels and CLI children inherit these.
for name in ('WORKSPACE_LOCAL_THREADS', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
    os.environ.setdefault(name, '1')
for name in ('GROQ_API_KEY', 'GROQ_BASE_URL', 'OPENAI_API_KEY', 'OPENAI_BASE_URL'):
    os.environ.pop(name, None)

ROOT = Path(__file__).resolve().parent.parent

# As the `prompt-workspace` process does: nbformat's jsonschema would import its `iri` format checker, a second of
# Lark grammars per test process, for schemas that use no such format.
from workspace.jobs.cli import _skip_iri_format_checker  # noqa: E402  (after PIXELTABLE_HOME is set)

_skip_iri_format_checker()
from browser_lab import browser_page, lab  # noqa: E402, F401  (one JupyterLab per test session; loads nbformat)

# Marks every process the session starts, and fails the session if one is still running at its end.
pytest_plugins = ['session_guard']
CLI = [sys.executable, '-m', 'workspace.jobs.cli']  # the prompt-workspace command, run in a new process
SHARED = ROOT.parent / 'shared' / 'datasets'
TICKETS_CSV = ROOT / 'datasets' / 'support_tickets.csv'


_fast_commits_set = False


def _commit_without_waiting_for_the_disk() -> None:
    """Once per process: the session's PostgreSQL server commits without waiting for its log to reach the disk. A
    test session never outlives an operating-system crash (the only case where that loses a commit), and tests kill
    workspace processes, never this server. The setting is the server's, so every process of the session (kernels,
    CLI children) commits faster too."""
    global _fast_commits_set
    if _fast_commits_set:
        return
    import sqlalchemy as sa
    from pixeltable.env import Env

    with Env.get().engine.connect().execution_options(isolation_level='AUTOCOMMIT') as connection:
        connection.execute(sa.text('ALTER SYSTEM SET synchronous_commit = off'))
        connection.execute(sa.text('SELECT pg_reload_conf()'))
    _fast_commits_set = True


@pytest.fixture
def ws() -> Iterator[object]:
    """The workspace package over an empty workspace (emptied before and after the test)."""
    import workspace
    from workspace import config

    config.connect()
    _commit_without_waiting_for_the_disk()
    _empty_workspace()
    yield workspace
    _empty_workspace()


@pytest.fixture
def bare_ws(ws) -> object:
    """`ws` with none of the workspace's own tables made yet: for a test that makes one as an older release did, or
    checks that one is not made."""
    import pixeltable as pxt

    from workspace import config

    pxt.drop_dir(config.ROOT_DIR, force=True, if_not_exists='ignore')
    return ws


#: The columns of each of the workspace's own tables as `workspace.storage.tables` makes them, and the version of
#: each such table after it was last emptied: {path: columns}, {path: (table id, version)}.
_MADE: dict[str, frozenset[str]] = {}
_EMPTIED: dict[str, tuple[str, int]] = {}


def _record_schemas() -> None:
    """Record the schema each of the workspace's own tables is made with (`_empty_workspace` keeps only those)."""
    from workspace.storage import tables

    make = tables._open_or_create
    if getattr(make, 'recording', False):
        return

    def recording(path, schema, primary_key, **kwargs):  # type: ignore[no-untyped-def]
        _MADE[path] = frozenset(schema)
        return make(path, schema, primary_key, **kwargs)

    recording.recording = True  # type: ignore[attr-defined]
    tables._open_or_create = recording


def _empty_workspace() -> None:
    """Leave the workspace as new: every dataset, evaluation and other directory dropped, and the workspace's own
    tables (versions, labels, the request store, the audit log...) emptied of what a test wrote.

    Dropping the whole workspace and making those tables again in the next test cost about 80 ms a table (26 of
    them), about 4 worker-minutes of the suite. A table is kept only while it has the columns the workspace makes
    it with and no other (a test that makes an old schema gets it dropped); it is emptied only if its version
    moved since it was last emptied. Pixeltable keeps a table's past versions, so emptied rows stay readable at
    those versions, as after any delete; the audit log, whose check reads that history, is dropped instead.
    """
    import pixeltable as pxt

    from workspace import config
    from workspace.storage import reads, tables

    _record_schemas()
    root = config.ROOT_DIR
    if root not in pxt.list_dirs('', recursive=False):
        _EMPTIED.clear()
        return
    for folder in pxt.list_dirs(root, recursive=False):  # datasets, evaluations, ...: made again below
        pxt.drop_dir(folder, force=True)
    with reads.scope():  # each table's catalog record read once (`open_table` reads it too), until it is emptied
        _empty_tables(root)
    tables.ensure_dirs()


def _empty_tables(root: str) -> None:
    import pixeltable as pxt

    from workspace.storage import reads, tables

    for path in pxt.list_tables(root, recursive=False):
        table = tables.open_table(path)
        state = reads.table_state(table) if table is not None else None
        made = _MADE.get(path)
        if table is None or state is None or made is None or frozenset(table.columns()) != made:
            pxt.drop_table(path, force=True, if_not_exists='ignore')
            _EMPTIED.pop(path, None)
            continue
        if _EMPTIED.get(path) == (state.id, state.version):
            continue
        if path == tables.AUDIT:  # its check reads the table's history, where a delete is tampering: made again
            pxt.drop_table(path, force=True)
            _EMPTIED.pop(path, None)
            continue
        if table.count():
            table.delete()
            state = reads.table_state(table) or state
        _EMPTIED[path] = (state.id, state.version)


@pytest.fixture
def tiny_tickets(tmp_path: Path) -> Path:
    """A 12-ticket CSV over three categories: dev 6 rows, train 6 rows."""
    return write_tiny_tickets(tmp_path)


def write_tiny_tickets(folder: Path) -> Path:
    """Write the 12 tiny tickets into `folder` as tiny_tickets.csv; return its path."""
    import csv

    rows = [
        ('a1', 'I was charged twice for the same order.', 'BILLING', 'dev'),
        ('a2', 'My card was billed but the invoice shows the wrong amount.', 'BILLING', 'dev'),
        ('a3', 'The parcel has not arrived and tracking has not moved for a week.', 'DELIVERY', 'dev'),
        ('a4', 'The courier left my package at the wrong address.', 'DELIVERY', 'dev'),
        ('a5', 'The app crashes every time I open my basket.', 'TECHNICAL', 'dev'),
        ('a6', 'The checkout page shows an error when I press pay.', 'TECHNICAL', 'dev'),
        ('b1', 'Why is there an extra fee on my statement?', 'BILLING', 'train'),
        ('b2', 'I paid with PayPal but was charged on my card too.', 'BILLING', 'train'),
        ('b3', 'My order says delivered but nothing came.', 'DELIVERY', 'train'),
        ('b4', 'The box arrived crushed and wet.', 'DELIVERY', 'train'),
        ('b5', 'The website will not load on my phone.', 'TECHNICAL', 'train'),
        ('b6', 'I never get the login code by SMS, the app just spins.', 'TECHNICAL', 'train'),
    ]
    path = folder / 'tiny_tickets.csv'
    with path.open('w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['id', 'text', 'category', 'split'])
        writer.writerows(rows)
    return path


def stop_postgres_servers(under: list[Path]) -> list[int]:
    """Stop every PostgreSQL server whose data directory is under one of the folders `under`; return their pids.

    A fast shutdown (SIGINT to the postmaster), then SIGKILL for any still running after 15 s.
    """
    import signal

    import psutil

    roots = [root.resolve() for root in under]
    servers = []
    for process in psutil.process_iter(['name', 'cmdline']):
        cmdline = process.info['cmdline'] or []
        if process.info['name'] != 'postgres' or '-D' not in cmdline[:-1]:
            continue
        data = Path(cmdline[cmdline.index('-D') + 1]).resolve()
        if any(data.is_relative_to(root) for root in roots):
            try:
                process.send_signal(signal.SIGINT)
                servers.append(process)
            except psutil.NoSuchProcess:
                pass
    _, alive = psutil.wait_procs(servers, timeout=15)
    for process in alive:
        process.kill()
    return [p.pid for p in servers]


#: The slowest tests (minutes each: JupyterLab in a browser, notebooks end to end), slowest first. Under pytest-xdist
#: they go first, each followed by a quick test, and `make test` hands out tests two at a time
#: (--maxschedchunk=2): every worker starts on a slow one, and none is left to start last.
SLOW_FIRST = (  # by the durations of a whole run (--durations=30) on a 2-core machine, 2026-12-07
    'test_browser.py::test_every_notebook_runs_as_opened[01-05]',
    'test_browser.py::test_comparison_widget_in_jupyterlab',
    'test_command_server.py::test_commands_run_in_the_server_with_their_own_surroundings',
    'test_backends.py::test_local_answers_are_bit_identical_in_any_order',
    'test_command_server.py::test_ctrl_c_interrupts_the_command_in_the_server_which_then_goes_idle_and_exits',
    'test_notebooks.py::test_judges_and_samples_notebook_under_papermill',
    'test_browser.py::test_every_notebook_runs_as_opened[08]',
    'test_optimize.py::test_optimizer_makes_a_version_with_lineage_and_trials[knn_fewshot-None-options5]',
    'test_notebooks.py::test_quickstart_then_the_scheduled_eval_under_papermill',
    'test_browser.py::test_every_notebook_runs_as_opened[06]',
    'test_optimize.py::test_killed_run_resumes_without_repeating_a_call',
    'test_cli.py::test_runs_lists_past_runs',
    'test_cli.py::test_two_runs_at_once_keep_separate_records',
    'test_optimize.py::test_optimizer_makes_a_version_with_lineage_and_trials[mipro_v2-budget3-options3]',
    'reliability/test_leftovers.py::test_a_process_waiting_on_another_s_claims_prints_no_warning',
    'test_optimize.py::test_budget_stops_the_run_with_the_best_trial_so_far',
    'test_exports.py::test_cli_exports_and_imports',
    'test_browser.py::test_every_notebook_runs_as_opened[07]',
    'reliability/test_store.py::test_a_killed_evaluation_repeats_no_stored_answer',
    'test_notebooks.py::test_chat_prompts_notebook',
    'reliability/test_shared_postgres.py::test_import_and_evaluate_against_a_shared_server',
    'test_families.py::test_a_real_log_ingested_in_two_parts_gives_the_families_of_one_ingest',
    'reliability/test_store.py::test_a_run_killed_at_any_point_repeats_only_calls_in_flight[1-store.journaled]',
    'reliability/test_store.py::test_two_processes_on_a_shared_postgres_server_pay_once',
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, put the slowest tests first, each followed by a quick one (the same order on every
    worker: xdist requires it)."""
    if not getattr(config.option, 'numprocesses', None):
        return
    rank = {suffix: i for i, suffix in enumerate(SLOW_FIRST)}
    slow = sorted(
        (item for item in items if any(item.nodeid.endswith(s) for s in rank)),
        key=lambda item: next(rank[s] for s in rank if item.nodeid.endswith(s)),
    )
    rest = [item for item in items if item not in slow]
    ordered: list[pytest.Item] = []
    for item in slow:
        ordered.append(item)
        if rest:
            ordered.append(rest.pop(0))
    items[:] = ordered + rest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop every PostgreSQL server the session started: its Pixeltable home's, and any that a test's child
    process left in one of the session's temporary folders."""
    folders = [SESSION_HOME]
    factory = getattr(session.config, '_tmp_path_factory', None)
    if factory is not None:
        folders.append(factory.getbasetemp())
    stop_postgres_servers(folders)


TINY_LABELS = {
    'a1': 'BILLING',
    'a2': 'BILLING',
    'a3': 'DELIVERY',
    'a4': 'DELIVERY',
    'a5': 'TECHNICAL',
    'a6': 'TECHNICAL',
    'b1': 'BILLING',
    'b2': 'BILLING',
    'b3': 'DELIVERY',
    'b4': 'DELIVERY',
    'b5': 'TECHNICAL',
    'b6': 'TECHNICAL',
}


@pytest.fixture
def scripted_versions(ws, tiny_tickets, monkeypatch):
    """Three versions of `router` on the tiny tickets, answered by a scripted OpenAI-compatible server:
    v1 always says BILLING (right on 2 of 6 dev rows), v2 is always right, v3 is right but fails on 'crashes'."""
    with _scripted_versions(ws, tiny_tickets, monkeypatch) as made:
        yield made


@pytest.fixture(scope='session')
def scripted_comparison(tmp_path_factory):
    """The comparison of `scripted_versions`' three versions on dev, built once per test process for the tests
    that only render it: views take data and never read tables (tests/test_layers.py), and this one is checked to
    render with its tables dropped (tests/test_views.py)."""
    import pixeltable as pxt

    import workspace
    from workspace import config
    from workspace.analysis.compare import build_comparison

    config.connect()
    _commit_without_waiting_for_the_disk()
    pxt.drop_dir(config.ROOT_DIR, force=True, if_not_exists='ignore')
    tickets = write_tiny_tickets(tmp_path_factory.mktemp('scripted_comparison'))
    with pytest.MonkeyPatch.context() as patch, _scripted_versions(workspace, tickets, patch) as made:
        tiny, v1, v2, v3, _ = made
        comparison = build_comparison(tiny, [v1, v2, v3], 'dev')
    pxt.drop_dir(config.ROOT_DIR, force=True, if_not_exists='ignore')
    return comparison


@contextlib.contextmanager
def _scripted_versions(ws, tiny_tickets, monkeypatch):
    import csv

    from openai_server import Canned, OpenAICompatibleServer, completion_body

    texts = {row['text']: row['category'] for row in csv.DictReader(tiny_tickets.open())}

    def answer(body):
        prompt = body['messages'][-1]['content']
        text = prompt.split('Ticket: ', 1)[-1].split('\n', 1)[0]
        if prompt.startswith('v1'):
            return Canned(200, completion_body('BILLING'))
        if prompt.startswith('v3') and 'crashes' in text:
            return Canned(500, {'error': {'message': 'scripted failure'}})
        return Canned(200, completion_body(texts.get(text, 'BILLING')))

    monkeypatch.setenv('WORKSPACE_MAX_ATTEMPTS', '1')
    with OpenAICompatibleServer(answer) as server:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{server.url}/v1')
        tiny = ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')
        labels = ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL'])
        v1 = ws.create_version(
            'router', template='v1\nTicket: {{ text }}\nCategory:', model='openai:fake', output=labels
        )
        v2 = ws.edit(v1, template='v2\nTicket: {{ text }}\nCategory:')
        v3 = ws.edit(v2, template='v3\nTicket: {{ text }}\nCategory:')
        yield tiny, v1, v2, v3, server


@pytest.fixture
def local():
    """The embedded model's backend; its `calls` count the requests it actually answered."""
    from workspace.storage.backends import get_backend

    return get_backend('local')


@pytest.fixture
def tiny(ws, tiny_tickets):
    """The tiny tickets imported as dataset 'tiny'."""
    return ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')


def model_calls(local, fn):
    """Run `fn` and return (its result, the embedded model calls it made)."""
    before = local.calls
    result = fn()
    return result, local.calls - before
