"""Raw prompts: ingest a log of prompts an application sent, deduplicated by content hash, into families.

```
prompt_workspace/raw_prompts          one row per distinct prompt (sha256 of its text): embedding, count, first and
                                      last seen, meta of its first occurrence, logged response, family
prompt_workspace/prompt_occurrences   one row per log line: which prompt, when (an id derived from the line's content)
```

A log line's id is the hash of its prompt, time, meta and how many identical lines came before it in the same
source, so ingesting the same file again adds nothing, and ingesting a file that grew (a new day appended) adds only
the new lines. Only prompts never seen before are embedded and assigned to a family; a prompt seen again only has
its count and last seen updated. Files are read by the dataset readers (workspace/datasets.py), so a bad file
raises the same `DatasetError` naming the file, the line and the fix, before anything is written.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workspace.config import utc_now
from workspace.core import datasets
from workspace.display.formats import count
from workspace.display.results import render_record
from workspace.errors import DatasetError
from workspace.mining.families import JOIN_COVERAGE, Assigner
from workspace.storage import store, tables
from workspace.storage.embeddings import embed

__all__ = ['REQUEST_STORE', 'IngestReport', 'ingest_prompts', 'prompt_hash']

log = logging.getLogger(__name__)

#: The `source` that ingests the workspace's own request store (the prompts its evaluations sent).
REQUEST_STORE = 'request_store'
_CHUNK = 2000  # new prompts embedded and assigned at a time


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
    seconds: float = 0.0

    def __repr__(self) -> str:
        return (
            f'<IngestReport {self.source}: {self.lines} lines, {self.new_lines} new ({self.already_ingested} already '
            f'ingested); {self.new_prompts} new prompts, {self.seen_prompts} seen again; '
            f'{len(self.new_families)} new families, {len(self.joined)} families grew; '
            f'{self.template_versions} template versions; {self.seconds:.1f} s>'
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


@dataclass
class _Line:
    text: str
    at: datetime.datetime
    meta: dict[str, Any]
    expected: str | None
    hash: str = ''
    id: str = ''


def _lines(
    parsed: Any, text: str, at: str | None, meta: Sequence[str], expected: str | None, now: datetime.datetime
) -> list[_Line]:
    """Validate every record (raising on the first bad one, before anything is written) and return the lines."""
    if not parsed.records:
        raise DatasetError(f'{parsed.origin} has no prompts; it needs at least one line')
    for column, role in [(text, 'text'), *([(at, 'at')] if at else []), *[(m, 'meta') for m in meta]]:
        datasets.require_column(parsed, column, role)
    if expected is not None:
        datasets.require_column(parsed, expected, 'expected')
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
        out.append(
            _Line(
                text=str(value),  # kept exactly: whitespace can matter to a model
                at=_timestamp(record.values.get(at), where, at) if at else now,
                meta={m: record.values.get(m) for m in meta},
                expected=None if answer is None or not str(answer).strip() else str(answer),
            )
        )
    return out


def _with_ids(lines: list[_Line], source: str) -> None:
    repeats: Counter[str] = Counter()
    for line in lines:
        line.hash = prompt_hash(line.text)
        key = json.dumps([line.hash, line.at.isoformat(), line.meta], sort_keys=True, default=str, ensure_ascii=False)
        repeats[key] += 1
        line.id = hashlib.sha256(f'{source}\n{key}\n{repeats[key]}'.encode()).hexdigest()[:32]


def _existing(table: Any, column: str, keys: Sequence[str], *select: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(keys), 5000):
        chunk = list(keys[start : start + 5000])
        query = table.where(table[column].isin(chunk)).select(*[table[c] for c in (column, *select)])
        found.update({r[column]: dict(r) for r in query.collect()})
    return found


def _read(source: Any, text: str, at: str | None) -> tuple[Any, str]:
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
    source_name: str | None = None,
    threshold: float = JOIN_COVERAGE,
) -> IngestReport:
    """Append raw prompts from a log to the workspace, deduplicated, and assign the new ones to families.

    `source` is a CSV, JSONL or JSON file, a DataFrame, a list of dicts, or `'request_store'` (the prompts this
    workspace's evaluations sent; then `text='prompt', at='created_at'`). `text` names the column of the prompt,
    `at` the column of its time (ISO 8601 or epoch seconds; None: now), `meta` columns kept with each prompt, and
    `expected` the column of the logged response, which `family.to_dataset()` uses as the expected output.
    `source_name` identifies a DataFrame or list across calls (a file is identified by its path), so that appending
    to it ingests only the new lines. Ingesting the same lines again adds nothing.

    >>> report = ws.ingest_prompts('datasets/prompt_log.jsonl', meta=['app', 'user'], expected='response')
    """
    started = time.perf_counter()
    if isinstance(source, str) and source == REQUEST_STORE and at == 'timestamp':
        at = 'created_at'
    parsed, name = _read(source, text, at)
    name = source_name or name
    lines = _lines(parsed, text, at, list(meta), expected, utc_now())
    _with_ids(lines, name)

    occurrences = tables.prompt_occurrences()
    seen_ids = _existing(occurrences, 'occurrence_id', [line.id for line in lines])
    new_lines = [line for line in lines if line.id not in seen_ids]
    raw = tables.raw_prompts()
    hashes = list(dict.fromkeys(line.hash for line in lines))
    stored = _existing(raw, 'prompt_hash', hashes, 'occurrences', 'first_seen', 'last_seen', 'expected')
    if new_lines:
        occurrences.insert(
            [{'occurrence_id': x.id, 'prompt_hash': x.hash, 'at': x.at, 'source': name} for x in new_lines]
        )

    by_hash: dict[str, list[_Line]] = {}
    for line in lines:
        by_hash.setdefault(line.hash, []).append(line)
    fresh = sorted((h for h in hashes if h not in stored), key=lambda h: (min(x.at for x in by_hash[h]), h))
    report = IngestReport(name, len(lines), len(new_lines), len(lines) - len(new_lines), len(fresh), 0)
    if fresh:
        _assign(fresh, by_hash, name, threshold, report)
    _update_seen(raw, stored, new_lines, report)
    report.seconds = time.perf_counter() - started
    log.info('%r', report)
    return report


def _assign(fresh: list[str], by_hash: dict[str, list[_Line]], source: str, threshold: float, report: IngestReport):
    """Embed and assign the new prompts in time order, mining templates at each day boundary; store them."""
    raw = tables.raw_prompts()
    assigner = Assigner(threshold=threshold)
    seq = raw.count()
    day: datetime.date | None = None
    last_at: datetime.datetime | None = None
    for start in range(0, len(fresh), _CHUNK):
        chunk = fresh[start : start + _CHUNK]
        vectors = embed([by_hash[h][0].text for h in chunk])
        rows = []
        for h, vector in zip(chunk, vectors):
            group = by_hash[h]
            first = min(x.at for x in group)
            if day is not None and first.date() != day and last_at is not None:
                assigner.refresh(last_at)
            day, last_at = first.date(), first
            result = assigner.assign(h, group[0].text, vector, first)
            if result.new_family:
                report.new_families.append(result.family_id)
            else:
                report.joined[result.family_id] = report.joined.get(result.family_id, 0) + 1
            answers = [x.expected for x in sorted(group, key=lambda x: x.at) if x.expected is not None]
            rows.append(
                {
                    'prompt_hash': h,
                    'prompt': group[0].text,
                    'vector': vector,
                    'occurrences': len(group),
                    'first_seen': first,
                    'last_seen': max(x.at for x in group),
                    'meta': min(group, key=lambda x: x.at).meta or None,
                    'expected': answers[-1] if answers else None,
                    'source': source,
                    'seq': seq,
                    'family_id': result.family_id,
                    'confidence': result.confidence,
                    'reason': result.reason,
                    'assigned_at': utc_now(),
                }
            )
            seq += 1
        tables.insert_new(raw, rows, 'prompt_hash')
    if last_at is not None:
        assigner.refresh(last_at, force=True)
    report.template_versions = len(assigner.templates_out)
    assigner.save()


def _update_seen(raw: Any, stored: dict[str, dict[str, Any]], new_lines: list[_Line], report: IngestReport) -> None:
    """Add the new lines of prompts already stored to their count, last seen and logged response."""
    grouped: dict[str, list[_Line]] = {}
    for line in new_lines:
        if line.hash in stored:
            grouped.setdefault(line.hash, []).append(line)
    report.seen_prompts = len(grouped)
    if not grouped:
        return
    updates = []
    for h, group in grouped.items():
        old = stored[h]
        answers = [x.expected for x in sorted(group, key=lambda x: x.at) if x.expected is not None]
        updates.append(
            {
                'prompt_hash': h,
                'occurrences': old['occurrences'] + len(group),
                'first_seen': min(old['first_seen'], *(x.at for x in group)),
                'last_seen': max(old['last_seen'], *(x.at for x in group)),
                'expected': answers[-1] if answers else old['expected'],
            }
        )
    raw.batch_update(updates)
