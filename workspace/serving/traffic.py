"""A/B traffic in serving code: stable assignment of units to versions, and their logged outcomes.

A unit (a user, a session, a ticket) is hashed with the prompt and the experiment name into a point in [0, 1);
the traffic's weights cut [0, 1) into arms, in the order given. The same unit gets the same arm in every process
and on every machine, and another experiment name reshuffles the units. Serving code logs outcomes to the table
`prompt_workspace/ab_outcomes`; `workspace.analysis.ab_report` compares the arms.

*Traffic* is the experiment's weights over versions (`{'v1': 50, 'v3': 50}`); the glossary keeps *split* for
train/dev/test.
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import itertools
import math
import numbers
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from workspace.analysis.ab_report import check_name, traffic_weights
from workspace.config import utc_now
from workspace.core.versions import Version, get_version
from workspace.errors import ComparisonError, VersionError
from workspace.storage import tables

__all__ = ['Assigner', 'assign', 'log_outcome', 'log_outcomes', 'ASSIGN_REFRESH_SECONDS']

#: How long `assign` and `log_outcome` reuse resolved traffic, in seconds: a label move reaches serving code
#: within this time. Build an `Assigner` to choose when versions are resolved.
ASSIGN_REFRESH_SECONDS = 30.0

_MAX_CACHED = 256
# (prompt, experiment, traffic items) -> (monotonic time resolved, Assigner). A memo of immutable lookups, not state.
_assigners: dict[tuple[Any, ...], tuple[float, Assigner]] = {}

_NUMBER = re.compile(r'^v?\d+$')
_ROW_KEYS = ('prompt', 'unit_id', 'outcome', 'traffic', 'version', 'experiment', 'at', 'event_id')
_EXAMPLE_TRAFFIC = "{'v1': 50, 'v3': 50}"


def _unit_key(unit_id: object) -> str:
    """Return the unit id as the string that is hashed and stored; ints and their decimal strings are the same unit."""
    if isinstance(unit_id, bool) or not isinstance(unit_id, (str, int)):
        raise ComparisonError(
            f'unit_id {unit_id!r} is a {type(unit_id).__name__}; pass a str or int that stays the same for the unit, '
            'such as a user or session id'
        )
    key = str(unit_id)
    if not key.strip():
        raise ComparisonError('unit_id is empty; pass an id that stays the same for the unit, such as a user id')
    return key


def _point(prompt: str, experiment: str, unit: str) -> float:
    """Return the unit's place in [0, 1): the top 53 bits of a SHA-256, the same in every process and machine."""
    digest = hashlib.sha256(f'{prompt}\0{experiment}\0{unit}'.encode()).digest()
    return (int.from_bytes(digest[:8], 'big') >> 11) / 2**53


def _resolve(prompt: str, ref: str | Version, what: str) -> Version:
    """Return the version of `prompt` that `ref` names: 'v3', '3', 'prompt:v3', '@label' or 'prompt@label'."""
    if isinstance(ref, Version):
        version = ref
    else:
        ref = str(ref).strip()
        if ref.startswith('@'):
            full = f'{prompt}{ref}'
        elif _NUMBER.match(ref):
            full = f'{prompt}:{ref}'
        elif ':' in ref or '@' in ref:
            full = ref
        else:
            raise VersionError(
                f"{what} {ref!r} names no version of {prompt!r}; use 'v3', '{prompt}:v3' or '@production'"
            )
        try:
            version = get_version(full)
        except VersionError as e:
            raise VersionError(f'{what} {ref!r}: {e}') from None
    if version.prompt != prompt:
        raise VersionError(
            f'{what} {version.id!r} is a version of {version.prompt!r}, not of {prompt!r}; '
            'an experiment compares versions of one prompt'
        )
    return version


class Assigner:
    """Assign units to versions by traffic weights, resolving the traffic's versions and labels once.

    Keys of `traffic` name versions of `prompt`: `'v3'` or `'3'`, `'ticket_router:v3'`, or a label `'@production'`;
    they are also the arm names. Weights are positive numbers, percentages or any proportions. After construction
    `arm` and `assign` only hash: they never touch Pixeltable, so serving code can call them on every request.
    A label is read when the Assigner is built; build a new one to follow a label move. Another `experiment` name
    reshuffles the units, so experiments run one after another do not inherit each other's groups.

    >>> router = Assigner('ticket_router', {'v1': 50, 'v3': 50})
    >>> router.arm('user-2'), router.assign('user-2').id
    ('v3', 'ticket_router:v3')
    """

    def __init__(self, prompt: str, traffic: Mapping[str, float], *, experiment: str = 'default') -> None:
        self.prompt = check_name('prompt', prompt)
        self.experiment = check_name('experiment', experiment)
        weights = traffic_weights(traffic)
        #: The version each arm serves, in the traffic's order.
        self.versions: dict[str, Version] = {arm: _resolve(prompt, arm, 'traffic key') for arm in weights}
        total = sum(weights.values())
        #: Each arm's planned fraction of units.
        self.shares: dict[str, float] = {arm: w / total for arm, w in weights.items()}
        self._arms = list(weights)
        # Upper bounds of all arms but the last; the last arm ends at 1, so float rounding never drops a unit.
        self._bounds = [c / total for c in itertools.accumulate(weights.values())][:-1]

    def __repr__(self) -> str:
        arms = ', '.join(f'{a}={self.versions[a].id} {self.shares[a]:.0%}' for a in self._arms)
        return f'<Assigner {self.prompt} experiment={self.experiment!r}: {arms}>'

    @property
    def arms(self) -> tuple[str, ...]:
        """Return the arm names (the traffic's keys) in order."""
        return tuple(self._arms)

    def arm(self, unit_id: str | int) -> str:
        """Return the arm of `unit_id`: the same for the same unit, prompt and experiment, everywhere."""
        point = _point(self.prompt, self.experiment, _unit_key(unit_id))
        return self._arms[bisect.bisect_right(self._bounds, point)]

    def assign(self, unit_id: str | int) -> Version:
        """Return the version `unit_id` is served."""
        return self.versions[self.arm(unit_id)]


def _assigner(prompt: str, traffic: Mapping[str, float], experiment: str) -> Assigner:
    """Return an Assigner for the traffic, reusing one resolved less than `ASSIGN_REFRESH_SECONDS` ago."""
    try:
        key = (prompt, experiment, tuple(traffic.items()))
        hash(key)
    except (AttributeError, TypeError):
        return Assigner(prompt, traffic, experiment=experiment)  # not plain weights: let it say what is wrong
    now = time.monotonic()
    cached = _assigners.get(key)
    if cached is not None and now - cached[0] < ASSIGN_REFRESH_SECONDS:
        return cached[1]
    assigner = Assigner(prompt, traffic, experiment=experiment)
    if len(_assigners) >= _MAX_CACHED:
        _assigners.clear()
    _assigners[key] = (now, assigner)
    return assigner


def assign(prompt: str, unit_id: str | int, traffic: Mapping[str, float], *, experiment: str = 'default') -> Version:
    """Return the version of `prompt` that `unit_id` is served under `traffic`, the same every time for the same unit.

    The unit's SHA-256 with the prompt and experiment picks the arm, with the traffic's weights in the order given; a
    different `experiment` reshuffles units. The resolved traffic is reused for `ASSIGN_REFRESH_SECONDS` (30 s), so
    repeated calls cost a hash and a label move reaches serving code within that time.

    >>> assign('ticket_router', 'user-1', {'v1': 50, 'v3': 50}).id
    'ticket_router:v1'
    """
    return _assigner(prompt, traffic, experiment).assign(unit_id)


#: The largest outcome magnitude stored: sums and squares of outcomes (means, variances, tests) stay finite in
#: floating point for billions of units; 1e308 alone would make a mean of two units infinite.
MAX_OUTCOME = 1e15


def _outcome(value: object, where: str) -> float:
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ComparisonError(f'{where}outcome {value!r} is not a finite number; log 0/1 for binary outcomes')
    if abs(float(value)) > MAX_OUTCOME:
        raise ComparisonError(
            f'{where}outcome {value!r} is larger than {MAX_OUTCOME:g} in magnitude: means and tests over such values '
            'are not finite; log it in a larger unit (thousands, millions) or 0/1 for binary outcomes'
        )
    return float(value)


def _timestamp(at: object, where: str) -> datetime.datetime:
    if at is None:
        return utc_now()
    if not isinstance(at, datetime.datetime):
        raise ComparisonError(f'{where}at {at!r} is not a datetime; pass a timezone-aware datetime or leave it out')
    return at if at.tzinfo is not None else at.replace(tzinfo=datetime.timezone.utc)


def _row(raw: Mapping[str, Any], where: str, versions: dict[tuple[str, str], Version]) -> dict[str, Any]:
    """Return the table row for one logged outcome, its arm and version worked out as `log_outcome` documents."""
    unknown = sorted(set(raw) - set(_ROW_KEYS))
    if unknown:
        raise ComparisonError(f'{where}unknown keys {unknown}; an outcome row takes {", ".join(_ROW_KEYS)}')
    missing = [k for k in ('prompt', 'unit_id', 'outcome') if k not in raw]
    if missing:
        raise ComparisonError(f'{where}missing {", ".join(missing)}; every outcome needs prompt, unit_id and outcome')
    prompt = check_name('prompt', raw['prompt'])
    experiment = check_name('experiment', raw.get('experiment', 'default'))
    unit = _unit_key(raw['unit_id'])
    traffic, ref = raw.get('traffic'), raw.get('version')
    version: Version | None = None
    if ref is not None:
        cache_key = (prompt, ref.id if isinstance(ref, Version) else str(ref))
        if cache_key not in versions:
            versions[cache_key] = _resolve(prompt, ref, f'{where}version')
        version = versions[cache_key]
    if traffic is not None:
        assigner = _assigner(prompt, traffic, experiment)
        arm = assigner.arm(unit)
        version = version or assigner.versions[arm]
    elif version is not None:
        arm = f'v{version.number}'
    else:
        raise ComparisonError(
            f'{where}give traffic= (the traffic passed to assign, so the arm is worked out again) '
            'or version= (the version the unit was served)'
        )
    event_id = raw.get('event_id')
    if event_id is not None and (not isinstance(event_id, str) or not event_id.strip()):
        raise ComparisonError(f'{where}event_id {event_id!r} is not a non-empty string; leave it out for a new id')
    return {
        'event_id': event_id or uuid.uuid4().hex,
        'prompt': prompt,
        'experiment': experiment,
        'unit_id': unit,
        'arm': arm,
        'version_id': version.id,
        'outcome': _outcome(raw['outcome'], where),
        'logged_at': _timestamp(raw.get('at'), where),
    }


def _store(rows: list[dict[str, Any]], explicit: set[str]) -> int:
    t = tables.ab_outcomes()
    if explicit:  # a retried event is stored once
        seen = {r['event_id'] for r in t.where(t.event_id.isin(sorted(explicit))).select(t.event_id).collect()}
        rows = [r for r in rows if r['event_id'] not in seen]
    if rows:
        t.insert(rows)
    return len(rows)


def log_outcome(
    prompt: str,
    unit_id: str | int,
    outcome: float,
    *,
    traffic: Mapping[str, float] | None = None,
    version: Version | str | None = None,
    experiment: str = 'default',
    at: datetime.datetime | None = None,
    event_id: str | None = None,
) -> str:
    """Store one outcome of `unit_id` in experiment `experiment` of `prompt`; return its event id.

    Give `traffic` (the one passed to `assign`): the arm is worked out again from the unit and the version is the
    arm's. Or give `version` alone (a `Version`, 'v3' or '@production') when units were assigned elsewhere: the
    arm is then the version's short name, e.g. 'v3'. Given both, `version` records what the unit was actually served
    (say a label moved in between) while the arm still comes from the traffic. Binary outcomes are 0/1 (or bools).
    An `event_id` makes a retried log idempotent: an event id already stored is not stored again.

    >>> event_id = log_outcome('ticket_router', 'user-1', 1, traffic={'v1': 50, 'v3': 50})
    """
    explicit = {event_id} if isinstance(event_id, str) else set()
    raw = {'prompt': prompt, 'unit_id': unit_id, 'outcome': outcome, 'traffic': traffic, 'version': version}
    row = _row({**raw, 'experiment': experiment, 'at': at, 'event_id': event_id}, '', {})
    _store([row], explicit)
    return str(row['event_id'])


def log_outcomes(rows: Iterable[Mapping[str, Any]]) -> int:
    """Store a batch of outcomes in one insert; return how many were stored (retried event ids are skipped).

    Each row holds `log_outcome`'s arguments by name: prompt, unit_id, outcome, and traffic or version; optionally
    experiment, at and event_id. Every row is checked before anything is stored.

    >>> log_outcomes([{'prompt': 'ticket_router', 'unit_id': 'user-1', 'outcome': 1, 'traffic': {'v1': 50, 'v3': 50}}])
    1
    """
    versions: dict[tuple[str, str], Version] = {}
    built: list[dict[str, Any]] = []
    explicit: set[str] = set()
    for i, raw in enumerate(rows):
        if not isinstance(raw, Mapping):
            raise ComparisonError(f'row {i} is a {type(raw).__name__}; pass dicts with prompt, unit_id and outcome')
        row = _row(raw, f'row {i}: ', versions)
        if raw.get('event_id') is not None:
            if row['event_id'] in explicit:
                continue
            explicit.add(row['event_id'])
        built.append(row)
    return _store(built, explicit)
