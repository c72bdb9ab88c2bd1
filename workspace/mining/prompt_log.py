"""Raw prompts: ingest a log of prompts an application sent, deduplicated by content hash, into families.

```
prompt_workspace/raw_prompts          one row per distinct prompt (sha256 of its text): count, first and last seen,
                                      meta of its first occurrence, logged response, application, family
prompt_workspace/prompt_occurrences   one row per log line: which prompt, when (an id derived from the line's content)
prompt_workspace/ingest_journal       one row per batch: everything the batch writes, written before it
```

A log line's id is the hash of its prompt, time, meta, application and how many identical lines came before it in
the log, and never of the file's name: ingesting the same log again, under any name, adds nothing, and a log that
grew (a new day appended) adds only its new lines. Only prompts never seen before are embedded and assigned to a
family (workspace/mining/assign.py); a prompt seen again only has its count and last seen updated.

Nothing is written before every line is read and checked: a bad file raises the dataset readers' `DatasetError`
naming the file, the line and the fix, and so does a character PostgreSQL cannot store (NUL) or UTF-8 cannot
encode (a lone surrogate). Each batch of lines is then written as one unit through the journal:
everything the batch writes (families, template versions, merges and splits, raw prompts, occurrences, counts) is
computed first and stored as one journal row, then applied step by step with writes that can be repeated; a process
killed in the middle leaves the journal row pending, and the next ingest (or `recover()`) applies it again before
anything else, completing what was missing. Families are written before the prompts that point to them, so a raw
prompt's family is always in `families()`.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime
import functools
import gc
import hashlib
import json
import logging
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from workspace.config import utc_now
from workspace.core import datasets
from workspace.display.formats import count
from workspace.display.results import render_record
from workspace.errors import DatasetError
from workspace.mining.assign import Engine, Move
from workspace.mining.families import history_rows, load_engine, state_rows
from workspace.storage import store, tables
from workspace.storage.embeddings import embed
from workspace.storage.recovery import pause_point

__all__ = ['REQUEST_STORE', 'IngestReport', 'ingest_prompts', 'prompt_hash', 'recover']

log = logging.getLogger(__name__)

#: The `source` that ingests the workspace's own request store (the prompts its evaluations sent).
REQUEST_STORE = 'request_store'
BATCH = 5000  # log lines written as one unit (one journal row)
EMBED_CHUNK = 256  # new prompts embedded at a time, ahead of their assignment
#: What PostgreSQL cannot store (NUL) or UTF-8 cannot encode (a lone surrogate, from a broken escape): other
#: control characters are kept, as real prompts carry them (a \x18 from a PDF in an abstract).
_BAD = re.compile('[\x00\ud800-\udfff]')


def prompt_hash(text: str) -> str:
    """Return the content hash that identifies a raw prompt: sha256 of its exact text.

    >>> prompt_hash('hello')[:12]
    '2cf24dba5fb0'
    """
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


@dataclass
class IngestReport:
    """What one `ingest_prompts` call did: lines read, new lines, new prompts, families joined and started."""

    source: str
    lines: int
    new_lines: int
    already_ingested: int
    new_prompts: int
    seen_prompts: int  # prompts already stored that appeared again
    new_families: list[str] = field(default_factory=list)
    joined: dict[str, int] = field(default_factory=dict)  # family id -> new prompts it got
    template_versions: int = 0
    moves: int = 0  # merges (a template edit) and splits (two templates in a young family) assignment made
    recovered: int = 0  # batches of an earlier, interrupted ingest completed first
    seconds: float = 0.0

    def __repr__(self) -> str:
        return (
            f'<IngestReport {self.source}: {self.lines} lines, {self.new_lines} new ({self.already_ingested} already '
            f'ingested); {self.new_prompts} new prompts, {self.seen_prompts} seen again; '
            f'{len(self.new_families)} new families, {len(self.joined)} families grew; '
            f'{self.template_versions} template versions, {self.moves} merges and splits; {self.seconds:.1f} s>'
        )

    def _repr_html_(self) -> str:
        return render_record(
            f'Ingested {self.source}',
            [
                ('lines read', count(self.lines)),
                ('new lines', f'{count(self.new_lines)} ({count(self.already_ingested)} already ingested)'),
                ('new prompts', f'{count(self.new_prompts)} ({count(self.seen_prompts)} seen again)'),
                ('families started', f'{len(self.new_families):,}'),
                ('families grown', ', '.join(f'{f} (+{n:,})' for f, n in self.joined.items()) or 'none'),
                ('template versions', count(self.template_versions)),
                ('time', f'{self.seconds:.1f} s'),
            ],
        )


def _timestamp(value: Any, where: str, column: str) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        stamp = value
    elif isinstance(value, pd.Timestamp):
        stamp = value.to_pydatetime()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        stamp = datetime.datetime.fromtimestamp(value, datetime.timezone.utc)  # seconds since the epoch
    elif isinstance(value, str) and value.strip():
        try:
            stamp = datetime.datetime.fromisoformat(value.strip().replace('Z', '+00:00'))
        except ValueError:
            raise DatasetError(
                f'{where}: {column} {value!r} is not a time; use ISO 8601 (2026-09-07T14:03:00Z) or seconds since '
                'the epoch, or pass at=None to use the time of ingestion'
            ) from None
    else:
        raise DatasetError(
            f'{where} has no time in {column!r}; fill it in (ISO 8601), or pass at=None to use the time of ingestion'
        )
    # a time without a zone is read as UTC, as every time the workspace stores
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.timezone.utc)


def _check_characters(value: Any, where: str, what: str) -> None:
    """Refuse text PostgreSQL cannot store (NUL) or UTF-8 cannot encode (a lone surrogate)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_characters(k, where, what)
            _check_characters(v, where, what)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_characters(v, where, what)
    elif isinstance(value, str):
        bad = _BAD.search(value)
        if bad is not None:
            char = bad.group(0)
            name = (
                'a NUL character (\\x00)'
                if char == '\x00'
                else f'a lone surrogate ({char.encode("unicode_escape").decode()})'
            )
            raise DatasetError(
                f'{where}: {what} has {name} at character {bad.start()}; remove or replace it in the log and ingest '
                'again (nothing was written)'
            )


@dataclass
class _Line:
    text: str
    at: datetime.datetime
    meta: dict[str, Any]
    expected: str | None
    app: str | None
    hash: str = ''
    id: str = ''


def _lines(
    parsed: Any,
    text: str,
    at: str | None,
    meta: Sequence[str],
    expected: str | None,
    app: str | None,
    now: datetime.datetime,
) -> list[_Line]:
    """Validate every record (raising on the first bad one, before anything is written) and return the lines."""
    if not parsed.records:
        raise DatasetError(f'{parsed.origin} has no prompts; it needs at least one line')
    for column, role in [(text, 'text'), *([(at, 'at')] if at else []), *[(m, 'meta') for m in meta]]:
        datasets.require_column(parsed, column, role)
    if expected is not None:
        datasets.require_column(parsed, expected, 'expected')
    if app is not None:
        datasets.require_column(parsed, app, 'app')
    out = []
    for record in parsed.records:
        where = f'{parsed.origin}: {record.where}'
        value = record.values.get(text)
        if isinstance(value, (dict, list)):
            raise DatasetError(
                f'{where}: {text!r} is a JSON {type(value).__name__}, not the prompt text; '
                'give the prompt as a string (json.dumps it if it is a message list)'
            )
        if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
            raise DatasetError(f'{where} has an empty prompt in {text!r}; fill it in or remove the line')
        answer = record.values.get(expected) if expected else None
        application = record.values.get(app) if app else None
        line = _Line(
            text=str(value),  # kept exactly: whitespace can matter to a model
            at=_timestamp(record.values.get(at), where, at) if at else now,
            meta={m: record.values.get(m) for m in meta},
            expected=None if answer is None or not str(answer).strip() else str(answer),
            app=None if application is None or not str(application).strip() else str(application),
        )
        _check_characters(line.text, where, 'the prompt')
        _check_characters(line.meta, where, 'a meta value')
        _check_characters(line.expected, where, 'the logged response')
        _check_characters(line.app, where, 'the application')
        out.append(line)
    return out


def _with_ids(lines: list[_Line]) -> None:
    """Give each line its content id (never the log's name: the same log under another name is the same lines)."""
    repeats: Counter[str] = Counter()
    for line in lines:
        line.hash = prompt_hash(line.text)
        key = json.dumps(
            [line.hash, line.at.isoformat(), line.meta, line.app], sort_keys=True, default=str, ensure_ascii=False
        )
        repeats[key] += 1
        line.id = hashlib.sha256(f'{key}\n{repeats[key]}'.encode()).hexdigest()[:32]


def _existing(table: Any, column: str, keys: Sequence[str], *select: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    # An empty table (a new workspace's first log) is asked for one row first: a lookup of 5,000 keys costs 40 ms
    # and more (each key a parameter to compile), the probe 9 ms
    if not keys or not len(table.select(table[column]).limit(1).collect()):
        return found
    for start in range(0, len(keys), 5000):
        chunk = list(keys[start : start + 5000])
        query = table.where(table[column].isin(chunk)).select(*[table[c] for c in (column, *select)])
        found.update({r[column]: dict(r) for r in query.collect()})
    return found


def _read(source: Any) -> tuple[Any, str]:
    if isinstance(source, str) and source == REQUEST_STORE:
        rows = [r for r in store.sent_prompts() if r['prompt']]
        if not rows:
            raise DatasetError('the request store has no prompts yet; evaluate a version first, or ingest a log file')
        return datasets.parse_records('request store', rows), 'request_store'
    parsed = datasets.parse_source(source)
    name = str(Path(source).resolve()) if isinstance(source, (str, Path)) else parsed.origin
    return parsed, name


def ingest_prompts(
    source: str | Path | pd.DataFrame | Sequence[dict[str, Any]],
    *,
    text: str = 'prompt',
    at: str | None = 'timestamp',
    meta: Sequence[str] = (),
    expected: str | None = None,
    app: str | None = 'app',
    source_name: str | None = None,
) -> IngestReport:
    """Append raw prompts from a log to the workspace, deduplicated, and assign the new ones to families.

    `source` is a CSV, JSONL or JSON file, a DataFrame, a list of dicts, or `'request_store'` (the prompts this
    workspace's evaluations sent; then `text='prompt', at='created_at'`). `text` names the column of the prompt,
    `at` the column of its time (ISO 8601 or epoch seconds; None: now), `meta` columns kept with each prompt,
    `expected` the column of the logged response (`family.to_dataset()` uses it as the expected output) and `app`
    the column naming the application that sent the line (a family never spans two applications; the default
    `'app'` is used when the log has that column). `source_name` names the log in the tables (a file's path by
    default); the lines are identified by their content, so the same lines are never counted twice.

    >>> report = ws.ingest_prompts('datasets/prompt_log.jsonl', meta=['app', 'user'], expected='response')
    """
    started = time.perf_counter()
    if isinstance(source, str) and source == REQUEST_STORE and at == 'timestamp':
        at = 'created_at'
    parsed, name = _read(source)
    name = source_name or name
    if app == 'app' and 'app' not in parsed.columns:
        app = None  # the default names a column the log may not have
    lines = _lines(parsed, text, at, list(meta), expected, app, utc_now())
    _with_ids(lines)
    recovered = recover()
    occurrences = tables.prompt_occurrences()
    with _cycles_collected_after():
        seen_ids = _existing(occurrences, 'occurrence_id', [line.id for line in lines])
    new_lines = sorted((x for x in lines if x.id not in seen_ids), key=lambda x: (x.at, x.hash, x.id))
    report = IngestReport(name, len(lines), len(new_lines), len(lines) - len(new_lines), 0, 0, recovered=recovered)
    if new_lines:
        raw = tables.raw_prompts()
        with _cycles_collected_after():
            known = _existing(
                raw, 'prompt_hash', list({x.hash for x in new_lines}), 'occurrences', 'first_seen', 'last_seen',
                'expected',
            )  # fmt: skip
            report.seen_prompts = len(known)
            engine = load_engine(apps={x.app for x in new_lines})
            seq = raw.count()
        for start in range(0, len(new_lines), BATCH):
            with _cycles_collected_after():
                seq = _batch(engine, new_lines[start : start + BATCH], known, name, seq, report)
    report.seconds = time.perf_counter() - started
    log.info('%r', report)
    return report


@contextlib.contextmanager
def _cycles_collected_after() -> Iterator[None]:
    """Pause Python's cycle collector for one step of an ingest (at most a batch), and let it run afterwards.

    A batch allocates hundreds of thousands of short-lived objects (Pixeltable's rows, the assignment's tokens), so
    the collector ran about a dozen full passes over everything the process holds during an ingest: 1.1 of 10.8 s
    over the bench's four collections (docs/families.md). Reference counting still frees everything at once; only
    cycles wait, and a step's cycles are bounded by its batch. An ingest that finds the collector already off (the
    caller's choice, or another thread's ingest) leaves it off.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _batch(
    engine: Engine, lines: list[_Line], known: dict[str, dict[str, Any]], source: str, seq: int, report: IngestReport
) -> int:
    """Assign the batch's new prompts, write everything it changes as one journal row, then apply it."""
    by_hash: dict[str, list[_Line]] = {}
    for line in lines:
        by_hash.setdefault(line.hash, []).append(line)
    fresh = [h for h in by_hash if h not in known]  # in time order (the lines are)
    now = utc_now()
    raw_rows = []
    for i, (h, vector) in enumerate(zip(fresh, _embedded([by_hash[h][0].text for h in fresh]))):
        raw_rows.append(_assigned_row(engine, h, by_hash[h], vector, source, seq + i, now, report))
    _follow_moves(engine.moves, raw_rows)
    seen_rows = _seen_again(by_hash, known)
    batch_id = hashlib.sha256(''.join(x.id for x in lines).encode()).hexdigest()[:32]
    plan = _plan(engine, batch_id, lines, raw_rows, seen_rows, source, now)
    report.new_prompts += len(raw_rows)
    report.template_versions += len(engine.templates_out)
    report.moves += len(engine.moves)
    tables.insert_new(
        tables.ingest_journal(),
        [
            {
                'batch_id': batch_id,
                'source': source,
                'created_at': now,
                'status': 'pending',
                'plan': {'in': 'plan_text'},
                'plan_text': _pack(plan),
            }
        ],  # fmt: skip
        'batch_id',
    )
    pause_point('ingest.journaled')
    _apply(batch_id, plan, fresh=True)
    for state in engine.changed():
        state.changed = False
    engine.templates_out, engine.moves = [], []
    return seq + len(raw_rows)


def _embedded(texts: list[str]) -> Iterator[np.ndarray]:
    """Yield the texts' vectors in order, embedding the next chunks in a thread while the caller assigns this one.

    The tokenizer runs outside the GIL, so on two cores most of the embedding hides behind the assignment (pure
    Python); a text's vector depends on that text alone, so chunking changes no vector.
    """
    chunks = [texts[i : i + EMBED_CHUNK] for i in range(0, len(texts), EMBED_CHUNK)]
    pool = ThreadPoolExecutor(1, thread_name_prefix='embed')
    try:
        ahead = collections.deque(pool.submit(embed, c) for c in chunks[:2])
        for following in [*chunks[2:], None, None]:
            if not ahead:
                return
            done = ahead.popleft().result()
            if following is not None:
                ahead.append(pool.submit(embed, following))
            yield from done
    finally:  # the caller stopped (an error while assigning): chunks not started are not embedded
        pool.shutdown(wait=True, cancel_futures=True)


def _assigned_row(
    engine: Engine,
    h: str,
    group: list[_Line],
    vector: np.ndarray,
    source: str,
    seq: int,
    now: datetime.datetime,
    report: IngestReport,
) -> dict[str, Any]:
    """Assign a new prompt (the lines of one hash) to a family, count it in the report, and return its raw row."""
    result = engine.assign(h, group[0].text, vector, group[0].at, group[0].app)
    if result.new_family:
        report.new_families.append(result.family_id)
    else:
        report.joined[result.family_id] = report.joined.get(result.family_id, 0) + 1
    return {
        'prompt_hash': h,
        'prompt': group[0].text,
        'occurrences': len(group),
        'first_seen': group[0].at.isoformat(),
        'last_seen': group[-1].at.isoformat(),
        'meta': group[0].meta or None,
        'expected': _last_answer(group, None),
        'source': source,
        'app': group[0].app,
        'seq': seq,
        'family_id': result.family_id,
        'confidence': result.confidence,
        'reason': result.reason,
        'assigned_at': now.isoformat(),
    }


def _follow_moves(moves: list[Move], raw_rows: list[dict[str, Any]]) -> None:
    """Move the batch's own rows with the merges and splits the engine made while assigning it."""
    for move in moves:
        for row in raw_rows:
            if row['family_id'] == move.other_id and (move.hashes is None or row['prompt_hash'] in move.hashes):
                row['family_id'] = move.family_id


def _seen_again(by_hash: dict[str, list[_Line]], known: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the batch's lines to the counts and times of the prompts in `known` (adding the new ones to it); return
    the updated rows of prompts that were known before the batch."""
    seen_rows = []
    for h, group in by_hash.items():
        if h in known:
            old = known[h]
            old.update(
                occurrences=old['occurrences'] + len(group),
                first_seen=min(_aware(old['first_seen']), group[0].at),
                last_seen=max(_aware(old['last_seen']), group[-1].at),
                expected=_last_answer(group, old['expected']),
            )
            seen_rows.append(
                {'prompt_hash': h, 'occurrences': old['occurrences'], 'first_seen': old['first_seen'].isoformat(),
                 'last_seen': old['last_seen'].isoformat(), 'expected': old['expected']}
            )  # fmt: skip
        else:
            known[h] = {'occurrences': len(group), 'first_seen': group[0].at, 'last_seen': group[-1].at,
                        'expected': _last_answer(group, None)}  # fmt: skip
    return seen_rows


def _plan(
    engine: Engine,
    batch_id: str,
    lines: list[_Line],
    raw_rows: list[dict[str, Any]],
    seen_rows: list[dict[str, Any]],
    source: str,
    now: datetime.datetime,
) -> dict[str, Any]:
    """Return the journal's plan of a batch: every row it writes or changes, in JSON-ready form."""
    return {
        'families': state_rows(engine.changed(), now),
        'templates': [
            {**t, 'as_of': t['as_of'].isoformat(), 'created_at': now.isoformat()} for t in engine.templates_out
        ],  # fmt: skip
        'moves': [{'to': m.family_id, 'from': m.other_id, 'hashes': m.hashes} for m in engine.moves],
        'history': history_rows(engine.moves, batch_id),
        'raw': raw_rows,
        'seen': seen_rows,
        'occurrences': [
            {'occurrence_id': x.id, 'prompt_hash': x.hash, 'at': x.at.isoformat(), 'source': source} for x in lines
        ],  # fmt: skip
    }


def _aware(value: datetime.datetime) -> datetime.datetime:
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def _last_answer(group: list[_Line], default: str | None) -> str | None:
    answers = [x.expected for x in group if x.expected is not None]
    return answers[-1] if answers else default


def _times(row: dict[str, Any], *names: str) -> dict[str, Any]:
    return {**row, **{n: datetime.datetime.fromisoformat(row[n]) for n in names if row.get(n) is not None}}


def _apply(batch_id: str, plan: dict[str, Any], *, fresh: bool = False) -> None:
    """Write one batch's plan. Every step can be repeated (keyed inserts, updates to absolute values), so a plan
    applied again after a kill completes it; families come before the prompts that point to them. `fresh`: the
    ingest that made the plan applies it, its rows checked new moments ago, so they are inserted without reading
    first which keys exist."""
    families = [_times(r, 'created_at', 'updated_at') for r in plan['families']]
    for r in families:
        r['total'] = np.asarray(r['total'], dtype=np.float32)
    state = tables.families()
    _write_families(state, [r for r in families if r['status'] != 'merged'])
    pause_point('ingest.families')
    if plan['templates']:
        t = tables.family_templates()
        ids = sorted({r['family_id'] for r in plan['templates']})
        stored = {
            (r['family_id'], r['number'])
            for r in t.where(t.family_id.isin(ids)).select(t.family_id, t.number).collect()
        }
        rows = [
            _times(r, 'as_of', 'created_at') for r in plan['templates'] if (r['family_id'], r['number']) not in stored
        ]
        if rows:
            t.insert(rows)
    raw = tables.raw_prompts()
    _write_moves(raw, plan['moves'])
    merged = [r for r in families if r['status'] == 'merged']
    if merged:
        tables.upsert(state, merged)
    if plan['raw']:
        rows = [_times(r, 'first_seen', 'last_seen', 'assigned_at') for r in plan['raw']]
        tables.insert_new(raw, rows, 'prompt_hash', likely_new=fresh)
    pause_point('ingest.raw')
    if plan['seen']:
        raw.batch_update([_times(r, 'first_seen', 'last_seen') for r in plan['seen']])
    occurrences = [_times(r, 'at') for r in plan['occurrences']]
    tables.insert_new(tables.prompt_occurrences(), occurrences, 'occurrence_id', likely_new=fresh)
    pause_point('ingest.occurrences')
    if plan['history']:
        tables.insert_new(tables.family_history(), [_times(r, 'at') for r in plan['history']], 'event_id')
    journal = tables.ingest_journal()
    # the plan is dropped from the row once applied: an update writes the row again, and a plan of 5,000 lines is
    # megabytes (the earlier row version keeps it in the store's history)
    journal.update({'status': 'done', 'done_at': utc_now(), 'plan_text': None}, where=journal.batch_id == batch_id)


def _write_families(state: Any, rows: list[dict[str, Any]]) -> None:
    """Insert the families new to the table (an insert costs a fraction of an update) and update the others."""
    if not rows:
        return
    stored = _existing(state, 'family_id', [r['family_id'] for r in rows])
    new = [r for r in rows if r['family_id'] not in stored]
    if new:
        tables.insert_new(state, new, 'family_id', likely_new=True)
    if len(new) < len(rows):
        tables.upsert(state, [r for r in rows if r['family_id'] in stored])


def _write_moves(raw: Any, moves: list[dict[str, Any]]) -> None:
    """Move the stored members of merged and split families (the batch's own rows already point to the right
    family). A family with no stored member is skipped: an update costs a table version even when it finds no row."""
    if not moves:
        return
    froms = list({m['from'] for m in moves})
    stored = {r['family_id'] for r in raw.where(raw.family_id.isin(froms)).select(raw.family_id).collect()}
    for move in moves:
        if move['from'] not in stored:
            continue
        where = raw.family_id == move['from']
        if move['hashes'] is not None:
            where = where & raw.prompt_hash.isin(move['hashes'])
        raw.update({'family_id': move['to']}, where=where)
        stored.add(move['to'])


_PACKED = 'zstd+base64:'  # then the JSON's length in bytes and ':'
_DEFLATED = 'zlib+base64:'  # plans of the release before (2026-12-07)


def _pack(plan: dict[str, Any]) -> str:
    """Return a batch's plan as journal text: JSON, compressed with zstd (level 1) and in base64. A plan of 5,000
    lines is megabytes of repetitive text; compressed here it is a fifth of that, and PostgreSQL gives up
    compressing it at once (its own compression of the plain text took longer than writing the rest of the batch's
    journal row).

    orjson writes the same JSON as json.dumps(ensure_ascii=False), 15 times faster, and pyarrow's zstd (both are
    dependencies already) compresses five times faster than zlib, and smaller: a 5,000-line plan took 0.17 s in the
    two stdlib calls before, 20 ms now (docs/families.md)."""
    raw = orjson.dumps(plan, option=orjson.OPT_NON_STR_KEYS)
    codec = _zstd()
    if codec is None:  # a pyarrow built without zstd: deflated, as the release before wrote plans
        return _DEFLATED + base64.b64encode(zlib.compress(raw, 1)).decode('ascii')
    return f'{_PACKED}{len(raw)}:{base64.b64encode(codec.compress(raw, asbytes=True)).decode("ascii")}'


def _unpack(text: str) -> dict[str, Any]:
    """Read a plan written by `_pack`, or by an earlier release (deflated, or plain JSON)."""
    if text.startswith(_PACKED):
        codec = _zstd()
        if codec is None:
            raise DatasetError(
                'a pending ingest was journaled with zstd, which this pyarrow lacks; install a pyarrow built with '
                "zstd (the PyPI wheels are: pip install --force-reinstall 'pyarrow>=14') and ingest again"
            )
        size, _, data = text[len(_PACKED) :].partition(':')
        return orjson.loads(codec.decompress(base64.b64decode(data), decompressed_size=int(size), asbytes=True))
    if text.startswith(_DEFLATED):
        return json.loads(zlib.decompress(base64.b64decode(text[len(_DEFLATED) :])).decode('utf-8'))
    return json.loads(text)


@functools.cache
def _zstd() -> Any:
    """Return pyarrow's zstd codec (level 1), or None when this pyarrow was built without it."""
    import pyarrow as pa  # imported on first use: `import workspace` stays fast

    return pa.Codec('zstd', compression_level=1) if pa.Codec.is_available('zstd') else None


def recover() -> int:
    """Complete the batches an interrupted ingest left pending (in the order they were written); return how many."""
    journal = tables.ingest_journal()
    pending = list(
        journal.where(journal.status == 'pending').order_by(journal.created_at).select(journal.batch_id).collect()
    )
    for row in pending:
        stored = journal.where(journal.batch_id == row['batch_id']).select(journal.plan, journal.plan_text).collect()[0]
        plan = _unpack(stored['plan_text']) if stored['plan_text'] is not None else stored['plan']
        log.warning('completing batch %s of an interrupted ingest', row['batch_id'])
        _apply(row['batch_id'], plan)
    return len(pending)
