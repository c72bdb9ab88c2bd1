"""Datasets: import from CSV, JSONL, JSON, DataFrame; seeded splits; append and correct; clear errors that lose
nothing already stored."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, TICKETS_CSV

from workspace import errors


def _import_tiny(ws, path: Path, name: str = 'tiny'):
    return ws.import_dataset(name, path, input=['text'], expected='category', split='split', id='id')


def test_import_bundled_tickets(ws):
    tickets = ws.import_dataset(
        'support_tickets', TICKETS_CSV, input=['text'], expected='category', split='split', id='id'
    )
    assert len(tickets) == 200
    assert tickets.task == 'choice'
    assert tickets.splits() == {'dev': 48, 'test': 48, 'train': 104}
    assert tickets.labels() == ['ACCOUNT', 'BILLING', 'CANCEL', 'DELIVERY', 'ORDER', 'REFUND', 'SHIPPING', 'TECHNICAL']
    row = tickets.rows('dev')[0]
    assert set(row) >= {'example_id', 'text', 'expected', 'split'}
    assert ws.list_datasets() == ['support_tickets']


def test_import_jsonl_multi_reference(ws):
    summaries = ws.import_dataset(
        'ticket_summaries',
        TICKETS_CSV.parent / 'ticket_summaries.jsonl',
        input=['ticket'],
        expected='references',
        split='split',
        id='id',
    )
    assert summaries.task == 'text'
    assert len(summaries) == 60
    row = summaries.rows('dev')[0]
    assert isinstance(row['expected'], list) and row['expected']


def test_import_dataframe_with_seeded_stratified_split(ws):
    frame = pd.DataFrame({'question': [f'question {i}' for i in range(40)], 'label': ['yes', 'no'] * 20})
    first = ws.import_dataset('qa', frame, input='question', expected='label', seed=7)
    splits = first.splits()
    assert splits == {'dev': 8, 'test': 8, 'train': 24}
    dev = first.rows('dev')
    assert sorted(r['expected'] for r in dev) == ['no'] * 4 + ['yes'] * 4  # stratified
    again = ws.import_dataset('qa2', frame, input='question', expected='label', seed=7)
    assert [r['example_id'] for r in again.rows('dev')] == [r['example_id'] for r in dev]  # reproducible
    other = ws.import_dataset('qa3', frame, input='question', expected='label', seed=8)
    assert [r['example_id'] for r in other.rows('dev')] != [r['example_id'] for r in dev]


def test_uppercase_columns_are_stored_lower_case(ws):
    frame = pd.DataFrame({'Text': ['a b', 'c d'], 'Label': ['x', 'y'], 'Split': ['dev', 'dev']})
    data = ws.import_dataset('cased', frame, input='Text', expected='Label', split='Split')
    assert data.inputs == ('text',)
    assert {r['text'] for r in data.rows()} == {'a b', 'c d'}


def test_reimport_identical_returns_stored_dataset(ws, tiny_tickets):
    first = _import_tiny(ws, tiny_tickets)
    version = first.version
    again = _import_tiny(ws, tiny_tickets)
    assert again.version == version and len(again) == 12


def test_reimport_different_rows_is_an_error_and_keeps_data(ws, tiny_tickets, tmp_path):
    _import_tiny(ws, tiny_tickets)
    changed = tmp_path / 'changed.csv'
    changed.write_text(tiny_tickets.read_text().replace('charged twice', 'charged three times'))
    with pytest.raises(
        errors.DatasetError, match=r'already exists with different rows \(0 new, 1 changed, 0 missing\)'
    ):
        _import_tiny(ws, changed)
    assert 'charged twice' in ws.get_dataset('tiny').rows('dev')[0]['text']
    replaced = ws.import_dataset(
        'tiny', changed, input=['text'], expected='category', split='split', id='id', if_exists='replace'
    )
    assert 'three times' in replaced.rows('dev')[0]['text']


BAD_CSVS = [
    (
        'missing_column',
        'id,txt,category,split\nx1,hello,A,dev\n',
        r"has no column 'text' \(given as input\); did you mean 'txt'\?",
    ),
    ('empty_file', '', r'is empty'),
    ('header_only', 'id,text,category,split\n', r'has a header but no examples'),
    (
        'duplicate_ids',
        'id,text,category,split\nx1,hello,A,dev\nx1,bye,B,dev\n',
        r"line 3 repeats id 'x1' \(first at line 2\)",
    ),
    ('empty_input', 'id,text,category,split\nx1,hello,A,dev\nx2,  ,B,dev\n', r"line 3 has an empty input 'text'"),
    ('empty_expected', 'id,text,category,split\nx1,hello,,dev\n', r"line 2 has no expected output in 'category'"),
    ('extra_field', 'id,text,category,split\nx1,hello,there,A,dev\n', r'line 2 has more fields than the header'),
]


@pytest.mark.parametrize('name,content,message', BAD_CSVS, ids=[c[0] for c in BAD_CSVS])
def test_bad_csv_names_problem_and_keeps_stored_data(ws, tiny_tickets, tmp_path, name, content, message):
    stored = _import_tiny(ws, tiny_tickets)
    before = (stored.version, len(stored))
    bad = tmp_path / f'{name}.csv'
    bad.write_text(content)
    with pytest.raises(errors.DatasetError, match=message) as excinfo:
        ws.import_dataset('tiny', bad, input=['text'], expected='category', split='split', id='id')
    assert f'{name}.csv' in str(excinfo.value)
    kept = ws.get_dataset('tiny')
    assert (kept.version, len(kept)) == before
    assert ws.list_datasets() == ['tiny']


def test_undecodable_bytes_name_the_line(ws, tiny_tickets, tmp_path):
    _import_tiny(ws, tiny_tickets)
    bad = tmp_path / 'latin1.csv'
    bad.write_bytes('id,text,category,split\nx1,hello,A,dev\nx2,caf\u00e9 cr\u00e8me,B,dev\n'.encode('latin-1'))
    with pytest.raises(errors.DatasetError, match=r'latin1.csv: line 3 is not valid UTF-8 \(byte 0xe9\); re-save'):
        ws.import_dataset('tiny', bad, input=['text'], expected='category', split='split', id='id')
    assert len(ws.get_dataset('tiny')) == 12


def test_jsonl_line_that_is_not_an_object(ws, tmp_path):
    bad = tmp_path / 'rows.jsonl'
    bad.write_text(json.dumps({'text': 'a', 'label': 'x'}) + '\n' + json.dumps(['text', 'b']) + '\n')
    with pytest.raises(errors.DatasetError, match=r'rows.jsonl: line 2 is a JSON list, not an object'):
        ws.import_dataset('rows', bad, input='text', expected='label')
    assert ws.list_datasets() == []


def test_jsonl_line_that_is_not_json(ws, tmp_path):
    bad = tmp_path / 'rows.jsonl'
    bad.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(errors.DatasetError, match=r'rows.jsonl: line 2 is not valid JSON'):
        ws.import_dataset('rows', bad, input='text', expected='label')


def test_missing_file_and_unknown_type(ws, tmp_path):
    with pytest.raises(errors.DatasetError, match=r'does not exist'):
        ws.import_dataset('x', tmp_path / 'nope.csv', input='text', expected='label')
    odd = tmp_path / 'data.xlsx'
    odd.write_text('x')
    with pytest.raises(errors.DatasetError, match=r"unknown file type '.xlsx'; use .csv, .jsonl or .json"):
        ws.import_dataset('x', odd, input='text', expected='label')


def test_expected_as_input_is_refused(ws, tiny_tickets):
    with pytest.raises(errors.DatasetError, match=r"'category' is both an input and the expected output"):
        ws.import_dataset('tiny', tiny_tickets, input=['text', 'category'], expected='category')


def test_append_rows_and_clashing_ids(ws, tiny_tickets):
    tiny = _import_tiny(ws, tiny_tickets)
    version = tiny.version
    added = tiny.append([{'id': 'c1', 'text': 'Refund my fee please', 'category': 'BILLING', 'split': 'dev'}])
    assert added == 1 and len(tiny) == 13 and tiny.version > version
    with pytest.raises(errors.DatasetError, match=r"ids already in dataset 'tiny': a1"):
        tiny.append([{'id': 'a1', 'text': 'again', 'category': 'BILLING', 'split': 'dev'}])
    with pytest.raises(errors.DatasetError, match=r"row 1 has an empty input 'text'"):
        tiny.append([{'id': 'c2', 'text': '', 'category': 'BILLING', 'split': 'dev'}])
    assert len(tiny) == 13


def test_correct_expected_output(ws, tiny_tickets):
    tiny = _import_tiny(ws, tiny_tickets)
    version = tiny.correct('a1', 'DELIVERY')
    assert version == tiny.version
    assert {r['example_id']: r['expected'] for r in tiny.rows('dev')}['a1'] == 'DELIVERY'
    with pytest.raises(errors.DatasetError, match=r"has no example 'zz'"):
        tiny.correct('zz', 'BILLING')


def test_unknown_dataset_suggests_close_name(ws, tiny_tickets):
    _import_tiny(ws, tiny_tickets)
    with pytest.raises(errors.DatasetError, match=r"no dataset 'tinny'. Did you mean 'tiny'\?"):
        ws.get_dataset('tinny')


def test_unknown_split_lists_the_splits(ws, tiny_tickets):
    tiny = _import_tiny(ws, tiny_tickets)
    with pytest.raises(
        errors.DatasetError, match=r"no examples in split 'validation'; its splits are: dev \(6\), train \(6\)"
    ):
        tiny.rows('validation')


def test_a_relative_path_resolves_from_the_project_root_in_any_working_directory(ws, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT / 'notebooks')  # where JupyterLab starts a notebook's kernel
    tickets = ws.import_dataset(
        'tickets_from_notebooks',
        'datasets/support_tickets.csv',
        input=['text'],
        expected='category',
        split='split',
        id='id',
    )
    assert len(tickets.rows()) > 0
    with pytest.raises(errors.DatasetError, match=r'is a folder; give the path of a CSV'):
        ws.import_dataset('folder', tmp_path, input=['text'], expected='category')
    with pytest.raises(errors.DatasetError, match=r"'datasets/nope.csv' does not exist \(looked in the working"):
        ws.import_dataset('nope', 'datasets/nope.csv', input=['text'], expected='category')


def test_the_task_is_inferred_from_the_expected_outputs():
    from workspace.core.datasets import _infer_task

    intents = [f'intent_{i}' for i in range(150)]  # CLINC150: 150 intents, 100 queries each upstream
    assert _infer_task(intents * 10) == 'choice'
    assert _infer_task(intents) == 'text'  # 150 short answers that never repeat: answers, not labels
    assert _infer_task(['positive', 'negative', 'no_impact'] * 3) == 'choice'
    assert _infer_task(['The Eagle is a cheap pub near the river.'] * 20) == 'text'
    assert _infer_task([{'a': 1}]) == 'json' and _infer_task([['one', 'two']]) == 'text'
