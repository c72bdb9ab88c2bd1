"""A/B experiments in serving code: stable assignment of units to versions, logged outcomes, and a report.

A unit (a user, a session, a ticket) is hashed with the prompt and the experiment name into a point in [0, 1);
the split's weights cut [0, 1) into arms, in the order given. The same unit gets the same arm in every process and
on every machine, and another experiment name reshuffles the units. Serving code logs outcomes to the table
`prompt_workspace/ab_outcomes`; `ab_report` compares the arms with each unit counted once, and checks that the
units arrived in the planned proportions (a sample ratio mismatch means the assignment or the logging is biased).
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import html
import itertools
import math
import numbers
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pandas as pd

from . import tables
from .config import utc_now
from .errors import ComparisonError, VersionError
from .stats import _alpha, _format_p, _points
from .versions import Version, get_version

__all__ = [
    'Assigner',
    'ABReport',
    'assign',
    'log_outcome',
    'log_outcomes',
    'ab_report',
    'wilson_interval',
    'PerUnit',
    'ASSIGN_REFRESH_SECONDS',
]

#: How long `assign` and `log_outcome` reuse a resolved split, in seconds: a label move reaches serving code
#: within this time. Build an `Assigner` to choose when versions are resolved.
ASSIGN_REFRESH_SECONDS = 30.0

_MAX_CACHED = 256
# (prompt, experiment, split items) -> (monotonic time resolved, Assigner). A memo of immutable lookups, not state.
_assigners: dict[tuple[Any, ...], tuple[float, Assigner]] = {}

_NUMBER = re.compile(r'^v?\d+$')
_ROW_KEYS = ('prompt', 'unit_id', 'outcome', 'split', 'version', 'experiment', 'at', 'event_id')
_EXAMPLE_SPLIT = "{'v1': 50, 'v3': 50}"


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


def _name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or '\0' in value:
        raise ComparisonError(f'{what} {value!r} is not a usable name; pass a non-empty string such as {"default"!r}')
    return value


def _point(prompt: str, experiment: str, unit: str) -> float:
    """Return the unit's place in [0, 1): the top 53 bits of a SHA-256, the same in every process and machine."""
    digest = hashlib.sha256(f'{prompt}\0{experiment}\0{unit}'.encode()).digest()
    return (int.from_bytes(digest[:8], 'big') >> 11) / 2**53


def _weights(split: object) -> dict[str, float]:
    """Return the split as {arm key: weight} after checking it names at least one arm, each with a positive weight."""
    if not isinstance(split, Mapping):
        raise ComparisonError(f'split must map versions to weights, e.g. {_EXAMPLE_SPLIT}; got {split!r}')
    if not split:
        raise ComparisonError(f'split is empty; name at least one version and its weight, e.g. {_EXAMPLE_SPLIT}')
    weights: dict[str, float] = {}
    for key, weight in split.items():
        arm = str(key).strip()
        if not arm:
            raise ComparisonError("split has an empty key; name a version such as 'v3' or '@production'")
        if arm in weights:
            raise ComparisonError(f'split names {arm!r} twice; give each version one weight')
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight <= 0:
            raise ComparisonError(
                f'weight of {key!r} is {weight!r}; weights must be positive numbers (percentages or any '
                f'proportions), e.g. {_EXAMPLE_SPLIT}'
            )
        weights[arm] = float(weight)
    return weights


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
    """Assign units to the versions of a split, resolving the split's versions and labels once.

    Keys of `split` name versions of `prompt`: `'v3'` or `'3'`, `'ticket_router:v3'`, or a label `'@production'`;
    they are also the arm names. Weights are positive numbers, percentages or any proportions. After construction
    `arm` and `assign` only hash: they never touch Pixeltable, so serving code can call them on every request.
    A label is read when the Assigner is built; build a new one to follow a label move. Another `experiment` name
    reshuffles the units, so experiments run one after another do not inherit each other's groups.

    >>> router = Assigner('ticket_router', {'v1': 50, 'v3': 50})
    >>> router.arm('user-2'), router.assign('user-2').id
    ('v3', 'ticket_router:v3')
    """

    def __init__(self, prompt: str, split: Mapping[str, float], *, experiment: str = 'default') -> None:
        self.prompt = _name('prompt', prompt)
        self.experiment = _name('experiment', experiment)
        weights = _weights(split)
        #: The version each arm serves, in the split's order.
        self.versions: dict[str, Version] = {arm: _resolve(prompt, arm, 'split key') for arm in weights}
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
        """Return the arm names (the split's keys) in order."""
        return tuple(self._arms)

    def arm(self, unit_id: str | int) -> str:
        """Return the arm of `unit_id`: the same for the same unit, prompt and experiment, everywhere."""
        point = _point(self.prompt, self.experiment, _unit_key(unit_id))
        return self._arms[bisect.bisect_right(self._bounds, point)]

    def assign(self, unit_id: str | int) -> Version:
        """Return the version `unit_id` is served."""
        return self.versions[self.arm(unit_id)]


def _assigner(prompt: str, split: Mapping[str, float], experiment: str) -> Assigner:
    """Return an Assigner for the split, reusing one resolved less than `ASSIGN_REFRESH_SECONDS` ago."""
    try:
        key = (prompt, experiment, tuple(split.items()))
        hash(key)
    except (AttributeError, TypeError):
        return Assigner(prompt, split, experiment=experiment)  # not a plain split: let it say what is wrong
    now = time.monotonic()
    cached = _assigners.get(key)
    if cached is not None and now - cached[0] < ASSIGN_REFRESH_SECONDS:
        return cached[1]
    assigner = Assigner(prompt, split, experiment=experiment)
    if len(_assigners) >= _MAX_CACHED:
        _assigners.clear()
    _assigners[key] = (now, assigner)
    return assigner


def assign(prompt: str, unit_id: str | int, split: Mapping[str, float], *, experiment: str = 'default') -> Version:
    """Return the version of `prompt` that `unit_id` is served under `split`, the same every time for the same unit.

    The unit's SHA-256 with the prompt and experiment picks the arm, with the split's weights in the order given; a
    different `experiment` reshuffles units. The resolved split is reused for `ASSIGN_REFRESH_SECONDS` (30 s), so
    repeated calls cost a hash and a label move reaches serving code within that time.

    >>> assign('ticket_router', 'user-1', {'v1': 50, 'v3': 50}).id
    'ticket_router:v1'
    """
    return _assigner(prompt, split, experiment).assign(unit_id)


def _outcome(value: object, where: str) -> float:
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ComparisonError(f'{where}outcome {value!r} is not a finite number; log 0/1 for binary outcomes')
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
    prompt = _name('prompt', raw['prompt'])
    experiment = _name('experiment', raw.get('experiment', 'default'))
    unit = _unit_key(raw['unit_id'])
    split, ref = raw.get('split'), raw.get('version')
    version: Version | None = None
    if ref is not None:
        cache_key = (prompt, ref.id if isinstance(ref, Version) else str(ref))
        if cache_key not in versions:
            versions[cache_key] = _resolve(prompt, ref, f'{where}version')
        version = versions[cache_key]
    if split is not None:
        assigner = _assigner(prompt, split, experiment)
        arm = assigner.arm(unit)
        version = version or assigner.versions[arm]
    elif version is not None:
        arm = f'v{version.number}'
    else:
        raise ComparisonError(
            f'{where}give split= (the split passed to assign, so the arm is worked out again) '
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
    split: Mapping[str, float] | None = None,
    version: Version | str | None = None,
    experiment: str = 'default',
    at: datetime.datetime | None = None,
    event_id: str | None = None,
) -> str:
    """Store one outcome of `unit_id` in experiment `experiment` of `prompt`; return its event id.

    Give `split` (the one passed to `assign`): the arm is worked out again from the unit and the version is the
    arm's. Or give `version` alone (a `Version`, 'v3' or '@production') when units were assigned elsewhere: the
    arm is then the version's short name, e.g. 'v3'. Given both, `version` records what the unit was actually served
    (say a label moved in between) while the arm still comes from the split. Binary outcomes are 0/1 (or bools).
    An `event_id` makes a retried log idempotent: an event id already stored is not stored again.

    >>> event_id = log_outcome('ticket_router', 'user-1', 1, split={'v1': 50, 'v3': 50})
    """
    explicit = {event_id} if isinstance(event_id, str) else set()
    raw = {'prompt': prompt, 'unit_id': unit_id, 'outcome': outcome, 'split': split, 'version': version}
    row = _row({**raw, 'experiment': experiment, 'at': at, 'event_id': event_id}, '', {})
    _store([row], explicit)
    return str(row['event_id'])


def log_outcomes(rows: Iterable[Mapping[str, Any]]) -> int:
    """Store a batch of outcomes in one insert; return how many were stored (retried event ids are skipped).

    Each row holds `log_outcome`'s arguments by name: prompt, unit_id, outcome, and split or version; optionally
    experiment, at and event_id. Every row is checked before anything is stored.

    >>> log_outcomes([{'prompt': 'ticket_router', 'unit_id': 'user-1', 'outcome': 1, 'split': {'v1': 50, 'v3': 50}}])
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


# --- the report ---------------------------------------------------------------------------------------------------

_Method = Literal['fisher', 'welch']
PerUnit = Literal['mean', 'sum', 'max']
_PER_UNIT_WORDS = {'mean': 'mean', 'sum': 'total', 'max': 'maximum'}
_POWER = 0.8
_SRM_ALPHA = 0.001


@dataclass(frozen=True)
class ABReport:
    """Per-arm outcomes of one experiment, each arm compared with the baseline, and verdicts in plain words.

    `arms` has one row per arm: version, units, events, mean (of per-unit outcomes) with its CI, share of units and
    planned share. `comparisons` has one row per arm against the baseline: diff (arm - baseline) with its CI,
    relative lift, p-value, significance and the smallest difference the experiment could detect (80% power).
    `verdicts` opens with warnings, then one sentence per comparison, then notes.
    """

    prompt: str
    experiment: str
    baseline: str
    test: _Method
    per_unit: PerUnit
    confidence: float
    arms: pd.DataFrame
    comparisons: pd.DataFrame
    verdicts: list[str]
    srm_p_value: float | None

    def _header(self) -> list[tuple[str, str]]:
        srm = 'not checked (pass split= to check)' if self.srm_p_value is None else _format_p(self.srm_p_value)
        return [
            ('prompt', self.prompt),
            ('experiment', self.experiment),
            ('baseline', self.baseline),
            ('test', f'{self._test_name()}, {self.confidence:.0%} confidence'),
            ('sample ratio', srm),
        ]

    def _test_name(self) -> str:
        word = _PER_UNIT_WORDS[self.per_unit]
        if self.test == 'fisher':
            return f"Fisher's exact test on each unit's {word} outcome (all 0 or 1)"
        return f"Welch's t-test on each unit's {word} outcome"

    def __str__(self) -> str:
        width = max(len(k) for k, _ in self._header())
        lines = [f'{k:<{width}}  {v}' for k, v in self._header()]
        lines += ['', 'arms:', self.arms.round(4).to_string(index=False)]
        if len(self.comparisons):
            lines += ['', f'against {self.baseline}:', self.comparisons.round(4).to_string(index=False)]
        lines += ['', *self.verdicts]
        return '\n'.join(lines)

    def _repr_html_(self) -> str:
        head = ''.join(
            f'<tr><th style="text-align:left">{html.escape(k)}</th><td>{html.escape(v)}</td></tr>'
            for k, v in self._header()
        )
        parts = [f'<table class="pw-ab">{head}</table>', '<h4>Arms</h4>', self.arms.round(4).to_html(index=False)]
        if len(self.comparisons):
            parts += [f'<h4>Against {html.escape(self.baseline)}</h4>', self.comparisons.round(4).to_html(index=False)]
        parts.append('<ul>' + ''.join(f'<li>{html.escape(v)}</li>' for v in self.verdicts) + '</ul>')
        return '\n'.join(parts)


def _count(n: int, noun: str) -> str:
    return f'{n:,} {noun}' + ('' if n == 1 else 's')


def _natural(arm: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', arm))


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Return the Wilson score interval of a proportion `successes / n`.

    >>> [round(x, 4) for x in wilson_interval(5, 10)]
    [0.2366, 0.7634]
    """
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(1 - _alpha(confidence) / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# scipy is imported where it is used: serving code imports the workspace to assign, and never reports.
def _t_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    import scipy.stats

    if len(values) < 2:
        return math.nan, math.nan
    mean, se = float(values.mean()), float(values.std(ddof=1)) / math.sqrt(len(values))
    t = float(scipy.stats.t.ppf(1 - _alpha(confidence) / 2, len(values) - 1))
    return mean - t * se, mean + t * se


@dataclass(frozen=True)
class _Result:
    diff: float
    low: float
    high: float
    p: float
    mde: float


def _fisher(base: np.ndarray, arm: np.ndarray, confidence: float) -> _Result:
    """Fisher's exact p-value, and Newcombe's hybrid score interval for the difference, built from Wilson's."""
    import scipy.stats

    k0, n0, k1, n1 = int(base.sum()), len(base), int(arm.sum()), len(arm)
    p = float(scipy.stats.fisher_exact([[k1, n1 - k1], [k0, n0 - k0]]).pvalue)
    p0, p1 = k0 / n0, k1 / n1
    (l0, u0), (l1, u1) = wilson_interval(k0, n0, confidence=confidence), wilson_interval(k1, n1, confidence=confidence)
    diff = p1 - p0
    low = diff - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = diff + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    se = math.sqrt(p0 * (1 - p0) / n0 + p1 * (1 - p1) / n1)
    return _Result(diff, low, high, min(1.0, p), _mde(se, confidence))


def _welch(base: np.ndarray, arm: np.ndarray, confidence: float) -> _Result:
    diff = float(arm.mean() - base.mean())
    se = math.sqrt(arm.var(ddof=1) / len(arm) + base.var(ddof=1) / len(base))
    if se == 0:  # both arms constant: the difference is exact
        return _Result(diff, diff, diff, 1.0 if diff == 0 else 0.0, math.nan)
    import scipy.stats

    result = scipy.stats.ttest_ind(arm, base, equal_var=False)
    interval = result.confidence_interval(confidence_level=confidence)
    return _Result(diff, float(interval.low), float(interval.high), float(result.pvalue), _mde(se, confidence))


def _mde(se: float, confidence: float) -> float:
    """Return the difference a two-sided test at this confidence detects with 80% power, given its standard error."""
    if se == 0:
        return math.nan
    return (NormalDist().inv_cdf(1 - _alpha(confidence) / 2) + NormalDist().inv_cdf(_POWER)) * se


def _sentence(
    arm: str, base: str, r: _Result, n: int, test: _Method, confidence: float, significant: bool, higher_is_better: bool
) -> str:
    """Say in one sentence whether the arm beat the baseline, or that no difference showed and what could."""
    half = (r.high - r.low) / 2
    # Continuous outcomes: two significant digits of the CI half-width, so the numbers carry no false precision.
    decimals = min(6, max(0, 1 - math.floor(math.log10(half)))) if half > 0 else 3

    def amount(value: float) -> str:
        return _points(value) if test == 'fisher' else f'{value + 0.0:+.{decimals}f}'

    unit = ' points' if test == 'fisher' else ''
    ci = f'{confidence * 100:.3g}% CI {amount(r.low)} to {amount(r.high)}, {_format_p(r.p)}, n = {n:,} units'
    if significant:
        better = (r.diff > 0) == higher_is_better
        return f'{arm} is {"better" if better else "worse"} than {base} ({amount(r.diff)}{unit}, {ci})'
    detect = ''
    if not math.isnan(r.mde):
        detect = f'; at this size it could detect about {amount(r.mde).lstrip("+")}{unit} (80% power)'
    return f'no detectable difference between {arm} and {base} ({amount(r.diff)}{unit}, {ci}){detect}'


def _sample_ratio(
    planned: list[str], observed: list[int], shares: dict[str, float], warnings: list[str]
) -> float | None:
    """Return the chi-square goodness-of-fit p-value of units per planned arm, adding a warning below 0.001."""
    import scipy.stats

    if len(planned) < 2 or sum(observed) == 0:
        return None
    expected = sum(observed) * np.array([shares[a] for a in planned])
    p = float(scipy.stats.chisquare(np.array(observed, dtype=float), expected).pvalue)
    if p < _SRM_ALPHA:
        counts = ' / '.join(f'{o:,}' for o in observed)
        plan = ' / '.join(f'{shares[a] * 100:.3g}%' for a in planned)
        warnings.append(
            f'warning: sample ratio mismatch ({_format_p(p)}): units per arm {counts} against a planned {plan} '
            f'({", ".join(planned)}); the assignment or the outcome logging is biased, so do not trust the '
            'comparisons until the cause is found'
        )
    return p


def _outcomes(prompt: str, experiment: str) -> pd.DataFrame:
    t = tables.ab_outcomes()
    frame = (
        t.where((t.prompt == prompt) & (t.experiment == experiment))
        .select(t.arm, t.unit_id, t.version_id, t.outcome)
        .collect()
        .to_pandas()
    )
    if len(frame) == 0:
        found = t.where(t.prompt == prompt).select(t.experiment).collect()
        known = sorted({r['experiment'] for r in found})
        raise ComparisonError(
            f'no outcomes logged for {prompt!r} in experiment {experiment!r}; experiments of {prompt!r} with '
            f'outcomes: {", ".join(map(repr, known)) or "none yet"}. Log them with ws.log_outcome or ws.log_outcomes'
        )
    return frame


def ab_report(
    prompt: str,
    *,
    experiment: str = 'default',
    split: Mapping[str, float] | None = None,
    baseline: str | None = None,
    confidence: float = 0.95,
    higher_is_better: bool = True,
    per_unit: PerUnit = 'mean',
) -> ABReport:
    """Compare the arms of an experiment from its logged outcomes, each unit counted once.

    Units, not events, are randomised, so a unit with several events counts once, with its mean outcome
    (`per_unit='sum'` for totals such as revenue, `'max'` for "ever converted"). When every unit's outcome is 0 or 1
    the arms get Wilson intervals and each arm is compared with the baseline by Fisher's exact test (difference CI:
    Newcombe's hybrid score interval); otherwise t-intervals and Welch's t-test on per-unit outcomes. Pass the
    planned `split` to order the arms, list arms with no outcomes yet, and check the sample ratio (chi-square
    goodness of fit of units per arm; p < 0.001 adds a warning). The baseline is `baseline`, else the first arm
    with outcomes, in the split's order and then by name. `higher_is_better=False` for outcomes such as latency.

    >>> print(ab_report('ticket_router', split={'v1': 50, 'v3': 50}))
    """
    alpha = _alpha(confidence)
    if per_unit not in _PER_UNIT_WORDS:
        raise ComparisonError(f"per_unit {per_unit!r} is not one of 'mean', 'sum', 'max'")
    weights = _weights(split) if split is not None else None
    frame = _outcomes(_name('prompt', prompt), _name('experiment', experiment))
    units = (
        frame.groupby(['arm', 'unit_id'], sort=False)
        .agg(outcome=('outcome', per_unit), events=('outcome', 'size'))
        .reset_index()
    )
    values = {arm: group['outcome'].to_numpy(dtype=float) for arm, group in units.groupby('arm', sort=False)}
    planned = list(weights or {})
    arms = planned + sorted((a for a in values if a not in planned), key=_natural)
    empty = np.array([], dtype=float)
    test: _Method = 'fisher' if np.isin(units['outcome'], (0.0, 1.0)).all() else 'welch'
    warnings: list[str] = []
    notes: list[str] = []

    if baseline is None:
        baseline = next((a for a in arms if len(values.get(a, empty))), arms[0])
    if baseline not in arms:
        raise ComparisonError(f'baseline {baseline!r} is not an arm of this experiment; arms: {", ".join(arms)}')
    if not len(values.get(baseline, empty)):
        raise ComparisonError(
            f'baseline arm {baseline!r} has no outcomes yet; pass baseline= one of {", ".join(values)}'
        )

    total_units = sum(len(v) for v in values.values())
    shares = {a: w / sum(weights.values()) for a, w in weights.items()} if weights else {}
    versions = frame.groupby('arm')['version_id'].agg(lambda ids: ', '.join(sorted(set(ids))))
    events = frame.groupby('arm').size()
    arm_rows = []
    for arm in arms:
        x = values.get(arm, empty)
        if test == 'fisher':
            low, high = wilson_interval(int(x.sum()), len(x), confidence=confidence)
        else:
            low, high = _t_interval(x, confidence)
        arm_rows.append(
            {
                'arm': arm,
                'version': versions.get(arm, ''),
                'units': len(x),
                'events': int(events.get(arm, 0)),
                'mean': float(x.mean()) if len(x) else math.nan,
                'ci_low': low,
                'ci_high': high,
                'share': len(x) / total_units,
                'planned': shares.get(arm, math.nan),
            }
        )

    srm_p_value = _sample_ratio(planned, [len(values.get(a, empty)) for a in planned], shares, warnings)
    for arm in arms:
        if weights and arm not in weights:
            warnings.append(
                f'warning: arm {arm!r} has outcomes but is not in the split; it is compared but not planned'
            )
        if ',' in versions.get(arm, ''):
            warnings.append(f'warning: arm {arm!r} served several versions ({versions[arm]}); a label moved mid-test?')
    crossed = int((units.groupby('unit_id')['arm'].nunique() > 1).sum())
    if crossed:
        warnings.append(
            f'warning: {_count(crossed, "unit")} in more than one arm; each counts in every arm it reached, '
            'which blurs the difference (was the split or the experiment name changed mid-test?)'
        )

    comparison_rows = []
    sentences = []
    base = values[baseline]
    for arm in arms:
        x = values.get(arm, empty)
        if arm == baseline:
            continue
        if not len(x) or (test == 'welch' and (len(x) < 2 or len(base) < 2)):
            sentences.append(f'cannot compare {arm} with {baseline} yet: {len(x)} and {len(base)} units with outcomes')
            continue
        r = _fisher(base, x, confidence) if test == 'fisher' else _welch(base, x, confidence)
        significant = r.p < alpha and (r.low > 0 or r.high < 0)
        comparison_rows.append(
            {
                'arm': arm,
                'baseline': baseline,
                'units': len(x) + len(base),
                'diff': r.diff,
                'ci_low': r.low,
                'ci_high': r.high,
                'lift': r.diff / base.mean() if base.mean() != 0 else math.nan,
                'p_value': r.p,
                'significant': significant,
                'mde': r.mde,
            }
        )
        sentences.append(
            _sentence(arm, baseline, r, len(x) + len(base), test, confidence, significant, higher_is_better)
        )
    if len(arms) == 1:
        sentences.append(f'only arm {arms[0]!r} has outcomes; nothing to compare yet')

    repeated = int((units['events'] > 1).sum())
    if repeated:
        notes.append(
            f'note: {repeated:,} of {_count(len(units), "unit")} had more than one event; each unit counts once, '
            f'with its {_PER_UNIT_WORDS[per_unit]} outcome, since units (not events) were randomised'
        )
    if test == 'welch' and frame['outcome'].isin((0.0, 1.0)).all():
        hint = '' if per_unit == 'max' else "; per_unit='max' compares units that ever had a 1"
        notes.append(
            f"note: outcomes are 0/1 but not every unit's {_PER_UNIT_WORDS[per_unit]} outcome is, so the test is "
            f"Welch's t-test on per-unit values{hint}"
        )
    if len(comparison_rows) > 1:
        notes.append(
            f'note: {len(comparison_rows)} arms are each compared with {baseline}; with several comparisons one may '
            f'look significant by chance (Bonferroni would ask p < {alpha / len(comparison_rows):.3g})'
        )
    columns = ['arm', 'baseline', 'units', 'diff', 'ci_low', 'ci_high', 'lift', 'p_value', 'significant', 'mde']
    return ABReport(
        prompt=prompt,
        experiment=experiment,
        baseline=baseline,
        test=test,
        per_unit=per_unit,
        confidence=confidence,
        arms=pd.DataFrame(arm_rows, columns=list(arm_rows[0])),
        comparisons=pd.DataFrame(comparison_rows, columns=columns),
        verdicts=warnings + sentences + notes,
        srm_p_value=srm_p_value,
    )
