"""The workspace's data model: every Pixeltable table it keeps, with its schema, in one place.

```
prompt_workspace/
  datasets/<name>     one table per dataset: example_id, input fields, expected, split
  evals/<name>        one row per (version, example) evaluated on that dataset: request hash, copied response,
                      and the computed prediction and score columns
  versions            one row per prompt version (immutable)
  labels              the current version of each (prompt, label)
  label_history       every label move, with who and when
  requests            the content-addressed request store: one row per answered request, its answer or error
  claims              requests a process is answering right now (see store.py)
  runs                one row per evaluation of a version on a dataset split, with the table versions it read
  ab_outcomes         one row per outcome logged by serving code in an A/B experiment: unit, arm, version, outcome
  audit               every change a person or a program made: versions, labels, rules, datasets, keys (append-only)
  rules               guardrail rules, one row per rule version
  executions          one row per prompt served to an application (render or complete), with its violations
  api_keys            the HTTP server's API keys: name, scope, SHA-256 of the key
  experiments         the A/B split each prompt's serving follows
  raw_prompts         one row per distinct raw prompt of an ingested log: count, first/last seen, family (no vector)
  prompt_occurrences  one row per ingested log line: which raw prompt, when
  families            one row per prompt family: the state incremental assignment reads
  family_templates    one row per template version of a family, with its events
  family_history      merges and splits of families, by hand or by assignment
  prompt_index        raw prompts' vectors (embedded when searched) under an embedding index, for similarity search
  ingest_journal      what each batch of an ingest writes, written first, so a killed ingest is completed
```
"""

from __future__ import annotations

from typing import Any, cast

import pixeltable as pxt

from workspace import config
from workspace.storage import reads

__all__ = [
    'DATASETS_DIR',
    'EVALS_DIR',
    'VERSIONS',
    'LABELS',
    'LABEL_HISTORY',
    'REQUESTS',
    'RUNS',
    'dataset_path',
    'ensure_dirs',
    'insert_new',
    'upsert',
    'is_duplicate_key',
    'eval_path',
    'open_table',
    'requests',
    'CLAIMS',
    'claims',
    'versions',
    'labels',
    'label_history',
    'runs',
    'AB_OUTCOMES',
    'ab_outcomes',
]

ROOT = config.ROOT_DIR
DATASETS_DIR = f'{ROOT}/datasets'
EVALS_DIR = f'{ROOT}/evals'
STAGING_DIR = f'{ROOT}/staging'
VERSIONS = f'{ROOT}/versions'
LABELS = f'{ROOT}/labels'
LABEL_HISTORY = f'{ROOT}/label_history'
REQUESTS = f'{ROOT}/requests'
RUNS = f'{ROOT}/runs'


def dataset_path(name: str) -> str:
    return f'{DATASETS_DIR}/{name}'


def eval_path(name: str) -> str:
    return f'{EVALS_DIR}/{name}'


def ensure_dirs() -> None:
    """Create the workspace's Pixeltable directories if they are missing."""
    for path in (ROOT, DATASETS_DIR, EVALS_DIR, STAGING_DIR):
        pxt.create_dir(path, if_exists='ignore')


#: Tables opened by path in this process, with their directory: `pxt.get_table` walks the path directory by
#: directory (five queries), a check of the table's own record is one (`reads.table_state`).
_opened: dict[str, tuple[pxt.Table, str]] = {}


def open_table(path: str) -> pxt.Table | None:
    """Return the table at `path`, or None if there is none.

    A table opened before is checked against its catalog record (one query): if it was dropped, renamed or moved
    since, the path is looked up again.
    """
    config.connect()
    opened = _opened.get(path)
    if opened is not None:
        state = reads.table_state(opened[0])
        if state is not None and state.name == path.rsplit('/', 1)[-1] and state.dir_id == opened[1]:
            return opened[0]
        _opened.pop(path, None)
    table = pxt.get_table(path, if_not_exists='ignore')
    if table is not None:
        state = reads.table_state(table)
        if state is not None and state.dir_id:
            _opened[path] = (table, state.dir_id)
    return table


def is_duplicate_key(error: Exception) -> bool:
    """Return whether an insert failed because another process wrote the same primary key first."""
    return 'Duplicate primary key' in str(error) or 'duplicate key value' in str(error)


def insert_new(
    table: pxt.Table, rows: list[dict[str, Any]], key: str, *, likely_new: bool = False, **kwargs: Any
) -> set[str]:
    """Insert the rows whose `key` the table does not hold yet; return the keys this call inserted.

    Two processes may insert the same key at once (two evaluations of one version, a retried scheduled run):
    the loser re-reads which keys exist and inserts the rest, so neither fails and no row is written twice.
    `likely_new`: the caller checked the keys moments ago, so the rows are inserted before reading which keys exist
    (one query less); a duplicate key then falls back to reading them.
    """
    pending = list(rows)
    for attempt in range(5):
        # Keys already stored are left out first: a failed insert costs a rollback, and psycopg logs a warning
        # when it closes the aborted pipeline (what a process waiting on another's claims used to print).
        if attempt or not likely_new:
            present = _present(table, key, [r[key] for r in pending])
            pending = [r for r in pending if r[key] not in present]
        if not pending:
            return set()
        try:
            table.insert(pending, **kwargs)
            return {r[key] for r in pending}
        except Exception as e:
            if not is_duplicate_key(e):
                raise
    raise RuntimeError(f'could not insert {len(pending)} rows into {table._name} after 5 attempts')


def _present(table: pxt.Table, key: str, keys: list[Any]) -> set[Any]:
    found: set[Any] = set()
    for start in range(0, len(keys), 5000):
        chunk = keys[start : start + 5000]
        found |= {r[key] for r in table.where(table[key].isin(chunk)).select(table[key]).collect()}
    return found


def upsert(table: pxt.Table, rows: list[dict[str, Any]]) -> None:
    """Insert or update rows by primary key, retrying when another process inserts the same key at once."""
    for attempt in range(5):
        try:
            table.batch_update(rows, if_not_exists='insert')
            return
        except Exception as e:
            if not is_duplicate_key(e) or attempt == 4:
                raise


def _open_or_create(path: str, schema: dict[str, Any], primary_key: str | list[str], **kwargs: Any) -> pxt.Table:
    """Return the table at `path`, creating it with `schema`; a table made by an earlier release gets the nullable
    columns added since (a column is only ever added, so its rows keep their meaning)."""
    table = open_table(path)
    if table is None:
        ensure_dirs()
        table = pxt.create_table(path, schema, primary_key=primary_key, if_exists='ignore', **kwargs)
        return table
    missing = {name: kind for name, kind in schema.items() if name not in table.columns()}
    if missing:
        table.add_columns(missing, if_exists='ignore')
    return table


def versions() -> pxt.Table:
    return _open_or_create(
        VERSIONS,
        {
            'version_id': pxt.String,
            'prompt': pxt.String,
            'number': pxt.Int,
            'parent_id': pxt.String | None,
            'template': pxt.String,
            'model': pxt.String,
            'params': pxt.Json | None,
            'output': pxt.Json | None,
            'demos': pxt.Json | None,
            'instructions': pxt.String | None,
            'content_hash': pxt.String,
            'created_at': pxt.Timestamp,
            'author': pxt.String | None,
            'note': pxt.String | None,
            'meta': pxt.Json | None,
            'messages': pxt.Json | None,  # a chat version's role messages (templates); None for a completion
        },
        'version_id',
    )


def labels() -> pxt.Table:
    return _open_or_create(
        LABELS,
        {
            'prompt': pxt.String,
            'label': pxt.String,
            'version_id': pxt.String,
            'moved_at': pxt.Timestamp,
            'moved_by': pxt.String | None,
        },
        ['prompt', 'label'],
    )


def label_history() -> pxt.Table:
    return _open_or_create(
        LABEL_HISTORY,
        {
            'event_id': pxt.String,
            'prompt': pxt.String,
            'label': pxt.String,
            'version_id': pxt.String | None,
            'previous_id': pxt.String | None,
            'action': pxt.String,
            'moved_at': pxt.Timestamp,
            'moved_by': pxt.String | None,
            'note': pxt.String | None,
        },
        'event_id',
    )


_REQUESTS_SCHEMA: dict[str, Any] = {
    'request_hash': pxt.String,
    'request': pxt.Json,
    'model_id': pxt.String,
    'created_at': pxt.Timestamp,
    'answered_at': pxt.Timestamp | None,
    # text, prompt_tokens, completion_tokens, latency_s, finish_reason; None when the call failed
    'response': pxt.Json | None,
    'error': pxt.String | None,
    # who asked first: the lineage of a reused prediction points here
    'first_version_id': pxt.String | None,
    'first_dataset': pxt.String | None,
    'first_example_id': pxt.String | None,
}


def requests() -> pxt.Table:
    """The content-addressed request store (owned by `store.py`): one row per answered request."""
    table = open_table(REQUESTS)
    if table is not None and 'error' not in table.columns():
        table = _upgrade_requests(table)
    return table if table is not None else _open_or_create(REQUESTS, _REQUESTS_SCHEMA, 'request_hash')


def _upgrade_requests(old: pxt.Table) -> pxt.Table:
    """Copy a request store made by version 0.1 (the model call was a computed column) into today's schema.

    Answers and errors are kept, so upgrading makes no model call. The old table is moved aside first and the new
    one built under a staging name, so an interruption leaves one of the two under its name.
    """
    rows = old.select(
        old.request_hash,
        old.request,
        old.model_id,
        old.created_at,
        old.response,
        old.first_version_id,
        old.first_dataset,
        old.first_example_id,
        errortype=old.response.errortype,
        errormsg=old.response.errormsg,
    ).collect()
    staging = f'{STAGING_DIR}/requests_upgrade'
    pxt.drop_table(staging, if_not_exists='ignore')
    new = pxt.create_table(staging, _REQUESTS_SCHEMA, primary_key='request_hash')
    copied = []
    for r in rows:
        failed = r['response'] is None
        copied.append(
            {
                'request_hash': r['request_hash'],
                'request': r['request'],
                'model_id': r['model_id'],
                'created_at': r['created_at'],
                'answered_at': r['created_at'],
                'response': r['response'],
                'error': f'{r["errortype"]}: {r["errormsg"]}' if failed else None,
                'first_version_id': r['first_version_id'],
                'first_dataset': r['first_dataset'],
                'first_example_id': r['first_example_id'],
            }
        )
    if copied:
        new.insert(copied)
    pxt.drop_table(REQUESTS)
    pxt.move(staging, REQUESTS)
    return cast(pxt.Table, pxt.get_table(REQUESTS))


CLAIMS = f'{ROOT}/claims'


def claims() -> pxt.Table:
    """Requests some process is answering right now (owned by `store.py`): one row per claimed request hash."""
    return _open_or_create(
        CLAIMS,
        {
            'request_hash': pxt.String,
            'owner': pxt.String,  # the claiming session
            'host': pxt.String,
            'pid': pxt.Int,
            'claimed_at': pxt.Timestamp,
            'heartbeat_at': pxt.Timestamp,
        },
        'request_hash',
    )


def runs() -> pxt.Table:
    return _open_or_create(
        RUNS,
        {
            'run_id': pxt.String,
            'kind': pxt.String,
            'version_id': pxt.String,
            'prompt': pxt.String,
            'dataset': pxt.String,
            'dataset_version': pxt.Int,
            'split': pxt.String | None,
            'n': pxt.Int,
            'calls': pxt.Int,
            'reused': pxt.Int,
            'errors': pxt.Int,
            'started_at': pxt.Timestamp,
            'wall_s': pxt.Float,
            'metrics': pxt.Json | None,
            'example_ids': pxt.Json | None,
            'samples': pxt.Int | None,  # answers per request (evaluate(..., samples=k))
            'judge_calls': pxt.Int | None,
            'cost_usd': pxt.Float | None,
            # the tables the run read, {name: [table id, version]}: its rows never change after it is written
            'pins': pxt.Json | None,
            'repeated': pxt.Int | None,  # calls a killed run had in flight, sent again (store.Batch.repeated)
        },
        'run_id',
    )


AB_OUTCOMES = f'{ROOT}/ab_outcomes'


def ab_outcomes() -> pxt.Table:
    return _open_or_create(
        AB_OUTCOMES,
        {
            'event_id': pxt.String,
            'prompt': pxt.String,
            'experiment': pxt.String,
            'unit_id': pxt.String,
            'arm': pxt.String,
            'version_id': pxt.String,
            'outcome': pxt.Float,
            'logged_at': pxt.Timestamp,
        },
        'event_id',
    )


TRIALS = f'{ROOT}/trials'
OPTIMIZER_RECORDS = f'{ROOT}/optimizer_records'

__all__ += ['TRIALS', 'OPTIMIZER_RECORDS', 'trials', 'optimizer_records']


def trials() -> pxt.Table:
    """One row per candidate evaluation of an optimizer run: its content, scores, cost and status."""
    return _open_or_create(
        TRIALS,
        {
            'run_id': pxt.String,
            'trial': pxt.Int,
            'kind': pxt.String,  # baseline, candidate or final
            'optimizer': pxt.String,
            'parent_id': pxt.String,
            'candidate': pxt.String,  # content hash: equal candidates share it
            'template': pxt.String,
            'instructions': pxt.String | None,
            'demos': pxt.Json | None,
            'output': pxt.Json | None,  # an output spec other than the baseline's (a label decoding), if any
            'scope': pxt.String,  # dev, dev_sample or train: the examples it was scored on
            'n': pxt.Int,
            'score': pxt.Float | None,
            'dev_score': pxt.Float | None,
            'example_scores': pxt.Json | None,
            'example_predictions': pxt.Json | None,
            'flags': pxt.Json | None,  # why a candidate may not win: one label takes most predictions, ...
            'requests': pxt.Int,
            'calls': pxt.Int,
            'tokens': pxt.Int,
            'wall_s': pxt.Float,
            'status': pxt.String,  # ok, failed or stopped
            'errors': pxt.Int,
            'error': pxt.String | None,
            'started_at': pxt.Timestamp,
            'attempt': pxt.Int | None,  # the attempt of the run that recorded it (a rerun never rewrites a trial)
        },
        ['run_id', 'trial'],
    )


def optimizer_records() -> pxt.Table:
    """One row per attempt of an optimizer run, append-only: the first attempt's `start` record and a `resume` record
    each time the run (its id derives from its arguments) is started again. An attempt updates only its own row."""
    return _open_or_create(
        OPTIMIZER_RECORDS,
        {
            'run_id': pxt.String,
            'attempt': pxt.Int,
            'kind': pxt.String,  # start or resume
            'optimizer': pxt.String,
            'prompt': pxt.String,
            'baseline_id': pxt.String,
            'dataset': pxt.String,
            'config': pxt.Json | None,
            'plan': pxt.Json | None,  # what the attempt said it would do before it started
            'status': pxt.String,  # running, done, stopped or failed
            'stopped_by': pxt.String | None,
            'best_version_id': pxt.String | None,
            'baseline_score': pxt.Float | None,
            'best_score': pxt.Float | None,
            'decision': pxt.String | None,
            'references': pxt.Json | None,  # the reference baselines on dev, no model call
            'trials': pxt.Int,
            'requests': pxt.Int,
            'calls': pxt.Int,  # model calls this attempt made (answers replayed from the store are not calls)
            'tokens': pxt.Int,
            'errors': pxt.Int,
            'error': pxt.String | None,
            'wall_s': pxt.Float,
            'started_at': pxt.Timestamp,
            'updated_at': pxt.Timestamp,
            'finished_at': pxt.Timestamp | None,
        },
        ['run_id', 'attempt'],
    )


REFERENCE_NEIGHBOURS = f'{ROOT}/reference_neighbours'

__all__ += ['REFERENCE_NEIGHBOURS', 'reference_neighbours']


def reference_neighbours() -> pxt.Table:
    """One row per (dataset, pool split, input field, example): the example's nearest pool examples, nearest first,
    for the reference baselines (`workspace.core.baselines`); `pool_key` names the pool's contents they were read
    from, so a changed pool is read again."""
    return _open_or_create(
        REFERENCE_NEIGHBOURS,
        {
            'dataset': pxt.String,
            'pool': pxt.String,
            'field': pxt.String,
            'example_id': pxt.String,
            'pool_key': pxt.String,
            'neighbour_ids': pxt.Json,
            'computed_at': pxt.Timestamp,
        },
        ['dataset', 'pool', 'field', 'example_id'],
    )


SCHEDULED_RUNS = f'{ROOT}/scheduled_runs'
NOTEBOOK_RUNS = f'{ROOT}/notebook_runs'

__all__ += ['SCHEDULED_RUNS', 'NOTEBOOK_RUNS', 'scheduled_runs', 'notebook_runs']


def scheduled_runs() -> pxt.Table:
    """One row per scheduled evaluation: parameters, version, metrics, cost, and whether it regressed."""
    return _open_or_create(
        SCHEDULED_RUNS,
        {
            'run_id': pxt.String,
            'started_at': pxt.Timestamp,
            'parameters': pxt.Json,
            'params_key': pxt.String,
            'version_id': pxt.String | None,
            'eval_run_id': pxt.String | None,
            'dataset_version': pxt.Int | None,
            'metrics': pxt.Json | None,
            'main_score': pxt.Float | None,
            'previous_score': pxt.Float | None,
            'calls': pxt.Int | None,
            'reused': pxt.Int | None,
            'duration_s': pxt.Float,
            'status': pxt.String,  # ok, regression or failed
            'error': pxt.String | None,
            'cost_usd': pxt.Float | None,
        },
        'run_id',
    )


def notebook_runs() -> pxt.Table:
    """One row per notebook executed by `prompt-workspace run`: parameters, status, duration, output path, and
    the host and process id that ran it (so a later start can tell a run whose process died)."""
    table = _open_or_create(
        NOTEBOOK_RUNS,
        {
            'run_id': pxt.String,
            'notebook': pxt.String,
            'parameters': pxt.Json | None,
            'status': pxt.String,  # running, ok, failed, regression or interrupted
            'started_at': pxt.Timestamp,
            'finished_at': pxt.Timestamp | None,
            'duration_s': pxt.Float | None,
            'output_path': pxt.String,
            'error': pxt.String | None,
            'host': pxt.String | None,
            'pid': pxt.Int | None,
        },
        'run_id',
    )
    if 'pid' not in table.columns():  # a table made before runs recorded their process
        table.add_column(pid=pxt.Int | None, if_exists='ignore')
    return table


AUDIT = f'{ROOT}/audit'
RULES = f'{ROOT}/rules'
EXECUTIONS = f'{ROOT}/executions'
API_KEYS = f'{ROOT}/api_keys'
EXPERIMENTS = f'{ROOT}/experiments'

__all__ += [
    'AUDIT',
    'RULES',
    'EXECUTIONS',
    'API_KEYS',
    'EXPERIMENTS',
    'audit',
    'rules',
    'executions',
    'api_keys',
    'experiments',
]


def audit() -> pxt.Table:
    """Every change a person or a program made (owned by `audit_log.py`, append-only and hash-chained): who, when,
    what, before, after."""
    return _open_or_create(
        AUDIT,
        {
            'event_id': pxt.String,
            'at': pxt.Timestamp,
            'actor': pxt.String,  # an OS user, or 'key:<name>' for a change made over HTTP
            'kind': pxt.String,  # e.g. version.created, label.moved, rule.changed (see audit.KINDS)
            'subject': pxt.String,  # what changed: a version id, prompt@label, rule name, dataset, key name
            'before': pxt.Json | None,
            'after': pxt.Json | None,
            'note': pxt.String | None,
            'seq': pxt.Int | None,  # the row's place in the hash chain, from 1 (audit_log.py)
            'prev_hash': pxt.String | None,  # row_hash of the row before it
            'row_hash': pxt.String | None,  # sha256 of this row's content and prev_hash
        },
        'event_id',
    )


def rules() -> pxt.Table:
    """Guardrail rules (owned by `rules.py`): one row per rule version; a changed rule is a new row with its parent."""
    return _open_or_create(
        RULES,
        {
            'rule_id': pxt.String,  # name:v<number>
            'name': pxt.String,
            'number': pxt.Int,
            'parent_id': pxt.String | None,
            'kind': pxt.String,
            'config': pxt.Json,
            'stage': pxt.String,  # input, prompt or output
            'prompts': pxt.Json | None,  # prompt names it applies to; None: every prompt
            'enforcement': pxt.String,  # block or warn
            'active': pxt.Bool,
            'created_at': pxt.Timestamp,
            'author': pxt.String,
            'note': pxt.String | None,
        },
        'rule_id',
    )


def executions() -> pxt.Table:
    """One row per prompt served to an application (owned by `serve.py`): render or complete, with its violations."""
    return _open_or_create(
        EXECUTIONS,
        {
            'execution_id': pxt.String,  # also the event id of the outcome logged for it (POST /v1/outcomes)
            'at': pxt.Timestamp,
            'kind': pxt.String,  # render or complete
            'prompt': pxt.String,
            'version_id': pxt.String | None,
            'ref': pxt.String,  # what the caller asked for, e.g. ticket_router@production
            'unit_id': pxt.String | None,
            'experiment': pxt.String | None,
            'arm': pxt.String | None,
            'outcome': pxt.String,  # ok, blocked or error
            'violations': pxt.Json | None,
            'latency_s': pxt.Float,  # time spent serving, model call included
            'request_hash': pxt.String | None,
            'prompt_tokens': pxt.Int | None,
            'completion_tokens': pxt.Int | None,
            'reused': pxt.Bool | None,
            'error': pxt.String | None,
            'caller': pxt.String | None,  # the API key's name, or the OS user serving from Python
        },
        'execution_id',
    )


def api_keys() -> pxt.Table:
    """API keys of the HTTP server (owned by `keys.py`): a name, scopes and the SHA-256 of the key, never the key."""
    return _open_or_create(
        API_KEYS,
        {
            'key_id': pxt.String,  # the public part of the key, used to find its row
            'name': pxt.String,
            'scope': pxt.String,  # read, serve or admin
            'rate': pxt.Float,  # requests per second
            'key_hash': pxt.String,
            'created_at': pxt.Timestamp,
            'created_by': pxt.String,
            'revoked_at': pxt.Timestamp | None,
        },
        'key_id',
    )


def experiments() -> pxt.Table:
    """A/B experiments that serving follows (owned by `experiments.py`): a prompt's split of units over versions."""
    return _open_or_create(
        EXPERIMENTS,
        {
            'prompt': pxt.String,
            'experiment': pxt.String,
            'split': pxt.Json,
            'status': pxt.String,  # running or stopped
            'started_at': pxt.Timestamp,
            'started_by': pxt.String,
            'stopped_at': pxt.Timestamp | None,
            # how it is decided, fixed before it starts: baseline, units per arm, fixed or sequential (None: no plan)
            'plan': pxt.Json | None,
            'decided_at': pxt.Timestamp | None,
            'decision': pxt.Json | None,  # the winner, the version its label moved to, and why
        },
        ['prompt', 'experiment'],
    )


RAW_PROMPTS = f'{ROOT}/raw_prompts'
PROMPT_OCCURRENCES = f'{ROOT}/prompt_occurrences'
FAMILIES = f'{ROOT}/families'
FAMILY_TEMPLATES = f'{ROOT}/family_templates'
FAMILY_HISTORY = f'{ROOT}/family_history'
PROMPT_INDEX = f'{ROOT}/prompt_index'
INGEST_JOURNAL = f'{ROOT}/ingest_journal'
RAW_PROMPTS_INDEX = 'prompt_idx'

__all__ += [
    'RAW_PROMPTS',
    'PROMPT_OCCURRENCES',
    'FAMILIES',
    'FAMILY_TEMPLATES',
    'FAMILY_HISTORY',
    'raw_prompts',
    'prompt_occurrences',
    'families',
    'family_templates',
    'family_history',
    'PROMPT_INDEX',
    'INGEST_JOURNAL',
    'prompt_index',
    'ingest_journal',
]


def raw_prompts() -> pxt.Table:
    """One row per distinct raw prompt (by content hash): its text, count, first and last seen, family.

    Its embedding is not stored: the project's embedder gives a text the same vector every time (EMBEDDER_ID is in
    the table's metadata), and Pixeltable writes an array of 256 floats to a file beside the row with metadata of
    its own, which was half the cost of inserting a raw prompt (133 against 67 us a row, docs/families.md). Who
    needs vectors embeds the text: family assignment at ingest, a family's exemplars when a workspace is loaded,
    and similarity search, which keeps its own index (`prompt_index`), brought up to date when it is searched.
    """
    from workspace.storage.embeddings import EMBEDDER_ID

    table = open_table(RAW_PROMPTS)
    if table is not None:
        if 'app' not in table.columns():
            table.add_columns({'app': pxt.String | None}, if_exists='ignore')
        if any(i['name'] == RAW_PROMPTS_INDEX for i in _indexes(table)):  # made by an earlier release
            table.drop_embedding_index(idx_name=RAW_PROMPTS_INDEX)
        if 'vector' in table.columns():  # stored by an earlier release; the embedder gives it again from the text
            try:
                table.drop_column('vector', if_not_exists='ignore')  # another process may drop it first
            except pxt.Error as e:  # a column or view of the user's computed from it
                from workspace.errors import FamilyError

                raise FamilyError(
                    f'{RAW_PROMPTS}.vector, stored by an earlier release, cannot be dropped: {e}. Raw prompts no '
                    'longer store their vector (embed the prompt with udfs.embed.embed_text instead); drop what '
                    'is computed from it, then ingest again'
                ) from e
        return table
    return _open_or_create(
        RAW_PROMPTS,
        {
            'prompt_hash': pxt.String,
            'prompt': pxt.String,
            'occurrences': pxt.Int,
            'first_seen': pxt.Timestamp,
            'last_seen': pxt.Timestamp,
            'meta': pxt.Json | None,  # the meta columns of its first occurrence
            'expected': pxt.String | None,  # the logged response of its latest occurrence that has one
            'source': pxt.String,
            'app': pxt.String | None,  # the application of its first occurrence, when the log names one
            'seq': pxt.Int,  # order of assignment: families are built in this order
            'family_id': pxt.String,
            'confidence': pxt.Float,
            'reason': pxt.Json | None,
            'assigned_at': pxt.Timestamp,
        },
        'prompt_hash',
        custom_metadata={'embedder': EMBEDDER_ID},
    )


def _indexes(table: pxt.Table) -> list[dict[str, Any]]:
    return [{'name': name, **info} for name, info in (table.get_metadata().get('indexes') or {}).items()]


def prompt_index() -> pxt.Table:
    """The raw prompts' vectors under an embedding index, for `ws.similar(..., among='prompts')`: filled from
    `raw_prompts` when it is searched, not at ingest (see `raw_prompts`)."""
    from udfs.embed import embed_text
    from workspace.storage.embeddings import DIMENSIONS, EMBEDDER_ID

    table = open_table(PROMPT_INDEX)
    if table is not None:
        return table
    table = _open_or_create(
        PROMPT_INDEX,
        {'prompt_hash': pxt.String, 'seq': pxt.Int, 'vector': pxt.Array[(DIMENSIONS,), pxt.Float]},  # type: ignore[misc]
        'prompt_hash',
        custom_metadata={'embedder': EMBEDDER_ID},
    )
    table.add_embedding_index(
        'vector', idx_name=RAW_PROMPTS_INDEX, embedding=embed_text, precision='fp32', if_exists='ignore'
    )
    return table


def ingest_journal() -> pxt.Table:
    """One row per batch of an ingest: everything the batch writes, stored before it writes it, so that an ingest
    killed halfway is completed by the next one (see workspace/mining/prompt_log.py)."""
    return _open_or_create(
        INGEST_JOURNAL,
        {
            'batch_id': pxt.String,
            'source': pxt.String,
            'created_at': pxt.Timestamp,
            'status': pxt.String,  # pending or done
            'plan': pxt.Json,  # the plan, or {'in': 'plan_text'} (kept when the batch is done and plan_text emptied)
            'done_at': pxt.Timestamp | None,
            # the plan as JSON text (Pixeltable walks every value of a Json cell on insert: a second for 5,000 lines);
            # None once the batch is applied
            'plan_text': pxt.String | None,
        },
        'batch_id',
    )


def prompt_occurrences() -> pxt.Table:
    """One row per line of an ingested log: which raw prompt, when. Traffic shares are counted here."""
    return _open_or_create(
        PROMPT_OCCURRENCES,
        {'occurrence_id': pxt.String, 'prompt_hash': pxt.String, 'at': pxt.Timestamp, 'source': pxt.String},
        'occurrence_id',
    )


def families() -> pxt.Table:
    """One row per family: the state incremental assignment reads (centroid, template skeletons, exemplars)."""
    from workspace.storage.embeddings import DIMENSIONS

    return _open_or_create(
        FAMILIES,
        {
            'family_id': pxt.String,
            'created_at': pxt.Timestamp,  # first seen of its founding prompt
            'status': pxt.String,  # active or merged
            'merged_into': pxt.String | None,
            'total': pxt.Array[(DIMENSIONS,), pxt.Float],  # type: ignore[misc]  # sum of member vectors
            'n': pxt.Int,  # members in `total`
            'skeletons': pxt.Json,  # constant tokens of its latest templates, newest first
            'exemplars': pxt.Json,  # prompt hashes of a few first and latest members (the reason's neighbours)
            'pending': pxt.Int,  # members since its template was last mined
            'template_number': pxt.Int,  # 0 until it has a template version
            'updated_at': pxt.Timestamp,
            'app': pxt.String | None,  # the application all its members come from
            'state': pxt.Json | None,  # the rest of what assignment reads (workspace/mining/families.py)
        },
        'family_id',
    )


def family_templates() -> pxt.Table:
    """One row per template version of a family, with the events that made it (created, slot added, ...)."""
    return _open_or_create(
        FAMILY_TEMPLATES,
        {
            'family_id': pxt.String,
            'number': pxt.Int,
            'template': pxt.String,  # Jinja2
            'spec': pxt.Json,  # pieces and typed slots (workspace.mining.canonical.Template)
            'events': pxt.Json,
            'as_of': pxt.Timestamp,  # the time of the latest member it was mined from
            'members': pxt.Int,  # members it was mined from
            'parsed': pxt.Int,  # of those, how many it parses
            'created_at': pxt.Timestamp,
        },
        ['family_id', 'number'],
    )


def family_history() -> pxt.Table:
    """Every change made to families by hand (merge, split): who, when, what."""
    return _open_or_create(
        FAMILY_HISTORY,
        {
            'event_id': pxt.String,
            'action': pxt.String,
            'family_id': pxt.String,
            'other_id': pxt.String | None,
            'members': pxt.Int,
            'by': pxt.String | None,
            'at': pxt.Timestamp,
            'note': pxt.String | None,
            'seq': pxt.Int | None,  # the row's place in the hash chain, from 1 (audit_log.py)
            'prev_hash': pxt.String | None,  # row_hash of the row before it
            'row_hash': pxt.String | None,  # sha256 of this row's content and prev_hash
        },
        'event_id',
    )


# --- deeper evaluation: judgements, samples, annotations, changelogs ------------------------------------------

JUDGEMENTS_DIR = f'{ROOT}/judgements'
SAMPLES_DIR = f'{ROOT}/samples'
ANNOTATIONS = f'{ROOT}/annotations'
CHANGELOGS = f'{ROOT}/changelogs'

__all__ += [
    'JUDGEMENTS_DIR',
    'SAMPLES_DIR',
    'ANNOTATIONS',
    'CHANGELOGS',
    'judgements',
    'samples',
    'annotations_table',
    'changelogs',
]


def _dataset_table(folder: str, dataset: str, schema: dict[str, Any], primary_key: list[str]) -> pxt.Table:
    path = f'{folder}/{dataset}'
    if open_table(path) is None:
        ensure_dirs()
        pxt.create_dir(folder, if_exists='ignore')
    return _open_or_create(path, schema, primary_key)


def judgements(dataset: str) -> pxt.Table:
    """One row per (judge version, judged version, example) of a dataset: the judge's request, verdict and score."""
    return _dataset_table(
        JUDGEMENTS_DIR,
        dataset,
        {
            'judge_id': pxt.String,
            'version_id': pxt.String,
            'example_id': pxt.String,
            'request_hash': pxt.String,
            'prediction_hash': pxt.String,  # the judged prediction's request: a new prediction is judged again
            'output': pxt.String | None,
            'verdict': pxt.String | None,
            'score': pxt.Float | None,
            'passed': pxt.Bool | None,
            'rationale': pxt.String | None,
            'error': pxt.String | None,
            'latency_s': pxt.Float | None,
            'prompt_tokens': pxt.Int | None,
            'completion_tokens': pxt.Int | None,
            'reused': pxt.Bool | None,
            'judged_at': pxt.Timestamp,
        },
        ['judge_id', 'version_id', 'example_id'],
    )


def samples(dataset: str) -> pxt.Table:
    """One row per (version, example, sample index) of a dataset: the k answers of a run with samples."""
    return _dataset_table(
        SAMPLES_DIR,
        dataset,
        {
            'version_id': pxt.String,
            'example_id': pxt.String,
            'sample_index': pxt.Int,
            'request_hash': pxt.String,
            'output': pxt.String | None,
            'prediction': pxt.String | None,
            'error': pxt.String | None,
            'latency_s': pxt.Float | None,
            'prompt_tokens': pxt.Int | None,
            'completion_tokens': pxt.Int | None,
            'answered_at': pxt.Timestamp | None,
        },
        ['version_id', 'example_id', 'sample_index'],
    )


def annotations_table() -> pxt.Table:
    """One row per person's verdict on one prediction: who, when, pass or fail, and a note."""
    return _open_or_create(
        ANNOTATIONS,
        {
            'dataset': pxt.String,
            'version_id': pxt.String,
            'example_id': pxt.String,
            'annotator': pxt.String,
            'request_hash': pxt.String | None,
            'prediction': pxt.String | None,
            'verdict': pxt.String,  # pass or fail
            'note': pxt.String | None,
            'run_id': pxt.String | None,
            'annotated_at': pxt.Timestamp,
        },
        ['dataset', 'version_id', 'example_id', 'annotator'],
    )


def changelogs() -> pxt.Table:
    """One row per version: a model's description of what changed from its parent (versions are immutable rows)."""
    return _open_or_create(
        CHANGELOGS,
        {
            'version_id': pxt.String,
            'parent_id': pxt.String,
            'text': pxt.String | None,
            'error': pxt.String | None,
            'model': pxt.String,
            'request_hash': pxt.String,
            'created_at': pxt.Timestamp,
            'problems': pxt.Json | None,  # why the description is unreliable, found when it was written
        },
        'version_id',
    )
