"""Prompt families: raw prompts that come from one template, grouped incrementally, each with a canonical template.

```
prompt_workspace/raw_prompts        one row per distinct raw prompt: its family, confidence and reason (prompt_log.py)
prompt_workspace/families           one row per family: the state the next assignment reads
prompt_workspace/family_templates   one row per template version of a family, with its events
prompt_workspace/family_history     merges and splits made by hand
```

A new raw prompt is compared with the families whose centre (mean embedding) is nearest, and with those whose
members start with the same words; it joins the one whose canonical template's constant text it contains best
(the *coverage*: the share of the template's constant tokens found in the prompt, in order) when that passes the
threshold (0.7), and starts a new family otherwise. The coverage is the confidence; the reason names the nearest
members and the shared template text. Nothing already assigned moves when new prompts arrive: a prompt's family
changes only by a merge or a split made by hand, and those are recorded.

Templates (workspace.mining.canonical.mine, over a family's 32 latest members) are checked at each day boundary of the
prompts being assigned: where a fifth of the new members no longer fit, the template is mined again from the members
that do not fit, and kept as a new template version, with its events, if it fits more of them.
"""

from __future__ import annotations

import collections
import datetime
import difflib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workspace.config import current_user, utc_now
from workspace.core import rules as guardrails
from workspace.display.frames import shown
from workspace.display.results import render_record
from workspace.errors import DatasetError, FamilyError
from workspace.mining.canonical import Template, clip, contains_in_order, coverage, mine, template_events, tokenize
from workspace.storage import audit_log, tables
from workspace.storage.embeddings import DIMENSIONS

if TYPE_CHECKING:
    from workspace.core.datasets import Dataset
    from workspace.core.versions import OutputSpec, Version

__all__ = [
    'JOIN_COVERAGE',
    'Family',
    'Assigner',
    'families',
    'get_family',
    'merge_families',
    'split_family',
]

log = logging.getLogger(__name__)

#: A prompt joins a family when it contains at least this share of the family's template constant tokens.
JOIN_COVERAGE = 0.7
CANDIDATES = 5  # families compared per prompt: the nearest centres, plus those sharing its first words
MINE_SAMPLE = 32  # latest members a template is mined from
YOUNG = 8  # a family this small re-mines its skeleton at every new member
TEMPLATE_MIN = 3  # members before a family gets template versions (one-offs get none)
EXEMPLARS = 16
_PREFIX_WORDS = 3


def _prefix(tokens: Sequence[str]) -> tuple[str, ...]:
    return tuple(t.lower() for t in tokens if not t.isspace())[:_PREFIX_WORDS]


@dataclass
class _State:
    """One family as assignment sees it."""

    id: str
    created_at: datetime.datetime
    total: np.ndarray
    n: int
    skeletons: list[list[str]]
    exemplars: list[str]
    pending: int = 0
    template_number: int = 0
    template: Template | None = None
    recent: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=MINE_SAMPLE))
    recent_loaded: bool = True
    changed: bool = False
    matchers: list[difflib.SequenceMatcher] | None = None

    def matcher_list(self) -> list[difflib.SequenceMatcher]:
        if self.matchers is None:
            self.matchers = []
            for skeleton in self.skeletons:
                matcher = difflib.SequenceMatcher(None, autojunk=False)
                matcher.set_seq2(skeleton)
                self.matchers.append(matcher)
        return self.matchers

    def set_skeletons(self, skeletons: list[list[str]]) -> None:
        self.skeletons = [s for s in skeletons if s][:2]
        self.matchers = None


@dataclass(frozen=True)
class Assignment:
    """Where one new raw prompt went: its family, the confidence (template coverage) and the reason."""

    family_id: str
    confidence: float
    reason: dict[str, Any]
    new_family: bool


def _anchored(tokens: list[str], member: list[str], matcher: difflib.SequenceMatcher) -> float:
    """Return the share of `member` shared with `tokens` when they share both their start and their end.

    A family of one prompt has no template yet: a second prompt from the same template whose slots hold most of
    its text (a pasted document) shares little of it, but shares how it starts and how it ends.
    """
    matcher.set_seq1(tokens)
    blocks = [b for b in matcher.get_matching_blocks() if b.size]
    if not blocks:
        return 0.0
    first, last = blocks[0], blocks[-1]
    words = sum(1 for b in blocks for t in member[b.b : b.b + b.size] if not t.isspace())
    starts = first.a == 0 and first.b == 0 and first.size >= 3
    ends = last.a + last.size == len(tokens) and last.b + last.size == len(member) and last.size >= 2
    return JOIN_COVERAGE if starts and ends and words >= 8 else 0.0


class Assigner:
    """Assign new raw prompts to families, in the order given, reading and then writing the families' state.

    Used by `ingest_prompts`; `threshold` is the template coverage a prompt needs to join a family.
    """

    def __init__(self, *, threshold: float = JOIN_COVERAGE) -> None:
        if not 0 < threshold <= 1:
            raise FamilyError(f'threshold {threshold!r} must be in (0, 1]; the default is {JOIN_COVERAGE}')
        self.threshold = threshold
        self.states: dict[str, _State] = {}
        self.by_prefix: dict[tuple[str, ...], list[str]] = collections.defaultdict(list)
        self.vectors: dict[str, np.ndarray] = {}  # exemplar hash -> vector
        self.snippets: dict[str, str] = {}
        self.templates_out: list[dict[str, Any]] = []
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._centres = np.zeros((0, DIMENSIONS), dtype=np.float32)
        self._load()

    # --- state -----------------------------------------------------------------------------------------------

    def _load(self) -> None:
        t = tables.families()
        rows = t.where(t.status == 'active').collect()
        raw = tables.raw_prompts()
        for r in rows:
            state = _State(
                id=r['family_id'],
                created_at=r['created_at'],
                total=np.asarray(r['total'], dtype=np.float64),
                n=r['n'],
                skeletons=[list(s) for s in r['skeletons']],
                exemplars=list(r['exemplars']),
                pending=r['pending'],
                template_number=r['template_number'],
                recent_loaded=False,
            )
            self.states[state.id] = state
        self._check_counts(raw)
        hashes = [h for s in self.states.values() for h in s.exemplars]
        for chunk in range(0, len(hashes), 5000):
            keys = hashes[chunk : chunk + 5000]
            for r in raw.where(raw.prompt_hash.isin(keys)).select(raw.prompt_hash, raw.vector, raw.prompt).collect():
                self.vectors[r['prompt_hash']] = np.asarray(r['vector'], dtype=np.float32)
                self.snippets[r['prompt_hash']] = r['prompt'][:120]
        if self.states:
            templates = tables.family_templates()
            for r in templates.select(templates.family_id, templates.number, templates.spec).collect():
                state = self.states.get(r['family_id'])
                if state is not None and r['number'] == state.template_number:
                    state.template = Template.from_json(r['spec'])
        for state in self.states.values():
            for h in state.exemplars[:1]:
                if h in self.snippets:
                    self.by_prefix[_prefix(tokenize(self.snippets[h]))].append(state.id)
        self._rebuild_centres()

    def _check_counts(self, raw: Any) -> None:
        """Repair the state of families whose member count disagrees with raw_prompts (an interrupted ingest)."""
        if not self.states:
            return
        import pixeltable.functions as pxtf

        counts = {
            r['family_id']: r['n']
            for r in raw.group_by(raw.family_id).select(raw.family_id, n=pxtf.count(raw.prompt_hash)).collect()
        }
        for state in self.states.values():
            if counts.get(state.id, 0) != state.n:
                log.warning('family %s: state has %d members, raw prompts %d; recounting', state.id, state.n,
                            counts.get(state.id, 0))  # fmt: skip
                vectors = raw.where(raw.family_id == state.id).select(raw.vector).collect()
                state.total = np.sum([np.asarray(v['vector'], dtype=np.float64) for v in vectors], axis=0)
                state.n = len(vectors)
                state.changed = True

    def _rebuild_centres(self) -> None:
        self._ids = list(self.states)
        self._index = {fid: i for i, fid in enumerate(self._ids)}
        if not self._ids:
            self._centres = np.zeros((0, DIMENSIONS), dtype=np.float32)
            return
        totals = np.stack([self.states[i].total for i in self._ids]).astype(np.float32)
        self._centres = totals / np.maximum(np.linalg.norm(totals, axis=1, keepdims=True), 1e-12)

    def _set_centre(self, state: _State) -> None:
        centre = state.total / max(np.linalg.norm(state.total), 1e-12)
        index = self._index.get(state.id)
        if index is None:
            self._ids.append(state.id)
            self._index[state.id] = len(self._ids) - 1
            self._centres = np.vstack([self._centres, centre[None, :].astype(np.float32)])
        else:
            self._centres[index] = centre

    def _recent(self, state: _State) -> collections.deque[str]:
        if not state.recent_loaded:
            raw = tables.raw_prompts()
            rows = (
                raw.where(raw.family_id == state.id)
                .order_by(raw.seq, asc=False)
                .limit(MINE_SAMPLE)
                .select(raw.prompt)
                .collect()
            )
            state.recent.extendleft(r['prompt'] for r in rows)
            state.recent_loaded = True
        return state.recent

    # --- assignment ------------------------------------------------------------------------------------------

    def _candidates(self, vector: np.ndarray, prefix: tuple[str, ...]) -> list[tuple[str, float]]:
        if not self._ids:
            return []
        sims = self._centres @ vector
        top = np.argsort(-sims)[:CANDIDATES]
        chosen = {self._ids[i]: float(sims[i]) for i in top}
        for family_id in self.by_prefix.get(prefix, [])[-CANDIDATES:]:
            if family_id in self.states and family_id not in chosen:
                chosen[family_id] = float(sims[self._index[family_id]])
        return sorted(chosen.items(), key=lambda kv: -kv[1])

    def _score(self, state: _State, text: str, tokens: list[str]) -> float:
        if state.template is not None and state.template.slots and contains_in_order(text, state.template.pieces):
            return 1.0
        best = 0.0
        for matcher in state.matcher_list():
            best = max(best, coverage(tokens, matcher.b, matcher))
        if state.n == 1 and best < self.threshold:
            matcher = state.matcher_list()[0]
            best = max(best, _anchored(tokens, list(matcher.b), matcher))
        return best

    def assign(self, prompt_hash: str, text: str, vector: np.ndarray, at: datetime.datetime) -> Assignment:
        """Assign one new raw prompt (not seen before) and update the families' state in memory."""
        tokens = clip(tokenize(text))
        prefix = _prefix(tokens)
        best: tuple[float, float, str] | None = None
        for family_id, similarity in self._candidates(vector, prefix):
            score = self._score(self.states[family_id], text, tokens)
            if score >= self.threshold and (best is None or (score, similarity) > best[:2]):
                best = (score, similarity, family_id)
                if score >= 0.95:
                    break
        if best is None:
            return self._found(prompt_hash, text, tokens, vector, at, prefix)
        score, similarity, family_id = best
        state = self.states[family_id]
        reason = self._reason(state, tokens, vector, similarity)
        self._join(state, prompt_hash, text, tokens, vector)
        return Assignment(family_id, round(score, 4), reason, False)

    def _reason(self, state: _State, tokens: list[str], vector: np.ndarray, similarity: float) -> dict[str, Any]:
        near = sorted(
            ((h, float(self.vectors[h] @ vector)) for h in state.exemplars if h in self.vectors),
            key=lambda hv: -hv[1],
        )[:3]
        skeleton = state.skeletons[0] if state.skeletons else []
        matcher = state.matcher_list()[0] if state.skeletons else None
        shared = ''
        if matcher is not None:
            matcher.set_seq1(tokens)
            shared = '\u2026'.join(
                ''.join(skeleton[b.b : b.b + b.size]).strip() for b in matcher.get_matching_blocks() if b.size >= 2
            )
        return {
            'centre_similarity': round(similarity, 4),
            'nearest_members': [
                {'prompt_hash': h, 'similarity': round(s, 4), 'prompt': self.snippets.get(h, '')} for h, s in near
            ],
            'template_tokens': len(skeleton),
            'shared_template': shared[:300],
        }

    def _found(self, prompt_hash, text, tokens, vector, at, prefix) -> Assignment:  # type: ignore[no-untyped-def]
        family_id = f'fam-{prompt_hash[:10]}'
        state = _State(
            id=family_id, created_at=at, total=vector.astype(np.float64), n=1, skeletons=[tokens], exemplars=[]
        )
        state.pending, state.changed = 1, True
        state.recent.append(text)
        self.states[family_id] = state
        self._remember(state, prompt_hash, text, vector)
        self.by_prefix[prefix].append(family_id)
        self._set_centre(state)
        return Assignment(family_id, 1.0, {'new_family': 'no family template covers it'}, True)

    def _remember(self, state: _State, prompt_hash: str, text: str, vector: np.ndarray) -> None:
        if len(state.exemplars) >= EXEMPLARS:  # keep the first four, roll the rest
            dropped = state.exemplars.pop(4)
            self.vectors.pop(dropped, None)
        state.exemplars.append(prompt_hash)
        self.vectors[prompt_hash] = vector.astype(np.float32)
        self.snippets[prompt_hash] = text[:120]

    def _join(self, state: _State, prompt_hash: str, text: str, tokens: list[str], vector: np.ndarray) -> None:
        state.total = state.total + vector
        state.n += 1
        state.pending += 1
        state.changed = True
        self._recent(state).append(text)
        self._remember(state, prompt_hash, text, vector)
        self._set_centre(state)
        if state.n <= YOUNG:  # a young family's skeleton is its members' shared text so far
            state.set_skeletons([mine(list(state.recent)).constant_tokens])

    # --- templates -------------------------------------------------------------------------------------------

    def refresh(self, as_of: datetime.datetime, *, force: bool = False) -> None:
        """Mine the template again where it no longer parses a fifth of the new members (or `force`); record a
        new template version when the mined one parses more of the latest members than the current one."""
        for state in self.states.values():
            if state.pending == 0 or state.n < TEMPLATE_MIN:
                continue
            recent = list(self._recent(state))
            old = state.template
            fresh = recent[-state.pending :]
            if old is not None:
                if len(fresh) < 5 and not force:  # too few new members to judge yet
                    continue
                if sum(old.parse(t) is not None for t in fresh) >= 0.8 * len(fresh):
                    state.pending, state.changed = 0, True
                    continue
                # the members the template no longer describes: an edited template, or one mined too early
                # (a near duplicate with a trailing space or line break is not a new template)
                failing = [t for t in recent if old.parse(t) is None and old.parse(t.rstrip()) is None]
                if len(failing) < 5:
                    continue  # wait for more of them
                state.pending, state.changed = 0, True
                template = mine(failing)
                if sum(template.parse(t) is not None for t in fresh) <= sum(old.parse(t) is not None for t in fresh):
                    continue
            else:
                template = mine(recent)
            state.pending, state.changed = 0, True
            parsed = sum(template.parse(t) is not None for t in recent)
            state.template_number += 1
            state.template = template
            previous = state.skeletons[0] if state.skeletons else []
            state.set_skeletons([template.constant_tokens, previous])
            self.templates_out.append(
                {
                    'family_id': state.id,
                    'number': state.template_number,
                    'template': template.jinja,
                    'spec': template.to_json(),
                    'events': template_events(old, template),
                    'as_of': as_of,
                    'members': len(recent),
                    'parsed': parsed,
                    'created_at': utc_now(),
                }
            )

    def save(self) -> None:
        """Write the changed families' state and the new template versions."""
        now = utc_now()
        self._save_templates()
        rows = [
            {
                'family_id': s.id,
                'created_at': s.created_at,
                'status': 'active',
                'merged_into': None,
                'total': s.total.astype(np.float32),
                'n': s.n,
                'skeletons': s.skeletons,
                'exemplars': s.exemplars,
                'pending': s.pending,
                'template_number': s.template_number,
                'updated_at': now,
            }
            for s in self.states.values()
            if s.changed
        ]
        if rows:
            tables.upsert(tables.families(), rows)
        for s in self.states.values():
            s.changed = False

    def _save_templates(self) -> None:
        if self.templates_out:
            t = tables.family_templates()
            ids = sorted({r['family_id'] for r in self.templates_out})
            top: dict[str, int] = collections.Counter()
            for r in t.where(t.family_id.isin(ids)).select(t.family_id, t.number).collect():
                top[r['family_id']] = max(top[r['family_id']], r['number'])
            for r in self.templates_out:  # numbered after what is stored (a merge or split re-mines a family)
                top[r['family_id']] += 1
                r['number'] = top[r['family_id']]
                self.states[r['family_id']].template_number = r['number']
            t.insert(self.templates_out)
        self.templates_out = []


# --- reading families ----------------------------------------------------------------------------------------


def _traffic() -> pd.DataFrame:
    """Return occurrences per raw prompt: prompt_hash, traffic."""
    import pixeltable.functions as pxtf

    occ = tables.prompt_occurrences()
    rows = occ.group_by(occ.prompt_hash).select(occ.prompt_hash, traffic=pxtf.count(occ.occurrence_id)).collect()
    return pd.DataFrame(list(rows), columns=['prompt_hash', 'traffic'])


def families(*, min_size: int = 1, include_merged: bool = False) -> pd.DataFrame:
    """Return the families: size (distinct prompts), traffic (log lines), share of traffic, first and last seen,
    template and slots, largest first. `include_merged` also lists the families merged into others (size 0).

    >>> ws.families(min_size=10)
    """
    raw = tables.raw_prompts()
    members = pd.DataFrame(
        list(raw.select(raw.prompt_hash, raw.family_id, raw.first_seen, raw.last_seen).collect()),
        columns=['prompt_hash', 'family_id', 'first_seen', 'last_seen'],
    )
    columns = ['family_id', 'size', 'traffic', 'share', 'first_seen', 'last_seen', 'template', 'slots', 'status']
    if members.empty:
        return shown(pd.DataFrame(columns=columns))
    members = members.merge(_traffic(), on='prompt_hash', how='left').fillna({'traffic': 0})
    grouped = members.groupby('family_id').agg(
        size=('prompt_hash', 'count'),
        traffic=('traffic', 'sum'),
        first_seen=('first_seen', 'min'),
        last_seen=('last_seen', 'max'),
    )
    grouped['share'] = grouped['traffic'] / max(grouped['traffic'].sum(), 1)
    state = tables.families()
    status = {r['family_id']: r['status'] for r in state.select(state.family_id, state.status).collect()}
    templates = _latest_templates()
    out = grouped.reset_index()
    out['template'] = [templates[f].jinja if f in templates else None for f in out['family_id']]
    out['slots'] = [len(templates[f].slots) if f in templates else 0 for f in out['family_id']]
    out['status'] = [status.get(f, 'active') for f in out['family_id']]
    out['traffic'] = out['traffic'].astype(int)
    out = out[out['size'] >= min_size]
    if include_merged:  # merged families have no members left: listed with size 0
        gone = [f for f, st in status.items() if st == 'merged' and f not in set(out['family_id'])]
        extra = pd.DataFrame({'family_id': gone, 'size': 0, 'traffic': 0, 'share': 0.0, 'status': 'merged', 'slots': 0})
        out = pd.concat([out, extra], ignore_index=True) if gone else out
    else:
        out = out[out['status'] == 'active']
    return shown(out.sort_values(['traffic', 'family_id'], ascending=[False, True])[columns].reset_index(drop=True))


def _latest_templates() -> dict[str, Template]:
    t = tables.family_templates()
    latest: dict[str, tuple[int, Template]] = {}
    for r in t.select(t.family_id, t.number, t.spec).collect():
        if r['family_id'] not in latest or r['number'] > latest[r['family_id']][0]:
            latest[r['family_id']] = (r['number'], Template.from_json(r['spec']))
    return {f: tpl for f, (_, tpl) in latest.items()}


def _state_row(family_id: str) -> dict[str, Any]:
    t = tables.families()
    rows = t.where(t.family_id == family_id).collect()
    if not len(rows):
        known = [r['family_id'] for r in t.select(t.family_id).collect()]
        close = difflib.get_close_matches(family_id, known, n=1)
        hint = f' Did you mean {close[0]!r}?' if close else ''
        raise FamilyError(f'no family {family_id!r}.{hint} List them with ws.families()')
    return dict(rows[0])


@dataclass(frozen=True)
class Family:
    """A handle on one family: its members, canonical template with typed slots, history and drift."""

    id: str

    def __repr__(self) -> str:
        template = self.template
        return f'<Family {self.id} members={self.size} slots={len(template.slots) if template else 0}>'

    def _repr_html_(self) -> str:
        template = self.template
        slots = ', '.join(f'{s.name} ({s.type})' for s in template.slots) if template else ''
        return render_record(
            f'Family {self.id}',
            [('members', f'{self.size:,}'), ('template', self.jinja if template else '(none)'), ('slots', slots)],
            notes=['.members(), .slots(), .history(), .to_version(...) and .to_dataset(...) go further'],
        )

    @property
    def size(self) -> int:
        raw = tables.raw_prompts()
        return raw.where(raw.family_id == self.id).count()

    def templates(self) -> list[tuple[int, Template, dict[str, Any]]]:
        """Return the family's template versions, oldest first: (number, template, row)."""
        t = tables.family_templates()
        rows = t.where(t.family_id == self.id).order_by(t.number).collect()
        return [(r['number'], Template.from_json(r['spec']), dict(r)) for r in rows]

    @property
    def template(self) -> Template | None:
        """Return the latest canonical template, or None for a family of fewer than three prompts."""
        versions = self.templates()
        return versions[-1][1] if versions else None

    @property
    def jinja(self) -> str:
        """Return the latest canonical template in Jinja2 syntax."""
        template = self._require_template()
        return template.jinja

    def _require_template(self) -> Template:
        template = self.template
        if template is None:
            raise FamilyError(
                f'family {self.id!r} has {self.size} prompt(s) and no template yet; a template needs {TEMPLATE_MIN}'
            )
        return template

    def slots(self) -> pd.DataFrame:
        """Return the slots of the latest template: name, type, example values, enum values."""
        template = self._require_template()
        return shown(
            pd.DataFrame(
                [
                    {'name': s.name, 'type': s.type, 'examples': list(s.examples), 'values': list(s.values or [])}
                    for s in template.slots
                ],
                columns=['name', 'type', 'examples', 'values'],
            )
        )

    def violations(self, rules: Sequence[str] | None = None) -> pd.DataFrame:
        """Check the members against the active guardrail rules of the `prompt` stage (or the named ones; judges,
        which call a model, excepted) and return one row per violation: prompt hash, rule, enforcement, the
        matched span and text. No model call.

        >>> family.violations()  # e.g. the logged prompts that carry an email address
        """
        chosen = [
            r
            for r in guardrails.active_rules()
            if r.stage == 'prompt' and r.kind != 'judge' and (rules is None or r.name in rules)
        ]
        found = []
        for _, member in self.members().iterrows():
            for v in guardrails.check(chosen, 'prompt', member['prompt']):
                found.append(
                    {
                        'prompt_hash': member['prompt_hash'],
                        **{k: v.get(k) for k in ('rule', 'enforcement', 'span', 'match', 'message')},
                    }
                )
        return shown(pd.DataFrame(found, columns=['prompt_hash', 'rule', 'enforcement', 'span', 'match', 'message']))

    def members(self) -> pd.DataFrame:
        """Return the members, oldest first: prompt, count, first and last seen, confidence, reason, the number of
        the template version that parses it and its slot values (None where no version parses it)."""
        raw = tables.raw_prompts()
        rows = (
            raw.where(raw.family_id == self.id)
            .order_by(raw.seq)
            .select(
                raw.prompt_hash,
                raw.prompt,
                raw.occurrences,
                raw.first_seen,
                raw.last_seen,
                raw.expected,
                raw.confidence,
                raw.reason,
                raw.meta,
            )
            .collect()
        )
        versions = list(reversed(self.templates()))
        out = []
        for r in rows:
            row = dict(r)
            row['template_number'], row['slots'] = None, None
            for number, template, _ in versions:  # the newest version that parses it
                values = template.parse(r['prompt'])
                if values is not None:
                    row['template_number'], row['slots'] = number, values
                    break
            out.append(row)
        return shown(pd.DataFrame(out))

    def history(self) -> pd.DataFrame:
        """Return what happened to the family: template versions with their events, merges and splits."""
        rows = [
            {'at': row['as_of'], 'what': 'template', 'number': n, 'events': row['events'], 'template': row['template']}
            for n, _, row in self.templates()
        ]
        h = tables.family_history()
        for r in h.where((h.family_id == self.id) | (h.other_id == self.id)).collect():
            rows.append(
                {
                    'at': r['at'],
                    'what': r['action'],
                    'number': None,
                    'events': [{'event': r['action'], 'family_id': r['family_id'], 'other_id': r['other_id'],
                                'members': r['members'], 'by': r['by'], 'note': r['note']}],
                    'template': None,
                }
            )  # fmt: skip
        return shown(pd.DataFrame(rows, columns=['at', 'what', 'number', 'events', 'template']).sort_values('at'))

    def merge(self, other: Family | str, *, note: str = '') -> Family:
        """Merge `other` into this family (recorded); return this family."""
        return merge_families(self, other, note=note)

    def split(self, members: Sequence[str] | str, *, note: str = '') -> Family:
        """Move members (prompt hashes, or a regular expression their text matches) to a new family (recorded)."""
        return split_family(self, members, note=note)

    def to_version(
        self, prompt_name: str, *, model: str = 'local', output: OutputSpec | None = None, **kwargs: Any
    ) -> Version:
        """Create a prompt version whose template is the family's canonical template.

        >>> v1 = family.to_version('ticket_router', model='local', output=ws.choice(['billing', 'shipping']))
        """
        from workspace.core.versions import create_version

        template = self._require_template()
        meta = {'family_id': self.id, 'family_template': len(self.templates()), **kwargs.pop('meta', {})}
        return create_version(prompt_name, template=template.jinja, model=model, output=output, meta=meta, **kwargs)

    def to_dataset(
        self, name: str, *, if_exists: str = 'error', split_ratios: Mapping[str, float] | None = None, seed: int = 0
    ) -> Dataset:
        """Create a dataset whose input fields are the slots and whose rows are the members' slot values, with the
        logged response (ingested with `expected=`) as the expected output.

        Members the latest template does not parse, or without a logged response, or with an empty slot value, are
        left out (counted in the dataset's metadata and the log); none left is a `DatasetError` saying what to do.

        >>> routes = family.to_dataset('routes_from_log')
        """
        from workspace.core.datasets import import_dataset

        template = self._require_template()
        members = self.members()
        names = [s.name for s in template.slots]
        rows, skipped = [], collections.Counter()
        for r in members.itertuples():
            values = template.parse(r.prompt)
            if values is None:
                skipped['not parsed by the latest template'] += 1
            elif r.expected is None or not str(r.expected).strip():
                skipped['no logged response'] += 1
            elif any(not v.strip() for v in values.values()):
                skipped['an empty slot value'] += 1
            else:
                rows.append({**values, 'expected': r.expected, 'prompt_hash': r.prompt_hash})
        if not rows:
            detail = ', '.join(f'{n} with {why}' for why, n in skipped.items()) or 'no members'
            raise DatasetError(
                f'family {self.id!r} has no member usable as an example ({detail}). A dataset needs an expected '
                "output: ingest the log again with expected='<column of the logged response>', or build the rows "
                'yourself from family.members() and ws.import_dataset(...)'
            )
        if skipped:
            log.info('family %s: left out %s', self.id, dict(skipped))
        return import_dataset(
            name,
            rows,
            input=names,
            expected='expected',
            id='prompt_hash',
            split_ratios=split_ratios,
            seed=seed,
            if_exists=if_exists,  # type: ignore[arg-type]
        )


def get_family(family_id: str | Family) -> Family:
    """Return the family with this id (as listed by `ws.families()`).

    >>> family = ws.get_family('fam-3f2a9c01de')
    """
    if isinstance(family_id, Family):
        return family_id
    row = _state_row(family_id)
    if row['status'] == 'merged':
        raise FamilyError(f'family {family_id!r} was merged into {row["merged_into"]!r}; use that one')
    return Family(family_id)


def _record(action: str, family_id: str, other_id: str | None, members: int, note: str) -> None:
    # The family's own history (read by Family.history) and the workspace's audit log of every change.
    audit_log.record(
        'family.merged' if action == 'merge' else 'family.split',
        family_id,
        before={'family': other_id if action == 'merge' else family_id},
        after={'family': family_id if action == 'merge' else other_id, 'members': members},
        note=note or None,
    )
    tables.family_history().insert(
        [
            {
                'event_id': uuid.uuid4().hex,
                'action': action,
                'family_id': family_id,
                'other_id': other_id,
                'members': members,
                'by': current_user(),
                'at': utc_now(),
                'note': note or None,
            }
        ]
    )


def merge_families(into: Family | str, other: Family | str, *, note: str = '') -> Family:
    """Move every member of `other` into `into`, mark `other` merged, and record it; return `into`.

    >>> ws.merge_families('fam-3f2a9c01de', 'fam-77b1c2d3e4', note='same template, reworded')
    """
    target, source = get_family(into), get_family(other)
    if target.id == source.id:
        raise FamilyError(f'cannot merge family {target.id!r} into itself')
    raw = tables.raw_prompts()
    moved = raw.where(raw.family_id == source.id).count()
    raw.update({'family_id': target.id}, where=raw.family_id == source.id)
    state = tables.families()
    a, b = _state_row(target.id), _state_row(source.id)
    total = np.asarray(a['total'], dtype=np.float64) + np.asarray(b['total'], dtype=np.float64)
    tables.upsert(
        state,
        [
            {**a, 'total': total.astype(np.float32), 'n': a['n'] + b['n'], 'pending': a['pending'] + b['pending'] + 1,
             'exemplars': (a['exemplars'] + b['exemplars'])[:EXEMPLARS], 'updated_at': utc_now()},
            {**b, 'status': 'merged', 'merged_into': target.id, 'n': 0, 'updated_at': utc_now()},
        ],
    )  # fmt: skip
    _record('merge', target.id, source.id, moved, note)
    _remine(target.id)
    return target


def split_family(family: Family | str, members: Sequence[str] | str, *, note: str = '') -> Family:
    """Move some members of a family to a new family and record it; return the new family.

    `members` is a list of prompt hashes, or a regular expression that the moved members' text matches.

    >>> ws.split_family('fam-3f2a9c01de', r'^Translate the text from')
    """
    import re

    source = get_family(family)
    raw = tables.raw_prompts()
    rows = list(
        raw.where(raw.family_id == source.id)
        .order_by(raw.seq)
        .select(raw.prompt_hash, raw.prompt, raw.vector)
        .collect()
    )
    if isinstance(members, str):
        try:
            pattern = re.compile(members)
        except re.error as e:
            raise FamilyError(f'split pattern {members!r} is not a valid regular expression: {e}') from None
        chosen = [r for r in rows if pattern.search(r['prompt'])]
    else:
        wanted = set(members)
        chosen = [r for r in rows if r['prompt_hash'] in wanted]
        unknown = wanted - {r['prompt_hash'] for r in chosen}
        if unknown:
            raise FamilyError(
                f'{len(unknown)} prompt hash(es) are not members of {source.id!r}, e.g. {sorted(unknown)[0]!r}'
            )
    if not chosen:
        raise FamilyError(f'no member of family {source.id!r} matches {members!r}; nothing to split')
    if len(chosen) == len(rows):
        raise FamilyError(f'every member of family {source.id!r} matches; a split must leave some behind')
    state = tables.families()
    taken = {r['family_id'] for r in state.select(state.family_id).collect()}
    new_id, n = f'fam-{chosen[0]["prompt_hash"][:10]}', 2
    while new_id in taken:  # the founding prompt of a merged family keeps its id out of reuse
        new_id, n = f'fam-{chosen[0]["prompt_hash"][:10]}-{n}', n + 1
    keys = [r['prompt_hash'] for r in chosen]
    raw.update({'family_id': new_id}, where=raw.prompt_hash.isin(keys))
    a = _state_row(source.id)
    moved_total = np.sum([np.asarray(r['vector'], dtype=np.float64) for r in chosen], axis=0)
    first = raw.where(raw.prompt_hash == keys[0]).select(raw.first_seen).collect()[0]['first_seen']
    now = utc_now()
    tables.upsert(
        tables.families(),
        [
            {**a, 'total': (np.asarray(a['total'], dtype=np.float64) - moved_total).astype(np.float32),
             'n': a['n'] - len(chosen), 'pending': a['pending'] + 1,
             'exemplars': [h for h in a['exemplars'] if h not in set(keys)], 'updated_at': now},
            {'family_id': new_id, 'created_at': first, 'status': 'active', 'merged_into': None,
             'total': moved_total.astype(np.float32), 'n': len(chosen), 'skeletons': [], 'exemplars': keys[:EXEMPLARS],
             'pending': len(chosen), 'template_number': 0, 'updated_at': now},
        ],
    )  # fmt: skip
    _record('split', source.id, new_id, len(chosen), note)
    _remine(source.id)
    _remine(new_id)
    return Family(new_id)


def _remine(family_id: str) -> None:
    """Mine the template of a family changed by hand, recording a new template version if it changed."""
    assigner = Assigner()
    state = assigner.states[family_id]
    state.recent_loaded = False
    state.recent.clear()
    state.pending = max(state.pending, 1)
    assigner.refresh(utc_now(), force=True)
    if state.template is not None:
        state.set_skeletons([state.template.constant_tokens])
    state.changed = True
    assigner.save()
