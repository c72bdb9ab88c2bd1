"""Optimizer records: each run's plan, progress and outcome, append-only.

A run (its id derives from its arguments) has one record per attempt in `prompt_workspace/optimizer_records`: the
first attempt's `start` record, then a `resume` record each time the same run is started again. An attempt
updates only its own record as it goes (status, requests, model calls, time), so a rerun that replays every
answer from the request store adds a record with 0 calls and leaves the first one as it was; `list_optimizations`
sums the attempts. Trials (`prompt_workspace/trials`) are append-only in the same way: a rerun that reaches a
trial already recorded keeps the record of the attempt that paid for it.

The plan is what an attempt says before it starts: its candidates, how many requests it may make, how many of
those earlier attempts already answered, and how long the rest would take at the seconds per request measured
on its first requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from workspace.config import utc_now
from workspace.storage import backends, tables

__all__ = ['Plan', 'Attempt', 'TrialLog', 'answered_by_run', 'list_optimizations', 'list_trials', 'optimizer_records']


@dataclass(frozen=True)
class Plan:
    """What an optimizer run will do, said before it starts.

    `max_requests` is every candidate (and the baseline) on all of dev; `answered` how many of them earlier
    attempts of the same run already made (replayed from the store with no call); `planned_requests` what this
    attempt expects to send: all the rest, or what fits the time budget at the measured speed (racing drops
    candidates on the way, so it often sends fewer).
    """

    optimizer: str
    candidates: int
    groups: int
    dev: int
    rungs: tuple[int, ...]
    max_requests: int
    answered: int
    seconds_per_request: float | None
    budget_seconds: float | None
    planned_requests: int
    test_requests: int = 0

    @property
    def expected_seconds(self) -> float | None:
        """Return the time the planned requests take at the measured speed."""
        if self.seconds_per_request is None:
            return None
        return self.seconds_per_request * max(0, self.planned_requests - self.answered)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), 'rungs': list(self.rungs), 'expected_seconds': self.expected_seconds}

    def __str__(self) -> str:
        raced = (
            f'race {self.candidates} candidate(s) ({self.groups} distinct request set(s), the baseline included) on '
            f'{self.dev:,} dev rows in rungs of {", ".join(map(str, self.rungs))}'
            if len(self.rungs) > 1
            else f'score the baseline and {self.candidates} candidate(s) on {self.dev:,} dev rows'
        )
        lines = [f'Plan ({self.optimizer}): {raced}.']
        most = f'At most {self.max_requests:,} requests'
        if self.answered:
            most += f' ({self.answered:,} answered by earlier attempts of this run, replayed with no call)'
        lines.append(most + '.')
        if self.answered >= self.max_requests:
            lines.append('Nothing is left to call.')
        elif self.seconds_per_request is not None:
            total = self.seconds_per_request * max(0, self.max_requests - self.answered)
            lines.append(
                f'Measured {self.seconds_per_request:.2f} s a request on its first requests: all of them would take '
                f'{_duration(total)}.'
            )
        if self.budget_seconds is not None and self.planned_requests < self.max_requests:
            lines.append(
                f'The {_duration(self.budget_seconds)} budget keeps it to about {self.planned_requests:,} '
                'requests; racing drops the clearly worse candidates early, and the run decides among what it scored.'
            )
        if self.test_requests:
            lines.append(f'Then the winner and the baseline on test: at most {self.test_requests:,} requests.')
        return ' '.join(lines)


def _duration(seconds: float) -> str:
    return f'{seconds:.0f} s' if seconds < 90 else f'{seconds / 60:.1f} min'


def answered_by_run(run_id: str) -> int:
    """Return how many stored requests were first asked by this run (by any attempt): its real model calls (a
    choice with one possible label is stored too, but answered without a model)."""
    t = tables.requests()
    mine = t.first_version_id.startswith(f'{run_id}/') | (t.first_version_id == run_id)
    reasons = t.where(mine).select(reason=t.response.finish_reason).collect()['reason']
    return sum(1 for reason in reasons if reason != backends.ONLY_CHOICE)


@dataclass
class Attempt:
    """One attempt of a run: its record, updated only by itself."""

    row: dict[str, Any]

    @classmethod
    def begin(cls, first: Mapping[str, Any]) -> Attempt:
        """Add this attempt's record: `start` for a new run, `resume` when the run was started before."""
        t = tables.optimizer_records()
        run_id = first['run_id']
        previous = [r['attempt'] for r in t.where(t.run_id == run_id).select(t.attempt).collect()]
        now = utc_now()
        row = {
            'stopped_by': None,
            'best_version_id': None,
            'baseline_score': None,
            'best_score': None,
            'decision': None,
            'references': None,
            'plan': None,
            'error': None,
            'finished_at': None,
            **first,
            'attempt': max(previous, default=0) + 1,
            'kind': 'resume' if previous else 'start',
            'status': 'running',
            'trials': 0,
            'requests': 0,
            'calls': 0,
            'tokens': 0,
            'errors': 0,
            'wall_s': 0.0,
            'started_at': now,
            'updated_at': now,
        }
        t.insert([row])
        return cls(row)

    @property
    def number(self) -> int:
        return int(self.row['attempt'])

    def update(self, **changes: Any) -> None:
        """Change this attempt's record (counts, status, decision, plan), stamped with the time."""
        self.row.update(changes, updated_at=utc_now())
        if changes.get('status') in ('done', 'stopped', 'failed'):
            self.row['finished_at'] = self.row['updated_at']
        tables.optimizer_records().batch_update([self.row])


class TrialLog:
    """Writes a run's trial records: a trial already recorded as finished is never written again."""

    def __init__(self, run_id: str, attempt: int) -> None:
        self.run_id, self.attempt = run_id, attempt
        t = tables.trials()
        rows = t.where(t.run_id == run_id).select(t.trial, t.status).collect()
        self.finished = {r['trial'] for r in rows if r['status'] in ('ok', 'failed')}

    def write(self, row: Mapping[str, Any]) -> bool:
        """Record a trial (insert, or complete a stopped one); return False if it was already recorded."""
        return bool(self.write_many([row]))

    def write_many(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Record trials in one write, leaving out those already recorded as finished; return how many were written."""
        new = [{**row, 'attempt': self.attempt} for row in rows if row['trial'] not in self.finished]
        if new:
            tables.upsert(tables.trials(), new)
        self.finished |= {row['trial'] for row in new if row['status'] in ('ok', 'failed')}
        return len(new)

    def flag(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Add the selection's flags to trials (a note about the trial, not a change to what it cost)."""
        if rows:
            t = tables.trials()
            t.batch_update([{'run_id': self.run_id, 'trial': r['trial'], 'flags': r['flags']} for r in rows])


def list_trials(run_id: str | None = None) -> pd.DataFrame:
    """Return the trials of one optimizer run (or of all), one row per candidate evaluation, in order.

    >>> list_trials('opt-1a2b3c4d5e6f')[['trial', 'kind', 'dev_score', 'calls', 'status']]
    """
    t = tables.trials()
    query: Any = t.where(t.run_id == run_id) if run_id is not None else t
    return query.order_by(t.run_id, t.trial).collect().to_pandas()


def optimizer_records(run_id: str | None = None) -> pd.DataFrame:
    """Return the optimizer records, one row per attempt of a run (start, then resumes), oldest first.

    >>> optimizer_records('opt-1a2b3c4d5e6f')[['attempt', 'kind', 'status', 'calls', 'wall_s']]
    """
    t = tables.optimizer_records()
    query: Any = t.where(t.run_id == run_id) if run_id is not None else t
    return query.order_by(t.started_at, t.attempt).collect().to_pandas()


_SUMMED = ['requests', 'calls', 'tokens', 'errors', 'wall_s']
_LAST = ['status', 'stopped_by', 'decision', 'baseline_score', 'best_score', 'trials', 'finished_at', 'error']


def list_optimizations(prompt: str | None = None) -> pd.DataFrame:
    """Return past optimizer runs, newest first: one row per run with its last status, scores and best version,
    its attempts, and its requests, model calls, tokens and time summed over every attempt.

    >>> list_optimizations('ticket_router')
    """
    t = tables.optimizer_records()
    query: Any = t.where(t.prompt == prompt) if prompt is not None else t
    frame = query.order_by(t.started_at, t.attempt).collect().to_pandas()
    if frame.empty:
        return frame
    rows = []
    for run_id, attempts in frame.groupby('run_id', sort=False):
        first, last = attempts.iloc[0], attempts.iloc[-1]
        best = attempts['best_version_id'].dropna()
        row = {
            'run_id': run_id,
            **{c: first[c] for c in ('optimizer', 'prompt', 'baseline_id', 'dataset', 'config', 'started_at')},
            **{c: last[c] for c in _LAST},
            'best_version_id': best.iloc[-1] if len(best) else None,
            'attempts': len(attempts),
            **{c: attempts[c].sum() for c in _SUMMED},
        }
        rows.append(row)
    return pd.DataFrame(rows).sort_values('started_at', ascending=False).reset_index(drop=True)
