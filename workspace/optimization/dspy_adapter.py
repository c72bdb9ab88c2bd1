"""DSPy over the workspace: an LM whose every call goes through the request store, and an adapter that renders a
version's completion template instead of DSPy's chat format.

A 270M base model cannot answer in DSPy's `[[ ## field ## ]]` sections, so `VersionAdapter` renders the task's
requests exactly as `versions.build_request` does for a version with the candidate's instructions and demos: the
optimizer's dev evaluation of a candidate and a later `ws.evaluate` of the version made from it send the same
requests, and the second costs no model call. Signatures that are not the task's (the instruction proposers of
MIPROv2, COPRO and GEPA) get a plain completion format: one `Field: value` line per input, then the first output
field's prefix, whose completion becomes that output.

`WorkspaceLM` sends each request through `store.answer`, so every call is cached, counted, traceable to the
optimizer run and trial that asked for it, and committed before the optimizer sees it: a killed run repeats none.
DSPy's own caches never see these calls (a custom LM's calls are not cached by DSPy, and `cache=False`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

os.environ.setdefault('LITELLM_LOCAL_MODEL_COST_MAP', 'True')  # before dspy imports litellm

import dspy  # noqa: E402
from dspy.utils.callback import BaseCallback  # noqa: E402

from udfs import (
    parse as parse_udfs,  # noqa: E402
    render as render_udfs,  # noqa: E402
)
from workspace.config import utc_now  # noqa: E402
from workspace.core.demo_policies import retrieve  # noqa: E402
from workspace.core.versions import (
    Version,  # noqa: E402
    build_request,  # noqa: E402
)
from workspace.storage import backends  # noqa: E402
from workspace.storage.store import answer, answer_many, blocked_answer  # noqa: E402

__all__ = [
    'StopReason',
    'Stop',
    'ModelCallError',
    'Ledger',
    'Candidate',
    'Active',
    'Task',
    'WorkspaceLM',
    'VersionAdapter',
    'Trial',
    'TrialRecorder',
    'demo_template',
]

StopReason = Literal['max_calls', 'max_minutes', 'max_candidates', 'max_errors']

#: Longest value, in characters, a proposer prompt shows for one field: keeps prompts inside a small context.
FIELD_CHARS = 1500

#: Output field names that would shadow methods of dspy.Example or dspy.Prediction.
_RESERVED_FIELDS = frozenset(dir(dspy.Prediction)) | {'example_id', 'augmented'}


class Stop(BaseException):
    """Unwind an optimizer run: a budget is spent or too many model calls failed.

    A BaseException, like KeyboardInterrupt, because DSPy's optimizers catch `Exception` around candidate
    evaluations and would otherwise score the candidate 0 and go on.
    """

    def __init__(self, reason: StopReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ModelCallError(Exception):
    """A model call answered with an error (a timeout, a 5xx after retries, a context overflow)."""


@dataclass
class Ledger:
    """What an optimizer run has asked the models so far, and the budget it must stay within.

    Requests count whether the store answers them or a model does, so a resumed run stops where an uninterrupted
    one would: the result never depends on what happened to be cached.
    """

    run_id: str
    dataset: str
    max_requests: int | None = None
    deadline: float | None = None
    max_errors: int = 10
    on_request: Callable[[Ledger], None] | None = None
    label: str = ''
    #: Checks a request before it is sent: (request, its input fields or None) in, why it must not be sent (a
    #: blocking rule) or None out. A blocked request fails like a model error but is not sent nor counted as one.
    screen: Callable[[Mapping[str, Any], Mapping[str, Any] | None], str | None] | None = None
    requests: int = 0
    calls: int = 0
    reused: int = 0
    tokens: int = 0
    errors: int = 0
    blocked: int = 0
    last_error: str | None = None
    _memo: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        self.label = self.label or self.run_id

    def check_time(self) -> None:
        """Raise Stop if the run is past its deadline."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Stop('max_minutes', 'the max_minutes budget is spent')

    def _tally(self, out: dict[str, Any], fresh: bool) -> dict[str, Any]:
        """Count one answered request: a model call if this ledger had to ask for it and no one had answered it
        before (and it needed a model), else a reuse; and its error, if it has one."""
        self.requests += 1
        if out.get('finish_reason') == backends.ONLY_CHOICE:
            pass  # a choice with one possible label: answered without a model, neither a call nor a reuse
        elif fresh and not out['reused']:
            self.calls += 1
            self.tokens += int(out.get('prompt_tokens') or 0) + int(out.get('completion_tokens') or 0)
        else:
            self.reused += 1
        if out['error'] is not None:
            self.errors += 1
            self.last_error = out['error']
        if self.on_request is not None:
            self.on_request(self)
        return out

    def answer(
        self, request: Mapping[str, Any], example_id: str | None, inputs: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Return the store's answer to `request`, counting it against the budget; raise ModelCallError on an error
        or when `screen` keeps the request (made from `inputs`, if it is the task's) from the model."""
        with self._lock:
            self.check_time()
            if self.max_requests is not None and self.requests >= self.max_requests:
                raise Stop('max_calls', f'the max_calls budget of {self.max_requests} requests is spent')
            why = self._screened(request, [inputs] if inputs is not None else [])
            if why is not None:
                self.requests += 1
                self.blocked += 1
                raise ModelCallError(why)
            body = {k: v for k, v in request.items() if k != 'hash'}
            key = json.dumps(body, sort_keys=True, ensure_ascii=False)
            fresh = key not in self._memo
            if fresh:
                self._memo[key] = dict(answer(body, origin=(self.label, self.dataset, example_id)))
            out = self._tally(self._memo[key], fresh)
            if out['error'] is not None:
                self.check_errors()
                raise ModelCallError(f'{request["model"]}: {out["error"]}')
            return out

    def _screened(self, request: Mapping[str, Any], fields: Sequence[Mapping[str, Any]]) -> str | None:
        """Return why `screen` keeps `request` from the model (checked on each of its data `fields`: the example's,
        its demos'), or None."""
        if self.screen is None:
            return None
        for f in fields or [None]:  # type: ignore[list-item]
            why = self.screen(request, f)
            if why is not None:
                return why
        return None

    def answer_many(
        self,
        items: Sequence[tuple[Mapping[str, Any], str | None]],
        fields: Sequence[Sequence[Mapping[str, Any]]] | None = None,
    ) -> list[dict[str, Any]]:
        """Answer (request, example id) pairs in one batch through the store (one lookup, one claim, answers
        written every few seconds), counting each against the budget. Errors are returned on their answers (and
        counted: `check_errors` raises once there are more than `max_errors`), not raised. A batch longer than
        `max_calls` leaves is cut to fit; Stop is raised when nothing is left or the deadline has passed.
        `fields` holds, per item, the data its request was made of (the example's input fields, its demos'): a
        request `screen` refuses is answered with the rule as its error, never sent, and not counted as an error."""
        with self._lock:
            self.check_time()
            room = None if self.max_requests is None else self.max_requests - self.requests
            if room is not None and room <= 0:
                raise Stop('max_calls', f'the max_calls budget of {self.max_requests} requests is spent')
            items = list(items)[:room] if room is not None else list(items)
            refused = {
                i: why
                for i, (request, _) in enumerate(items)
                if (why := self._screened(request, fields[i] if fields is not None else [])) is not None
            }
            if refused:
                self.requests += len(refused)
                self.blocked += len(refused)
                kept = [item for i, item in enumerate(items) if i not in refused]
                answered = iter(self.answer_many(kept) if kept else [])
                return [
                    dict(blocked_answer(items[i][0]['hash'], refused[i])) if i in refused else next(answered)
                    for i in range(len(items))
                ]
            bodies = [({k: v for k, v in r.items() if k != 'hash'}, ex) for r, ex in items]
            keys = [json.dumps(body, sort_keys=True, ensure_ascii=False) for body, _ in bodies]
            asked = [
                (body, (self.label, self.dataset, ex)) for (body, ex), key in zip(bodies, keys) if key not in self._memo
            ]
            batch = answer_many(asked, progress=False) if asked else None
            outs = []
            for (request, _), key in zip(items, keys):
                fresh = key not in self._memo
                if fresh and batch is not None:
                    self._memo[key] = dict(batch.answers[request['hash']], reused=request['hash'] not in batch.called)
                outs.append(self._tally(self._memo[key], fresh))
            return outs

    def check_errors(self) -> None:
        """Raise Stop if more model calls failed than `max_errors` allows."""
        if self.errors > self.max_errors:
            raise Stop('max_errors', f'{self.errors} model calls failed (max_errors={self.max_errors})')


def demo_template(template: str, inputs: Sequence[str]) -> str:
    """Return `template` preceded by a loop that renders each demo through the same template, then its answer.

    Used when a version's template does not read `demos` and an optimizer picks some: each demo's input fields
    stand in for the example's, so the demos look exactly like the final question.

    >>> demo_template('Ticket: {{ text }}\\nCategory:', ['text'])[:42]
    '{% for d in demos %}{% with text=d.text %}'
    """
    assigns = ', '.join(f'{name}=d.{name}' for name in inputs)
    gap = '' if template.endswith((' ', '\n')) else ' '
    return (
        f'{{% for d in demos %}}{{% with {assigns} %}}{template}{gap}{{{{ d.expected }}}}\n\n'
        f'{{% endwith %}}{{% endfor %}}{template}'
    )


@dataclass(frozen=True)
class Candidate:
    """One candidate's content: the template it renders with, its instructions, and its demos: fixed ones, or a
    demo policy (`workspace.core.demo_policies.nearest`) that picks them per example."""

    template: str
    instructions: str
    demos: tuple[dict[str, Any], ...]
    policy: Mapping[str, Any] | None = None
    output: Mapping[str, Any] | None = None  # another output spec than the baseline's (a label decoding)

    @property
    def key(self) -> str:
        """Return a content hash identifying the candidate."""
        body: dict[str, Any] = {'template': self.template, 'instructions': self.instructions, 'demos': list(self.demos)}
        if self.policy is not None:
            body['policy'] = dict(self.policy)
        if self.output is not None:
            body['output'] = dict(self.output)
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]

    @property
    def version_demos(self) -> Any:
        """Return the demos as a version holds them: the policy, or a list of fixed demos."""
        return dict(self.policy) if self.policy is not None else [dict(d) for d in self.demos]

    def apply(self, version: Version) -> Version:
        """Return `version` with this content (not stored: used to build requests)."""
        changed = dataclasses.replace(
            version, template=self.template, instructions=self.instructions, demos=self.version_demos
        )
        output: Any = dict(self.output) if self.output is not None else None  # an OutputSpec from a candidate's dict
        return dataclasses.replace(changed, output=output) if output is not None else changed


@dataclass
class Active:
    """The candidate being scored right now, when it is one DSPy's predictor cannot describe (a demo policy):
    set by the trial recorder, read by the adapter, so the requests are the ones `evaluate` will send."""

    candidate: Candidate | None = None


def _first_reference(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


@dataclass(frozen=True)
class Task:
    """The task as DSPy sees it: a signature over the dataset's input fields, and how candidates map to content."""

    baseline: Version
    inputs: tuple[str, ...]
    output: str
    signature: type[dspy.Signature]
    default_instructions: str
    example_ids: Mapping[str, str]
    dataset: str = ''

    @classmethod
    def create(
        cls,
        baseline: Version,
        inputs: Sequence[str],
        expected_column: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        dataset: str = '',
    ) -> Task:
        """Return the task for `baseline` on a dataset with `inputs`; `rows` map input fields to example ids."""
        output = expected_column if expected_column.isidentifier() else 'expected'
        if output in inputs or output in _RESERVED_FIELDS or output.startswith('_'):
            output = 'answer' if 'answer' not in inputs else 'expected_output'
        fields: dict[str, Any] = {name: (str, dspy.InputField()) for name in inputs}
        fields[output] = (str, dspy.OutputField())
        bare = dspy.Signature(fields)
        default = bare.instructions
        signature = bare.with_instructions(baseline.instructions) if baseline.instructions.strip() else bare
        ids: dict[str, str] = {}
        for row in rows:
            ids.setdefault(_fields_key({name: row[name] for name in inputs}), str(row['example_id']))
        return cls(baseline, tuple(inputs), output, signature, default, ids, dataset)

    def example(self, row: Mapping[str, Any]) -> dspy.Example:
        """Return a dataset row as a DSPy example: inputs, the expected output, and its example id."""
        values = {name: row[name] for name in self.inputs}
        return dspy.Example(**values, **{self.output: row['expected']}, example_id=str(row['example_id'])).with_inputs(
            *self.inputs
        )

    def is_task(self, signature: type[dspy.Signature]) -> bool:
        """Return True if `signature` is the task's (whatever instructions an optimizer gave it)."""
        return list(signature.input_fields) == list(self.inputs) and list(signature.output_fields) == [self.output]

    def demo(self, example: Any) -> dict[str, Any]:
        """Return a DSPy demo (labeled or bootstrapped) as a version demo: input fields plus `expected`."""
        get = example.get if hasattr(example, 'get') else example.__getitem__
        demo = {name: get(name) for name in self.inputs}
        demo['expected'] = _first_reference(get(self.output))
        return demo

    def dspy_demos(self, demos: Sequence[Mapping[str, Any]]) -> list[dspy.Example]:
        """Return version demos as DSPy demos."""
        return [
            dspy.Example(**{name: d.get(name) for name in self.inputs}, **{self.output: d.get('expected')})
            for d in demos
        ]

    def candidate(
        self, signature: type[dspy.Signature], demos: Sequence[Any], base: Version | None = None
    ) -> Candidate:
        """Return the content a DSPy predictor stands for, rendered with `base`'s template (the baseline's)."""
        base = base or self.baseline
        instructions = (signature.instructions or '').strip()
        if instructions == self.default_instructions:
            instructions = ''
        demo_list = tuple(self.demo(d) for d in demos)
        template = base.template
        reads_demos = base.is_chat or 'demos' in render_udfs.template_variables(template)  # chat: demos are turns
        if demo_list and not reads_demos and list(demo_list) != list(base.demos):
            template = demo_template(template, self.inputs)
        return Candidate(template, instructions, demo_list)

    def baseline_candidate(self) -> Candidate:
        """Return the baseline version's own content."""
        policy = self.baseline.demo_policy
        demos: Any = self.baseline.demos  # a list of demos when there is no policy
        fixed = () if policy is not None else tuple(dict(d) for d in demos)
        return Candidate(self.baseline.template, self.baseline.instructions, fixed, policy)

    def request(self, version: Version, inputs: Mapping[str, Any], model_id: str) -> dict[str, Any]:
        """Return the request `evaluate` sends for `version` on these inputs, demos of a policy retrieved."""
        retrieved = None
        if version.demo_policy is not None:
            example = {**inputs, 'example_id': self.example_id(inputs)}
            retrieved = retrieve(version.demo_policy, [example], dataset=self.dataset)[str(example['example_id'])]
        return build_request(version, {**inputs}, model_id=model_id, demos=retrieved.demos if retrieved else None)

    def example_id(self, inputs: Mapping[str, Any]) -> str | None:
        """Return the id of the dataset example with these input fields, if there is one."""
        return self.example_ids.get(_fields_key({name: inputs.get(name) for name in self.inputs}))


def _fields_key(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, ensure_ascii=False, default=str)


def _flatten(messages: Sequence[Mapping[str, Any]] | None) -> str:
    parts = []
    for message in messages or []:
        content = message.get('content')
        if isinstance(content, list):
            content = '\n'.join(str(p.get('text', '')) for p in content if isinstance(p, Mapping))
        if content:
            parts.append(str(content))
    return '\n\n'.join(parts)


class WorkspaceLM(dspy.BaseLM):
    """A DSPy LM over a version's model: task requests as the version sends them, proposals as plain completions.

    `version` gives the model, the params of task requests and the template the adapter renders with (for a
    teacher, the teacher's). `proposal_params` are the params of every other request (instruction proposals).
    A temperature or rollout id that DSPy sets (bootstrap rounds, proposers) goes into the request's params, the
    rollout id as an offset of the seed, so each such request is distinct and still reproducible.
    """

    def __init__(self, version: Version, *, ledger: Ledger, proposal_params: Mapping[str, Any]) -> None:
        super().__init__(
            model=version.model, model_type='chat', temperature=None, max_tokens=None, cache=False, num_retries=0
        )
        self.version = version
        self.model_id = backends.model_identity(version.model)
        self.ledger = ledger
        self.proposal_params = dict(proposal_params)

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> dict[str, Any]:
        options = {**self.kwargs, **kwargs}
        request = options.pop('workspace_request', None)
        example_id = options.pop('workspace_example', None)
        inputs = options.pop('workspace_inputs', None)
        if request is None:
            text = prompt if isinstance(prompt, str) else _flatten(messages)
            params = dict(self.proposal_params)
            if options.get('max_tokens') is not None:
                params['max_tokens'] = int(options['max_tokens'])
            request = {'model': self.model, 'model_id': self.model_id, 'params': params, 'prompt': text}
            request['constraint'] = None
        params = dict(request['params'])
        if options.get('temperature') is not None:
            params['temperature'] = float(options['temperature'])
        if options.get('rollout_id') is not None:
            params['seed'] = int(params.get('seed', 0)) + int(options['rollout_id'])
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i in range(int(options.get('n') or 1)):
            varied = dict(params, seed=int(params.get('seed', 0)) + i) if i else params
            out = self.ledger.answer({**request, 'params': varied}, example_id, inputs)
            prompt_tokens += int(out.get('prompt_tokens') or 0)
            completion_tokens += int(out.get('completion_tokens') or 0)
            choices.append(
                {
                    'index': i,
                    'message': {'role': 'assistant', 'content': out.get('text') or ''},
                    'finish_reason': out.get('finish_reason') or 'stop',
                }
            )
        return {
            'id': out['hash'][:24],
            'object': 'chat.completion',
            'model': self.model,
            'choices': choices,
            'usage': {
                'prompt_tokens': prompt_tokens,
                'completion_tokens': completion_tokens,
                'total_tokens': prompt_tokens + completion_tokens,
            },
        }


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple)):
        text = '\n'.join(_show(v) for v in value)
    elif hasattr(value, 'model_dump'):
        text = json.dumps(value.model_dump(), ensure_ascii=False, default=str)
    elif isinstance(value, (dict, int, float, bool)) or value is None:
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = str(value)
    return text if len(text) <= FIELD_CHARS else text[:FIELD_CHARS] + ' ...'


def _prefix(signature: type[dspy.Signature], name: str) -> str:
    extra = signature.fields[name].json_schema_extra or {}
    return str(extra.get('prefix') or f'{name}:')


class VersionAdapter(dspy.Adapter):
    """A DSPy adapter that renders the task's requests with a version's completion template and output spec.

    For the task's signature, the request is `build_request(version with the candidate's content, inputs)`; the
    completion is parsed with the version's output spec. Any other signature is rendered as plain completion text
    (instructions, then `Field: value` lines, then the first output field's prefix) and its completion becomes
    the first output field; other output fields are left empty.
    """

    def __init__(self, task: Task, active: Active | None = None) -> None:
        super().__init__()
        self.task = task
        self.active = active or Active()

    def __call__(  # type: ignore[override]
        self,
        lm: dspy.BaseLM,
        lm_kwargs: dict[str, Any],
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        kwargs = {k: v for k, v in lm_kwargs.items() if k not in ('tools', 'tool_choice', 'parallel_tool_calls')}
        if self.task.is_task(signature) and isinstance(lm, WorkspaceLM):
            chosen = self.active.candidate or self.task.candidate(signature, demos, lm.version)
            version = chosen.apply(lm.version)
            request = self.task.request(version, inputs, lm.model_id)
            kwargs.update(
                workspace_request=request, workspace_example=self.task.example_id(inputs), workspace_inputs=inputs
            )
            outputs = lm(prompt=request['prompt'], **kwargs)
            return [{self.task.output: parse_udfs.parse(_text(o), dict(version.output))} for o in outputs]
        outputs = lm(prompt=self.render_plain(signature, demos, inputs), **kwargs)
        return [self.parse(signature, _text(o)) for o in outputs]

    async def acall(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:  # type: ignore[override]
        return self(*args, **kwargs)

    def render_plain(
        self, signature: type[dspy.Signature], demos: Sequence[Mapping[str, Any]], inputs: Mapping[str, Any]
    ) -> str:
        """Return the completion prompt for a signature that is not the task's."""
        first = next(iter(signature.output_fields))
        lines = [signature.instructions.strip(), ''] if (signature.instructions or '').strip() else []
        for demo in demos:
            shown = [f'{_prefix(signature, k)} {_show(demo[k])}' for k in signature.input_fields if k in demo]
            if first in demo and shown:
                lines += [*shown, f'{_prefix(signature, first)} {_show(demo[first])}', '']
        for name in signature.input_fields:
            if name in inputs:
                lines.append(f'{_prefix(signature, name)} {_show(inputs[name])}')
        lines.append(_prefix(signature, first))
        return '\n'.join(lines)

    def format(
        self, signature: type[dspy.Signature], demos: list[dict[str, Any]], inputs: dict[str, Any]
    ) -> list[dict[str, Any]]:
        if self.task.is_task(signature):
            chosen = self.active.candidate or self.task.candidate(signature, demos)
            request = self.task.request(chosen.apply(self.task.baseline), inputs, '')
            return list(request.get('messages') or [{'role': 'user', 'content': request['prompt']}])  # chat: as sent
        return [{'role': 'user', 'content': self.render_plain(signature, demos, inputs)}]

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        names = list(signature.output_fields)
        values: dict[str, Any] = {
            name: '' if signature.output_fields[name].annotation is str else None for name in names
        }
        values[names[0]] = completion.strip().strip('"').strip()
        return values


def _text(output: Any) -> str:
    if isinstance(output, Mapping):
        return str(output.get('text') or '')
    return str(output or '')


@dataclass
class Trial:
    """One evaluation of one candidate during an optimizer run: what it scored and what it cost."""

    number: int
    kind: Literal['baseline', 'candidate', 'final']
    candidate: Candidate
    scope: Literal['dev', 'dev_sample', 'train']
    example_ids: tuple[str, ...]
    started_at: datetime.datetime
    example_scores: dict[str, float] = field(default_factory=dict)
    example_predictions: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    requests: int = 0
    calls: int = 0
    tokens: int = 0
    errors: int = 0
    error: str | None = None
    status: Literal['running', 'ok', 'failed', 'stopped'] = 'running'
    wall_s: float = 0.0

    @property
    def dev_score(self) -> float | None:
        """Return the score if the trial covered the whole dev split, else None."""
        return self.score if self.scope == 'dev' and self.status != 'stopped' else None


class TrialRecorder(BaseCallback):
    """Record every `dspy.Evaluate` call of an optimizer run as a trial, whichever optimizer makes it.

    Every optimizer here scores candidates through `dspy.Evaluate` (BootstrapFewShotWithRandomSearch, MIPROv2 and
    COPRO directly, GEPA through its adapter), so its callbacks see each candidate program, the examples it was
    scored on and the per-example scores. It also enforces `max_candidates`: evaluating one more distinct
    candidate than allowed stops the run.
    """

    def __init__(
        self,
        task: Task,
        ledger: Ledger,
        dev_ids: Sequence[str],
        *,
        max_candidates: int | None,
        on_trial: Callable[[Trial], None],
        split_score: Callable[[Mapping[str, Any]], float] | None = None,
        active: Active | None = None,
    ) -> None:
        self.task = task
        self.split_score = split_score
        self.active = active or Active()
        self.ledger = ledger
        self.dev_ids = frozenset(dev_ids)
        self.max_candidates = max_candidates
        self.on_trial = on_trial
        self.kind: Literal['baseline', 'candidate', 'final'] = 'baseline'
        self.trials: list[Trial] = []
        self._open: dict[str, tuple[Trial, tuple[int, int, int, int], float]] = {}
        self._seen = {task.baseline_candidate().key}
        self._new = 0

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.ledger.check_time()
        program = inputs['program']
        devset = inputs.get('devset') or instance.devset
        candidate = getattr(program, 'workspace_candidate', None)
        if candidate is None:
            predictor = program.predictors()[0]
            candidate = self.task.candidate(predictor.signature, predictor.demos)
        self.active.candidate = candidate if candidate.policy is not None or candidate.output is not None else None
        if candidate.key not in self._seen:
            if self.max_candidates is not None and self._new >= self.max_candidates:
                raise Stop('max_candidates', f'the max_candidates budget of {self.max_candidates} is spent')
            self._seen.add(candidate.key)
            self._new += 1
        ids = tuple(str(e.get('example_id')) for e in devset)
        scope: Literal['dev', 'dev_sample', 'train'] = (
            'dev' if set(ids) == self.dev_ids else 'dev_sample' if set(ids) <= self.dev_ids else 'train'
        )
        trial = Trial(len(self.trials), self.kind, candidate, scope, ids, utc_now())
        self.trials.append(trial)
        led = self.ledger
        self._open[call_id] = (trial, (led.requests, led.calls, led.tokens, led.errors), time.perf_counter())
        led.label = f'{led.run_id}/t{trial.number}'

    def on_evaluate_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        if call_id not in self._open:
            return
        trial, (requests, calls, tokens, errors), start = self._open.pop(call_id)
        led = self.ledger
        led.label = led.run_id
        trial.requests, trial.calls = led.requests - requests, led.calls - calls
        trial.tokens, trial.errors = led.tokens - tokens, led.errors - errors
        trial.wall_s = time.perf_counter() - start
        self.active.candidate = None
        if outputs is not None and exception is None:
            trial.example_scores = {
                str(example.get('example_id')): float(score or 0.0) for example, _, score in outputs.results
            }
            trial.example_predictions = {
                str(example.get('example_id')): prediction.get(self.task.output) if prediction is not None else None
                for example, prediction, _ in outputs.results
            }
            values = list(trial.example_scores.values())
            if self.split_score is not None and trial.example_predictions:
                trial.score = self.split_score(trial.example_predictions)
            else:
                trial.score = sum(values) / len(values) if values else None
        if exception is not None:
            trial.status = 'stopped' if isinstance(exception, Stop) else 'failed'
            trial.error = str(exception)
        elif trial.errors:
            trial.status, trial.error = 'failed', led.last_error
        else:
            trial.status = 'ok'
        self.on_trial(trial)

    def dev_trials(self) -> list[Trial]:
        """Return the trials scored on the whole dev split, in order."""
        return [t for t in self.trials if t.dev_score is not None]
