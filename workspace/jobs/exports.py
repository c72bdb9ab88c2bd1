"""Exports and imports: a run's predictions and the runs list to CSV, JSONL or Parquet with lineage columns; a
version to a DSPy program JSON (which `dspy.Predict(...).load(path)` reads) or to a plain YAML/JSON prompt file;
and a prompt file back in as a new version whose parent is recorded.

The file format follows the path's suffix: `.csv`, `.jsonl`, `.parquet`; `.yaml`/`.yml` or `.json` for prompt
files. In CSV and Parquet, values that are lists or objects (several references, params) are JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from workspace.config import resolve_path, utc_now
from workspace.core.runs import Run, get_run, list_runs
from workspace.core.versions import OutputSpec, Version, create_version, edit, get_version
from workspace.errors import VersionError, WorkspaceError
from workspace.storage import costs, store

__all__ = [
    'PROMPT_FILE_FORMAT',
    'export_run',
    'export_runs',
    'export_version',
    'import_prompt',
    'predictions_with_lineage',
]

#: The `format` key of a prompt file: what it is and which revision of its layout.
PROMPT_FILE_FORMAT = 'prompt-workspace/prompt-v1'

_TABLE_SUFFIXES = ('.csv', '.jsonl', '.parquet')
#: Prompt file formats by suffix; any other suffix (`.txt`, `.j2`, `.prompt`, ...) is read as a plain template.
_SUFFIX_FORMATS = {'.yaml': 'yaml', '.yml': 'yaml', '.json': 'json', '.txt': 'text'}


def predictions_with_lineage(run: Run) -> pd.DataFrame:
    """Return one row per example of a run: inputs, expected, prediction, raw output, error, scores, then lineage
    (run, dataset and table version, version, parent, prompt, model, model identity, params, request hash,
    when answered and evaluated, reused), tokens, latency and cost in dollars."""
    frame = run.predictions().copy()
    found = store.requests_for(frame['request_hash'])
    v = run.version
    frame.insert(0, 'run_id', run.run_id)
    frame['dataset'] = run.dataset
    frame['version_id'] = v.id
    frame['parent_id'] = v.parent_id
    frame['prompt_name'] = v.prompt
    frame['model'] = v.model
    frame['model_id'] = [(found.get(h, {}).get('request') or {}).get('model_id') for h in frame['request_hash']]
    frame['params'] = [dict(v.params)] * len(frame)
    frame['first_version_id'] = [found.get(h, {}).get('first_version_id') for h in frame['request_hash']]
    frame['cost_usd'] = costs.frame_costs(frame, v.model)
    inputs = [c for c in frame.columns if c not in _LINEAGE_ORDER and c not in run.score_columns()]
    scores = [c for c in run.score_columns() if c in frame.columns]
    lineage = [c for c in _LINEAGE_ORDER if c in frame.columns]
    return frame[[c for c in inputs if c not in lineage] + scores + lineage]


_LINEAGE_ORDER = [
    'run_id',
    'dataset',
    'dataset_version',
    'split',
    'example_id',
    'expected',
    'prediction',
    'output',
    'error',
    'version_id',
    'parent_id',
    'prompt_name',
    'prompt',
    'model',
    'model_id',
    'params',
    'output_spec',
    'request_hash',
    'first_version_id',
    'answered_at',
    'evaluated_at',
    'reused',
    'latency_s',
    'prompt_tokens',
    'completion_tokens',
    'cost_usd',
]


def _flat(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the frame with list and dict values as JSON text (CSV and Parquet need one type per column)."""
    out = frame.copy()
    for column in out.columns:
        if out[column].map(lambda v: isinstance(v, (list, dict))).any():
            out[column] = out[column].map(
                lambda v: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
            )
    return out


def _write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in _TABLE_SUFFIXES:
        raise WorkspaceError(f'cannot export to {target.name!r}: name the file .csv, .jsonl or .parquet')
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix == '.jsonl':
        frame.to_json(target, orient='records', lines=True, date_format='iso', force_ascii=False)
    elif suffix == '.csv':
        _flat(frame).to_csv(target, index=False)
    else:
        _flat(frame).to_parquet(target, index=False)
    return target


def export_run(run: Run | str, path: str | Path) -> Path:
    """Write a run's predictions with their lineage columns to CSV, JSONL or Parquet (by the path's suffix).

    >>> ws.export_run(run, 'exports/v3-dev.parquet')
    """
    r = get_run(run) if isinstance(run, str) else run
    return _write_table(predictions_with_lineage(r), path)


def export_runs(path: str | Path, *, prompt: str | None = None, dataset: str | None = None) -> Path:
    """Write the runs list (id, version, dataset and table version, split, calls, reuse, errors, samples, judge
    calls, cost, wall time and metrics) to CSV, JSONL or Parquet.

    >>> ws.export_runs('exports/runs.csv', prompt='ticket_router')
    """
    return _write_table(list_runs(prompt, dataset), path)


def _prompt_file(v: Version) -> dict[str, Any]:
    data: dict[str, Any] = {
        'format': PROMPT_FILE_FORMAT,
        'prompt': v.prompt,
        'version': v.id,
        'parent': v.parent_id,
        'model': v.model,
        'params': dict(v.params),
        'output': dict(v.output),
        'instructions': v.instructions,
        'demos': [dict(d) for d in v.demos] if isinstance(v.demos, list) else dict(v.demos),  # a policy: as it is
    }
    if v.messages:  # a chat version: its messages are the content (`template` is them as one text, not written)
        data['messages'] = [dict(m) for m in v.messages]
    else:
        data['template'] = v.template
    return {
        **data,
        'note': v.note or '',
        'content_hash': v.content_hash,
        'exported_at': utc_now().isoformat(timespec='seconds'),
    }


class _Literal(str):
    """A string YAML writes as a literal block (`|`), so templates stay readable and keep their newlines."""


def _yaml_dump(data: Mapping[str, Any]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(_Literal, lambda d, s: d.represent_scalar('tag:yaml.org,2002:str', s, style='|'))

    def block(text: Any) -> Any:
        return _Literal(text) if isinstance(text, str) and '\n' in text else text

    body = {k: block(v) if k in ('template', 'instructions') else v for k, v in data.items()}
    if 'messages' in body:
        body['messages'] = [{'role': m['role'], 'content': block(m['content'])} for m in body['messages']]
    return yaml.dump(body, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def _dspy_program(v: Version, output_field: str) -> Any:
    import dspy

    inputs = sorted(v.variables())
    if not inputs:
        raise VersionError(f'{v.id} reads no input field, so it has no DSPy signature to export')
    if output_field in inputs:
        raise VersionError(f'output_field {output_field!r} is also an input of {v.id}; pass another output_field')
    fields: dict[str, Any] = {name: (str, dspy.InputField()) for name in inputs}
    fields[output_field] = (str, dspy.OutputField())
    signature = dspy.Signature(fields)
    instructions = '\n\n'.join(t for t in (v.instructions.strip(), *_system_text(v)) if t)
    if instructions:
        signature = signature.with_instructions(instructions)
    program = dspy.Predict(signature)
    program.demos = [
        dspy.Example(**{name: d.get(name) for name in inputs}, **{output_field: d.get('expected')})
        for d in (v.demos if isinstance(v.demos, list) else [])
    ]
    return program


def _system_text(v: Version) -> list[str]:
    """Return a chat version's system messages as DSPy instructions: rendered with its labels where they read no
    input field, else as written."""
    from udfs import render as render_udfs

    texts = []
    for m in v.messages or []:
        if m['role'] == 'system':
            try:
                texts.append(render_udfs.render(m['content'], {}, labels=v.labels).strip())
            except Exception:  # it reads an input field: DSPy instructions are one text for every example
                texts.append(m['content'].strip())
    return texts


def export_version(
    version: Version | str,
    path: str | Path,
    *,
    format: Literal['dspy', 'yaml', 'json', 'text'] | None = None,
    output_field: str = 'answer',
) -> Path:
    """Write a version to a prompt file (YAML or JSON: template or a chat version's messages, model, params, output
    spec, demos, instructions, version and parent), to a plain-text file (`.txt`: the template alone), or, with
    `format='dspy'`, to a DSPy program JSON: a `dspy.Predict` over the template's input fields and `output_field`,
    with the version's instructions (and a chat version's system message) and demos, which
    `dspy.Predict(signature).load(path)` reads (the prompt file rides along under `metadata.prompt_workspace`).

    >>> ws.export_version('ticket_router@production', 'prompts/ticket_router.yaml')
    >>> ws.export_version('ticket_router@production', 'prompts/ticket_router.dspy.json', format='dspy')
    """
    v = get_version(version)
    target = Path(path)
    kind = format or _SUFFIX_FORMATS.get(target.suffix.lower())
    if kind not in ('dspy', 'yaml', 'json', 'text'):
        raise WorkspaceError(
            f"cannot tell the format of {target.name!r}: name it .yaml, .json or .txt, or pass format='dspy', "
            "'yaml', 'json' or 'text'"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    data = _prompt_file(v)
    if kind == 'text':
        if v.messages:
            raise WorkspaceError(
                f'{v.id} is a chat version: a plain-text file holds one template, not its {len(v.messages)} '
                f'messages; export it as {target.stem}.yaml'
            )
        target.write_text(v.template, encoding='utf-8')
    elif kind == 'yaml':
        target.write_text(_yaml_dump(data), encoding='utf-8')
    elif kind == 'json':
        target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')
    else:
        if target.suffix.lower() != '.json':
            raise WorkspaceError(f'DSPy reads program JSON from a .json file; name it {target.stem}.json')
        _dspy_program(v, output_field).save(str(target))
        state = json.loads(target.read_text(encoding='utf-8'))
        state.setdefault('metadata', {})['prompt_workspace'] = data
        target.write_text(json.dumps(state, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')
    return target


def _read_prompt_file(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise WorkspaceError(f'prompt file {str(path)!r} is a folder; give the path of a .yaml or .json file in it')
    if not path.is_file():
        raise WorkspaceError(f'prompt file {str(path)!r} does not exist')
    import yaml

    if path.suffix.lower() not in ('.yaml', '.yml', '.json'):  # plain text: the whole file is the template
        try:
            text = path.read_text(encoding='utf-8')
        except UnicodeDecodeError:
            raise WorkspaceError(f'{path.name} is not UTF-8 text; save the template as UTF-8') from None
        if not text.strip():
            raise WorkspaceError(f'{path.name} is empty; a plain-text prompt file holds the template')
        return {'template': text}
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8'))  # JSON is YAML too
    except yaml.YAMLError as e:
        where = getattr(e, 'problem_mark', None)
        line = f' at line {where.line + 1}' if where is not None else ''
        raise WorkspaceError(f'{path.name} is not valid YAML or JSON{line}: {getattr(e, "problem", e)}') from None
    if isinstance(data, dict) and isinstance(data.get('metadata'), dict) and 'prompt_workspace' in data['metadata']:
        data = data['metadata']['prompt_workspace']  # a DSPy program exported from here
    if not isinstance(data, dict) or not (
        isinstance(data.get('template'), str) or isinstance(data.get('messages'), list)
    ):
        raise WorkspaceError(
            f'{path.name} has no template; a prompt file is a mapping with at least template: or messages: (and '
            'prompt:, model:, params:, output:, demos:), as ws.export_version writes it; a plain template goes in a '
            '.txt file'
        )
    return data


def _existing(ref: str | None) -> Version | None:
    if not ref:
        return None
    try:
        return get_version(ref)
    except WorkspaceError:
        return None


def import_prompt(
    path: str | Path,
    *,
    prompt: str | None = None,
    parent: Version | str | None = None,
    author: str | None = None,
    model: str | None = None,
    output: OutputSpec | None = None,
) -> Version:
    """Create a version from a prompt file (YAML or JSON, a DSPy program JSON exported here, or a plain-text file
    whose whole content is the template). Its parent is `parent` if given, else the version the file was exported
    from (or that one's parent) if it exists here. A plain template given a parent is an edit of it (the parent's
    model, params, output spec and demos are kept); without one, its prompt is `prompt` or the file's name. `model`
    and `output` override the file's. A file whose content equals an existing version gives back that version.

    >>> v4 = ws.import_prompt('prompts/ticket_router.yaml')   # edited by hand; parent: the exported version
    >>> v5 = ws.import_prompt('prompts/router.txt', parent='ticket_router@production')
    """
    source = resolve_path(path)
    data = _read_prompt_file(source)
    chosen_parent = get_version(parent) if parent is not None else None
    plain = set(data) == {'template'}
    name = prompt or data.get('prompt') or (chosen_parent.prompt if chosen_parent else None)
    if not name and plain:
        name = source.stem.split('.')[0]
    if not name:
        raise WorkspaceError(f'{source.name} names no prompt; pass prompt=... to name the family it belongs to')
    note, meta = f'imported from {source.name}', {'imported_from': str(source), 'source_version': data.get('version')}
    if plain and chosen_parent is not None and chosen_parent.prompt == name:
        return edit(
            chosen_parent, template=data['template'], model=model, output=output, author=author, note=note, meta=meta
        )
    origin = _existing(data.get('version')) or _existing(data.get('parent'))
    chosen = chosen_parent or (origin if origin and origin.prompt == name else None)
    content = {'messages': data['messages']} if data.get('messages') else {'template': data['template']}
    try:
        return create_version(
            name,
            **content,
            model=model or data.get('model') or 'local',
            params=data.get('params') or None,
            output=output or data.get('output') or None,
            demos=data.get('demos') or (),
            instructions=data.get('instructions') or '',
            parent=chosen,
            author=author,
            note=note,
            meta=meta,
        )
    except VersionError as e:
        if plain and not prompt and 'prompt name' in str(e):
            raise WorkspaceError(f'{source.name}: {e}; pass prompt=... to name the prompt') from None
        raise
