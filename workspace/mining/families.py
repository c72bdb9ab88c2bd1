"""Prompt families: raw prompts that come from one template, grouped incrementally, each with a canonical template.

```
prompt_workspace/raw_prompts        one row per distinct raw prompt: its family, confidence and reason (prompt_log.py)
prompt_workspace/families           one row per family: the state the next assignment reads
prompt_workspace/family_templates   one row per template version of a family, with its events
prompt_workspace/family_history     merges and splits, made by hand or by assignment (a template edit merged)
```

Assignment itself (`workspace.mining.assign.Engine`) works on the families' state in memory; this module loads that
state from the tables (`load_engine`), turns what changed back into rows (`state_rows`, `history_rows`), and reads
families for people: `families()`, `get_family()`, `Family` (members, template versions, slots, history, a version
or a dataset made from it), and the merges and splits made by hand, which are recorded.
"""

from __future__ import annotations

import collections
import datetime
import difflib
import hashlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pixeltable.functions as pxtf

from workspace.config import current_user, utc_now
from workspace.core import rules as guardrails
from workspace.display.frames import shown
from workspace.display.results import render_record
from workspace.errors import DatasetError, FamilyError
from workspace.mining.assign import (
    APP_RECENT,
    MINE_SAMPLE,
    TEMPLATE_MIN,
    TRUST,
    Engine,
    FamilyState,
    Member,
    Move,
    best_version,
)
from workspace.mining.canonical import Template, mine, template_events
from workspace.storage import audit_log, tables
from workspace.storage.embeddings import DIMENSIONS, embed

if TYPE_CHECKING:
    from workspace.core.datasets import Dataset
    from workspace.core.versions import OutputSpec, Version

__all__ = [
    'Family',
    'families',
    'get_family',
    'load_engine',
    'merge_families',
    'split_family',
    'state_rows',
    'history_rows',
]

log = logging.getLogger(__name__)

#: Latest members read by key when the engine is loaded (32 for each of the ~600 families updated last); the rest
#: are read family by family when needed.
RECENT_PRELOAD = 20_000
#: Who the history names for the merges and splits assignment makes.
ENGINE = 'workspace (assignment)'


def _time(value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(value)


def _recent_loader(family_id: str) -> list[Member]:
    raw = tables.raw_prompts()
    rows = (
        raw.where(raw.family_id == family_id)
        .order_by(raw.seq, asc=False)
        .limit(MINE_SAMPLE)
        .select(raw.prompt_hash, raw.prompt, raw.first_seen)
        .collect()
    )
    return [(r['prompt_hash'], r['prompt'], r['first_seen']) for r in reversed(list(rows))]


def load_engine(apps: set[str | None] | None = None) -> Engine:
    """Return an assignment engine over the active families' state as stored. The latest members of the families of
    `apps` (the applications of the lines to assign; None: all) updated last are read at once; the others' when
    needed."""
    state_table = tables.families()
    rows = list(state_table.where(state_table.status == 'active').collect())
    versions: dict[str, list[tuple[int, Template]]] = collections.defaultdict(list)
    if rows:
        t = tables.family_templates()
        for r in t.select(t.family_id, t.number, t.spec).collect():
            versions[r['family_id']].append((r['number'], Template.from_json(r['spec'])))
    states = []
    for r in rows:
        extra = r['state'] or {}
        numbered = sorted(versions.get(r['family_id'], []), key=lambda v: v[0])
        state = FamilyState(
            id=r['family_id'],
            app=r['app'],
            created_at=r['created_at'],
            total=np.asarray(r['total'], dtype=np.float32),
            n=r['n'],
            exemplars=list(r['exemplars']),
            templates=[t for _, t in numbered],
            numbers=[n for n, _ in numbered],
            retired=set(extra.get('retired', [])),
            recent_loaded=False,
            recent_hashes=extra.get('recent'),
            mined_at=extra.get('mined_at', r['n'] if numbered else 0),
            candidate_of=extra.get('candidate_of'),
            candidate_since=_time(extra['candidate_since']) if extra.get('candidate_since') else None,
            edited_since=_time(extra['edited_since']) if extra.get('edited_since') else None,
        )
        state.times.extend(_time(x) for x in extra.get('times', []))
        state.keys = [(tuple(k[0]), tuple(k[1]), k[2] if len(k) > 2 else -1) for k in extra.get('keys', [])]
        states.append(state)
    # a family only takes prompts of its own application: only the log's applications' families are read ahead
    local = [s for s in states if apps is None or s.app in apps]
    texts: dict[str, str] = {}
    hashes = [h for s in local for h in s.exemplars]
    raw = tables.raw_prompts()
    for start in range(0, len(hashes), 5000):
        keys = hashes[start : start + 5000]
        texts.update(
            {
                r['prompt_hash']: r['prompt']
                for r in raw.where(raw.prompt_hash.isin(keys)).select(raw.prompt_hash, raw.prompt).collect()
            }
        )
    # the exemplars' vectors (the nearest members a reason names) are embedded again: reading stored ones cost as
    # much, and storing them cost half of each raw prompt's insert
    vectors = dict(zip(texts, embed(list(texts.values()))))
    snippets = {h: text[:120] for h, text in texts.items()}
    _load_recent(raw, local)
    stored = {s.id: s.recent_hashes for s in states if not s.recent_loaded and s.recent_hashes is not None}

    def load_recent(family_id: str) -> list[Member]:
        hashes = stored.get(family_id)
        found = _stored_members(raw, {family_id: hashes}).get(family_id) if hashes is not None else None
        return found if found is not None else _recent_loader(family_id)

    last = raw.select(last=pxtf.max(raw.first_seen)).collect()[0]['last'] if raw.count() else None
    taken = [
        r['family_id']
        for r in state_table.where(state_table.status != 'active').select(state_table.family_id).collect()
    ]
    return Engine(
        states,
        app_recent=_app_recent({s.app for s in local}),
        vectors=vectors,
        snippets=snippets,
        load_recent=load_recent,
        embed=embed,
        dimensions=DIMENSIONS,
        last=last,
        taken=taken,
    )


def _load_recent(raw: Any, states: list[FamilyState]) -> None:
    """Read the stored latest members of the families updated last (RECENT_PRELOAD members in all) by key, a few
    queries in all; the rest, and families stored by an earlier release, are read one by one when needed.

    One query per family (by family id, in seq order) cost about 10 ms each: a day's log touching 200 families
    spent 2 s on them, more than assigning it."""
    chosen, count = {}, 0
    for state in sorted(states, key=lambda s: s.times[-1] if s.times else s.created_at, reverse=True):
        if state.recent_hashes is not None and count + len(state.recent_hashes) <= RECENT_PRELOAD:
            chosen[state.id] = state
            count += len(state.recent_hashes)
    found = _stored_members(raw, {i: s.recent_hashes or [] for i, s in chosen.items()})
    for family_id, members in found.items():
        state = chosen[family_id]
        state.recent.extend(members)
        state.recent_loaded = True


def _stored_members(raw: Any, hashes: dict[str, list[str]]) -> dict[str, list[Member]]:
    """Return each family's stored latest members, in their stored order, read by key: only for the families whose
    members are all still in the table and in that family (a merge or split by hand killed before it stored the
    members it left makes the family read by its id instead)."""
    wanted = [h for members in hashes.values() for h in members]
    rows: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), 5000):
        keys = wanted[start : start + 5000]
        query = raw.where(raw.prompt_hash.isin(keys)).select(raw.prompt_hash, raw.prompt, raw.first_seen, raw.family_id)
        rows.update({r['prompt_hash']: r for r in query.collect()})
    out = {}
    for family_id, members in hashes.items():
        if all(h in rows and rows[h]['family_id'] == family_id for h in members):
            out[family_id] = [(h, rows[h]['prompt'], rows[h]['first_seen']) for h in members]
    return out


def _app_recent(apps: set[str | None]) -> list[tuple[str | None, tuple[str, str, str]]]:
    """Return each application's latest prompts (APP_RECENT), oldest first, with the families they were assigned to
    (where they are now for prompts ingested before the reason recorded it).

    Read a window of the latest prompts at a time (by seq, every application's at once), widening it until every
    application has APP_RECENT or the table is read: one query per application cost about 25 ms, 0.8 s of a later
    ingest of the bench's logs (30 applications).
    """
    raw = tables.raw_prompts()
    top = raw.select(top=pxtf.max(raw.seq)).collect()[0]['top']
    found: dict[str | None, list[dict[str, Any]]] = {app: [] for app in apps}
    high, span = (top + 1 if top is not None else 0), APP_RECENT * max(len(apps), 1) * 2
    while high > 0 and any(len(rows) < APP_RECENT for rows in found.values()):
        low = max(0, high - span)
        window = (
            raw.where((raw.seq >= low) & (raw.seq < high))
            .select(raw.app, raw.seq, raw.family_id, raw.prompt_hash, raw.prompt, assigned=raw.reason.assigned_to)
            .collect()
        )
        for r in sorted(window, key=lambda r: -r['seq']):
            rows = found.get(r['app'])
            if rows is not None and len(rows) < APP_RECENT:
                rows.append(r)
        high, span = low, span * 4
    out = []
    for app in sorted(apps, key=lambda a: (a is not None, a or '')):
        for r in reversed(found[app]):
            out.append((app, (r['assigned'] or r['family_id'], r['prompt_hash'], r['prompt'])))
    return out


def state_rows(states: Sequence[FamilyState], now: datetime.datetime) -> list[dict[str, Any]]:
    """Return the `families` rows of changed family states (JSON-ready: times as ISO text, vectors as lists)."""
    return [
        {
            'family_id': s.id,
            'created_at': s.created_at.isoformat(),
            'status': s.status,
            'merged_into': s.merged_into,
            'total': [float(x) for x in s.total],
            'n': s.n,
            'skeletons': [],
            'exemplars': list(s.exemplars),
            'pending': s.n - s.mined_at if s.templates else s.n,
            'template_number': s.template_number,
            'updated_at': now.isoformat(),
            'app': s.app,
            'state': {
                'retired': sorted(s.retired),
                'mined_at': s.mined_at,
                'candidate_of': s.candidate_of,
                'candidate_since': s.candidate_since.isoformat() if s.candidate_since else None,
                'edited_since': s.edited_since.isoformat() if s.edited_since else None,
                'times': [t.isoformat() for t in s.times],
                'keys': [[list(a), list(b), n] for a, b, n in s.keys] if s.mined_at < TRUST else [],
                # its latest members, oldest first: a later ingest reads them by key at once rather than querying
                # each family's members when it first needs them (and gets the same ones it had in memory)
                'recent': [h for h, _, _ in s.recent] if s.recent_loaded else s.recent_hashes,
            },
        }
        for s in states
    ]


def history_rows(moves: Sequence[Move], batch: str) -> list[dict[str, Any]]:
    """Return the `family_history` rows of the merges and splits assignment made (ids derived from the batch, so a
    batch applied twice records them once)."""
    out = []
    for i, m in enumerate(moves):
        merge = m.action == 'merge'
        out.append(
            {
                'event_id': hashlib.sha256(f'{batch}:{i}'.encode()).hexdigest()[:32],
                'action': m.action,
                'family_id': m.family_id if merge else m.other_id,
                'other_id': m.other_id if merge else m.family_id,
                'members': m.members,
                'by': ENGINE,
                'at': m.at.isoformat(),
                'note': m.note,
            }
        )
    return out


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
        the template version that parses it (the most specific one: an earlier exact version beats a later loose
        one) and its slot values (None where no version parses it)."""
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
        retired = set((_state_row(self.id)['state'] or {}).get('retired', []))
        versions = [(number, template) for number, template, _ in self.templates() if number not in retired]
        out = []
        for r in rows:
            row = dict(r)
            found = best_version(versions, r['prompt'])  # the most specific version that parses it
            row['template_number'], row['slots'] = (found[0], found[1].parse(r['prompt'].rstrip()) if
                                                    found[1].spans(r['prompt']) is None else found[1].parse(r['prompt'])
                                                    ) if found else (None, None)  # fmt: skip
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
        rows: list[Any] = []
        skipped: collections.Counter[str] = collections.Counter()
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
    b = _state_row(source.id)
    tables.upsert(
        tables.families(), [{**b, 'status': 'merged', 'merged_into': target.id, 'n': 0, 'updated_at': utc_now()}]
    )
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
    rows = list(raw.where(raw.family_id == source.id).order_by(raw.seq).select(raw.prompt_hash, raw.prompt).collect())
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
    a = _state_row(source.id)
    first = raw.where(raw.prompt_hash == keys[0]).select(raw.first_seen).collect()[0]['first_seen']
    tables.upsert(
        state,
        [{'family_id': new_id, 'created_at': first, 'status': 'active', 'merged_into': None,
          'total': np.zeros(DIMENSIONS, dtype=np.float32), 'n': 0, 'skeletons': [], 'exemplars': keys[:16],
          'pending': 0, 'template_number': 0, 'updated_at': utc_now(), 'app': a['app'], 'state': {}}],
    )  # fmt: skip
    raw.update({'family_id': new_id}, where=raw.prompt_hash.isin(keys))
    _record('split', source.id, new_id, len(chosen), note)
    _remine(source.id)
    _remine(new_id)
    return Family(new_id)


def _remine(family_id: str) -> None:
    """Recount a family changed by hand from its members and mine its template again: a new version (retiring the
    ones it parses every member of) when it changed."""
    raw = tables.raw_prompts()
    rows = list(
        raw.where(raw.family_id == family_id)
        .order_by(raw.seq)
        .select(raw.prompt_hash, raw.prompt, raw.first_seen)
        .collect()
    )
    row = _state_row(family_id)
    extra = dict(row['state'] or {})
    total = embed([r['prompt'] for r in rows]).astype(np.float64).sum(axis=0)  # zeros for no rows
    row.update(total=total.astype(np.float32), n=len(rows), updated_at=utc_now())
    row['exemplars'] = [r['prompt_hash'] for r in rows[:4]] + [r['prompt_hash'] for r in rows[4:]][-12:]
    texts = [r['prompt'] for r in rows[-MINE_SAMPLE:]]
    extra['recent'] = [r['prompt_hash'] for r in rows[-MINE_SAMPLE:]]  # its latest members now
    if len(rows) >= TEMPLATE_MIN:
        template = mine(texts)
        versions = Family(family_id).templates()
        if not versions or versions[-1][1].pieces != template.pieces:
            retired = set(extra.get('retired', []))
            for number, old, _ in versions:
                if all(old.spans(t) is None or template.spans(t) is not None for t in texts):
                    retired.add(number)
            number = (versions[-1][0] if versions else 0) + 1
            tables.family_templates().insert(
                [{'family_id': family_id, 'number': number, 'template': template.jinja, 'spec': template.to_json(),
                  'events': template_events(versions[-1][1] if versions else None, template), 'as_of': utc_now(),
                  'members': len(texts), 'parsed': sum(template.spans(t) is not None for t in texts),
                  'created_at': utc_now()}]
            )  # fmt: skip
            extra['retired'] = sorted(retired)
            row['template_number'] = number
        extra['mined_at'] = len(rows)
    row['state'] = extra
    tables.upsert(tables.families(), [row])
