"""Source columns whose stored name the workspace reserves (`example_id`, `expected`, `split`, `demos`, `labels`,
`instructions`, in any case) are refused with the fix, never silently overwritten; `rename=` imports them."""

from __future__ import annotations

import pytest
from openai_server import Canned, OpenAICompatibleServer, completion_body

from workspace import errors

ROWS = [
    {'id': 'a1', 'text': 'I was charged twice.', 'category': 'BILLING', 'split': 'dev'},
    {'id': 'a2', 'text': 'My parcel never came.', 'category': 'DELIVERY', 'split': 'dev'},
    {'id': 'a3', 'text': 'The app crashes.', 'category': 'TECHNICAL', 'split': 'dev'},
]

# (source column, how it is given): each would be stored under a reserved name.
RESERVED = [
    ('expected', 'input'),
    ('Expected', 'input'),
    ('Split', 'input'),
    ('Example_ID', 'input'),
    ('demos', 'input'),
    ('LABELS', 'input'),
    ('Instructions', 'input'),
    ('Split', 'keep'),
    ('example_id', 'keep'),
    ('EXPECTED', 'keep'),
]


def _rows_with(column: str) -> list[dict[str, str]]:
    return [{**row, column: f'{column} of {row["id"]}'} for row in ROWS]


@pytest.mark.parametrize('column,role', RESERVED, ids=[f'{r}-{c}' for c, r in RESERVED])
def test_reserved_name_is_refused_with_the_fix_and_stores_nothing(ws, column, role):
    given = {'input': ['text', column]} if role == 'input' else {'input': 'text', 'keep': [column]}
    with pytest.raises(errors.DatasetError) as refused:
        ws.import_dataset('tickets', _rows_with(column), expected='category', split='split', id='id', **given)
    message = str(refused.value)
    assert f'column {column!r} (given as {role}) would be stored as {column.lower()!r}' in message
    assert f"rename={{{column!r}: '{column.lower()}_src'}}" in message
    assert ws.list_datasets() == []


@pytest.mark.parametrize('column,role', RESERVED, ids=[f'{r}-{c}' for c, r in RESERVED])
def test_rename_imports_a_reserved_column_under_a_new_name(ws, column, role):
    new = f'{column.lower()}_src'
    given = {'input': ['text', new]} if role == 'input' else {'input': 'text', 'keep': [new]}
    data = ws.import_dataset(
        'tickets', _rows_with(column), expected='category', split='split', id='id', rename={column: new}, **given
    )
    stored = data.table.columns()
    assert sorted(stored) == sorted(['example_id', 'text', 'expected', 'split', new])
    row = data.rows('dev')[0]
    assert row['example_id'] == 'a1' and row['expected'] == 'BILLING' and row['split'] == 'dev'
    assert row[new] == f'{column} of a1'
    added = data.append([{**ROWS[0], 'id': 'a4', column: f'{column} of a4'}])  # the import's rename applies
    assert added == 1 and data.rows('dev')[-1][new] == f'{column} of a4'


def test_rename_of_a_missing_column_or_to_a_taken_name_is_refused(ws):
    with pytest.raises(
        errors.DatasetError, match=r"has no column 'Splitt' \(given as a column to rename\); did you mean"
    ):
        ws.import_dataset('t', _rows_with('Split'), input='text', expected='category', rename={'Splitt': 'x'})
    with pytest.raises(errors.DatasetError, match=r"two columns named 'text' \(from 'text' and 'Split'\)"):
        ws.import_dataset('t', _rows_with('Split'), input='text', expected='category', rename={'Split': 'text'})
    assert ws.list_datasets() == []


def test_expected_column_may_be_named_expected(ws):
    rows = [{'text': r['text'], 'expected': r['category']} for r in ROWS]
    data = ws.import_dataset('tickets', rows, input='text', expected='expected')
    assert sorted(r['expected'] for r in data.rows()) == ['BILLING', 'DELIVERY', 'TECHNICAL']


def test_an_echo_model_cannot_read_the_answer(ws, monkeypatch):
    """The leak from the issue: an input column named `expected` (a hint that is not the answer) was overwritten
    by the expected output, so `{{ expected }}` passed the leak check and a model echoing its prompt scored 1.0."""
    rows = [{**row, 'expected': 'no hint'} for row in ROWS]
    with pytest.raises(
        errors.DatasetError, match=r"column 'expected' \(given as input\) would be stored as 'expected'"
    ):
        ws.import_dataset('tickets', rows, input=['text', 'expected'], expected='category', split='split', id='id')

    def echo(body):  # answers with the last line of its prompt
        return Canned(200, completion_body(body['messages'][-1]['content'].strip().splitlines()[-1]))

    monkeypatch.setenv('WORKSPACE_MAX_ATTEMPTS', '1')
    with OpenAICompatibleServer(echo) as server:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{server.url}/v1')
        data = ws.import_dataset(
            'tickets', rows, input=['text', 'hint'], expected='category', split='split', id='id',
            rename={'expected': 'hint'},
        )  # fmt: skip
        labels = ws.choice(['BILLING', 'DELIVERY', 'TECHNICAL'])
        leak = ws.create_version('echo', template='{{ text }}\n{{ expected }}', model='openai:fake', output=labels)
        with pytest.raises(errors.TemplateError, match=r'the answer would leak into the prompt'):
            ws.evaluate(leak, data, split='dev')
        hint = ws.edit(leak, template='{{ text }}\n{{ hint }}')
        run = ws.evaluate(hint, data, split='dev')
    assert [r['body']['messages'][-1]['content'].splitlines()[-1] for r in server.received] == ['no hint'] * 3
    assert run.summary().metrics['accuracy'] == 0.0
