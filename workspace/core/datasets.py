"""Datasets: examples imported from CSV, JSONL, JSON or a DataFrame into a Pixeltable table.

Every dataset has input fields (what templates may read), an expected output, a split and a stable example id.
A failed import or append raises `DatasetError` naming the file, the line and the fix, and changes nothing
already stored.
"""

from __future__ import annotations

import csv
import datetime
import difflib
import hashlib
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

import pandas as pd
import pixeltable as pxt

from workspace.config import project_root, resolve_path
from workspace.display.formats import count
from workspace.display.results import render_record
from workspace.errors import DatasetError
from workspace.storage import audit_log, reads, tables
from workspace.storage.reads import READS
from workspace.storage.recovery import Owner, pause_point

__all__ = ['Dataset', 'Task', 'import_dataset', 'get_dataset', 'list_datasets', 'DEFAULT_SPLIT_RATIOS']

log = logging.getLogger(__name__)

Task = Literal['choice', 'text', 'json']
Source: TypeAlias = 'str | Path | pd.DataFrame | Sequence[Mapping[str, Any]]'

DEFAULT_SPLIT_RATIOS: dict[str, float] = {'train': 0.6, 'dev': 0.2, 'test': 0.2}
#: Names a stored input or extra column may not take (compared in lower case, as Pixeltable stores them): the
#: internal columns and the template variables every version has.
_RESERVED = {
    'example_id': 'the example id',
    'expected': 'the expected output',
    'split': 'the split',
    'demos': "the template variable of a version's demos",
    'labels': "the template variable of a version's labels",
    'instructions': "the template variable of a version's instructions",
}
_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_]{0,63}$')
_IDENT = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


@dataclass
class _Record:
    where: str  # 'line 7' or 'row 7', for messages
    values: dict[str, Any]


@dataclass
class Parsed:
    origin: str  # the file name, or 'DataFrame'
    columns: list[str]
    records: list[_Record]


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b'\n') + 1
        raise DatasetError(
            f'{path.name}: line {line} is not valid UTF-8 (byte 0x{data[e.start]:02x}); '
            f're-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)'
        ) from None


# Python's csv module in strict mode, with checks of our own. It reports the physical line of every record, so a
# message can name the line where a bad value starts, and it lets us see which records span lines. pandas and
# pyarrow, tried on the same files, silently merge the lines a stray quote swallows, and rename (pandas: `text.1`)
# or drop (pyarrow) a repeated header name.
_CSV_FIELD_LIMIT = csv.field_size_limit()  # 128 KiB: a longer value is nearly always a quote that never closed


class _Lines:
    """The lines of a text, remembering those the csv reader took for the record it is reading."""

    def __init__(self, text: str) -> None:
        self._lines = iter(io.StringIO(text, newline=''))
        self.taken: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.taken.append(line)
        return line


def _is_complete_row(line: str, width: int) -> bool:
    return len(next(csv.reader([line.rstrip('\r\n')], quoting=csv.QUOTE_NONE), [])) == width


def _csv_error(origin: str, start: int, end: int, message: str) -> DatasetError:
    if 'field larger than field limit' in message:
        return DatasetError(
            f'{origin}: line {start} has a value longer than {_CSV_FIELD_LIMIT // 1024} KiB. Usually a quote at line '
            f'{start} opens a value that never closes and takes in the lines after it: check the quotes there. A '
            'value that really is this long belongs in a JSONL file (one JSON object per line)'
        )
    if 'unexpected end of data' in message:
        return DatasetError(
            f'{origin}: line {start} opens a quoted value that never closes (the file ends inside it); close the '
            'quote, or write a quote that is part of the text as two quotes ("")'
        )
    if 'expected after' in message:
        opened = f' (the value opened at line {start})' if start != end else ''
        return DatasetError(
            f'{origin}: line {end} has a quote inside a quoted value followed by more text{opened}; write a quote '
            'that is part of the text as two quotes (""), or remove the stray quote'
        )
    return DatasetError(f'{origin}: line {end} cannot be read as CSV ({message}); fix or remove it')


def _read_csv(path: Path, text: str) -> Parsed:
    """Parse a CSV file; refuse stray quotes, repeated header names and oversized values, naming the line.

    A quoted value may span lines (csv writers, Excel and pandas write text with line breaks so). It is taken for
    a stray quote, and refused, when every line it spans is by itself a complete row (as many comma-separated
    values as the header, quotes ignored): that is what a quote that never closed looks like after it has
    swallowed whole rows. Text whose every line has exactly the header's number of commas would be refused too;
    read such a file with pandas and import the DataFrame.
    """
    lines = _Lines(text)
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    records = []
    while True:
        lines.taken.clear()
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise _csv_error(path.name, start, reader.line_num, str(e)) from None
        if all(not value.strip() for value in row):
            continue  # a blank line
        if header is None:
            header = [c.strip() for c in row]
            first: dict[str, int] = {}
            for number, column in enumerate(header, start=1):
                if column and column in first:
                    raise DatasetError(
                        f'{path.name}: line {start}: the header names column {column!r} twice (columns '
                        f'{first[column]} and {number}); rename one of them in the file'
                    )
                first.setdefault(column, number)
            continue
        where = f'line {start}'
        if len(lines.taken) > 1 and all(_is_complete_row(line, len(header)) for line in lines.taken):
            raise DatasetError(
                f'{path.name}: lines {start} to {reader.line_num} were read as one row because a quote at line '
                f'{start} opens a value that only closes at line {reader.line_num}; each of those lines looks like '
                'a row of its own. Remove the stray quote or write it as two quotes (""). If the value really spans '
                'those lines, read the file with pandas and import the DataFrame'
            )
        if len(row) > len(header):
            raise DatasetError(
                f'{path.name}: {where} has more fields than the header ({len(header)}); quote values that contain '
                'commas'
            )
        if len(row) < len(header):
            raise DatasetError(f'{path.name}: {where} has fewer fields than the header ({len(header)})')
        records.append(_Record(where, {c: v for c, v in zip(header, row) if c}))
    if header is None:
        raise DatasetError(f'{path.name} is empty; it needs a header row and at least one example')
    return Parsed(path.name, [c for c in header if c], records)


def _read_jsonl(path: Path, text: str) -> Parsed:
    records = []
    columns: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f'{path.name}: line {number} is not valid JSON ({e.msg}); fix or remove it') from None
        if not isinstance(value, dict):
            raise DatasetError(
                f'{path.name}: line {number} is a JSON {type(value).__name__}, not an object; '
                'each line must be one object such as {"text": "...", "label": "..."}'
            )
        columns.update(dict.fromkeys(value))
        records.append(_Record(f'line {number}', value))
    return Parsed(path.name, list(columns), records)


def _read_json(path: Path, text: str) -> Parsed:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f'{path.name}: not valid JSON at line {e.lineno} ({e.msg})') from None
    if not isinstance(value, list):
        raise DatasetError(f'{path.name}: expected a JSON list of objects, found a {type(value).__name__}')
    return parse_records(path.name, value, 'item')


def parse_records(origin: str, items: Sequence[Any], unit: str = 'row') -> Parsed:
    """Parse a list of dicts (rows of a file, items of a JSON list) into records with the union of their keys."""
    records, columns = [], {}
    for number, item in enumerate(items, start=1):
        if not isinstance(item, Mapping):
            raise DatasetError(f'{origin}: {unit} {number} is a {type(item).__name__}, not a mapping of fields')
        columns.update(dict.fromkeys(item))
        records.append(_Record(f'{unit} {number}', dict(item)))
    return Parsed(origin, list(columns), records)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return '\0' in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


def _refuse_nul(parsed: Parsed) -> Parsed:
    """Raise DatasetError naming the line and column of the first NUL byte; PostgreSQL cannot store one in text,
    and replacing it (Pixeltable writes a space) would change the example silently."""
    for column in parsed.columns:
        if '\0' in str(column):
            raise DatasetError(f'{parsed.origin}: the header has a NUL byte (\\x00) in column {column!r}; remove it')
    for record in parsed.records:
        for column, value in record.values.items():
            if _has_nul(value):
                raise DatasetError(
                    f'{parsed.origin}: {record.where}, column {column!r}, holds a NUL byte (\\x00), which cannot be '
                    "stored in text; remove it from the source (e.g. tr -d '\\000' < in.csv > out.csv)"
                )
    return parsed


def parse_source(source: Source) -> Parsed:
    """Read a CSV, JSONL or JSON file, a DataFrame or a list of dicts into records, refusing defects by line."""
    return _refuse_nul(_parse_source(source))


def _parse_source(source: Source) -> Parsed:
    if isinstance(source, pd.DataFrame):
        frame = source.astype(object).where(source.notna(), None)
        return parse_records('DataFrame', frame.to_dict(orient='records'))
    if isinstance(source, (str, Path)):
        path = resolve_path(source)
        if path.is_dir():
            raise DatasetError(f'{str(path)!r} is a folder; give the path of a CSV, JSONL or JSON file in it')
        if not path.is_file():
            raise DatasetError(
                f'dataset file {str(source)!r} does not exist (looked in the working directory {Path.cwd()} and '
                f'the project {project_root()})'
            )
        text = _decode(path, path.read_bytes())
        if not text.strip():
            raise DatasetError(f'{path.name} is empty; it needs at least one example')
        suffix = path.suffix.lower()
        if suffix == '.csv':
            return _read_csv(path, text)
        if suffix in ('.jsonl', '.ndjson'):
            return _read_jsonl(path, text)
        if suffix == '.json':
            return _read_json(path, text)
        raise DatasetError(f'{path.name}: unknown file type {suffix!r}; use .csv, .jsonl or .json')
    if isinstance(source, Sequence):
        return parse_records('rows', source)
    raise DatasetError(f'cannot import a {type(source).__name__}; give a file path, a DataFrame or a list of dicts')


def _rename(parsed: Parsed, rename: Mapping[str, str] | None) -> Parsed:
    """Return `parsed` with source columns renamed (`{'Split': 'split_src'}`), before anything else reads them."""
    if not rename:
        return parsed
    for old, new in rename.items():
        require_column(parsed, old, 'a column to rename')
        if not isinstance(new, str) or not _IDENT.match(new):
            raise DatasetError(f'rename: the new name {new!r} of {old!r} is not valid; use letters, digits and _')
    columns = [rename.get(c, c) for c in parsed.columns]
    seen: dict[str, str] = {}
    for before, after in zip(parsed.columns, columns):
        if after.lower() in seen:
            raise DatasetError(
                f'rename: {parsed.origin} would have two columns named {after!r} (from {seen[after.lower()]!r} and '
                f'{before!r}); pick another new name'
            )
        seen[after.lower()] = before
    records = [_Record(r.where, {rename.get(k, k): v for k, v in r.values.items()}) for r in parsed.records]
    return Parsed(parsed.origin, columns, records)


def _check_stored_name(origin: str, column: str, role: str) -> None:
    """Refuse an input or extra column whose stored (lower-case) name is not a field name or is reserved."""
    fix = f"rename it in the file or pass rename={{{column!r}: '{column.lower()}_src'}}"
    if not _IDENT.match(column):
        raise DatasetError(
            f'{origin}: column {column!r} (given as {role}) is not a usable field name (letters, digits and _); '
            f"rename it in the file or pass rename={{{column!r}: 'new_name'}}"
        )
    if column.lower() in _RESERVED:
        raise DatasetError(
            f'{origin}: column {column!r} (given as {role}) would be stored as {column.lower()!r}, which the '
            f'workspace keeps for {_RESERVED[column.lower()]}; {fix}'
        )


def require_column(parsed: Parsed, column: str, role: str) -> None:
    """Raise DatasetError naming the closest column if `column` (used as `role`) is not among the parsed ones."""
    if column in parsed.columns:
        return
    close = difflib.get_close_matches(column, parsed.columns, n=1)
    hint = f'; did you mean {close[0]!r}?' if close else ''
    raise DatasetError(
        f'{parsed.origin} has no column {column!r} (given as {role}){hint} Its columns are: {", ".join(parsed.columns)}'
    )


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == [] or value == {}


def _clean_scalar(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip() if isinstance(value, str) else str(value)


def _derived_id(inputs: Mapping[str, Any]) -> str:
    return 'ex-' + hashlib.sha1(json.dumps(inputs, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:10]


def _bucket(seed: int, key: str) -> float:
    digest = hashlib.sha256(f'{seed}:{key}'.encode()).digest()
    return int.from_bytes(digest[:8], 'big') / 2**64


def _assign_splits(rows: list[dict[str, Any]], ratios: Mapping[str, float], seed: int, stratify: bool) -> None:
    """Give each row a split, stratified by expected output for label tasks, reproducible from `seed`."""
    total = sum(ratios.values())
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row['expected']) if stratify else '', []).append(row)
    for group in groups.values():
        group.sort(key=lambda r: _bucket(seed, r['example_id']))
        start = 0.0
        bounds = []
        for name, ratio in ratios.items():
            start += ratio / total
            bounds.append((round(start * len(group)), name))
        index = 0
        for position, row in enumerate(group):
            while position >= bounds[index][0] and index < len(bounds) - 1:
                index += 1
            row['split'] = bounds[index][1]


def _infer_task(values: list[Any]) -> Task:
    if any(isinstance(v, dict) for v in values):
        return 'json'
    if any(isinstance(v, list) for v in values):
        return 'text'
    # Short answers that repeat are labels; anything longer, or short answers that are mostly unique, is text to be
    # scored by overlap. Up to 100 distinct answers count as labels whatever the size; more (intent sets of 150
    # labels, CLINC150) when each occurs 10 times on average: a text task's short answers rarely repeat so.
    distinct = {str(v) for v in values}
    short = all(len(v) <= 64 and len(v.split()) <= 4 for v in distinct)
    if short and (len(distinct) <= 100 or len(distinct) * 10 <= len(values)):
        return 'choice'
    return 'text'


def _column_type(values: list[Any], required: bool) -> Any:
    kind = pxt.Json if any(isinstance(v, (dict, list)) for v in values) else pxt.String
    return kind if required else kind | None


@dataclass
class _Spec:
    inputs: list[str]
    expected: str
    split: str | None
    id: str | None
    extras: list[str] = field(default_factory=list)


def _validate(parsed: Parsed, spec: _Spec) -> list[dict[str, Any]]:
    """Return the rows to store (example_id, inputs, expected, split, extras) or raise naming the first problem."""
    if not parsed.records:
        raise DatasetError(f'{parsed.origin} has a header but no examples; add at least one row')
    for column, role in [(c, 'input') for c in spec.inputs] + [(spec.expected, 'expected')]:
        require_column(parsed, column, role)
    for column, role in [(c, 'input') for c in spec.inputs] + [(c, 'keep') for c in spec.extras]:
        require_column(parsed, column, role)
        _check_stored_name(parsed.origin, column, role)
    if spec.expected in spec.inputs:
        raise DatasetError(f'{spec.expected!r} is both an input and the expected output; the answer would leak')
    stored = [c.lower() for c in [*spec.inputs, *spec.extras]]
    if len(set(stored)) != len(stored):
        raise DatasetError(
            f'columns {[*spec.inputs, *spec.extras]!r} differ only in case; Pixeltable stores names in lower case, '
            'so rename one of them'
        )
    for optional, role in ((spec.split, 'split'), (spec.id, 'id')):
        if optional is not None:
            require_column(parsed, optional, role)
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for record in parsed.records:
        values = record.values
        where = f'{parsed.origin}: {record.where}'
        row: dict[str, Any] = {}
        for column in spec.inputs:
            if _is_empty(values.get(column)):
                raise DatasetError(f'{where} has an empty input {column!r}; fill it in or remove the row')
            row[column.lower()] = _clean_scalar(values[column])
        if _is_empty(values.get(spec.expected)):
            raise DatasetError(f'{where} has no expected output in {spec.expected!r}; fill it in or remove the row')
        row['expected'] = _clean_scalar(values[spec.expected])
        if spec.id is not None:
            if _is_empty(values.get(spec.id)):
                raise DatasetError(f'{where} has an empty id in {spec.id!r}; give every row a unique id')
            example_id = str(_clean_scalar(values[spec.id]))
        else:
            base = example_id = _derived_id({c.lower(): row[c.lower()] for c in spec.inputs})
            suffix = 2
            while example_id in seen:  # identical inputs twice: keep both, with distinct ids
                example_id, suffix = f'{base}-{suffix}', suffix + 1
        if example_id in seen:
            raise DatasetError(f'{where} repeats id {example_id!r} (first at {seen[example_id]}); ids must be unique')
        seen[example_id] = record.where
        row['example_id'] = example_id
        if spec.split is not None:
            if _is_empty(values.get(spec.split)):
                raise DatasetError(f'{where} has an empty split in {spec.split!r}; use train, dev or test')
            row['split'] = str(values[spec.split]).strip()
        for column in spec.extras:
            value = values.get(column)
            row[column.lower()] = None if _is_empty(value) else _clean_scalar(value)
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Dataset:
    """A handle on one dataset table: its input fields, its task and its rows.

    A handle made by `get_dataset('tickets:3')` is pinned to table version 3: it reads the rows as they were then
    (Pixeltable keeps every version of a table) and refuses to change them.
    """

    name: str
    inputs: tuple[str, ...]
    task: Task
    meta: dict[str, Any]
    #: The table version this handle reads, or None for the live table.
    pinned: int | None = None

    def __repr__(self) -> str:
        return f'<Dataset {self.ref} inputs={list(self.inputs)} task={self.task} rows={len(self)}>'

    @property
    def ref(self) -> str:
        """Return how to name this handle again: `tickets`, or `tickets:3` when pinned to a version."""
        return self.name if self.pinned is None else f'{self.name}:{self.pinned}'

    def _repr_html_(self) -> str:
        return render_record(
            f'Dataset {self.name}',
            [
                ('rows', count(len(self))),
                ('input fields', ', '.join(self.inputs)),
                ('task', self.task),
                ('table version', self.version),
            ],
        )

    @property
    def table(self) -> pxt.Table:
        """Return the Pixeltable table holding the examples (read-only at the pinned version, if any)."""
        if self.pinned is not None:
            return _versioned_table(self.name, self.pinned)
        table = tables.open_table(tables.dataset_path(self.name))
        if table is None:
            _recover_staging()  # a replace-import may have died between its two moves
            table = tables.open_table(tables.dataset_path(self.name))
        if table is None:
            raise DatasetError(f'dataset {self.name!r} no longer exists')
        return table

    @property
    def version(self) -> int:
        """Return the table version: it changes with every append or correction (the pinned one, if pinned)."""
        if self.pinned is not None:
            return self.pinned
        return reads.table_key(self.table)[1]

    def at(self, version: int | None) -> Dataset:
        """Return this dataset pinned to table `version` (None: the live table).

        >>> tickets.at(3).rows('dev')  # the dev rows as they were at table version 3
        """
        if version is None:
            return get_dataset(self.name)
        return get_dataset(self.name, version=version)

    def _writable(self, action: str) -> pxt.Table:
        if self.pinned is not None:
            raise DatasetError(
                f'{self.ref} is dataset {self.name!r} pinned to table version {self.pinned}, which never changes; '
                f'{action} the live dataset instead: ws.get_dataset({self.name!r})'
            )
        return self.table

    @property
    def extras(self) -> list[str]:
        return list(self.meta.get('extras', []))

    def __len__(self) -> int:
        return self.table.count()

    def labels(self) -> list[str]:
        """Return the distinct expected outputs of a label dataset, sorted."""
        t = self.table
        return sorted({str(r['expected']) for r in t.select(t.expected).collect()})

    def splits(self) -> dict[str, int]:
        """Return the number of examples in each split."""
        t = self.table

        def read() -> dict[str, int]:
            from pixeltable.functions import count

            counted = t.group_by(t.split).select(t.split, n=count(t.example_id)).collect()  # one row per split
            return dict(sorted((r['split'], int(r['n'])) for r in counted))

        return dict(READS.get(t, 'splits', read))

    def rows(self, split: str | None = None) -> list[dict[str, Any]]:
        """Return the examples (of one split, or all) as dicts, ordered by example id."""
        t = self.table
        columns = ['example_id', *self.inputs, 'expected', 'split', *self.extras]

        def read() -> list[dict[str, Any]]:
            query = t.where(t.split == split) if split is not None else t
            return list(query.select(*[t[c] for c in columns]).order_by(t.example_id).collect())

        rows = [dict(r) for r in READS.get(t, ('rows', split, tuple(columns)), read)]
        if split is not None and not rows:
            raise DatasetError(
                f'dataset {self.name!r} has no examples in split {split!r}; its splits are: '
                + ', '.join(f'{k} ({v})' for k, v in self.splits().items())
            )
        return rows

    def demos(self, per_label: int = 1, split: str = 'train') -> list[dict[str, Any]]:
        """Return few-shot demos from a split: `per_label` examples of each expected output (first by example id),
        as dicts of input fields and `expected`, grouped by label. For a text task, `per_label` examples in all.

        >>> v2 = ws.edit(v1, template=FEW_SHOT_TEMPLATE, demos=tickets.demos(per_label=1))
        """
        by_label: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows(split):
            by_label.setdefault(str(row['expected']) if self.task == 'choice' else '', []).append(row)
        return [
            {**{k: row[k] for k in self.inputs}, 'expected': row['expected']}
            for label in sorted(by_label)
            for row in by_label[label][:per_label]
        ]

    def to_pandas(self, split: str | None = None) -> pd.DataFrame:
        """Return the examples as a DataFrame."""
        return pd.DataFrame(self.rows(split))

    def append(
        self,
        source: Source,
        *,
        split: str | None = None,
        id: str | None = None,
        seed: int = 0,
        rename: Mapping[str, str] | None = None,
    ) -> int:
        """Add examples with the same columns; return how many were added. Existing ids are an error.

        `rename` renames source columns first, as in `import_dataset`; by default the import's `rename` applies.

        >>> tickets.append([{'id': 't201', 'text': 'Where is my parcel?', 'category': 'DELIVERY', 'split': 'dev'}])
        """
        spec = _Spec(
            list(self.meta.get('input_columns', self.inputs)),
            self.meta['expected_column'],
            split or self.meta.get('split_column'),
            id or self.meta.get('id_column'),
            list(self.meta.get('extra_columns', self.extras)),
        )
        parsed = _rename(parse_source(source), self.meta.get('rename') if rename is None else rename)
        spec.extras = [c for c in spec.extras if c in parsed.columns]
        rows = _validate(parsed, spec)
        if spec.split is None:
            ratios = self.meta.get('split_ratios') or DEFAULT_SPLIT_RATIOS
            for row in rows:
                row['split'] = _hash_split(row['example_id'], ratios, self.meta.get('seed', seed))
        t = self._writable('append to')
        clash = t.where(t.example_id.isin([r['example_id'] for r in rows])).select(t.example_id).collect()
        if len(clash):
            ids = ', '.join(sorted(r['example_id'] for r in clash)[:5])
            raise DatasetError(
                f'{parsed.origin}: ids already in dataset {self.name!r}: {ids}; '
                'use dataset.correct(id, expected) to change an expected output'
            )
        t.insert(rows)
        audit_log.record('dataset.appended', self.name, after={'rows': len(rows), 'version': self.version})
        return len(rows)

    def correct(self, example_id: str, expected: Any) -> int:
        """Set the expected output of one example; its scores recompute with no model call. Return the new
        dataset version. Runs made before keep their scores: they read the version they were made on.

        >>> tickets.correct('t017', 'REFUND')
        """
        t = self._writable('correct')
        found = t.where(t.example_id == example_id).select(t.expected).collect()
        if not len(found):
            raise DatasetError(f'dataset {self.name!r} has no example {example_id!r}')
        if _is_empty(expected):
            raise DatasetError(f'the expected output for {example_id!r} is empty; give a value')
        value = _clean_scalar(expected)
        t.update({'expected': value}, where=t.example_id == example_id)
        version = self.version
        evals = tables.open_table(tables.eval_path(self.name))
        if evals is not None:
            evals.update({'expected': value, 'dataset_version': version}, where=evals.example_id == example_id)
        audit_log.record('dataset.corrected', f'{self.name}/{example_id}', before=found[0]['expected'], after=value)
        return version


def _hash_split(example_id: str, ratios: Mapping[str, float], seed: int) -> str:
    point, start = _bucket(seed, example_id) * sum(ratios.values()), 0.0
    for name, ratio in ratios.items():
        start += ratio
        if point < start:
            return name
    return list(ratios)[-1]


def _stored_rows(dataset: Dataset) -> list[dict[str, Any]]:
    return dataset.rows()


def import_dataset(
    name: str,
    source: Source,
    *,
    input: str | Sequence[str],
    expected: str,
    split: str | None = None,
    id: str | None = None,
    task: Task | None = None,
    split_ratios: Mapping[str, float] | None = None,
    seed: int = 0,
    keep: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
    if_exists: Literal['error', 'ignore', 'replace'] = 'error',
) -> Dataset:
    """Import examples from a CSV, JSONL or JSON file, a DataFrame or a list of dicts into dataset `name`.

    `input` names the fields templates may read, `expected` the expected output. `split` names a column with
    train/dev/test; without it a split is made, stratified by expected output for label tasks, reproducible from
    `seed`. `id` names a column of unique example ids; without it ids derive from the inputs. `keep` names extra
    columns to store alongside (e.g. a note). `rename` renames source columns before anything else reads them, e.g.
    `rename={'Split': 'split_src'}` for a column whose name the workspace reserves (`example_id`, `expected`,
    `split`, `demos`, `labels`, `instructions`, in any case); the other arguments use the new names. Importing the
    same rows again returns the stored dataset; different rows under an existing name are an error unless
    `if_exists='replace'` (which drops its evaluations too). `task` is `choice` (labels), `text` or `json`; when not
    given it is inferred: short expected outputs (up to 4 words) are labels if there are at most 100 distinct ones
    or each occurs 10 times on average, dicts are json, anything else is text.

    >>> tickets = import_dataset('support_tickets', 'datasets/support_tickets.csv', input=['text'],
    ...                          expected='category', split='split', id='id')
    """
    if not _NAME.match(name):
        raise DatasetError(f'dataset name {name!r} is not valid; use letters, digits and _, starting with a letter')
    inputs = [input] if isinstance(input, str) else list(input)
    if not inputs:
        raise DatasetError('give at least one input field, e.g. input=["text"]')
    ratios = dict(split_ratios or DEFAULT_SPLIT_RATIOS)
    if any(r < 0 for r in ratios.values()) or sum(ratios.values()) <= 0:
        raise DatasetError(f'split_ratios {ratios!r} must be non-negative and add up to more than 0')
    parsed = _rename(parse_source(source), rename)
    extras = [c for c in keep if c not in inputs]
    spec = _Spec(inputs, expected, split, id, extras)
    rows = _validate(parsed, spec)
    task = task or _infer_task([r['expected'] for r in rows])
    if split is None:
        _assign_splits(rows, ratios, seed, stratify=task == 'choice')

    stored_inputs = [c.lower() for c in inputs]
    stored_extras = [c.lower() for c in extras]
    existing = get_dataset(name, missing_ok=True)
    if existing is not None and if_exists == 'ignore':
        return existing
    if existing is not None and if_exists == 'error':
        stored = {r['example_id']: r for r in _stored_rows(existing)}
        new = {r['example_id']: r for r in rows}
        keys = ['example_id', *stored_inputs, 'expected', 'split']
        changed = [i for i in new if i in stored and any(stored[i].get(k) != new[i].get(k) for k in keys)]
        added = [i for i in new if i not in stored]
        removed = [i for i in stored if i not in new]
        if not (changed or added or removed) and list(existing.inputs) == stored_inputs:
            return existing
        raise DatasetError(
            f'dataset {name!r} already exists with different rows ({len(added)} new, {len(changed)} changed, '
            f'{len(removed)} missing). Add rows with dataset.append(...), fix an expected output with '
            "dataset.correct(id, value), or pass if_exists='replace' to start over (drops its evaluations)"
        )

    if stored_inputs != inputs:
        log.info('input fields are stored in lower case (%s): templates read them so', ', '.join(stored_inputs))
    meta = {
        'inputs': stored_inputs,
        'input_columns': inputs,
        'extra_columns': extras,
        'expected_column': expected,
        'split_column': split,
        'id_column': id,
        'rename': dict(rename or {}),
        'task': task,
        'extras': stored_extras,
        'split_ratios': None if split else ratios,
        'seed': seed,
        'source': str(source) if isinstance(source, (str, Path)) else parsed.origin,
        'imported_at': datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    schema: dict[str, Any] = {'example_id': pxt.String}
    for column in stored_inputs:
        schema[column] = _column_type([r[column] for r in rows], required=True)
    schema['expected'] = _column_type([r['expected'] for r in rows], required=True)
    schema['split'] = pxt.String
    for column in stored_extras:
        schema[column] = _column_type([r[column] for r in rows if r[column] is not None], required=False)

    _store(name, schema, meta, rows, replace=existing is not None, origin=parsed.origin)
    log.info('imported %d examples into dataset %r', len(rows), name)
    audit_log.record('dataset.imported', name, after={'rows': len(rows), 'source': meta['source']})
    return get_dataset(name)


#: Seconds after which a staging table of an import on another host counts as abandoned (a large import takes
#: minutes), and after which the set-aside copy of a replace-import on another host is put back (the two moves
#: around it take milliseconds). On this host a dead process id decides at once.
_STALE_STAGING_S = 24 * 3600
_STALE_ASIDE_S = 60


def _staging_path(name: str, kind: Literal['new', 'old'], owner: Owner) -> str:
    return f'{tables.STAGING_DIR}/{name}__{kind}_{owner.token}'


def _store(
    name: str, schema: dict[str, Any], meta: dict[str, Any], rows: list[dict[str, Any]], *, replace: bool, origin: str
) -> None:
    """Build the dataset table under a staging name and move it into place.

    A failure or a crash at any point leaves the stored dataset or the new one under `name`, never neither: the
    old table is moved aside (not dropped) before the new one moves in, and `_recover_staging` puts it back if
    the process died between the two moves.
    """
    tables.ensure_dirs()
    _recover_staging()
    owner = Owner.current()
    staging, target = _staging_path(name, 'new', owner), tables.dataset_path(name)
    table = pxt.create_table(staging, schema, primary_key='example_id', custom_metadata=meta)
    pause_point('import.staged')
    try:
        table.insert(rows)
    except Exception as e:
        pxt.drop_table(staging, if_not_exists='ignore')
        raise DatasetError(f'{origin}: could not store the examples: {e}') from e
    pause_point('import.inserted')
    aside = _staging_path(name, 'old', owner)
    if replace:
        pxt.drop_table(tables.eval_path(name), if_not_exists='ignore')  # evaluations of the old rows
        try:
            pxt.move(target, aside)
        except Exception as e:
            pxt.drop_table(staging, if_not_exists='ignore')
            raise DatasetError(f'dataset {name!r} changed while importing {origin} ({e}); import again') from e
        pause_point('import.aside')
    try:
        pxt.move(staging, target)
    except Exception as e:
        pxt.drop_table(staging, if_not_exists='ignore')
        if replace:
            pxt.move(aside, target, if_exists='ignore', if_not_exists='ignore')
        raise DatasetError(f'dataset {name!r} changed while importing {origin} ({e}); import again') from e
    if replace:
        pxt.drop_table(aside, if_not_exists='ignore')


def _recover_staging() -> None:
    """Finish what crashed imports left: put back a dataset that a replace-import had moved aside when the
    process died before moving the new one in, and drop the staging tables of imports whose process is gone."""
    try:
        paths = pxt.list_tables(tables.STAGING_DIR, recursive=False)
    except Exception:  # no staging directory yet
        return
    for path in paths:
        name, _, rest = path.rsplit('/', 1)[-1].rpartition('__')
        kind, _, token = rest.partition('_')
        owner = Owner.from_token(token)
        if not name or kind not in ('new', 'old') or owner is None:
            continue
        if not owner.is_gone(stale_after_s=_STALE_ASIDE_S if kind == 'old' else _STALE_STAGING_S):
            continue
        if kind == 'old' and tables.open_table(tables.dataset_path(name)) is None:
            pxt.move(path, tables.dataset_path(name), if_exists='ignore', if_not_exists='ignore')
            log.warning('dataset %r: put back the stored rows after an interrupted replace-import', name)
        pxt.drop_table(path, if_not_exists='ignore')
        log.info('dropped %s, left by an interrupted import', path)


_PINNED = re.compile(r'^(?P<name>[A-Za-z][A-Za-z0-9_]{0,63}):v?(?P<version>\d+)$')


def _versioned_table(name: str, version: int) -> pxt.Table:
    """Return dataset `name`'s table as it was at `version` (read-only), or raise naming the versions it has."""
    live = tables.open_table(tables.dataset_path(name))
    if live is None:
        raise DatasetError(f'dataset {name!r} no longer exists')
    current = int(live.get_metadata()['version'])
    first = min(int(v['version']) for v in live.get_versions() if v['inserts'] or v['version'] == current)
    if not first <= version <= current:
        raise DatasetError(
            f'dataset {name!r} has no table version {version}; its versions with rows are {first} to {current} '
            f'(the latest: ws.get_dataset({name!r}).version)'
        )
    return cast(pxt.Table, pxt.get_table(f'{tables.dataset_path(name)}:{version}'))


def get_dataset(name: str | Dataset, *, version: int | None = None, missing_ok: bool = False) -> Dataset:
    """Return the dataset called `name`; `'name:3'` or `version=3` pins it to table version 3.

    A pinned dataset reads its rows as they were at that version (before later appends and corrections), so
    `ws.evaluate(v, 'tickets:3')` evaluates exactly those examples and expected outputs.

    >>> tickets = get_dataset('support_tickets')
    >>> before = get_dataset('support_tickets:2')
    """
    if isinstance(name, Dataset):
        return name if version is None or version == name.pinned else get_dataset(name.name, version=version)
    match = _PINNED.match(name) if isinstance(name, str) else None
    if match:
        if version is not None and version != int(match['version']):
            raise DatasetError(f'{name!r} names table version {match["version"]} but version={version} was given')
        name, version = match['name'], int(match['version'])
    table = tables.open_table(tables.dataset_path(name))
    if table is None:
        _recover_staging()  # a replace-import may have died between its two moves
        table = tables.open_table(tables.dataset_path(name))
    if table is None:
        if missing_ok:
            return None  # type: ignore[return-value]
        known = list_datasets()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f' Did you mean {close[0]!r}?' if close else ''
        raise DatasetError(
            f'no dataset {name!r}.{hint} Known datasets: {", ".join(known) or "none yet"}; '
            'import one with ws.import_dataset(...)'
        )
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int):
            raise DatasetError(f'version={version!r} is not a table version; give a whole number such as 3')
        table = _versioned_table(name, version)
    meta = reads.metadata(table)['custom_metadata'] or {}  # a pinned handle is keyed by its own version
    return Dataset(name=name, inputs=tuple(meta['inputs']), task=meta['task'], meta=meta, pinned=version)


def list_datasets() -> list[str]:
    """Return the names of the datasets in the workspace."""
    tables.open_table(tables.VERSIONS)  # connects
    try:
        paths = pxt.list_tables(tables.DATASETS_DIR, recursive=False)
    except Exception:
        return []
    names = [p.rsplit('/', 1)[-1] for p in paths]
    return sorted(names)
