"""Exports and imports: predictions with lineage to CSV, JSONL and Parquet read back equal; a version to a DSPy
program JSON that dspy's own load reads, and to YAML/JSON prompt files that import back as versions with their
parent; the CLI commands for each."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
from conftest import CLI

from workspace.jobs.exports import export_run, export_runs, export_version

LABELS = ['BILLING', 'DELIVERY', 'TECHNICAL']


@pytest.fixture
def run(ws, tiny):
    v1 = ws.create_version('router', template='Ticket: {{ text }}\nCategory:', output=ws.choice(LABELS))
    v2 = ws.edit(
        v1,
        template='{% for d in demos %}Ticket: {{ d.text }}\nCategory: {{ d.expected }}\n\n{% endfor %}'
        'Ticket: {{ text }}\nCategory:',
        demos=tiny.demos(),
        instructions='Pick the category.',
    )
    return ws.evaluate(v2, tiny, 'dev', progress=False)


READERS = {'.csv': pd.read_csv, '.jsonl': lambda p: pd.read_json(p, lines=True), '.parquet': pd.read_parquet}


def test_run_exports_with_lineage(ws, run, tmp_path):
    for suffix in READERS:
        _check_export(ws, run, tmp_path, suffix)
    with pytest.raises(ws.WorkspaceError, match=r'name the file .csv, .jsonl or .parquet'):
        export_run(run, tmp_path / 'run.xlsx')


def _check_export(ws, run, tmp_path, suffix):
    path = export_run(run, tmp_path / f'run{suffix}')
    back = READERS[suffix](path)
    assert len(back) == 6 and list(back['example_id']) == list(run.example_ids)
    lineage = [
        'run_id',
        'dataset',
        'dataset_version',
        'version_id',
        'parent_id',
        'model',
        'model_id',
        'params',
        'request_hash',
        'answered_at',
        'reused',
        'cost_usd',
    ]
    assert set(lineage) <= set(back.columns) and {'text', 'expected', 'prediction', 'exact_match'} <= set(back.columns)
    assert set(back['version_id']) == {run.version.id} and set(back['parent_id']) == {run.version.parent_id}
    assert back['model_id'].str.startswith('local:gemma').all() and (back['cost_usd'] == 0).all()
    frame = run.predictions()
    assert list(back['prediction']) == list(frame['prediction']) and list(back['request_hash']) == list(
        frame['request_hash']
    )
    runs = export_runs(tmp_path / f'runs{suffix}', prompt='router')
    assert runs.stat().st_size > 0
    with pytest.raises(ws.WorkspaceError, match=r'name the file .csv, .jsonl or .parquet'):
        export_run(run, tmp_path / 'run.xlsx')


def test_version_to_dspy_program_that_dspy_loads(ws, run, tmp_path):
    import dspy

    path = export_version(run.version, tmp_path / 'router.json', format='dspy')
    signature = dspy.Signature({'text': (str, dspy.InputField()), 'answer': (str, dspy.OutputField())})
    program = dspy.Predict(signature)
    program.load(str(path))
    assert program.signature.instructions == 'Pick the category.'
    assert [d['answer'] for d in program.demos] == [d['expected'] for d in run.version.demos]
    assert [d['text'] for d in program.demos] == [d['text'] for d in run.version.demos]
    # the file also imports back: the same content is the same version
    assert ws.import_prompt(path).id == run.version.id


def test_prompt_file_round_trip_and_import_with_parent(ws, run, tmp_path):
    for suffix in ('.yaml', '.json'):
        _round_trip(ws, run, tmp_path, suffix)


def _round_trip(ws, run, tmp_path, suffix):
    v2 = run.version
    path = export_version(v2, tmp_path / f'router{suffix}')
    text = path.read_text()
    if suffix == '.yaml':
        assert 'template: |' in text and 'format: prompt-workspace/prompt-v1' in text
    else:
        assert json.loads(text)['version'] == v2.id
    assert ws.import_prompt(path).id == v2.id  # unchanged: the same version

    edited = text.replace('Pick the category.', f'Pick the one category that fits best ({suffix[1:]}).')
    path.write_text(edited)
    v3 = ws.import_prompt(path)
    assert v3.id.startswith('router:v') and v3.parent_id == v2.id and v3.instructions.startswith('Pick the one')
    assert v3.template == v2.template and v3.demos == v2.demos and v3.output == v2.output
    assert v3.note == f'imported from {path.name}' and v3.meta['source_version'] == v2.id
    other = ws.import_prompt(path, prompt=f'router_copy{suffix[1:]}')
    assert other.prompt == f'router_copy{suffix[1:]}' and other.parent_id is None


def test_import_errors_name_the_file_and_the_fix(ws, tmp_path):
    missing = tmp_path / 'nope.yaml'
    with pytest.raises(ws.WorkspaceError, match=r'nope.yaml.* does not exist'):
        ws.import_prompt(missing)
    bad = tmp_path / 'bad.yaml'
    bad.write_text('template: [unclosed\n')
    with pytest.raises(ws.WorkspaceError, match=r'bad.yaml is not valid YAML or JSON at line'):
        ws.import_prompt(bad)
    empty = tmp_path / 'empty.json'
    empty.write_text('{"prompt": "x"}')
    with pytest.raises(ws.WorkspaceError, match=r'empty.json has no template'):
        ws.import_prompt(empty)


def test_cli_exports_and_imports(ws, run, tmp_path):
    def cli(*args):
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    out = cli('export', 'run', run.run_id, str(tmp_path / 'run.parquet'))
    assert 'run.parquet' in out and len(pd.read_parquet(tmp_path / 'run.parquet')) == 6
    cli('export', 'runs', str(tmp_path / 'runs.csv'), '--prompt', 'router')
    assert len(pd.read_csv(tmp_path / 'runs.csv')) >= 1
    cli('export', 'version', run.version.id, str(tmp_path / 'router.yaml'))
    cli('export', 'version', run.version.id, str(tmp_path / 'router.dspy.json'), '--format', 'dspy')
    assert json.loads((tmp_path / 'router.dspy.json').read_text())['signature']['instructions'] == 'Pick the category.'
    text = (tmp_path / 'router.yaml').read_text().replace('Pick the category.', 'Choose a category.')
    (tmp_path / 'router.yaml').write_text(text)
    out = cli('import-prompt', str(tmp_path / 'router.yaml'))
    assert 'router:v3' in out and 'parent router:v2' in out


def test_a_plain_text_prompt_file_imports_as_a_template(ws, tmp_path):
    path = tmp_path / 'router.txt'
    path.write_text('Ticket: {{ text }}\nCategory:', encoding='utf-8')  # YAML would read {{ }} as an unhashable key
    v1 = ws.import_prompt(path)
    assert v1.prompt == 'router' and v1.template == 'Ticket: {{ text }}\nCategory:' and v1.parent_id is None
    assert ws.import_prompt(path).id == v1.id
    labelled = ws.edit(v1, output=ws.choice(LABELS), params={'max_tokens': 4})
    path.write_text('Support ticket: {{ text }}\nCategory:', encoding='utf-8')
    v3 = ws.import_prompt(path, parent=labelled)  # an edit of the parent: its output spec and params are kept
    assert v3.parent_id == labelled.id and v3.template.startswith('Support ticket:')
    assert v3.output == labelled.output and v3.params == labelled.params
    other = ws.import_prompt(path, prompt='other', output=ws.choice(LABELS))
    assert other.prompt == 'other' and other.labels == LABELS
    # and back out: the template alone
    out = export_version(v3, tmp_path / 'out' / 'v3.txt')
    assert out.read_text(encoding='utf-8') == v3.template
    bad = tmp_path / 'my prompt.txt'
    bad.write_text('Hi {{ text }}')
    with pytest.raises(ws.WorkspaceError, match=r"my prompt.txt: prompt name 'my prompt' is not valid.*pass prompt="):
        ws.import_prompt(bad)
    empty = tmp_path / 'empty.txt'
    empty.write_text('  \n')
    with pytest.raises(ws.WorkspaceError, match='empty.txt is empty'):
        ws.import_prompt(empty)


def test_a_chat_version_exports_to_yaml_and_dspy_and_imports_back(ws, tmp_path):
    import dspy
    import yaml

    messages = [
        {'role': 'system', 'content': 'Route tickets to one of: {{ labels | join(", ") }}.\nAnswer with the category.'},
        {'role': 'user', 'content': 'Ticket: {{ text }}'},
    ]
    demos = [{'text': 'I was charged twice.', 'expected': 'BILLING'}]
    chat = ws.create_version('router', messages=messages, output=ws.choice(LABELS), demos=demos)
    path = export_version(chat, tmp_path / 'router.yaml')
    data = yaml.safe_load(path.read_text())
    assert data['messages'] == messages and 'template' not in data
    assert 'content: |' in path.read_text()  # multi-line messages stay readable
    assert ws.import_prompt(path).id == chat.id
    data['messages'][0]['content'] = 'Route tickets. Answer with the category.'
    path.write_text(yaml.safe_dump(data))
    child = ws.import_prompt(path)
    assert child.parent_id == chat.id and child.messages[0]['content'] == 'Route tickets. Answer with the category.'

    program_path = export_version(chat, tmp_path / 'router.dspy.json', format='dspy')
    program = dspy.Predict(dspy.Signature({'text': (str, dspy.InputField()), 'answer': (str, dspy.OutputField())}))
    program.load(str(program_path))
    assert (
        program.signature.instructions
        == 'Route tickets to one of: BILLING, DELIVERY, TECHNICAL.\nAnswer with the category.'
    )
    assert [d['answer'] for d in program.demos] == ['BILLING']
    assert ws.import_prompt(program_path).id == chat.id
    with pytest.raises(ws.WorkspaceError, match=r'router:v1 is a chat version.*export it as router.yaml'):
        export_version(chat, tmp_path / 'router.txt')
