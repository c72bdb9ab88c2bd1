"""Version diffs: two prompt versions in, word-level text changes and changed settings out, as HTML or plain text."""

from __future__ import annotations

import difflib
import html
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from workspace.core.versions import Version, get_version

__all__ = ['FieldChange', 'VersionDiff', 'diff', 'diff_versions', 'render_diff_html', 'render_diff_text', 'word_ops']

Op = Literal['equal', 'insert', 'delete']

_TOKEN = re.compile(r'\s+|\w+|[^\w\s]')
# A template's tags ({{ ... }}, {% ... %}, {# ... #}) are single tokens: a diff aligns the template's structure and
# never splits a tag, so it does not interleave fragments of different tags.
_TEMPLATE_TOKEN = re.compile(r'\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|\s+|\w+|[^\w\s]', re.S)
_WORD = re.compile(r'\w+')
# Identifiers (model names, labels) read better bare; anything else is shown as JSON so its type stays visible.
_BARE = re.compile(r'[A-Za-z_][\w.:/@-]*')
_JSON_WORDS = frozenset({'true', 'false', 'null', 'NaN', 'Infinity'})

_BOX = 'font-family:system-ui,sans-serif;font-size:13px;line-height:1.4'
_TITLE = 'font-weight:600;margin:6px 0 2px'
_PRE = 'white-space:pre-wrap;font-family:monospace;margin:0;padding:6px;background:#f7f7f7;border:1px solid #ddd'
_SPANS = {
    'insert': ('ins', 'background:#c8f0c8;text-decoration:none'),
    'delete': ('del', 'background:#f8c8c8;text-decoration:line-through'),
}
_CELL = 'border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top'


class _Version(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def template(self) -> str: ...
    @property
    def instructions(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def params(self) -> Mapping[str, Any]: ...
    @property
    def output(self) -> Mapping[str, Any]: ...
    @property
    def demos(self) -> Any: ...  # fixed demos (a list of dicts) or a demo policy


@dataclass(frozen=True)
class FieldChange:
    """One setting that differs between two versions; `None` stands for a missing key, `summary` condenses lists."""

    field: str
    before: Any
    after: Any
    summary: str = ''


@dataclass(frozen=True)
class VersionDiff:
    """What changed from version `a_id` to version `b_id`: word-level text ops and changed settings."""

    a_id: str
    b_id: str
    template_ops: list[tuple[Op, str]]
    instructions_ops: list[tuple[Op, str]]
    fields: list[FieldChange]
    #: What the text diff is of: a completion template, or a chat version's messages (as one text, by role).
    text_title: str = 'Template'

    @property
    def changed(self) -> bool:
        """Return whether the template, the instructions or any setting differs."""
        return bool(self.fields) or any(op != 'equal' for op, _ in self.template_ops + self.instructions_ops)

    @property
    def words_inserted(self) -> int:
        """Return how many words the template and instructions gained."""
        return _count_words(self.template_ops + self.instructions_ops, 'insert')

    @property
    def words_deleted(self) -> int:
        """Return how many words the template and instructions lost."""
        return _count_words(self.template_ops + self.instructions_ops, 'delete')

    def __str__(self) -> str:
        return render_diff_text(self)

    def _repr_html_(self) -> str:
        return render_diff_html(self)


def diff_versions(a: _Version, b: _Version) -> VersionDiff:
    """Diff version `a` against version `b`: template and instructions word by word, then model, params, output, demos.

    >>> from types import SimpleNamespace as V
    >>> a = V(id='r:v1', template='Hi {{ name }}', instructions='', model='local', params={}, output={}, demos=[])
    >>> diff_versions(a, V(**{**vars(a), 'id': 'r:v2', 'template': 'Hello {{ name }}'})).template_ops
    [('delete', 'Hi'), ('insert', 'Hello'), ('equal', ' {{ name }}')]
    """
    fields = [FieldChange('model', a.model, b.model)] if a.model != b.model else []
    fields += _key_changes('params', a.params or {}, b.params or {})
    for change in _key_changes('output', a.output or {}, b.output or {}):
        fields.append(_with_label_summary(change) if change.field == 'output.labels' else change)
    fields += _demo_changes(a.demos, b.demos)
    roles = [_roles(getattr(v, 'messages', None)) for v in (a, b)]
    if roles[0] != roles[1]:
        fields.append(FieldChange('messages', roles[0], roles[1], f'{_shape(roles[0])} -> {_shape(roles[1])}'))
    template = word_ops(a.template, b.template, template=True)
    instructions = word_ops(a.instructions, b.instructions)
    title = 'Messages' if roles[0] or roles[1] else 'Template'  # a chat version's template is its messages as text
    return VersionDiff(a.id, b.id, template, instructions, fields, title)


def _roles(messages: Sequence[Mapping[str, str]] | None) -> list[str] | None:
    return [m['role'] for m in messages] if messages else None


def _shape(roles: list[str] | None) -> str:
    return f'{len(roles)} messages ({", ".join(roles)})' if roles else 'a completion template'


def render_diff_html(d: VersionDiff) -> str:
    """Render a diff as a self-contained HTML fragment (inline CSS, no scripts) with root class `pw-diff`.

    >>> 'No differences.' in render_diff_html(VersionDiff('r:v1', 'r:v1', [('equal', 'Hi')], [], []))
    True
    """
    parts = [f'<div style="font-weight:600;font-size:14px">{html.escape(d.a_id)} → {html.escape(d.b_id)}</div>']
    if not d.changed:
        return _box(parts + ['<p style="margin:4px 0">No differences.</p>'])
    parts.append(_section(d.text_title, _ops_html(d.template_ops)))
    if any(op != 'equal' for op, _ in d.instructions_ops):
        parts.append(_section('Instructions', _ops_html(d.instructions_ops)))
    if d.fields:
        head = ''.join(f'<th style="{_CELL}">{name}</th>' for name in ('field', 'before', 'after', 'change'))
        rows = ''.join(
            '<tr>' + ''.join(f'<td style="{_CELL}"><code>{html.escape(x)}</code></td>' for x in row) + '</tr>'
            for row in ((c.field, _show(c.before), _show(c.after), c.summary) for c in d.fields)
        )
        table = f'<table style="border-collapse:collapse"><tr>{head}</tr>{rows}</table>'
        parts.append(f'<div style="{_TITLE}">Settings</div>{table}')
    return _box(parts)


def render_diff_text(d: VersionDiff, *, context: int = 3) -> str:
    """Render a diff as plain text: unified diffs of template and instructions, then one line per changed setting.

    >>> render_diff_text(VersionDiff('r:v1', 'r:v2', [], [], [FieldChange('params.temperature', 0.0, 0.7)]))
    'params.temperature: 0.0 -> 0.7'
    """
    if not d.changed:
        return 'No differences.'
    lines = _unified(d, d.text_title.lower(), d.template_ops, context)
    lines += _unified(d, 'instructions', d.instructions_ops, context)
    lines += [f'{c.field}: {c.summary or f"{_show(c.before)} -> {_show(c.after)}"}' for c in d.fields]
    return '\n'.join(lines)


def word_ops(old: str, new: str, *, template: bool = False) -> list[tuple[Op, str]]:
    """Diff two texts by word, space and punctuation tokens; equal+delete rebuilds `old`, equal+insert `new`.
    With `template=True` each Jinja tag is one token, so the diff follows the template's structure.

    >>> word_ops("Hi there", "Hello there")
    [('delete', 'Hi'), ('insert', 'Hello'), ('equal', ' there')]
    >>> word_ops('Ticket: {{ text }}', '{% for d in demos %}Ticket: {{ d.text }}{% endfor %}Ticket: {{ text }}',
    ...          template=True)
    [('insert', '{% for d in demos %}Ticket: {{ d.text }}{% endfor %}'), ('equal', 'Ticket: {{ text }}')]
    """
    pattern = _TEMPLATE_TOKEN if template else _TOKEN
    ta, tb = pattern.findall(old), pattern.findall(new)
    codes = difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes()
    chunks: list[list[str]] = []  # [kind, old text, new text], adjacent kinds merged
    for i, (tag, i1, i2, j1, j2) in enumerate(codes):
        a_text, b_text = ''.join(ta[i1:i2]), ''.join(tb[j1:j2])
        # A lone space or punctuation between two changes joins them, so "a b" -> "c d" reads as one change
        # rather than two, and a diff does not keep a stray ':' or '{' matched between unrelated changes.
        joins = 0 < i < len(codes) - 1 and not _WORD.search(a_text) and '\n' not in a_text and len(a_text) <= 2
        kind = 'equal' if tag == 'equal' and not joins else 'change'
        if chunks and chunks[-1][0] == kind:
            chunks[-1][1] += a_text
            chunks[-1][2] += b_text
        elif a_text or b_text:
            chunks.append([kind, a_text, b_text])
    ops: list[tuple[Op, str]] = []
    for kind, a_text, b_text in chunks:
        if kind == 'equal':
            ops.append(('equal', a_text))
            continue
        if a_text:
            ops.append(('delete', a_text))
        if b_text:
            ops.append(('insert', b_text))
    return ops


def _key_changes(prefix: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[FieldChange]:
    """List the keys whose values differ between two dicts, in key order, a missing side as `None`."""
    return [
        FieldChange(f'{prefix}.{key}', before.get(key), after.get(key))
        for key in sorted(set(before) | set(after))
        if key not in before or key not in after or _json(before[key]) != _json(after[key])
    ]


def _with_label_summary(change: FieldChange) -> FieldChange:
    """Summarise a label list change as `+ADDED -REMOVED`, or `reordered` when only the order moved."""
    old, new = list(change.before or []), list(change.after or [])
    marks = [f'+{_show(x)}' for x in new if x not in old] + [f'-{_show(x)}' for x in old if x not in new]
    return replace(change, summary=' '.join(marks) or 'reordered')


def _demo_changes(before: Any, after: Any) -> list[FieldChange]:
    """Return the change of demos: fixed lists counted (added, removed, changed); a demo policy (demos retrieved
    per example, a mapping) compared by its settings."""
    policies = [d if isinstance(d, Mapping) else None for d in (before, after)]
    if policies[0] is None and policies[1] is None:
        summary = _demo_summary(before or [], after or [])
        return [FieldChange('demos', len(before or []), len(after or []), summary)] if summary else []
    if policies[0] == policies[1]:
        return []
    shown = [_policy_phrase(p) if p is not None else f'{len(d or [])} fixed' for p, d in zip(policies, (before, after))]
    return [FieldChange('demos', shown[0], shown[1], f'{shown[0]} -> {shown[1]}')]


def _policy_phrase(policy: Mapping[str, Any]) -> str:
    """Say a demo policy in a few words: 'nearest 8 of dataset tiny/train'."""
    where = '/'.join(str(policy[k]) for k in ('dataset', 'split') if policy.get(k))
    return f'{policy.get("policy", "retrieved")} {policy.get("k", "")} of {where}'.replace('  ', ' ')


def _demo_summary(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> str:
    """Count demos added, removed and changed (same inputs, other 'expected'); '' when the lists are equal."""
    old, new = [_json(x) for x in before], [_json(x) for x in after]
    if old == new:
        return ''
    gone, came = Counter(old) - Counter(new), Counter(new) - Counter(old)
    changed = (_inputs(gone) & _inputs(came)).total()
    counts = f'{came.total() - changed} added, {gone.total() - changed} removed, {changed} changed'
    return counts if gone or came else f'{counts}, reordered'


def _inputs(demos: Counter[str]) -> Counter[str]:
    """Key each canonical demo by its fields other than 'expected', so an edited answer pairs with its example."""
    return Counter(_json({k: v for k, v in json.loads(s).items() if k != 'expected'}) for s in demos.elements())


def _ops_html(ops: list[tuple[Op, str]]) -> str:
    """Render ops as escaped text with `<ins>` and `<del>` spans."""
    return ''.join(
        html.escape(text) if op == 'equal' else '<{0} style="{1}">{2}</{0}>'.format(*_SPANS[op], html.escape(text))
        for op, text in ops
    )


def _section(title: str, body: str) -> str:
    return f'<div style="{_TITLE}">{title}</div><pre style="{_PRE}">{body}</pre>'


def _box(parts: list[str]) -> str:
    return f'<div class="pw-diff" style="{_BOX}">{"".join(parts)}</div>'


def _unified(d: VersionDiff, name: str, ops: list[tuple[Op, str]], context: int) -> list[str]:
    """Return the unified diff lines of one text, rebuilt from its ops; split on '\\n' so every change shows."""
    old, new = (''.join(t for op, t in ops if op in ('equal', side)) for side in ('delete', 'insert'))
    return list(
        difflib.unified_diff(
            old.split('\n'), new.split('\n'), f'{d.a_id}/{name}', f'{d.b_id}/{name}', n=context, lineterm=''
        )
    )


def _count_words(ops: list[tuple[Op, str]], kind: Op) -> int:
    return sum(len(_WORD.findall(text)) for op, text in ops if op == kind)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _show(value: Any) -> str:
    """Show a value as JSON, but identifiers such as model names and labels bare."""
    if isinstance(value, str) and _BARE.fullmatch(value) and value not in _JSON_WORDS:
        return value
    return _json(value)


def diff(a: Version | str, b: Version | str) -> VersionDiff:
    """Diff two versions: word-level template changes (a chat version's messages, each under its role), then model,
    params, output spec, demos and the messages' roles. In a notebook
    it displays as highlighted HTML; `print()` gives a unified diff for terminals and logs.

    >>> ws.diff('ticket_router:v1', 'ticket_router@production')
    """
    return diff_versions(get_version(a), get_version(b))
