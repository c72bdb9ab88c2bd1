"""kill -9 during `ingest_prompts`: whatever point the ingest dies at, every family a raw prompt points to is in
`families()`, and the next ingest completes what was missing, so every count matches a clean ingest."""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import pytest
from conftest import ROOT

from reliability.conftest import kill_at
from workspace.errors import DatasetError
from workspace.storage import tables

LINES = 400
INGEST = """
from workspace.mining import prompt_log
prompt_log.BATCH = int(sys.argv[2])
if prompt_log.BATCH < 400:  # pause at the point's second time: in the second batch
    seen, real = [], prompt_log.pause_point
    def second(name):
        seen.append(name)
        if seen.count(name) > 1:
            real(name)
    prompt_log.pause_point = second
ws.ingest_prompts(sys.argv[1], meta=['app'])
"""


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    """The bundled log's first 400 lines (7 templates, retries, near duplicates, one-offs), in 4 applications."""
    path = tmp_path / 'log.jsonl'
    with (ROOT / 'datasets' / 'prompt_log.jsonl').open(encoding='utf-8') as f:
        path.write_text(''.join(next(f) for _ in range(LINES)), encoding='utf-8')
    return path


def _state() -> dict[str, object]:
    """Return what must agree after an ingest: families by member, counts, lines, templates."""
    raw, occ, fam = tables.raw_prompts(), tables.prompt_occurrences(), tables.families()
    rows = list(raw.select(raw.prompt_hash, raw.family_id, raw.occurrences).collect())
    states = {r['family_id']: dict(r) for r in fam.collect()}
    return {
        'members': {r['prompt_hash']: r['family_id'] for r in rows},
        'occurrences': sum(r['occurrences'] for r in rows),
        'lines': occ.count(),
        'sizes': {f: s['n'] for f, s in states.items() if s['status'] == 'active' and s['n']},
        'templates': tables.family_templates().count(),
    }


def _counts_agree(ws, state: dict) -> None:  # type: ignore[no-untyped-def]
    sizes: dict[str, int] = {}
    for family in state['members'].values():
        sizes[family] = sizes.get(family, 0) + 1
    assert state['sizes'] == sizes, 'a family state counts other members than raw_prompts holds'
    assert state['occurrences'] == state['lines'] == LINES
    listed = ws.families()
    assert listed['traffic'].sum() == LINES and listed['size'].sum() == len(state['members'])


@pytest.mark.parametrize(
    ('point', 'batch'),
    [
        ('ingest.journaled', 10_000),  # the plan stored, nothing applied
        ('ingest.families', 10_000),  # families written, no raw prompt yet
        ('ingest.raw', 10_000),  # raw prompts written, no occurrence yet
        ('ingest.occurrences', 10_000),  # all but the history and the journal's mark
        ('ingest.raw', 150),  # the second of three batches half written
    ],
)
def test_a_killed_ingest_leaves_no_dangling_family_and_a_rerun_completes_it(ws, log_file, point, batch):
    clean = ws.ingest_prompts(log_file, meta=['app'])
    expected = _state()
    _counts_agree(ws, expected)
    import pixeltable as pxt

    from workspace import config

    pxt.drop_dir(config.ROOT_DIR, force=True)
    kill_at(f'sys.argv = ["-", {str(log_file)!r}, "{batch}"]\n' + INGEST, point)

    killed = _state()
    listed = set(ws.families(include_merged=True)['family_id'])
    dangling = set(killed['members'].values()) - listed
    assert not dangling, f'{len(dangling)} family ids that raw prompts point to are not in families()'
    assert tables.ingest_journal().where(tables.ingest_journal().status == 'pending').count() == 1

    rerun = ws.ingest_prompts(log_file, meta=['app'])
    assert rerun.recovered == 1
    after = _state()
    _counts_agree(ws, after)
    assert after['members'] == expected['members'], 'the completed ingest made other families than a clean one'
    assert after['templates'] == expected['templates']
    again = ws.ingest_prompts(log_file, meta=['app'])
    assert (again.new_lines, again.recovered) == (0, 0) and clean.new_lines == LINES


def test_the_same_log_under_another_name_is_not_counted_twice(ws, log_file, tmp_path):
    ws.ingest_prompts(log_file, meta=['app'])
    copy = tmp_path / 'renamed.jsonl'
    copy.write_text(log_file.read_text(encoding='utf-8'), encoding='utf-8')
    report = ws.ingest_prompts(copy, meta=['app'])
    assert (report.new_lines, report.already_ingested) == (0, LINES)
    frame = [json.loads(x) for x in log_file.read_text(encoding='utf-8').splitlines()]
    assert ws.ingest_prompts(frame, meta=['app'], source_name='a list').new_lines == 0
    assert tables.prompt_occurrences().count() == LINES


def test_a_nul_character_is_refused_before_anything_is_written(ws, log_file, tmp_path):
    lines = log_file.read_text(encoding='utf-8').splitlines()
    bad = json.loads(lines[250])
    bad['prompt'] = bad['prompt'][:20] + '\x00' + bad['prompt'][20:]
    lines[250] = json.dumps(bad)
    path = tmp_path / 'nul.jsonl'
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    with pytest.raises(DatasetError, match=r"nul.jsonl: line 251, column 'prompt', holds a NUL byte"):
        ws.ingest_prompts(path, meta=['app'])
    assert tables.prompt_occurrences().count() == 0 and tables.raw_prompts().count() == 0
    assert tables.families().count() == 0
    lines[250] = json.dumps({**bad, 'prompt': bad['prompt'].replace('\x00', '')})
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    assert ws.ingest_prompts(path, meta=['app']).new_lines == LINES


@pytest.mark.parametrize('earlier', ['plain JSON', 'deflated'])
def test_a_plan_stored_by_an_earlier_release_is_completed(ws, log_file, earlier):
    """Plans are stored compressed with zstd now; a pending plan an earlier release stored as plain JSON, or
    deflated with zlib, is still read."""
    from workspace.mining import prompt_log

    clean = ws.ingest_prompts(log_file, meta=['app'])
    assert clean.new_lines == LINES
    expected = _state()
    import pixeltable as pxt

    from workspace import config

    pxt.drop_dir(config.ROOT_DIR, force=True)
    kill_at(f'sys.argv = ["-", {str(log_file)!r}, "10000"]\n' + INGEST, 'ingest.journaled')
    journal = tables.ingest_journal()
    (row,) = journal.where(journal.status == 'pending').select(journal.batch_id, journal.plan_text).collect()
    assert row['plan_text'].startswith('zstd+base64:')
    plan = prompt_log._unpack(row['plan_text'])
    plain = json.dumps(plan, ensure_ascii=False, separators=(',', ':'))
    if earlier == 'deflated':  # as the release before wrote it
        plain = 'zlib+base64:' + base64.b64encode(zlib.compress(plain.encode('utf-8'), 1)).decode('ascii')
    journal.update({'plan_text': plain}, where=journal.batch_id == row['batch_id'])

    assert ws.ingest_prompts(log_file, meta=['app']).recovered == 1
    after = _state()
    _counts_agree(ws, after)
    assert after['members'] == expected['members']
    done = journal.where(journal.batch_id == row['batch_id']).select(journal.status, journal.plan_text).collect()[0]
    assert (done['status'], done['plan_text']) == ('done', None), 'an applied plan is dropped from its row'
