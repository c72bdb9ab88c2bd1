"""Tamper evidence for the audit log: every row carries the hash of the one before it, so a row deleted or changed
through plain Pixeltable shows, and `audit(verify=True)` (and `prompt-workspace audit --verify`) names the first
broken link. An audit table made before the chain existed still opens, and is chained from its first row on."""

from __future__ import annotations

import subprocess
import uuid

import pixeltable as pxt
import pytest
from conftest import CLI, ROOT

from reliability.conftest import child_env, spawn_python
from workspace.config import utc_now
from workspace.storage import audit_log, tables


def _record(n: int) -> None:
    for i in range(n):
        audit_log.record('label.moved', f'router@l{i}', before=f'router:v{i}', after={'version': i, 'share': 0.5})


def _verify_cli() -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, 'audit', '--verify'], env=child_env(), cwd=ROOT, capture_output=True, text=True)


def test_an_untouched_log_verifies(ws):
    _record(24)
    check = ws.audit(verify=True)
    assert check.ok and check.rows == 24 and check.broken is None, str(check)
    assert str(check).startswith('the audit log holds: 24 rows chained')
    done = _verify_cli()
    assert done.returncode == 0 and 'holds' in done.stdout, done.stderr[-2000:]


def test_rows_deleted_through_plain_pixeltable_are_reported_at_the_first_gap(ws):
    _record(24)
    t = tables.audit()
    t.delete(where=(t.seq >= 7) & (t.seq <= 11))  # 5 of 24 rows, around the workspace
    assert len(ws.audit()) == 19
    check = ws.audit(verify=True)
    assert not check.ok
    assert check.broken['seq'] == 12 and 'rows 7 to 11 before it are missing' in check.broken['problem']
    assert any('5 row(s) deleted' in t['problem'] for t in check.tampering)
    done = _verify_cli()
    assert done.returncode == 1
    assert 'first broken link: row 12' in done.stdout and '5 row(s) deleted' in done.stdout, done.stdout


def test_a_deleted_tail_and_a_changed_row_are_reported(ws):
    _record(10)
    t = tables.audit()
    t.delete(where=t.seq >= 9)  # the tail: no gap is left in the chain, the table's history shows it
    check = ws.audit(verify=True)
    assert not check.ok and check.broken is None
    assert [x['problem'] for x in check.tampering] == ['2 row(s) deleted']

    t.update({'after': {'version': 99}}, where=t.seq == 3)
    check = ws.audit(verify=True)
    assert check.broken['seq'] == 3 and 'content was changed' in check.broken['problem']
    assert any('1 row(s) updated' in x['problem'] for x in check.tampering)


def test_appending_after_a_deletion_does_not_hide_it(ws):
    _record(6)
    t = tables.audit()
    t.delete(where=t.seq == 2)
    _record(3)
    check = ws.audit(verify=True)
    assert check.broken['seq'] == 3 and 'row 2 before it is missing' in check.broken['problem']
    assert check.rows == 8


@pytest.mark.usefixtures('bare_ws')
def test_an_audit_table_made_before_the_chain_opens_and_is_chained(ws):
    from workspace import config

    config.connect()
    tables.ensure_dirs()
    old = pxt.create_table(
        tables.AUDIT,
        {
            'event_id': pxt.String,
            'at': pxt.Timestamp,
            'actor': pxt.String,
            'kind': pxt.String,
            'subject': pxt.String,
            'before': pxt.Json | None,
            'after': pxt.Json | None,
            'note': pxt.String | None,
        },
        primary_key='event_id',
    )
    at = utc_now()
    old.insert(
        [
            {'event_id': uuid.uuid4().hex, 'at': at, 'actor': 'ana', 'kind': 'version.created', 'subject': f'r:v{i}',
             'before': None, 'after': {'template': f'T{i}'}, 'note': None}
            for i in range(1, 6)
        ]
    )  # fmt: skip
    assert list(ws.audit(kind='version')['subject'])  # opens
    _record(2)
    check = ws.audit(verify=True)
    assert check.ok and check.rows == 5 + 1 + 2, str(check)  # the old rows, the upgrade's own row, the new ones
    assert list(ws.audit(kind='audit')['after'])[0] == {'rows': 5, 'table_version': check_version(old)}
    t = tables.audit()
    first = t.where(t.seq == 1).collect()[0]
    assert first['prev_hash'] == audit_log.GENESIS and first['kind'] == 'version.created'


def check_version(old: pxt.Table) -> int:
    """The table version at which the upgrade chained the old rows: the one before its own row was appended."""
    updates = [v for v in old.get_versions() if v['updates']]
    return max(v['version'] for v in updates)


def test_two_processes_appending_at_once_keep_one_chain(ws):
    ws.audit()  # the table exists before the children race to append
    code = (
        'from workspace.storage import audit_log\nfor i in range(15):\n    audit_log.record("key.created", f"k{i}")\n'
    )
    children = [spawn_python(code) for _ in range(2)]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
    check = ws.audit(verify=True)
    assert check.ok and check.rows == 30, str(check)
