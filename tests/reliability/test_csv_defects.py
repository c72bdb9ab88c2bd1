"""CSV defects that used to lose rows silently or fail without a file and line: each is a DatasetError naming the
file, the line and the fix, and the stored dataset stays as it was. Quoted values that span lines still import."""

from __future__ import annotations

import csv
import io

import pytest

from workspace import errors

HEADER = 'id,text,category,split\n'
LONG = 'x' * (128 * 1024 + 1)

# (name, file content, what the message must say)
DEFECTS = [
    (
        'stray_quote_swallows_a_line',  # 3 lines read as 2 rows
        HEADER
        + 'a1,"I was charged twice,BILLING,dev\na2,My parcel is late",DELIVERY,dev\na3,The app crashes,TECHNICAL,dev\n',
        r'lines 2 to 3 were read as one row because a quote at line 2 opens a value that only closes at line 3',
    ),
    (
        'stray_quote_swallows_two_lines',
        HEADER + 'a1,fine,BILLING,dev\na2,"I was charged twice,BILLING,dev\na3,The app crashes,TECHNICAL,dev\n'
        'a4,My parcel is late",DELIVERY,dev\n',
        r'lines 3 to 5 were read as one row because a quote at line 3',
    ),
    (
        'stray_quote_runs_to_the_end',
        HEADER + 'a1,fine,BILLING,dev\na2,"I was charged twice,BILLING,dev\na3,The app crashes,TECHNICAL,dev\n',
        r'line 3 opens a quoted value that never closes \(the file ends inside it\)',
    ),
    (
        'quote_inside_a_quoted_value',
        HEADER + 'a1,"The "app" crashes",TECHNICAL,dev\n',
        r'line 2 has a quote inside a quoted value followed by more text; write a quote that is part of the text as '
        r'two quotes',
    ),
    (
        'stray_quote_meets_a_later_quote',
        HEADER + 'a1,"Charged twice,BILLING,dev\na2,The "app" crashes,TECHNICAL,dev\n',
        r'line 3 has a quote inside a quoted value followed by more text \(the value opened at line 2\)',
    ),
    (
        'duplicate_header',
        'id,text,category,text\na1,I was charged twice,BILLING,dev\n',
        r"line 1: the header names column 'text' twice \(columns 2 and 4\); rename one of them",
    ),
    (
        'field_over_128_kib',
        HEADER + f'a1,fine,BILLING,dev\na2,{LONG},BILLING,dev\n',
        r'line 3 has a value longer than 128 KiB\. Usually a quote at line 3 opens a value that never closes',
    ),
    (
        'quote_that_never_closes_over_128_kib',
        HEADER + 'a1,"fine,BILLING,dev\n' + f'a2,{LONG},BILLING,dev\n',
        r'line 2 has a value longer than 128 KiB',
    ),
]


@pytest.mark.parametrize('name,content,message', DEFECTS, ids=[d[0] for d in DEFECTS])
def test_csv_defect_names_file_line_and_fix_and_keeps_stored_data(ws, tiny_tickets, tmp_path, name, content, message):
    stored = ws.import_dataset('tiny', tiny_tickets, input='text', expected='category', split='split', id='id')
    before = (stored.version, len(stored))
    bad = tmp_path / f'{name}.csv'
    bad.write_text(content)
    for attempt in (
        lambda: ws.import_dataset('tiny', bad, input='text', expected='category', split='split', id='id'),
        lambda: ws.import_dataset('other', bad, input='text', expected='category', split='split', id='id'),
        lambda: stored.append(bad),
    ):
        with pytest.raises(errors.DatasetError, match=message) as refused:
            attempt()
        assert str(refused.value).startswith(f'{name}.csv: ')
    kept = ws.get_dataset('tiny')
    assert (kept.version, len(kept)) == before
    assert ws.list_datasets() == ['tiny']


def _written(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows([['id', 'text', 'category', 'split'], *rows])
    return out.getvalue()


def test_quoted_values_that_span_lines_still_import(ws, tmp_path):
    texts = {
        'a1': 'Hello,\n\nI was charged twice for order 1234.\nPlease refund one of them.\n\nThanks, Ana',
        'a2': 'The parcel, which I paid express for, has not arrived.\nTracking says "in transit" since Monday.',
        'a3': 'Line one\r\nline two, with a comma\r\nline three',
        'a4': 'She wrote: "it crashes",\nthen left.',
    }
    path = tmp_path / 'multiline.csv'
    path.write_text(_written([[i, t, 'BILLING', 'dev'] for i, t in texts.items()]) + 'a5,one line,DELIVERY,dev\n')
    data = ws.import_dataset('multi', path, input='text', expected='category', split='split', id='id')
    assert {r['example_id']: r['text'] for r in data.rows()} == {**texts, 'a5': 'one line'}


def test_blank_lines_and_an_unnamed_index_column_are_ignored(ws, tmp_path):
    path = tmp_path / 'pandas.csv'
    path.write_text(',id,text,category\n\n0,a1,hello,A\n1,a2,bye,B\n\n')
    data = ws.import_dataset('frame', path, input='text', expected='category', id='id')
    assert sorted(r['text'] for r in data.rows()) == ['bye', 'hello']
