"""Prompt versions: immutable rows of template, model, params, output spec and demos, each with a parent."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import html
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import jinja2
import pandas as pd

from udfs import render as render_udfs
from workspace.config import current_user, utc_now
from workspace.core.demo_policies import DemoPolicy, check_policy, is_policy
from workspace.display.results import render_record
from workspace.errors import LabelError, TemplateError, VersionError
from workspace.storage import audit_log, backends, calibration, store, tables
from workspace.storage.reads import READS

__all__ = [
    'OutputSpec',
    'Params',
    'Version',
    'text',
    'choice',
    'json_object',
    'create_version',
    'edit',
    'get_version',
    'list_versions',
    'parent_chain',
    'label_target',
    'build_request',
    'with_template',
]

log = logging.getLogger(__name__)

_PROMPT_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_-]{0,63}$')
_VERSION_REF = re.compile(r'^(?P<prompt>[^:@]+)(?::v?(?P<number>\d+)|@(?P<label>[^:@]+))?$')


class OutputSpec(TypedDict, total=False):
    """What a version's output is: free text, one of N labels, or JSON (optionally with a schema)."""

    kind: Literal['text', 'choice', 'json']
    labels: list[str]
    schema: dict[str, Any] | None
    decode: calibration.Decode
    restrict: Literal['demos']
    vote: float
    vote_by: Literal['rank']


class Params(TypedDict, total=False):
    """Decoding parameters sent with every request of a version."""

    temperature: float
    max_tokens: int
    stop: list[str]
    seed: int
    top_p: float


_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    'temperature': (int, float),
    'max_tokens': (int,),
    'stop': (list,),
    'seed': (int,),
    'top_p': (int, float),
}


def text() -> OutputSpec:
    """Return the output spec for free text.

    >>> text()
    {'kind': 'text'}
    """
    return {'kind': 'text'}


def choice(
    labels: Sequence[str],
    *,
    decode: calibration.Decode = 'mask',
    restrict: Literal['demos'] | None = None,
    vote: float | None = None,
    vote_by: Literal['share', 'rank'] = 'share',
) -> OutputSpec:
    """Return the output spec for one label out of `labels`; the embedded model is constrained to them.

    `decode` is how the local model chooses: `'mask'` generates under a token mask, `'rank'` answers the label
    with the highest log-likelihood, `'calibrated'` divides those by the content-free probabilities first (see
    `workspace.storage.calibration`). `restrict='demos'` lets each request choose only among the labels of the
    demos it shows (with `ws.nearest`, the labels of the example's neighbours). `vote=w` (with `'rank'` or
    `'calibrated'`) mixes the model's label probabilities with the demos' vote, weight `w` on the vote; it is
    applied to the stored answer, so versions that differ only in `w` share their requests; `vote_by='rank'`
    weighs the i-th nearest demo's vote by 1/i.

    >>> choice(['BILLING', 'REFUND'])
    {'kind': 'choice', 'labels': ['BILLING', 'REFUND']}
    >>> choice(labels, decode='calibrated', restrict='demos', vote=0.5)  # doctest: +SKIP
    """
    labels = [str(label) for label in labels]
    if not labels or any(not label.strip() for label in labels) or len(set(labels)) != len(labels):
        raise VersionError(f'choice() needs distinct, non-empty labels; got {labels!r}')
    calibration.check_decode(decode)
    calibration.check_choice_options(decode, restrict, vote, vote_by)
    spec: OutputSpec = {'kind': 'choice', 'labels': labels}
    if decode != 'mask':  # the default adds nothing: versions made before `decode` existed keep their hashes
        spec['decode'] = decode
    if restrict is not None:
        spec['restrict'] = restrict
    if vote is not None:
        spec['vote'] = float(vote)
        if vote_by != 'share':  # the default adds nothing
            spec['vote_by'] = vote_by  # type: ignore[typeddict-item]
    return spec


def json_object(schema: Mapping[str, Any] | None = None) -> OutputSpec:
    """Return the output spec for a JSON value, validated against `schema` when one is given.

    >>> json_object({'type': 'object'})
    {'kind': 'json', 'schema': {'type': 'object'}}
    """
    return {'kind': 'json', 'schema': dict(schema) if schema is not None else None}


def _default_params(output: OutputSpec) -> Params:
    if output['kind'] == 'choice':
        return {'temperature': 0.0, 'max_tokens': 16, 'seed': 0}
    if output['kind'] == 'json':
        return {'temperature': 0.0, 'max_tokens': 256, 'seed': 0}
    return {'temperature': 0.0, 'max_tokens': 128, 'stop': ['\n\n'], 'seed': 0}


@dataclass(frozen=True)
class Version:
    """One immutable prompt version. Create with `create_version` or `edit`; never change in place."""

    id: str
    prompt: str
    number: int
    parent_id: str | None
    template: str
    model: str
    params: Params
    output: OutputSpec
    demos: list[dict[str, Any]] | DemoPolicy = field(default_factory=list)
    instructions: str = ''
    content_hash: str = ''
    created_at: datetime.datetime | None = None
    author: str | None = None
    note: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: A chat version's role messages (system, user, assistant), each a template; None for a completion version,
    #: whose `template` is the one text sent. A chat version's `template` is its messages as one text (see
    #: `udfs.render.transcript`), for diffs and display.
    messages: list[dict[str, str]] | None = None

    def __repr__(self) -> str:
        parent = f', parent={self.parent_id}' if self.parent_id else ''
        chat = f' chat={len(self.messages)} messages' if self.messages else ''
        return f'<Version {self.id} model={self.model} output={self.output["kind"]}{chat}{parent}>'

    @property
    def is_chat(self) -> bool:
        """Return whether this version is a list of role messages rather than one completion template."""
        return bool(self.messages)

    def _repr_html_(self) -> str:
        output = self.output['kind'] + (f': {", ".join(self.labels)}' if self.labels else '')
        return render_record(
            f'Version {self.id}',
            [
                ('template', self.template),
                ('model', self.model),
                ('params', dict(self.params) or None),
                ('output', output),
                ('demos', f'{len(self.demos):,}' if self.demos else None),
                ('parent', self.parent_id),
                ('note', self.note),
            ],
        ).replace(
            '<td>' + html.escape(self.template) + '</td>', '<td><pre>' + html.escape(self.template) + '</pre></td>', 1
        )

    @property
    def labels(self) -> list[str]:
        """Return the label set of a choice output, else an empty list."""
        return list(self.output.get('labels') or [])

    def variables(self) -> set[str]:
        """Return the dataset fields the template (or any message) reads (the reserved `demos`, `labels`,
        `instructions` excluded)."""
        if self.messages:
            return render_udfs.messages_variables(self.messages) - render_udfs.RESERVED_VARIABLES
        return render_udfs.template_variables(self.template) - render_udfs.RESERVED_VARIABLES

    @property
    def demo_policy(self) -> DemoPolicy | None:
        """Return the version's demo policy (demos picked per example), or None if its demos are fixed."""
        return self.demos if is_policy(self.demos) else None  # type: ignore[return-value]

    def render(self, fields: Mapping[str, Any], *, demos: Sequence[Mapping[str, Any]] | None = None) -> str:
        """Return the prompt this version sends for one example's input fields; raise `TemplateError` if the
        template breaks the size or time limit, is stopped by the sandbox, or fails for these fields. A version
        with a demo policy needs the `demos` retrieved for that example (see `workspace.core.demo_policies.retrieve`).
        A chat version returns its rendered messages as one text (`render_messages` gives the messages)."""
        if self.messages:
            return render_udfs.transcript(self.render_messages(fields, demos=demos))
        return self._rendered(
            lambda shown: render_udfs.render(
                self.template, fields, demos=shown, labels=self.labels, instructions=self.instructions
            ),
            demos,
        )

    def render_messages(
        self, fields: Mapping[str, Any], *, demos: Sequence[Mapping[str, Any]] | None = None
    ) -> list[dict[str, str]]:
        """Return the chat messages this version sends for one example: each message rendered, its demos as
        user and assistant turns before the last user turn (see `udfs.render.render_messages`). A completion
        version is one user message."""
        if not self.messages:
            return [{'role': 'user', 'content': self.render(fields, demos=demos)}]
        messages = self.messages
        return self._rendered(
            lambda shown: render_udfs.render_messages(
                messages, fields, demos=shown, labels=self.labels, instructions=self.instructions
            ),
            demos,
        )

    def _rendered(self, render: Any, demos: Sequence[Mapping[str, Any]] | None) -> Any:
        if demos is None and self.demo_policy is not None:
            raise VersionError(f'{self.id} picks its demos per example; render it with the demos retrieved for it')
        try:
            return render(self.demos if demos is None else demos)
        except jinja2.UndefinedError as e:
            raise _UndefinedField(self.id, e.message or 'a variable is undefined') from None
        except render_udfs.RenderLimitError as e:
            raise TemplateError(f'template of {self.id} stopped: {e.message}') from None
        except render_udfs.SecurityError as e:
            raise TemplateError(f'template of {self.id} stopped by the sandbox: {e.message}') from None
        except Exception as e:  # a filter or an operator failing on these values: a template bug, not ours
            raise TemplateError(f'template of {self.id} failed to render: {type(e).__name__}: {e}') from None


class _UndefinedField(TemplateError, jinja2.UndefinedError):
    """A template read a variable the fields do not have. Also a `jinja2.UndefinedError` whose `message` is the
    bare reason, so a caller that knows which example it rendered (evaluation) can catch that and name it."""

    def __init__(self, version_id: str, message: str) -> None:
        super().__init__(message)
        self.version_id = version_id

    def __str__(self) -> str:
        return f'template of {self.version_id} failed to render: {self.message}'


def _content(
    template: str,
    model: str,
    params: Mapping[str, Any],
    output: Mapping[str, Any],
    demos: Any,
    instructions: str,
    messages: Sequence[Mapping[str, str]] | None = None,
) -> str:
    body: dict[str, Any] = {
        'template': template,
        'model': model,
        'params': params,
        'output': output,
        'demos': demos,
        'instructions': instructions,
    }
    if messages:  # only chat versions carry it: every completion version keeps its content hash
        body['messages'] = [dict(m) for m in messages]
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _check_text(
    prompt: str, what: str, template: str, output: Mapping[str, Any], demos: Any, instructions: str
) -> None:
    """Refuse a template (or one message's template) that does not parse or that the sandbox would stop."""
    if not isinstance(template, str) or not template.strip():
        raise TemplateError(f'the {what} of prompt {prompt!r} is empty; give the text to send to the model')
    try:
        render_udfs.template_variables(template)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(
            f'{what} of prompt {prompt!r} does not parse: {e.message} (template line {e.lineno})'
        ) from None
    try:
        render_udfs.check_template(
            template,
            demos=[] if is_policy(demos) else demos,
            labels=list(output.get('labels') or []),
            instructions=instructions,
        )
    except render_udfs.SecurityError as e:
        raise TemplateError(
            f'{what} of prompt {prompt!r} is refused: it uses {e.message}, which the sandbox forbids. A template '
            'may read input fields, demos, labels and instructions, with filters, tests, loops and conditions'
        ) from None
    except render_udfs.RenderLimitError as e:
        raise TemplateError(f'{what} of prompt {prompt!r} is refused: with placeholder inputs, {e.message}') from None


def _check(
    prompt: str,
    template: str,
    model: str,
    params: Mapping[str, Any],
    output: Mapping[str, Any],
    demos: Any,
    instructions: str,
    messages: Sequence[Mapping[str, str]] | None = None,
) -> None:
    if not _PROMPT_NAME.match(prompt):
        raise VersionError(f'prompt name {prompt!r} is not valid; use letters, digits, _ and -, starting with a letter')
    backends.parse_model(model)
    if is_policy(demos):
        check_policy(demos)
    elif not isinstance(demos, list) or any(not isinstance(d, dict) for d in demos):
        raise VersionError(
            'demos must be a list of dicts, each with input fields and an expected output, or a policy such as '
            "ws.nearest('dataset', k=8)"
        )
    if messages:
        for number, message in enumerate(messages, start=1):
            what = f'message {number} ({message["role"]})'
            _check_text(prompt, what, message['content'], output, demos, instructions)
    else:
        _check_text(prompt, 'template', template, output, demos, instructions)
    if output.get('kind') not in ('text', 'choice', 'json'):
        raise VersionError(
            f'output spec {dict(output)!r} is not valid; use ws.text(), ws.choice([...]) or ws.json_object()'
        )
    calibration.check_decode(output.get('decode', 'mask'), model)
    calibration.check_choice_options(
        output.get('decode', 'mask'), output.get('restrict'), output.get('vote'), output.get('vote_by', 'share')
    )
    for name, value in params.items():
        if name not in _PARAM_TYPES:
            raise VersionError(f'unknown param {name!r}; known params are: {", ".join(_PARAM_TYPES)}')
        if not isinstance(value, _PARAM_TYPES[name]) or isinstance(value, bool):
            raise VersionError(f'param {name!r} must be {_PARAM_TYPES[name][0].__name__}, got {value!r}')


def _row_to_version(row: Mapping[str, Any]) -> Version:
    return Version(
        id=row['version_id'],
        prompt=row['prompt'],
        number=row['number'],
        parent_id=row['parent_id'],
        template=row['template'],
        model=row['model'],
        params=Params(**(row['params'] or {})),
        output=OutputSpec(**(row['output'] or {'kind': 'text'})),
        demos=row['demos'] or [],
        instructions=row['instructions'] or '',
        content_hash=row['content_hash'],
        created_at=row['created_at'],
        author=row['author'],
        note=row['note'],
        meta=row['meta'] or {},
        messages=row.get('messages') or None,
    )


def select_versions(where: Any = None) -> list[Version]:
    """Return the versions matching a Pixeltable condition on the versions table (all for None), by prompt and number."""
    t = tables.versions()
    query = t.where(where) if where is not None else t
    return [_row_to_version(r) for r in query.order_by(t.prompt, t.number).collect()]


def versions_of(prompt: str | None = None) -> list[Version]:
    """Return the versions of `prompt` (every version for None), by prompt and number: read once per version of
    the versions table (a version is immutable; a new one is a new table version)."""
    t = tables.versions()
    found = READS.get(
        t, ('versions_of', prompt), lambda: tuple(select_versions(t.prompt == prompt if prompt else None))
    )
    return list(found)


def _chat_messages(
    prompt: str, template: str | None, messages: Sequence[Mapping[str, str]] | None, system: str | None
) -> tuple[str, list[dict[str, str]] | None]:
    """Return (template, messages) of a new version: a completion template, or chat messages and their text."""
    if messages is None and system is None:
        if template is None:
            raise TemplateError(f'give prompt {prompt!r} a template=..., or messages=[...] for a chat version')
        return template, None
    if messages is None:
        if template is None:
            raise TemplateError(f'system= opens a chat version of {prompt!r}; give the user turn as template=...')
        messages = [{'role': 'system', 'content': system or ''}, {'role': 'user', 'content': template}]
    elif template is not None or system is not None:
        raise TemplateError(
            f'give prompt {prompt!r} either messages=[...] or template=... (with system=...), not both; a system '
            "message goes in messages as {'role': 'system', 'content': ...}"
        )
    try:
        checked = render_udfs.check_messages(messages)
    except ValueError as e:
        raise TemplateError(f'messages of prompt {prompt!r}: {e}') from None
    return render_udfs.transcript(checked), checked


def create_version(
    prompt: str,
    *,
    template: str | None = None,
    messages: Sequence[Mapping[str, str]] | None = None,
    system: str | None = None,
    model: str = 'local',
    params: Params | None = None,
    output: OutputSpec | None = None,
    demos: Sequence[Mapping[str, Any]] | DemoPolicy = (),
    instructions: str = '',
    parent: Version | str | None = None,
    author: str | None = None,
    note: str = '',
    meta: Mapping[str, Any] | None = None,
) -> Version:
    """Create a version of `prompt`, or return the existing version with exactly the same content.

    A version is a completion `template`, or a chat version: `messages`, a list of role messages (system, user,
    assistant), each a template, ending with the user turn that holds the example; `system=` with `template=` is
    the common two-message case. A chat version's demos become user and assistant turns before the last user turn
    (unless a message reads `demos`), and it is sent to chat APIs as messages and to a local model through the
    model's chat template.
    Params not given take the output kind's defaults (temperature 0, seed 0, a max_tokens that fits the output).
    Creating the same content twice returns the first version, so a notebook cell can run again safely.

    >>> v1 = create_version('ticket_router', template='Ticket: {{ text }}\\nCategory:', output=choice(['A', 'B']))
    >>> chat = create_version('ticket_router', system='Answer with one category.', template='Ticket: {{ text }}')
    """
    template, chat = _chat_messages(prompt, template, messages, system)
    spec: OutputSpec = OutputSpec(**(output or text()))
    merged: dict[str, Any] = {**_default_params(spec), **(params or {})}
    demo_list: Any = dict(demos) if is_policy(demos) else [dict(d) for d in demos]  # type: ignore[union-attr,arg-type]
    _check(prompt, template, model, merged, spec, demo_list, instructions, chat)
    parent_id = parent.id if isinstance(parent, Version) else parent
    content_hash = _content(template, model, merged, spec, demo_list, instructions, chat)
    t = tables.versions()
    existing = select_versions((t.prompt == prompt) & (t.content_hash == content_hash))
    if existing:
        log.info('%s already has this content; returning it', existing[0].id)
        return existing[0]
    if parent_id is not None and not select_versions(t.version_id == parent_id):
        raise VersionError(f'parent version {parent_id!r} does not exist')
    for _ in range(5):  # another process may take the same number first
        number = t.where(t.prompt == prompt).select(n=t.number).order_by(t.number, asc=False).limit(1).collect()
        next_number = (number[0]['n'] if len(number) else 0) + 1
        version_id = f'{prompt}:v{next_number}'
        row = {
            'version_id': version_id,
            'prompt': prompt,
            'number': next_number,
            'parent_id': parent_id,
            'template': template,
            'model': model,
            'params': merged,
            'output': spec,
            'demos': demo_list,
            'instructions': instructions,
            'content_hash': content_hash,
            'created_at': utc_now(),
            'author': author or current_user(),
            'note': note,
            'meta': dict(meta or {}),
            'messages': chat,
        }
        try:
            t.insert([row])
        except Exception as e:  # a duplicate primary key: someone else took this number
            if 'Duplicate primary key' not in str(e):
                raise
            continue
        audit_log.record('version.created', version_id, after={'parent': parent_id, 'model': model}, by=row['author'])
        return _row_to_version(row)
    raise VersionError(f'could not allocate a version number for {prompt!r}; try again')


def edit(
    version: Version | str,
    *,
    template: str | None = None,
    messages: Sequence[Mapping[str, str]] | None = None,
    system: str | None = None,
    model: str | None = None,
    params: Params | None = None,
    output: OutputSpec | None = None,
    demos: Sequence[Mapping[str, Any]] | DemoPolicy | None = None,
    instructions: str | None = None,
    author: str | None = None,
    note: str = '',
    meta: Mapping[str, Any] | None = None,
) -> Version:
    """Create a new version from `version` with the given fields changed; its parent is `version`.

    `params` are merged into the parent's params; every other field replaces the parent's. On a chat version,
    `template` replaces the last user turn (or, written the way a chat version's `template` shows its messages,
    all of them) and `system` the system message; `messages` replaces every message, and `system` or `messages`
    on a completion version makes a chat version of it.

    >>> v2 = edit(v1, template='Support ticket: {{ text }}\\nCategory:')
    >>> chat = edit(v2, system='You route support tickets.')
    """
    base = get_version(version)
    content = _edited_content(base, template, messages, system)
    return create_version(
        base.prompt,
        **content,
        model=base.model if model is None else model,
        params={**base.params, **(params or {})},  # type: ignore[typeddict-item]
        output=base.output if output is None else output,
        demos=base.demos if demos is None else demos,
        instructions=base.instructions if instructions is None else instructions,
        parent=base,
        author=author,
        note=note,
        meta=meta if meta is not None else _inherited_meta(base),
    )


def _edited_content(
    base: Version, template: str | None, messages: Sequence[Mapping[str, str]] | None, system: str | None
) -> dict[str, Any]:
    """Return the template or messages an edit gives (see `edit`)."""
    if messages is not None:
        return {'messages': messages}
    if not base.messages:
        content: dict[str, Any] = {'template': base.template if template is None else template}
        return content if system is None else {**content, 'system': system}
    chat = [dict(m) for m in base.messages]
    if template is not None and template != base.template:
        parsed = render_udfs.parse_transcript(template)
        chat = parsed if parsed is not None else [*chat[:-1], {'role': 'user', 'content': template}]
    if system is not None:
        if chat[0]['role'] == 'system':
            chat = chat[1:]
        chat = [{'role': 'system', 'content': system}, *chat] if system else chat
    return {'messages': chat}


def with_template(version: Version, template: str, *, id: str | None = None) -> Version:
    """Return an unsaved copy of `version` with `template` applied as `edit(version, template=...)` applies it (on
    a chat version: the last user turn, or every message written as its `template` shows them), to check or
    render a draft before storing it.

    >>> with_template(v1, 'Support ticket: {{ text }}').render({'text': 'x'})
    'Support ticket: x'
    """
    content = _edited_content(version, template, None, None)
    messages = render_udfs.check_messages(content['messages']) if 'messages' in content else None
    text = render_udfs.transcript(messages) if messages else content['template']
    return dataclasses.replace(
        version, id=id or f'the edit of {version.id}', template=text, messages=messages, parent_id=version.id
    )


def _inherited_meta(base: Version) -> dict[str, Any] | None:
    """Return what an edit keeps of its parent's metadata: a judge stays a judge (how to read its answer)."""
    return {'judge': base.meta['judge']} if isinstance(base.meta, dict) and 'judge' in base.meta else None


def label_target(prompt: str, label: str) -> str:
    """Return the id of the version `prompt@label` points at, or raise LabelError listing the prompt's labels.

    It reads the labels table (whose writer is `labels.py`) here, below the label moves, so that resolving a
    reference needs nothing above this module.
    """
    t = tables.labels()
    rows = READS.get(
        t, ('label_targets', prompt), lambda: list(t.where(t.prompt == prompt).select(t.label, t.version_id).collect())
    )
    current = {r['label']: r['version_id'] for r in rows}
    if label not in current:
        raise LabelError(
            f'{prompt}@{label} does not exist; labels of {prompt!r}: {", ".join(sorted(current)) or "none yet"}. '
            f'Set one with ws.set_label(version, {label!r})'
        )
    return current[label]


def get_version(ref: Version | str) -> Version:
    """Return a version by id (`ticket_router:v3` or `ticket_router:3`), label (`ticket_router@production`),
    or prompt name alone (its latest version).

    >>> get_version('ticket_router@production')
    """
    if isinstance(ref, Version):
        return ref
    match = _VERSION_REF.match(ref.strip()) if isinstance(ref, str) else None
    if not match:
        raise VersionError(f"{ref!r} is not a version reference; use 'prompt:v3', 'prompt@label' or a prompt name")
    prompt, number, label = match['prompt'], match['number'], match['label']
    if label is not None:
        return get_version(label_target(prompt, label))
    found = versions_of(prompt)
    if not found:
        known = sorted({v.prompt for v in versions_of()})
        raise VersionError(f'prompt {prompt!r} has no versions; known prompts: {", ".join(known) or "none yet"}')
    if number is None:
        return found[-1]
    for v in found:
        if v.number == int(number):
            return v
    raise VersionError(f'{prompt!r} has no version {number}; it has v1 to v{found[-1].number}')


def list_versions(prompt: str | None = None) -> pd.DataFrame:
    """Return the versions of `prompt` (or of every prompt) as a table, oldest first."""
    found = versions_of(prompt)
    return pd.DataFrame(
        [
            {
                'version': v.id,
                'parent': v.parent_id,
                'model': v.model,
                'output': v.output['kind'],
                'demos': f'nearest {v.demo_policy["k"]} of {v.demo_policy["dataset"]}'
                if v.demo_policy
                else len(v.demos),
                'created_at': v.created_at,
                'author': v.author,
                'note': v.note,
            }
            for v in found
        ],
        columns=['version', 'parent', 'model', 'output', 'demos', 'created_at', 'author', 'note'],
    )


def parent_chain(version: Version | str) -> list[str]:
    """Return the ids of a version's ancestors, nearest first."""
    chain: list[str] = []
    current = get_version(version)
    while current.parent_id is not None and current.parent_id not in chain:
        chain.append(current.parent_id)
        current = get_version(current.parent_id)
    return chain


def _constraint(version: Version, demos: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any] | None:
    if version.output['kind'] == 'choice':
        return calibration.choice_constraint(version, demos)
    if version.output['kind'] == 'json':
        return {'json_schema': version.output.get('schema')}
    return None


def build_request(
    version: Version,
    fields: Mapping[str, Any],
    *,
    model_id: str | None = None,
    demos: Sequence[Mapping[str, Any]] | None = None,
    prompt: str | None = None,
) -> dict[str, Any]:
    """Return the request `version` sends for one example's input fields, with its `hash`; a version with a demo
    policy needs the `demos` retrieved for the example (`workspace.core.demo_policies.retrieve`). `prompt` is the
    version already rendered with these fields and demos, when the caller has it (serving renders elsewhere). A
    chat version's request carries its rendered `messages` (what a chat API is sent) and, as `prompt`, the same
    messages as one text (what prompt rules check)."""
    messages = None
    try:
        if version.messages:
            messages = version.render_messages(fields, demos=demos)
            prompt = render_udfs.transcript(messages)
        elif prompt is None:
            prompt = version.render(fields, demos=demos)
    except jinja2.UndefinedError as e:
        where = f' for example {fields["example_id"]!r}' if 'example_id' in fields else ''
        raise TemplateError(f'template of {version.id} failed to render{where}: {e.message}') from None
    request: dict[str, Any] = {
        'model': version.model,
        'model_id': model_id or backends.model_identity(version.model),
        'params': dict(version.params),
        'prompt': prompt,
        'constraint': _constraint(version, demos),
    }
    if messages is not None:  # a chat request: the messages are part of its identity
        request['messages'] = messages
    request['hash'] = store.request_hash(request)
    return request
