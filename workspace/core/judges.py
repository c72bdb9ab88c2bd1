"""Judges: prompt versions whose output scores another version's prediction, the last tier of scoring.

A judge is an ordinary version (template, model, params, output spec, demos, parent) with a `judge` entry in its
metadata saying how to read its answer: a verdict label (`yes`/`no`, or any labels with the passing ones named)
or a score from 1 to 5, optionally with a rationale (the output is then JSON: `{"verdict": ..., "rationale":
...}`). So a judge has lineage and every judgement is a request in the store: editing the judge re-judges only
the rows whose judge request changed, and a prediction already judged is never judged again.

A judge's template reads the judged example's input fields by name, plus `input` (all input fields as text),
`prediction` (the judged version's prediction) and `expected` (the reference, a list joined by " | "). Unlike a
version's template, a judge may read the expected output: it is the judge's reference, not the task's answer.

```
prompt_workspace/judgements/<dataset>   one row per (judge version, judged version, example): the judge's request,
                                        the judged prediction's request, verdict, score, rationale, error
```

`add_scorer(dataset, judge, column=..., only_if='json_valid')` makes a judge a scorer column of the dataset's
evaluations. A judge calls a model, so it runs only where asked: an evaluation that names it
(`evaluate(..., judges=['judged_correct'])`), or every evaluation of the dataset when it was attached with
`every_evaluation=True` (each then logs the judge calls it will make before it starts). Judged rows (only those that
passed `only_if`) hold the judge's score (1.0 pass, 0.0 fail; a 1-5 score as (s - 1) / 4). Rows that failed the cheaper scorer or have
no prediction score 0.0 without a judge call; a judge call that failed leaves the score empty (counted as 0).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, cast

import jinja2
import pandas as pd

from udfs import parse as parse_udfs, render as render_udfs
from workspace.config import utc_now
from workspace.core import rules
from workspace.core.datasets import Dataset, get_dataset
from workspace.core.versions import Params, Version, choice, create_version, get_version, json_object
from workspace.errors import TemplateError, VersionError, WorkspaceError
from workspace.storage import backends, reads, store, tables

__all__ = [
    'JudgeSpec',
    'JUDGE_FIELDS',
    'create_judge',
    'correctness_judge',
    'rubric_judge',
    'is_judge',
    'judge_spec',
    'read_verdict',
    'judge_fields',
    'check_judge_template',
    'judge_rows',
    'judge_run',
    'gate_passed',
    'stored_score',
    'NOT_STORED',
    'judge_columns',
    'judges_to_run',
    'new_judge_calls',
    'judge_evaluation',
]

log = logging.getLogger(__name__)

#: What a judge's template may read besides the dataset's input fields.
JUDGE_FIELDS = frozenset({'input', 'prediction', 'expected'})

Scale = Literal['verdict', 'score']


class JudgeSpec(TypedDict):
    """How to read a judge's answer: its scale, labels, which labels pass, and whether it gives a rationale."""

    scale: Scale
    labels: list[str]
    pass_labels: list[str]
    pass_score: int
    rationale: bool


def _answer_slot(rationale: bool) -> str:
    if rationale:
        return '{"verdict": "{{ d.verdict }}", "rationale": "{{ d.rationale }}"}'
    return '{{ d.verdict }}'


def _output(labels: Sequence[str], rationale: bool) -> Any:
    if not rationale:
        return choice(labels)
    return json_object(
        {
            'type': 'object',
            'properties': {'verdict': {'enum': list(labels)}, 'rationale': {'type': 'string', 'maxLength': 60}},
            'required': ['verdict', 'rationale'],
        }
    )


def create_judge(
    name: str,
    *,
    template: str,
    model: str = 'local',
    scale: Scale = 'verdict',
    labels: Sequence[str] = ('yes', 'no'),
    pass_labels: Sequence[str] = ('yes',),
    pass_score: int = 4,
    rationale: bool = False,
    instructions: str = '',
    demos: Sequence[Mapping[str, Any]] = (),
    params: Params | None = None,
    parent: Version | str | None = None,
    note: str = '',
) -> Version:
    """Create a judge: a version of prompt `name` whose answer is a verdict (one of `labels`; `pass_labels` pass)
    or a score from 1 to 5 (`pass_score` and above pass), with a rationale if asked.

    The same content returns the same judge, so a cell can run twice.

    >>> judge = create_judge('tone_judge', template='Reply: {{ prediction }}\\nIs the reply polite?')
    """
    if scale == 'score':
        labels, pass_labels = [str(s) for s in range(1, 6)], [str(s) for s in range(pass_score, 6)]
        if not 1 <= pass_score <= 5:
            raise VersionError(f'pass_score {pass_score!r} is not between 1 and 5')
    elif scale != 'verdict':
        raise VersionError(f"judge scale {scale!r} is not valid; use 'verdict' or 'score'")
    labels, pass_labels = [str(x) for x in labels], [str(x) for x in pass_labels]
    if not pass_labels or set(pass_labels) - set(labels):
        raise VersionError(f'pass_labels {pass_labels!r} must be some of the labels {labels!r}')
    spec = JudgeSpec(scale=scale, labels=labels, pass_labels=pass_labels, pass_score=pass_score, rationale=rationale)
    merged: dict[str, Any] = {'max_tokens': 64 if rationale else 8, **(params or {})}
    return create_version(
        name,
        template=template,
        model=model,
        params=merged,  # type: ignore[arg-type]
        output=_output(labels, rationale),
        demos=demos,
        instructions=instructions,
        parent=parent,
        note=note,
        meta={'judge': dict(spec)},
    )


#: Generic demos for the correctness judge: they show the base model what "matches the reference" means.
CORRECTNESS_DEMOS: list[dict[str, Any]] = [
    {
        'input': 'What is the capital of France?',
        'expected': 'Paris',
        'prediction': 'Paris',
        'verdict': 'yes',
        'rationale': 'Same city.',
    },
    {
        'input': 'My parcel never arrived.',
        'expected': 'DELIVERY',
        'prediction': 'BILLING',
        'verdict': 'no',
        'rationale': 'Another category.',
    },
    {
        'input': 'How many legs does a spider have?',
        'expected': 'eight',
        'prediction': '8',
        'verdict': 'yes',
        'rationale': '8 is eight.',
    },
    {
        'input': 'I was charged twice for one order.',
        'expected': 'BILLING',
        'prediction': 'TECHNICAL',
        'verdict': 'no',
        'rationale': 'Another category.',
    },
]


def correctness_judge(model: str = 'local', *, rationale: bool = False, name: str = 'correctness_judge') -> Version:
    """Return the built-in judge of answer correctness: does the prediction match the reference answer? Verdict
    `yes` (pass) or `no`, with four generic demos.

    >>> judge = correctness_judge()
    >>> ws.add_scorer('support_tickets', judge, column='judged_correct')
    """
    slot = _answer_slot(rationale)
    template = (
        '{% for d in demos %}Input: {{ d.input }}\nReference answer: {{ d.expected }}\n'
        'Given answer: {{ d.prediction }}\nDoes the given answer match the reference? '
        + slot
        + '\n\n{% endfor %}Input: {{ input }}\nReference answer: {{ expected }}\nGiven answer: {{ prediction }}\n'
        'Does the given answer match the reference?'
    )
    demos = (
        CORRECTNESS_DEMOS
        if rationale
        else [{k: v for k, v in d.items() if k != 'rationale'} for d in CORRECTNESS_DEMOS]
    )
    return create_judge(name, template=template, model=model, rationale=rationale, demos=demos)


def rubric_judge(
    rubric: str,
    *,
    model: str = 'local',
    scale: Scale = 'verdict',
    rationale: bool = False,
    demos: Sequence[Mapping[str, Any]] = (),
    name: str = 'rubric_judge',
) -> Version:
    """Return a judge that checks a prediction against a rubric given as text: verdict `yes`/`no` (or a score from
    1 to 5 with `scale='score'`). The rubric is the judge's instructions: edit it with
    `ws.edit(judge, instructions=...)`, which makes a new judge version whose parent is the old one.

    >>> judge = rubric_judge('The reply names the category in capitals and nothing else.')
    """
    if not rubric.strip():
        raise VersionError('the rubric is empty; describe what a good output does')
    question = 'Score from 1 to 5:' if scale == 'score' else 'Does the output meet the rubric?'
    template = (
        'Rubric: {{ instructions }}\n\n{% for d in demos %}Input: {{ d.input }}\nOutput: {{ d.prediction }}\n'
        + question
        + ' '
        + _answer_slot(rationale)
        + '\n\n{% endfor %}Input: {{ input }}\nOutput: {{ prediction }}\n'
        + question
    )
    return create_judge(
        name, template=template, model=model, scale=scale, rationale=rationale, instructions=rubric, demos=demos
    )


def is_judge(version: Version) -> bool:
    """Return whether a version is a judge (made by `create_judge` or one of its edits)."""
    return isinstance(version.meta, dict) and isinstance(version.meta.get('judge'), dict)


def judge_spec(version: Version | str) -> JudgeSpec:
    """Return how to read a judge's answer; raise VersionError if the version is not a judge."""
    v = get_version(version)
    if not is_judge(v):
        raise VersionError(
            f'{v.id} is not a judge; make one with ws.correctness_judge(), ws.rubric_judge(rubric) or ws.create_judge()'
        )
    return JudgeSpec(**v.meta['judge'])  # type: ignore[typeddict-item]


@dataclass(frozen=True)
class Verdict:
    """A judge's answer read: the label, the score in [0, 1], whether it passes, and the rationale if any."""

    verdict: str | None
    score: float | None
    passed: bool | None
    rationale: str | None


def read_verdict(output: str | None, spec: JudgeSpec, output_spec: Mapping[str, Any]) -> Verdict:
    """Read a judge's raw output: its verdict label (None if it gave none), score, pass and rationale.

    >>> spec = {'scale': 'verdict', 'labels': ['yes', 'no'], 'pass_labels': ['yes'], 'pass_score': 4,
    ...         'rationale': False}
    >>> read_verdict(' yes', spec, {'kind': 'choice', 'labels': ['yes', 'no']}).score
    1.0
    """
    if output is None:
        return Verdict(None, None, None, None)
    rationale = None
    text = output
    if output_spec.get('kind') == 'json':
        try:
            value = parse_udfs.extract_json(output)
        except ValueError:
            return Verdict(None, None, None, None)
        if not isinstance(value, dict):
            return Verdict(None, None, None, None)
        text, rationale = str(value.get('verdict', '')), value.get('rationale')
        rationale = None if rationale is None else str(rationale)
    label = parse_udfs.parse(text, {'kind': 'choice', 'labels': spec['labels']})
    if label is None:
        return Verdict(None, None, None, rationale)
    if spec['scale'] == 'score':
        return Verdict(label, (int(label) - 1) / 4, int(label) >= spec['pass_score'], rationale)
    passed = label in spec['pass_labels']
    return Verdict(label, float(passed), passed, rationale)


def _reference(expected: Any) -> str:
    if isinstance(expected, list):
        return ' | '.join(str(e) for e in expected)
    return '' if expected is None else str(expected)


def judge_fields(inputs: Sequence[str], row: Mapping[str, Any], prediction: str | None) -> dict[str, Any]:
    """Return what a judge's template reads for one judged row: its input fields, `input`, `prediction` and
    `expected`."""
    fields = {name: row[name] for name in inputs}
    fields['input'] = str(row[inputs[0]]) if len(inputs) == 1 else '\n'.join(f'{n}: {row[n]}' for n in inputs)
    fields['prediction'] = '' if prediction is None else str(prediction)
    fields['expected'] = _reference(row.get('expected'))
    return fields


def check_judge_template(judge: Version, dataset: Dataset) -> None:
    """Raise TemplateError if a judge's template reads a variable the judged dataset does not provide."""
    allowed = set(dataset.inputs) | JUDGE_FIELDS
    unknown = sorted(judge.variables() - allowed)
    if unknown:
        raise TemplateError(
            f'judge {judge.id} reads {{{{ {unknown[0]} }}}}, which judging {dataset.name!r} does not provide; a judge '
            f'reads the input fields ({", ".join(dataset.inputs)}), input, prediction and expected'
        )


def _judge_request(judge: Version, fields: Mapping[str, Any], model_id: str) -> dict[str, Any]:
    prompt = render_udfs.render(
        judge.template,
        fields,
        demos=cast(Sequence[Mapping[str, Any]], judge.demos),
        labels=judge.labels,
        instructions=judge.instructions,
    )
    kind = judge.output['kind']
    constraint = {'choice': judge.labels} if kind == 'choice' else {'json_schema': judge.output.get('schema')}
    request: dict[str, Any] = {
        'model': judge.model,
        'model_id': model_id,
        'params': dict(judge.params),
        'prompt': prompt,
        'constraint': constraint,
    }
    request['hash'] = store.request_hash(request)
    return request


@dataclass(frozen=True)
class Judged:
    """What `judge_rows` did: one row per judged (version, example), and the model calls it made."""

    frame: pd.DataFrame
    calls: int


_JUDGED_COLUMNS = [
    'judge_id',
    'version_id',
    'example_id',
    'request_hash',
    'prediction_hash',
    'output',
    'verdict',
    'score',
    'passed',
    'rationale',
    'error',
    'latency_s',
    'prompt_tokens',
    'completion_tokens',
    'reused',
    'judged_at',
]


def _requests(
    j: Version, ds: Dataset, rows: Sequence[Mapping[str, Any]]
) -> tuple[list[tuple[Mapping[str, Any], dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Return (row, judge request) for each row with a prediction, and the dataset's examples by id; raise naming a
    row the judge cannot render."""
    judge_spec(j)
    check_judge_template(j, ds)
    by_id = {row['example_id']: row for row in ds.rows()}
    model_id = backends.model_identity(j.model)
    requests: list[tuple[Mapping[str, Any], dict[str, Any]]] = []
    for row in rows:
        if row.get('prediction') is None or pd.isna(row.get('prediction')):
            continue
        example = by_id.get(row['example_id'])
        if example is None:
            raise WorkspaceError(f'example {row["example_id"]!r} is not in dataset {ds.name!r}; evaluate again')
        fields = judge_fields(ds.inputs, example, row['prediction'])
        try:
            requests.append((row, _judge_request(j, fields, model_id)))
        except jinja2.UndefinedError as e:
            raise TemplateError(
                f'judge {j.id} failed to render for example {row["example_id"]!r}: {e.message}'
            ) from None
    return requests, by_id


def judge_rows(
    judge: Version | str,
    dataset: Dataset | str,
    rows: Sequence[Mapping[str, Any]],
    *,
    progress: store.Progress = False,
) -> Judged:
    """Judge predictions: each row names `version_id`, `example_id`, `prediction` and `request_hash` (the judged
    prediction's request). Only judge requests the store has not answered reach the model. Rows with no
    prediction are not judged. A judge request that a blocking input or prompt rule fails (see `ws.set_rule`) is
    not sent: its row stores the rule as the error. The verdicts are written to the dataset's judgements table
    and returned.

    >>> judge_rows(correctness_judge(), 'support_tickets', run.rows().to_dict('records')).frame
    """
    j, ds = get_version(judge), get_dataset(dataset)
    spec = judge_spec(j)
    requests, by_id = _requests(j, ds, rows)
    stored = _stored(ds.name, j.id, {row['version_id'] for row, _ in requests})
    fresh = [
        (row, r)
        for row, r in requests
        if (found := stored.get((row['version_id'], row['example_id']), {})).get('request_hash') != r['hash']
        or rules.is_blocked(found.get('error'))
    ]
    blocked = _screen(j, ds, by_id, fresh)
    origin: dict[str, store.Origin] = {}
    for row, request in fresh:
        if (row['version_id'], row['example_id']) not in blocked:
            origin.setdefault(request['hash'], (j.id, ds.name, row['example_id']))
    batch = store.answer_many([(r, origin[r['hash']]) for _, r in fresh if r['hash'] in origin], progress=progress)
    now = utc_now()
    out = []
    for row, request in fresh:
        why = blocked.get((row['version_id'], row['example_id']))
        answer = batch.answers[request['hash']] if why is None else {**_NO_ANSWER, 'error': why}
        read = read_verdict(answer['text'], spec, j.output)
        out.append(
            {
                'judge_id': j.id,
                'version_id': row['version_id'],
                'example_id': row['example_id'],
                'request_hash': request['hash'],
                'prediction_hash': row.get('request_hash') or '',
                'output': answer['text'],
                'verdict': read.verdict,
                'score': read.score,
                'passed': read.passed,
                'rationale': read.rationale,
                'error': answer['error'],
                'latency_s': answer['latency_s'],
                'prompt_tokens': answer['prompt_tokens'],
                'completion_tokens': answer['completion_tokens'],
                'reused': why is None and request['hash'] not in batch.called,
                'judged_at': now,
            }
        )
    if out:
        tables.upsert(tables.judgements(ds.name), out)
    written = {(r['version_id'], r['example_id']): r for r in out}
    frame = [written.get(key) or stored[key] for key in ((row['version_id'], row['example_id']) for row, _ in requests)]
    return Judged(pd.DataFrame(frame, columns=_JUDGED_COLUMNS), batch.calls)


_NO_ANSWER: dict[str, Any] = {'text': None, 'latency_s': None, 'prompt_tokens': None, 'completion_tokens': None}


def _screen(
    judge: Version,
    ds: Dataset,
    examples: Mapping[str, Mapping[str, Any]],
    fresh: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
) -> dict[tuple[str, str], str]:
    """Return {(version id, example id): why} for the judge requests a blocking rule keeps from the model: input
    rules of the judge's prompt or of the judged version's prompt on the example's input fields, and prompt rules
    of the judge's prompt on the judge's rendered prompt."""
    active = rules.active_rules()
    own = rules.blocking_rules(judge.prompt, active)
    if not any(r.enforcement == 'block' and r.stage in ('input', 'prompt') for r in active):
        return {}
    judged: dict[str, list[rules.Rule]] = {}
    blocked = {}
    for row, request in fresh:
        vid = row['version_id']
        if vid not in judged:
            inputs = rules.blocking_rules(get_version(vid).prompt, active)
            judged[vid] = own + [r for r in inputs if r.stage == 'input' and r not in own]
        example = examples[row['example_id']]
        found = rules.screen(judged[vid], {n: example[n] for n in ds.inputs}, request['prompt'])
        if found:
            blocked[(vid, row['example_id'])] = rules.blocked_message(found)
    return blocked


def _stored(dataset: str, judge_id: str, version_ids: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Return the stored judgements of one judge on these versions' rows, keyed by (version id, example id)."""
    if not version_ids:
        return {}
    t = tables.judgements(dataset)
    rows = t.where((t.judge_id == judge_id) & t.version_id.isin(sorted(version_ids))).collect()
    return {(r['version_id'], r['example_id']): dict(r) for r in rows}


def judge_run(run: Any, judge: Version | str, *, progress: store.Progress = False) -> pd.DataFrame:
    """Judge every prediction of a run (without adding a scorer column) and return one row per example: the
    judge's verdict, score, pass, rationale and error. Judgements already in the store cost no call.

    >>> ws.judge_run(run, ws.correctness_judge())[['example_id', 'verdict', 'passed']]
    """
    frame = run.rows()
    rows = frame[['version_id', 'example_id', 'prediction', 'request_hash']].to_dict('records')
    return judge_rows(judge, run.dataset, rows, progress=progress).frame


def judge_columns(evals: Any) -> dict[str, dict[str, Any]]:
    """Return the judge scorer columns of an evaluation table: column name to its scorer metadata (judge id,
    only_if, only_if_min, every_evaluation)."""
    found = {}
    for name, col in reads.metadata(evals)['columns'].items():
        meta = col.get('custom_metadata')
        if isinstance(meta, dict) and meta.get('scorer') == 'judge':
            found[name] = meta
    return found


def judges_to_run(evals: Any, asked: Sequence[str] | str | None) -> dict[str, dict[str, Any]]:
    """Return the judge columns an evaluation runs: those named in `asked` ('all': every one), or by default
    those attached with `every_evaluation=True`. Raise WorkspaceError naming the judge columns for an unknown
    name, before any model call."""
    columns = judge_columns(evals)
    if asked is None:
        return {name: meta for name, meta in columns.items() if meta.get('every_evaluation')}
    if isinstance(asked, str) and asked != 'all':
        asked = [asked]
    if asked == 'all':
        return columns
    unknown = [name for name in asked if name not in columns]
    if unknown:
        have = ', '.join(columns) or 'none: attach one with ws.add_scorer(dataset, judge, column=...)'
        raise WorkspaceError(f'judges={unknown[0]!r} is not a judge column of this dataset; its judge columns: {have}')
    return {name: columns[name] for name in asked}


def _judge_progress(progress: store.Progress, column: str) -> store.Progress:
    """Return a progress that counts judge calls as judge calls (the store's own bar says model calls): a bar of
    its own, or, for a progress function with a `judge` method (the comparison widget's), that method."""
    if callable(progress) and callable(getattr(progress, 'judge', None)):
        return progress.judge  # type: ignore[union-attr,attr-defined]
    if progress is not True:
        return progress
    bar: list[Any] = []

    def report(done: int, total: int) -> None:
        if not bar:
            from tqdm.auto import tqdm

            bar.append(tqdm(total=total, desc=f'judge calls ({column})', unit='call'))
        bar[0].update(done - bar[0].n)
        if done >= total:
            bar[0].close()

    return report


def new_judge_calls(judge: Version | str, dataset: Dataset | str, rows: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """Return (judge calls judging `rows` would make, rows it would judge): the judge requests the store has
    not answered, and the rows with a prediction. Nothing is called."""
    j, ds = get_version(judge), get_dataset(dataset)
    requests, _ = _requests(j, ds, rows)
    stored = _stored(ds.name, j.id, {row['version_id'] for row, _ in requests})
    fresh = {
        r['hash']
        for row, r in requests
        if stored.get((row['version_id'], row['example_id']), {}).get('request_hash') != r['hash']
    }
    return len(fresh - set(store.lookup(fresh))), len(requests)


def gate_passed(value: Any, minimum: float) -> bool:
    """Return whether a row's score on a gating (cheaper) scorer lets a judge judge it."""
    return value is not None and not pd.isna(value) and float(value) >= minimum


#: What `stored_score` returns for a judgement whose answer the request store does not hold.
NOT_STORED = "the judge's answer is not in the request store"


def stored_score(judge: Version | str, dataset: Dataset, example: Mapping[str, Any], prediction: str) -> Any:
    """Return a judge's score of one prediction read from the request store, with no model call (`NOT_STORED`
    if the store does not hold the judge's answer). Reproducing a run reads judge scores so."""
    j = get_version(judge)
    fields = judge_fields(dataset.inputs, example, prediction)
    request = _judge_request(j, fields, backends.model_identity(j.model))
    answer = store.lookup([request['hash']]).get(request['hash'])
    if answer is None:
        return NOT_STORED
    return read_verdict(answer['text'], judge_spec(j), j.output).score


def judge_evaluation(
    dataset: Dataset,
    evals: Any,
    version_id: str,
    example_ids: Sequence[str],
    *,
    columns: Mapping[str, Mapping[str, Any]] | None = None,
    asked: bool = False,
    progress: store.Progress = False,
) -> int:
    """Judge a version's evaluation rows with the judge columns given (default: those attached with
    `every_evaluation=True`) and write each judge's score into its column; return the judge calls made. Rows that
    failed the column's `only_if` scorer, or have no prediction, score 0.0 without a call. Before a judge makes a
    call, the number of calls it will make is logged (a warning when the evaluation did not name the judge)."""
    columns = judges_to_run(evals, None) if columns is None else columns
    if not columns:
        return 0
    wanted = set(example_ids)
    frame = evals.where(evals.version_id == version_id).collect().to_pandas()
    frame = frame[frame['example_id'].isin(wanted)]
    calls = 0
    for column, meta in columns.items():
        updates = []
        gate, minimum = meta.get('only_if'), float(meta.get('only_if_min', 1.0))
        eligible = frame if gate is None else frame[[gate_passed(v, minimum) for v in frame[gate]]]
        rows = eligible[['version_id', 'example_id', 'prediction', 'request_hash']].to_dict('records')
        planned, judged_rows = new_judge_calls(meta['judge'], dataset, rows)
        if planned:
            say = log.info if asked else log.warning
            say(
                '%s judges %d rows of %s with %s: %d judge calls (the store answers the rest)%s',
                column,
                judged_rows,
                version_id,
                meta['judge'],
                planned,
                ''
                if asked
                else '; it runs on every evaluation of this dataset (add_scorer(..., every_evaluation=True))',
            )
        judged = judge_rows(meta['judge'], dataset, rows, progress=_judge_progress(progress, column))
        calls += judged.calls
        scores = dict(zip(judged.frame['example_id'], judged.frame['score']))
        for ex, current in zip(frame['example_id'], frame[column]):
            value = scores.get(ex, 0.0)  # not judged: failed the cheaper scorer, or no prediction
            value = None if value is None or pd.isna(value) else float(value)
            same = (value is None and pd.isna(current)) or (
                value is not None and not pd.isna(current) and current == value
            )
            if not same:
                updates.append({'version_id': version_id, 'example_id': ex, column: value})
        if updates:
            tables.upsert(evals, updates)
    return calls
