"""Changelogs tied to behaviour: a model's description of what changed between a version and its parent, stored
beside the version, next to what the change measurably did on each dataset both were evaluated on.

The description is a request like any other (cached by content, answered once, traceable to its hash); versions
are immutable rows, so it lives in its own table keyed by version id:

```
prompt_workspace/changelogs   one row per version: the description (or the model's error), model, request hash
```

The measured effect is read when asked, from the latest run of each version on each dataset split they share:
the examples the change fixed and broke (by id) and the paired verdict of `compare.significance`.

The description is checked against both (`workspace.analysis.output_checks`): one that repeats a worked example of
its prompt, names a setting the diff does not change, or claims an effect the measured flips contradict is marked
unreliable with the reasons (`Changelog.problems`), and shown as the model's claim, never as a fact.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from workspace.analysis import output_checks
from workspace.analysis.compare import flips, significance
from workspace.analysis.diff import VersionDiff, diff_versions, render_diff_text
from workspace.config import utc_now
from workspace.core import rules
from workspace.core.runs import get_run, list_runs
from workspace.core.versions import Version, get_version
from workspace.errors import VersionError
from workspace.storage import store, tables

__all__ = ['Effect', 'Changelog', 'changelog', 'get_changelog', 'measured_effects', 'describe_diff']

#: A completion-style prompt with two worked examples: a small base model continues the pattern.
PROMPT = """Describe in one sentence what changed between two versions of a prompt.

Diff:
-Ticket: {{ text }}
+Customer support ticket: {{ text }}
Change: The ticket is now introduced as a customer support ticket.

Diff:
params.temperature: 0.0 -> 0.7
demos: 3 added, 0 removed, 0 changed
Change: Three billing examples were added and the temperature was raised to 0.7.

Diff:
{diff}
Change:"""

PARAMS = {'temperature': 0.0, 'max_tokens': 60, 'stop': ['\n'], 'seed': 0}
#: The worked answers of PROMPT: a description that repeats one describes the prompt, not the change.
EXAMPLES = [line.removeprefix('Change: ') for line in PROMPT.splitlines() if line.startswith('Change: ')]


@dataclass(frozen=True)
class Effect:
    """What a change did on one dataset split: examples fixed and broken (by id) and the paired verdict."""

    dataset: str
    split: str | None
    n: int
    fixed: list[str]
    broken: list[str]
    diff: float
    p_value: float
    verdict: str
    runs: tuple[str, str]


@dataclass(frozen=True)
class Changelog:
    """A version's described change from its parent, the changes the diff lists, and the measured effects."""

    version_id: str
    parent_id: str
    text: str | None
    error: str | None
    model: str
    request_hash: str
    created_at: datetime.datetime | None
    changes: list[str]
    effects: list[Effect] = field(default_factory=list)
    #: Why the description cannot be taken at its word (empty: the checks found nothing).
    problems: list[str] = field(default_factory=list)

    @property
    def reliable(self) -> bool:
        """Return whether the description passed the checks against the diff and the measured effects."""
        return not self.problems

    def __str__(self) -> str:
        described = self.text or f'(no description: {self.error})'
        if self.problems:
            described = f'UNRELIABLE, {self.model} wrote: "{self.text}" (' + '; '.join(self.problems) + ')'
        lines = [f'{self.version_id} (parent {self.parent_id}): {described}']
        lines += [f'  - {c}' for c in self.changes]
        for e in self.effects:
            lines.append(
                f'  {e.dataset}/{e.split or "all"}: {len(e.fixed)} fixed ({", ".join(e.fixed[:10])}), '
                f'{len(e.broken)} broken ({", ".join(e.broken[:10])}); {e.verdict}'
            )
        return '\n'.join(lines)

    def _repr_html_(self) -> str:
        from workspace.display.results import render_changelog

        return render_changelog(self)


def describe_diff(d: VersionDiff) -> list[str]:
    """Return the changes of a diff as short lines: words added and removed from the template and instructions,
    and each changed setting."""
    lines = []
    for name, ops in (('template', d.template_ops), ('instructions', d.instructions_ops)):
        added = ' … '.join(text.strip() for op, text in ops if op == 'insert' and text.strip())
        removed = ' … '.join(text.strip() for op, text in ops if op == 'delete' and text.strip())
        if added or removed:
            parts = [f'added "{added[:80]}"' if added else '', f'removed "{removed[:80]}"' if removed else '']
            lines.append(f'{name}: ' + ', '.join(p for p in parts if p))
    text = render_diff_text(d).splitlines()
    lines += [line for line in text if not line.startswith(('---', '+++', '@@', '-', '+', ' ')) and ':' in line]
    return lines or ['no difference in template, instructions or settings']


def check_description(text: str | None, d: VersionDiff, effects: Sequence[Effect]) -> list[str]:
    """Return why a model's description of a change cannot be taken at its word: it is no sentence (template
    syntax, a word or two), repeats a worked example of its prompt, names a setting the diff does not change, or
    claims an effect the measured flips contradict."""
    if not text:
        return []
    problems = output_checks.not_a_sentence(text)
    problems += [
        f'it repeats an example of its prompt ("{example}") instead of describing this change'
        for example in output_checks.copied_examples(text, EXAMPLES)
    ]
    changed = [f.field for f in d.fields]
    changed += [
        name
        for name, ops in (('template', d.template_ops), ('instructions', d.instructions_ops))
        if any(op != 'equal' for op, _ in ops)
    ]
    problems += output_checks.setting_claims(text, changed)
    problems += output_checks.effect_claims(text, effects)
    return problems


def _parent(version: Version) -> Version:
    if version.parent_id is None:
        raise VersionError(f'{version.id} has no parent: a changelog describes what changed from a parent version')
    return get_version(version.parent_id)


def _request(parent: Version, child: Version, model: str) -> dict[str, Any]:
    body = render_diff_text(diff_versions(parent, child))
    request: dict[str, Any] = {
        'model': model,
        'params': dict(PARAMS),
        'prompt': PROMPT.replace('{diff}', body[:4000]),
        'constraint': None,
    }
    return request


def _effect(run_a: Any, run_b: Any) -> Effect:
    frame = flips(run_a, run_b)
    verdict = significance(run_a, run_b, resamples=2000)
    return Effect(
        dataset=run_a.dataset,
        split=run_a.split,
        n=len(frame),
        fixed=[str(x) for x in frame.loc[frame['change'] == 'fixed', 'example_id']],
        broken=[str(x) for x in frame.loc[frame['change'] == 'broken', 'example_id']],
        diff=verdict.diff,
        p_value=verdict.p_value,
        verdict=verdict.verdict,
        runs=(run_a.run_id, run_b.run_id),
    )


def measured_effects(version: Version | str) -> list[Effect]:
    """Return the change's effect on each dataset split both the version and its parent were evaluated on (their
    latest runs there): fixed and broken example ids and the paired verdict.

    >>> ws.measured_effects('ticket_router:v3')[0].broken
    """
    child = get_version(version)
    parent = _parent(child)
    runs = list_runs(child.prompt)
    if runs.empty:
        return []
    latest: dict[tuple[str, str, Any], str] = {}
    for row in runs.itertuples():  # newest first
        split = None if pd.isna(row.split) else row.split
        latest.setdefault((row.version_id, row.dataset, split), row.run_id)
    effects = []
    for (version_id, dataset, split), run_id in sorted(latest.items(), key=lambda kv: str(kv[0])):
        if version_id != child.id or (parent.id, dataset, split) not in latest:
            continue
        effects.append(_effect(get_run(latest[(parent.id, dataset, split)]), get_run(run_id)))
    return effects


def _read(version_id: str) -> dict[str, Any] | None:
    t = tables.changelogs()
    rows = list(t.where(t.version_id == version_id).collect())
    return dict(rows[0]) if rows else None


def get_changelog(version: Version | str, *, effects: bool = True) -> Changelog | None:
    """Return a version's stored changelog with its measured effects, or None if none was asked for yet."""
    child = get_version(version)
    row = _read(child.id)
    if row is None:
        return None
    d = diff_versions(_parent(child), child)
    measured = measured_effects(child) if effects else []
    return Changelog(
        version_id=child.id,
        parent_id=row['parent_id'],
        text=row['text'],
        error=row['error'],
        model=row['model'],
        request_hash=row['request_hash'],
        created_at=row['created_at'],
        changes=describe_diff(d),
        effects=measured,
        problems=check_description(row['text'], d, measured) if effects else list(row.get('problems') or []),
    )


def changelog(version: Version | str, *, model: str | None = None) -> Changelog:
    """Ask a model (the version's own unless named) to describe what changed from the version's parent, store
    the description with the version, and return it beside the measured effect on each dataset split the two
    were evaluated on. The description is a request in the store: asking again makes no call.

    >>> print(ws.changelog('ticket_router:v3'))
    """
    child = get_version(version)
    parent = _parent(child)
    request = _request(parent, child, model or child.model)
    rules.raise_if_blocked(rules.screen(rules.blocking_rules(child.prompt), None, request['prompt']))
    answer = store.answer(request, origin=(child.id, None, None))
    text = (answer['text'] or '').strip() or None
    problems = check_description(text, diff_versions(parent, child), measured_effects(child))
    row = {
        'version_id': child.id,
        'parent_id': parent.id,
        'text': text,
        'error': (answer['error'] or 'the model answered with nothing') if text is None else None,
        'model': request['model'],
        'request_hash': answer['hash'],
        'created_at': utc_now(),
        'problems': problems,
    }
    stored = _read(child.id)
    changed = stored is None or any(stored.get(k) != row[k] for k in ('request_hash', 'text', 'problems'))
    if changed:
        tables.upsert(tables.changelogs(), [row])
    result = get_changelog(child)
    if result is None:  # written just above; only a concurrent drop of the table gets here
        raise VersionError(f'the changelog of {child.id} could not be stored; run ws.changelog again')
    return result


def changelogs_for(version_ids: Sequence[str]) -> dict[str, str]:
    """Return the stored description of each version that has one (for the lineage graph), marked as unreliable
    with the first reason where the checks made when it was written found a problem."""
    if not version_ids:
        return {}
    t = tables.changelogs()
    rows = t.where(t.version_id.isin(list(version_ids))).select(t.version_id, t.text, t.problems).collect()
    return {
        r['version_id']: r['text'] if not r['problems'] else f'(unreliable: {r["problems"][0]}) {r["text"]}'
        for r in rows
        if r['text']
    }
