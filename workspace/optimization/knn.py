"""The default optimizer, `knn_fewshot`: demos retrieved per example, crossed with how the label is read, raced.

Its candidates are demo policies (`ws.nearest(dataset, k=..., split=train)`) with the baseline's template, crossed
with the label decoding: under the mask over every label (what a version does by default), under the mask over
the labels of the retrieved neighbours only (`restrict='demos'`), by rank or calibrated over the neighbours'
labels or all of them, and, for rank and calibrated, mixed with the neighbours' vote at a few weights
(`vote=w`). A 270M base model mostly copies the label of the demo most like the question, so the neighbours carry
most of the signal; these candidates let the model add what it can to that, and the race keeps whatever wins on
dev by the selection rules. Candidates differing only in the vote weight send the same requests (a group).

`race_search` races them with the baseline (`racing`): it measures each group's seconds per request on one
example, says the plan, then runs the rungs. `RaceScorer` scores a group of candidates on new dev examples
exactly as `ws.evaluate` would: the same
retrieval, the same requests (so evaluating the winner afterwards makes no call), the same reading of the answer
(`calibration.answer_label`, then the output spec's parser). Requests go through the run's ledger in small
batches, so budgets stop a run between batches and every answer is in the store before the next batch.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from udfs import parse as parse_udfs, render as render_udfs
from workspace.config import utc_now
from workspace.core.demo_policies import Retrieved, nearest, nearest_first, retrieve
from workspace.core.versions import Version, build_request, choice
from workspace.errors import OptimizeError
from workspace.optimization import racing, records
from workspace.optimization.dspy_adapter import Candidate, Ledger, Stop, Trial, demo_template
from workspace.optimization.racing import Entrant, Group, Race
from workspace.optimization.records import Plan
from workspace.optimization.search import (
    Progress,
    Search,
    Setup,
    check_stop,
    counts,
    deadline_of,
    history_seconds,
    ledger_for,
    log,
    task_for,
    trial_row,
)
from workspace.optimization.selection import Metric, Scored, candidate_flags, verdict
from workspace.storage import backends, calibration

if TYPE_CHECKING:
    from workspace.optimization.dspy_adapter import Task

__all__ = ['KNOBS', 'knn_options', 'knn_candidates', 'group_key', 'RaceScorer', 'race_search', 'race_scored']

#: The knobs of `knn_fewshot` (its `options`), with what each takes.
KNOBS = {
    'k': 'demos per example: a whole number from 1 to 64, or a list of them',
    'per_label_max': 'at most this many demos per label: None or a whole number, or a list of them',
    'order': "'nearest_last' or 'nearest_first'",
    'decode': "how the label is chosen: 'mask', 'rank', 'calibrated', or a list of them",
    'restrict': "None (every label) or 'demos' (the neighbours' labels), or a list of them",
    'vote': "weights of the neighbours' vote mixed with rank or calibrated scores: a list of numbers in (0, 1)",
    'vote_by': "how the vote counts the neighbours: 'share' (alike), 'rank' (the i-th nearest by 1/i), or both",
}
#: Requests sent in one batch: a budget can stop a run between batches.
BATCH = 8


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def knn_options(options: Mapping[str, Any], *, labels: bool, scored: bool) -> dict[str, Any]:
    """Return the knobs of a `knn_fewshot` run: the defaults, then `options`, checked; raise OptimizeError naming
    a bad knob or value and the fix. `labels`: the output is a label; `scored`: the model gives label scores."""
    plan: dict[str, Any] = {
        'k': [4, 8, 16],
        'per_label_max': [None],
        'order': 'nearest_last',
        'decode': ['mask', 'rank', 'calibrated'] if scored else ['mask'],
        'restrict': [None, 'demos'] if labels else [None],
        'vote': [0.25, 0.5, 0.75] if scored else [],
        'vote_by': ['share', 'rank'],
    }
    unknown = sorted(set(options) - set(plan))
    if unknown:
        raise OptimizeError(
            f"options for 'knn_fewshot' are not valid: unknown knob(s) {', '.join(unknown)}; its knobs are "
            + '; '.join(f'{k}: {v}' for k, v in KNOBS.items())
        )
    plan.update(options)
    for key in ('k', 'per_label_max', 'decode', 'restrict', 'vote', 'vote_by'):
        plan[key] = _listed(plan[key])
    problems = [f'k={k!r}' for k in plan['k'] if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 64] + [
        f'per_label_max={c!r}'
        for c in plan['per_label_max']
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1)
    ]
    problems += [f'order={plan["order"]!r}'] if plan['order'] not in ('nearest_last', 'nearest_first') else []
    problems += [f'decode={d!r}' for d in plan['decode'] if d not in calibration.DECODES]
    problems += [f'restrict={r!r}' for r in plan['restrict'] if r not in (None, 'demos')]
    problems += [f'vote_by={b!r}' for b in plan['vote_by'] if b not in calibration.VOTES_BY]
    problems += [
        f'vote={w!r}' for w in plan['vote'] if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < 1
    ]
    if problems or not plan['k'] or not plan['decode'] or not plan['restrict']:
        shown = ', '.join(problems) or 'an empty list'
        raise OptimizeError(
            f"options for 'knn_fewshot' are not valid: {shown}; " + '; '.join(f'{k}: {v}' for k, v in KNOBS.items())
        )
    if not labels and (plan['decode'] != ['mask'] or plan['restrict'] != [None] or plan['vote']):
        raise OptimizeError("options for 'knn_fewshot' are not valid: decode, restrict and vote apply to label outputs")
    if not scored and (set(plan['decode']) - {'mask'} or plan['vote']):
        raise OptimizeError(
            "options for 'knn_fewshot' are not valid: decode 'rank' or 'calibrated' and vote need the label scores "
            "only the local model gives; use decode=['mask'] and no vote with this model"
        )
    return plan


def _describe(k: int, cap: int | None, decode: str, restrict: str | None, labels: bool) -> str:
    name = f'nearest {k}' + (f', at most {cap} per label' if cap else '')
    if not labels:
        return name
    how = {'mask': 'masked', 'rank': 'ranked', 'calibrated': 'calibrated'}[decode]
    over = "the neighbours' labels" if restrict else 'all labels'
    return f'{name}, {how} over {over}'


def knn_candidates(
    plan: Mapping[str, Any], baseline: Version, dataset: str, train: str, inputs: Sequence[str]
) -> list[tuple[str, Candidate]]:
    """Return the candidates of a plan, by name: each label decoding for each k (and per-label cap), the
    vote-weighted ones right after the ones they read; scoring every label by rank or calibrated (the costliest)
    comes last."""
    template = baseline.template
    if not baseline.is_chat and 'demos' not in render_udfs.template_variables(template):  # chat: demo turns
        template = demo_template(template, inputs)
    labels = baseline.output['kind'] == 'choice'
    variants = [(d, r) for d in plan['decode'] for r in plan['restrict']] if labels else [('mask', None)]
    variants.sort(key=lambda v: v[0] != 'mask' and v[1] is None)  # stable: the costliest last
    out = []
    for decode, restrict in variants:
        for k in plan['k']:
            for cap in plan['per_label_max']:
                policy = nearest(dataset, k=k, split=train, per_label_max=cap, order=plan['order'])
                spec: dict[str, Any] = (
                    dict(choice(baseline.labels, decode=cast(calibration.Decode, decode), restrict=restrict))
                    if labels
                    else {}
                )
                name = _describe(k, cap, decode, restrict, labels)
                out.append((name, Candidate(template, baseline.instructions, (), policy, spec or None)))
                if labels and decode != 'mask':
                    for by in plan['vote_by']:
                        for w in plan['vote']:
                            voted = {**spec, 'vote': float(w), **({'vote_by': by} if by != 'share' else {})}
                            called = f'{name}, vote {w:g}' + (' by rank' if by != 'share' else '')
                            out.append((called, Candidate(template, baseline.instructions, (), policy, voted)))
    return out


def group_key(candidate: Candidate) -> str:
    """Return what identifies a candidate's requests: its content without the vote (its weight and how it counts),
    which only changes how the answers are read."""
    if candidate.output is None or 'vote' not in candidate.output:
        return candidate.key
    kept = {k: v for k, v in candidate.output.items() if k not in ('vote', 'vote_by')}
    return dataclasses.replace(candidate, output=kept).key


class RaceScorer:
    """Score a group of raced candidates on new dev examples as `ws.evaluate` would, and record a trial per
    candidate each time the group completes a rung (or a budget stops it)."""

    def __init__(
        self,
        *,
        run_id: str,
        baseline: Version,
        dataset: str,
        ledger: Ledger,
        metric: Metric,
        rows: Mapping[str, Mapping[str, Any]],
        contents: Mapping[int, Candidate],
        n_entrants: int,
        on_trial: Callable[[list[Trial]], None],
    ) -> None:
        self.run_id, self.baseline, self.dataset = run_id, baseline, dataset
        self.ledger, self.metric, self.rows, self.contents = ledger, metric, rows, contents
        self.n_entrants, self.on_trial = n_entrants, on_trial
        self.model_id = backends.model_identity(baseline.model)
        self.stopped: Stop | None = None
        self.trials: list[Trial] = []
        self._retrieved: dict[tuple[str, str], Retrieved] = {}
        #: per group since its last trial record: [requests, calls, tokens, errors, seconds], and when it started
        self._open: dict[str, tuple[list[float], Any]] = {}

    def number(self, entrant: Entrant, rung: int) -> int:
        """Return the trial number of an entrant on a rung: the same in every attempt of the run."""
        return rung * self.n_entrants + entrant.number

    def _demos(self, version: Version, ids: Sequence[str]) -> dict[str, tuple[dict[str, Any], ...] | None]:
        policy = version.demo_policy
        if policy is None:
            return dict.fromkeys(ids)
        key = json.dumps(dict(policy), sort_keys=True)
        missing = [self.rows[ex] for ex in ids if (key, ex) not in self._retrieved]
        if missing:
            for ex, found in retrieve(policy, missing, dataset=self.dataset).items():
                self._retrieved[(key, ex)] = found
        return {ex: self._retrieved[(key, ex)].demos for ex in ids}

    def _read(self, entrant: Entrant, answer: Mapping[str, Any], demos: Sequence[Mapping[str, Any]] | None) -> Any:
        if answer['error'] is not None:
            return None
        version = self.contents[entrant.number].apply(self.baseline)
        fixed = self.baseline.demos if isinstance(self.baseline.demos, list) else None
        shown = nearest_first(version.demo_policy, demos) if demos is not None else fixed
        text = calibration.answer_label(version.output, answer['text'], answer.get('scores'), shown)
        return parse_udfs.parse(text, dict(version.output))

    def __call__(self, group: Group, ids: list[str], rung: int, rung_ids: list[str]) -> str | None:
        members = group.alive()
        version = self.contents[members[0].number].apply(self.baseline)
        spent, _ = self._open.setdefault(group.key, ([0, 0, 0, 0, 0.0], utc_now()))
        led, clock = self.ledger, time.perf_counter()
        before = (led.requests, led.calls, led.tokens, led.errors)
        demos = self._demos(version, ids)
        pending = [(build_request(version, self.rows[ex], model_id=self.model_id, demos=demos[ex]), ex) for ex in ids]
        self.ledger.label = f'{self.run_id}/t{self.number(members[0], rung)}'
        try:
            for start in range(0, len(pending), BATCH):
                chunk = pending[start : start + BATCH]
                clock, calls = time.perf_counter(), self.ledger.calls
                # the data each request carries, for the blocking rules: the example's fields and its demos'
                fields = [[self.rows[ex], *(demos[ex] or ())] for _, ex in chunk]
                answers = self.ledger.answer_many(chunk, fields)
                if self.ledger.calls > calls:
                    group.measured(self.ledger.calls - calls, time.perf_counter() - clock)
                for (_, ex), answer in zip(chunk, answers):
                    for member in members:
                        member.predictions[ex] = self._read(member, answer, demos[ex])
                    group.scored.append(ex)
                if len(answers) < len(chunk):
                    raise Stop('max_calls', f'the max_calls budget of {self.ledger.max_requests} requests is spent')
                self.ledger.check_errors()
        except Stop as stop:
            self.stopped = stop
        finally:
            self.ledger.label = self.run_id
            now = (led.requests, led.calls, led.tokens, led.errors)
            for i in range(4):
                spent[i] += now[i] - before[i]
            spent[4] += time.perf_counter() - clock
        if self.stopped is not None or set(rung_ids) <= set(group.scored):
            self._record(group, members, rung)
        return self.stopped.reason if self.stopped is not None else None

    def flush(self, groups: Sequence[Group]) -> None:
        """Record the trials of groups scored since their last record (a race that ended mid-rung, or a group
        left out after its first request), so that every prediction made is in a trial."""
        for group in groups:
            if group.key in self._open:
                members = [m for m in group.members if m.predictions]
                self._record(group, members, max(0, min(m.rung for m in members) + 1))

    def _record(self, group: Group, members: Sequence[Entrant], rung: int) -> None:
        """Record one trial per member: its predictions so far, its score, and (on the first member) what the
        group's requests cost since its last record."""
        spent, started = self._open.pop(group.key)
        recorded: list[Trial] = []
        for i, member in enumerate(members):
            predictions = dict(member.predictions)
            scope = 'dev' if set(predictions) == set(self.metric.expected) else 'dev_sample'
            paid = [int(v) for v in spent[:4]] if i == 0 else [0, 0, 0, 0]
            failed = any(p is None for p in predictions.values()) and paid[3] > 0
            trial = Trial(
                number=self.number(member, rung),
                kind='baseline' if member.baseline else 'candidate',
                candidate=self.contents[member.number],
                scope=scope,  # type: ignore[arg-type]
                example_ids=tuple(predictions),
                started_at=started,
                example_scores={
                    ex: float(self.metric.per_example(p, self.metric.expected[ex])) for ex, p in predictions.items()
                },
                example_predictions=predictions,
                score=self.metric.score(predictions) if predictions else None,
                requests=paid[0],
                calls=paid[1],
                tokens=paid[2],
                errors=paid[3],
                error=self.ledger.last_error if paid[3] else None,
                status='stopped' if self.stopped is not None else 'failed' if failed else 'ok',
                wall_s=spent[4] if i == 0 else 0.0,
            )
            recorded.append(trial)
        self.trials += recorded
        self.on_trial(recorded)


def _race_setup(setup: Setup, task: Task) -> tuple[dict[int, Candidate], list[Any]]:
    """Return the raced candidates by entrant number (0 is the baseline) and their groups."""
    named = [(setup.baseline.id, task.baseline_candidate())]
    named += knn_candidates(setup.plan, setup.baseline, setup.dataset.name, setup.train, setup.dataset.inputs)
    most = setup.limits.get('max_candidates')
    named = named[: most + 1] if most is not None else named
    groups: dict[str, Any] = {}
    for number, (name, content) in enumerate(named):
        key = group_key(content)
        entrant = racing.Entrant(number, name, key, baseline=number == 0)
        groups.setdefault(key, racing.Group(key, [])).members.append(entrant)
    return {number: content for number, (_, content) in enumerate(named)}, list(groups.values())


def _race_plan(setup: Setup, race: Race, answered: int) -> Plan:
    n, limits = len(race.order), setup.limits
    most = len(race.groups) * n
    full = sum((g.seconds or 0.0) * n for g in race.groups)
    measured = full / most if any(g.seconds for g in race.groups) else history_seconds(setup.baseline.model)
    budget = 60 * limits['max_minutes'] if 'max_minutes' in limits else None
    planned = most
    if budget is not None and measured:
        planned = min(planned, answered + int(budget / measured))
    if 'max_calls' in limits:
        planned = min(planned, limits['max_calls'])
    test = 2 * len(setup.dataset.rows(setup.test)) if setup.test else 0
    entrants = sum(len(g.members) for g in race.groups)
    return Plan(
        setup.name,
        entrants - 1,
        len(race.groups),
        n,
        tuple(race.rungs),
        most,
        answered,
        measured,
        budget,
        planned,
        test,
    )


def race_search(setup: Setup, attempt: records.Attempt, *, progress: bool, clock: float) -> Search:
    """Race the knn_fewshot candidates and the baseline on growing dev subsamples; return what the race left."""
    bar = Progress(progress, setup.name, deadline_of(setup.limits))
    ledger = ledger_for(setup, bar)
    contents, groups = _race_setup(setup, task_for(setup))
    trial_log = records.TrialLog(setup.run_id, attempt.number)
    n_entrants = len(contents)
    race = racing.Race(
        groups, racing.interleaved(setup.metric.expected, setup.seed, stratify=setup.dataset.task == 'choice'),
        racing.rung_sizes(len(setup.dev_rows)), value=lambda e, ids: _value(setup, e, ids),
        p_better=lambda a, b, ids: _p_better(setup, a, b, ids), may_lead=lambda e, ids: _may_lead(setup, race, e, ids),
        seconds_left=lambda: None if bar.deadline is None else bar.deadline - time.monotonic(),
    )  # fmt: skip

    def on_trial(trials: list[Trial]) -> None:
        trial_log.write_many([trial_row(setup.run_id, setup.name, setup.baseline.id, t) for t in trials])
        attempt.update(**counts(ledger, scorer.trials, clock))
        left = sum(len(race.order) - len(g.scored) for g in race.groups if g.alive())
        bar.fields = {'candidates': f'{len(race.alive())}/{n_entrants} in the race'}
        bar.expect(ledger.requests + min(left, max(0, (plan.planned_requests if plan else left) - ledger.requests)))

    scorer = RaceScorer(
        run_id=setup.run_id, baseline=setup.baseline, dataset=setup.dataset.name, ledger=ledger, metric=setup.metric,
        rows={str(r['example_id']): r for r in setup.dev_rows}, contents=contents, n_entrants=n_entrants,
        on_trial=on_trial,
    )  # fmt: skip
    plan: Plan | None = None
    answered = records.answered_by_run(setup.run_id)  # by earlier attempts
    backends.get_backend(setup.baseline.model).check()  # loaded before the first request is timed
    try:
        probed = race.probe(scorer)
        plan = _race_plan(setup, race, answered)
        attempt.update(plan=plan.as_dict())
        bar.say(str(plan))
        bar.expect(plan.planned_requests)
        if probed:
            race.run(scorer)
            race.settle(scorer)
    finally:
        bar.close()
    scorer.flush(race.groups)
    for event in race.events:
        log.info('optimizer run %s: %s', setup.run_id, event)
    names = {e.number: e.name for e in race.entrants}
    search = Search(scorer.trials, ledger, scorer.stopped, None, plan, race, names)
    check_stop(setup, search)
    if not race.entrants[0].predictions:
        stop = scorer.stopped
        raise OptimizeError(
            f'optimizer run {setup.run_id} stopped before the baseline was scored on {setup.dev!r}: '
            f'{stop.message if stop else "no dev score"}; raise the budget'
        )
    return search


def _value(setup: Setup, entrant: Any, ids: Any) -> float:
    return setup.metric.score({ex: entrant.predictions[ex] for ex in ids if ex in entrant.predictions})


def _p_better(setup: Setup, a: Any, b: Any, ids: Any) -> float:
    """Return the p-value that `a` beats `b` on `ids` (a quick paired permutation test), or 1.0 if it does not."""
    pa = {ex: a.predictions[ex] for ex in ids if ex in a.predictions}
    pb = {ex: b.predictions[ex] for ex in ids if ex in b.predictions}
    result = verdict(setup.metric, pb, pa, split=setup.dev, names=(b.name, a.name), resamples=1000)
    return result.p_value if result.diff > 0 else 1.0


def _may_lead(setup: Setup, race: Race, entrant: Any, ids: Any) -> bool:
    """A label candidate whose predictions pile onto one label (or trade macro-F1 for accuracy) may not lead."""
    base = race.entrants[0]
    if entrant.baseline or setup.dataset.task != 'choice' or not all(ex in base.predictions for ex in ids):
        return True
    expected = {ex: setup.metric.expected[ex] for ex in ids}
    return not candidate_flags(entrant.predictions, base.predictions, expected)


def race_scored(setup: Setup, search: Search) -> tuple[Scored, list[Scored]]:
    """Return the baseline and the candidates of a race as the decision sees them: each one's predictions, its
    metric on the last rung it completed, and how far it went (its latest trial number names it)."""
    race = cast(Race, search.race)
    size = len(race.entrants)
    latest: dict[int, int] = {}
    for t in search.trials:
        latest[t.number % size] = max(latest.get(t.number % size, -1), t.number)
    out = []
    for e in race.entrants:
        if not e.predictions or e.number not in latest:
            continue
        ids = race.order[: race.rungs[e.rung]] if e.rung >= 0 else list(e.predictions)
        out.append(Scored(latest[e.number], e.name, e.predictions, _value(setup, e, ids), depth=e.rung))
    return out[0], out[1:]
