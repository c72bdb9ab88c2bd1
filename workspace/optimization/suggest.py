"""Suggestions: a model reads a run's failure analysis and proposes concrete edits to the version's template.

The analysis (template, metrics, per-category scores, confusion matrix, a sample of failed cases) is sent through
the request store like any evaluation request, so asking again costs no call and the answer is traceable. The
model answers in JSON (`analysis`, `edits`, `focus_categories`); the embedded model is constrained to that JSON
schema, remote models are asked for a JSON object. With the embedded 270M model the suggestions are weak.

The answer is checked before it is shown (`workspace.analysis.output_checks`): a placeholder of the schema copied
back, an answer that is not the JSON asked for, an edit that changes nothing, does not parse or reads fields the
dataset lacks, a focus category the run got entirely right. A suggestion with any problem is marked unreliable
with the reasons (`.problems`, `.edit_problems`), shown as a model's claim, and its flagged edits are applied only
with `force=True`.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

import jinja2
import pandas as pd

from udfs import parse as parse_udfs, render as render_udfs
from workspace.analysis.output_checks import echoed_placeholders
from workspace.core import rules
from workspace.core.datasets import get_dataset
from workspace.core.evaluate import check_template
from workspace.core.runs import Run, get_run
from workspace.core.versions import Version, edit, with_template
from workspace.errors import BackendError, TemplateError, VersionError
from workspace.storage.store import answer

__all__ = ['Edit', 'Suggestion', 'suggest', 'suggestion_schema']

log = logging.getLogger(__name__)


class Edit(TypedDict):
    """One concrete change a model suggests: what it does, and the whole new template."""

    description: str
    template: str


def suggestion_schema(labels: list[str] | None = None, *, max_chars: int = 1500) -> dict[str, Any]:
    """Return the JSON schema a suggestion answers in; string lengths share `max_chars` so an answer always ends.

    >>> sorted(suggestion_schema(['BILLING'])['properties'])
    ['analysis', 'edits', 'focus_categories']
    """
    category: dict[str, Any] = {'enum': list(labels)} if labels else {'type': 'string', 'maxLength': 40}
    return {
        'type': 'object',
        'properties': {
            'analysis': {'type': 'string', 'maxLength': max(40, max_chars // 4)},
            'edits': {
                'type': 'array',
                'maxItems': 2,
                'items': {
                    'type': 'object',
                    'properties': {
                        'description': {'type': 'string', 'maxLength': max(20, max_chars // 10)},
                        'template': {'type': 'string', 'maxLength': max(40, max_chars // 4)},
                    },
                    'required': ['description', 'template'],
                    'additionalProperties': False,
                },
            },
            'focus_categories': {'type': 'array', 'maxItems': 3, 'items': category},
        },
        'required': ['analysis', 'edits', 'focus_categories'],
        'additionalProperties': False,
    }


@dataclass(frozen=True)
class Suggestion:
    """A model's reading of a run's failures: an analysis, concrete template edits, and the categories to work on."""

    run: Run
    model: str
    analysis: str
    edits: list[Edit]
    focus_categories: list[str]
    raw: str
    request_hash: str
    reused: bool = False
    prompt: str = field(default='', repr=False)
    #: Why the answer as a whole cannot be taken at its word (empty: nothing found).
    problems: list[str] = field(default_factory=list)
    #: Per edit, why it cannot be taken at its word.
    edit_problems: list[list[str]] = field(default_factory=list)

    @property
    def reliable(self) -> bool:
        """Return whether the checks found nothing wrong with the answer or any of its edits."""
        return not self.problems and not any(self.edit_problems)

    def _flags(self, i: int) -> list[str]:
        return self.edit_problems[i] if i < len(self.edit_problems) else []

    def __repr__(self) -> str:
        flag = '' if self.reliable else ' UNRELIABLE'
        return (
            f'<Suggestion for {self.run.version.id} by {self.model}:{flag} {len(self.edits)} edit(s), '
            f'focus {self.focus_categories}>'
        )

    def __str__(self) -> str:
        lines = []
        if not self.reliable:
            lines += [f'UNRELIABLE: what {self.model} wrote fails these checks, so read it as a claim, not a finding:']
            lines += [f'  - {p}' for p in self.problems]
            lines += [f'  - edit {i}: {p}' for i in range(len(self.edits)) for p in self._flags(i)]
            lines.append('')
        lines += [
            f'analysis ({self.model} says): {self.analysis}',
            f'focus categories: {", ".join(self.focus_categories) or "none"}',
        ]
        for i, e in enumerate(self.edits):
            flag = ' [unreliable: ' + '; '.join(self._flags(i)) + ']' if self._flags(i) else ''
            lines += ['', f'edit {i}: {e["description"]}{flag}', e['template']]
        return '\n'.join(lines)

    def _repr_html_(self) -> str:
        warning = ''
        if not self.reliable:
            reasons = [*self.problems, *(f'edit {i}: {p}' for i in range(len(self.edits)) for p in self._flags(i))]
            warning = (
                f'<div class="pw-note" style="border-left-color:#c62828"><b>Unreliable</b>: what '
                f'{html.escape(self.model)} wrote fails these checks; read it as a claim, not a finding.<ul>'
                + ''.join(f'<li>{html.escape(r)}</li>' for r in reasons)
                + '</ul></div>'
            )
        edits = ''.join(
            f'<li>{html.escape(e["description"])}'
            + (f' <i>(unreliable: {html.escape("; ".join(self._flags(i)))})</i>' if self._flags(i) else '')
            + f'<pre>{html.escape(e["template"])}</pre></li>'
            for i, e in enumerate(self.edits)
        )
        return (
            warning + f'<p><b>Analysis</b> ({html.escape(self.model)} says): {html.escape(self.analysis)}</p>'
            f'<p><b>Focus categories</b>: {html.escape(", ".join(self.focus_categories) or "none")}</p>'
            f'<ol start="0">{edits}</ol>'
        )

    def apply(self, i: int, note: str | None = None, *, force: bool = False) -> Version:
        """Create a new version from edit `i` (parent: the run's version), after checking its template reads only
        the dataset's input fields. An edit the output checks flagged (it changes nothing, copies a placeholder)
        is applied only with `force=True`.

        >>> v3 = suggestion.apply(0, note='tighter label list')
        """
        if not self.edits:
            raise VersionError(f'{self!r} has no edits to apply; ask again, or with another model')
        if not isinstance(i, int) or not 0 <= i < len(self.edits):
            raise VersionError(f'edit {i!r} does not exist; pick 0 to {len(self.edits) - 1}')
        chosen = self.edits[i]
        base = self.run.version
        try:
            render_udfs.template_variables(chosen['template'])
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(
                f'suggested edit {i} for {base.id} does not parse: {e.message} (template line {e.lineno}); '
                'pick another edit or fix it with ws.edit(...)'
            ) from None
        proposed = with_template(base, chosen['template'], id=f'{base.id} + suggested edit {i}')
        dataset = get_dataset(self.run.dataset)
        check_template(proposed, dataset)
        if not proposed.variables():
            raise TemplateError(
                f'suggested edit {i} for {base.id} reads none of the input fields of {dataset.name!r} '
                f'({", ".join(dataset.inputs)}), so every example would get the same prompt; pick another edit'
            )
        if self._flags(i) and not force:
            raise VersionError(
                f'suggested edit {i} for {base.id} is unreliable: {"; ".join(self._flags(i))}. Pick another edit, '
                'or apply it anyway with force=True'
            )
        return edit(
            base,
            template=chosen['template'],
            note=note or chosen['description'],
            meta={'suggestion': {'run_id': self.run.run_id, 'model': self.model, 'request_hash': self.request_hash}},
        )


def _table(frame: pd.DataFrame | None) -> str:
    return frame.round(3).to_string() if frame is not None and len(frame) else '(none)'


def _report(run: Run, max_failures: int) -> str:
    """Return the failure analysis of a run as the text a model reads."""
    ds = get_dataset(run.dataset)
    version = run.version
    summary = run.summary()
    metrics = ', '.join(
        f'{k} {v:.3f}' if isinstance(v, float) else f'{k} {v}'
        for k, v in summary.metrics.items()
        if not k.startswith('mean_')
    )
    failures = run.failures()
    blocking = [r for r in rules.blocking_rules(version.prompt) if r.stage == 'input']
    if blocking:  # a case whose inputs a blocking rule keeps from the model is not shown to one either
        allowed = [not rules.screen(blocking, {n: row[n] for n in ds.inputs}, None) for _, row in failures.iterrows()]
        failures = failures[allowed]
    shown = failures.head(max_failures)
    cases = []
    for _, row in shown.iterrows():
        inputs = '; '.join(f'{name}: {str(row[name])[:300]}' for name in ds.inputs)
        predicted = row['prediction'] if row['error'] is None or pd.isna(row['error']) else f'error ({row["error"]})'
        cases.append(f'- {inputs} | expected: {row["expected"]} | predicted: {predicted}')
    parts = [
        'You are an expert prompt engineer. A prompt template was evaluated on a dataset; below are its scores and '
        'the cases it got wrong. Suggest edits to the template that fix the mistakes.',
        '',
        f'Template (Jinja2; it may read {", ".join(ds.inputs)}, and demos, labels, instructions):',
        '<<<',
        version.template,
        '>>>',
    ]
    if version.instructions:
        parts += [f'Instructions: {version.instructions}']
    if version.labels:
        parts += [f'Labels: {", ".join(version.labels)}']
    parts += [
        f'Demos: {len(version.demos)}',
        f'Dataset: {ds.name}, split {run.split or "all"}, n = {run.n}',
        f'Metrics: {metrics}',
    ]
    if summary.per_category is not None:
        parts += ['', 'Per category:', _table(summary.per_category)]
    if summary.confusion is not None:
        parts += ['', 'Confusion matrix (rows: expected, columns: predicted):', _table(summary.confusion)]
    parts += ['', f'Failed cases ({len(shown)} of {len(failures)}):', *(cases or ['(none)'])]
    parts += [
        '',
        'Answer with one JSON object: {"analysis": "<what goes wrong and why>", "edits": [{"description": '
        '"<the change>", "template": "<the whole new template>"}], "focus_categories": ["<the categories that need '
        'most work>"]}',
        'JSON:',
    ]
    return '\n'.join(parts)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _parse(text: str, labels: list[str]) -> tuple[str, list[Edit], list[str]]:
    """Return (analysis, edits, focus categories) from a model's answer, keeping whatever parts are usable."""
    try:
        value = parse_udfs.extract_json(text)
    except ValueError:
        return text.strip(), [], []
    if not isinstance(value, Mapping):
        return text.strip(), [], []
    edits: list[Edit] = []
    for item in _as_list(value.get('edits')):
        if isinstance(item, Mapping) and isinstance(item.get('template'), str) and item['template'].strip():
            edits.append({'description': str(item.get('description') or '').strip(), 'template': item['template']})
    canonical = {label.casefold(): label for label in labels}
    focus: list[str] = []
    for item in _as_list(value.get('focus_categories')):
        name = str(item).strip()
        name = canonical.get(name.casefold(), name) if canonical else name
        if name and name not in focus and (not canonical or name in canonical.values()):
            focus.append(name)
    return str(value.get('analysis') or '').strip(), edits, focus


def _edit_problems(run: Run, e: Edit, prompt: str) -> list[str]:
    """Return why one suggested edit cannot be taken at its word (see the module docstring)."""
    found = [f'it copies the placeholder {p} of the requested JSON' for p in echoed_placeholders(e['template'], prompt)]
    found += [f'its description copies the placeholder {p}' for p in echoed_placeholders(e['description'], prompt)]
    if e['template'].strip() == run.version.template.strip():
        found.append('its template is the current one: it changes nothing')
        return found
    try:
        proposed = with_template(run.version, e['template'])
        check_template(proposed, get_dataset(run.dataset))
        if not proposed.variables():
            found.append('its template reads no input field, so every example would get the same prompt')
    except jinja2.TemplateSyntaxError as err:
        found.append(f'its template does not parse ({err.message})')
    except TemplateError as err:
        found.append(f'its template cannot be used: {err}')
    return found


def _problems(run: Run, raw: str, analysis: str, focus: list[str], prompt: str) -> list[str]:
    """Return why a suggestion as a whole cannot be taken at its word."""
    found = []
    try:
        parse_udfs.extract_json(raw)
    except ValueError:
        found.append('the answer is not the JSON object it was asked for')
    found += [
        f'its analysis copies the placeholder {p} of the requested JSON' for p in echoed_placeholders(analysis, prompt)
    ]
    if not analysis.strip():
        found.append('it gives no analysis')
    if focus and run.version.output.get('kind') == 'choice':
        scores = run.per_category()
        perfect = [
            c for c in focus if c in scores.index and scores.loc[c, 'support'] > 0 and scores.loc[c, 'f1'] >= 1.0
        ]
        found += [f'it names {c} as needing work, but the run got every {c} example right (F1 1.0)' for c in perfect]
    return found


def suggest(run: Run | str, *, model: str | None = None, max_failures: int = 8, max_chars: int = 1500) -> Suggestion:
    """Ask a model (the run's version's model unless named) to analyse a run's failures and suggest template edits.

    The model reads the template, metrics, per-category scores, confusion matrix and up to `max_failures` failed
    cases, and answers in JSON of at most about `max_chars` characters. The request goes through the request store:
    asking again returns the stored answer with no model call. The answer is checked: `.reliable` is False, and
    `.problems` and `.edit_problems` say why, when it copies the schema's placeholders, changes nothing, or
    contradicts the run's own scores.

    >>> s = suggest(run, model='groq:llama-3.3-70b-versatile')
    >>> v3 = s.apply(0)
    """
    the_run = get_run(run) if isinstance(run, str) else run
    spec = model or the_run.version.model
    labels = list(the_run.version.labels)
    prompt = _report(the_run, max_failures)
    schema = suggestion_schema(labels, max_chars=max_chars)
    request = {
        'model': spec,
        'params': {'temperature': 0.0, 'max_tokens': max_chars + 300, 'seed': 0},
        'prompt': prompt,
        'constraint': {'json_schema': schema},
    }
    origin = (f'suggest:{the_run.run_id}', the_run.dataset, None)
    rules.raise_if_blocked(rules.screen(rules.blocking_rules(the_run.version.prompt), None, prompt))
    out = answer(request, origin=origin)
    if out['error'] is not None:  # a stored failure (a timeout, a 5xx) is worth one more try
        out = answer(request, origin=origin, retry_errors=True)
    if out['error'] is not None:
        raise BackendError(f'model {spec!r} did not answer the suggestion request: {out["error"]}')
    raw = out['text'] or ''
    analysis, edits, focus = _parse(raw, labels)
    if not edits:
        log.info('the suggestion of %s for %s has no usable edit', spec, the_run.version.id)
    problems = _problems(the_run, raw, analysis, focus, prompt)
    edit_problems = [_edit_problems(the_run, e, prompt) for e in edits]
    return Suggestion(
        run=the_run,
        model=spec,
        analysis=analysis,
        edits=edits,
        focus_categories=focus,
        raw=raw,
        request_hash=out['hash'],
        reused=bool(out['reused']),
        prompt=prompt,
        problems=problems,
        edit_problems=edit_problems,
    )
