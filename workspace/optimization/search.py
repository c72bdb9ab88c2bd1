"""What every optimizer search is given and leaves.

`Setup` is a run's checked arguments (the baseline, the splits, the metric, the knobs, the budget and the run
id derived from them); `Search` what a search left (its trials, the ledger with its cost, why it stopped, its plan
and, for a race, who went how far). A search answers through a `Ledger` (`ledger_for`), shows a `Progress` bar
and writes one trial row per candidate evaluation (`trial_row`). Both searches use these: DSPy's optimizers
(`dspy_search`) and the default race of retrieved-demo candidates (`knn`).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from workspace.core import rules
from workspace.core.datasets import Dataset
from workspace.core.versions import Version
from workspace.errors import OptimizeError
from workspace.optimization.records import Plan
from workspace.optimization.selection import Metric
from workspace.storage import backends

if TYPE_CHECKING:
    from workspace.optimization.dspy_adapter import Ledger, Task, Trial
    from workspace.optimization.racing import Race

__all__ = [
    'Budget',
    'Setup',
    'Search',
    'Progress',
    'task_for',
    'ledger_for',
    'screener',
    'counts',
    'history_seconds',
    'deadline_of',
    'check_stop',
    'trial_row',
    'describe_demos',
]

log = logging.getLogger('workspace.optimization.optimize')


class Budget(TypedDict, total=False):
    """How much an optimizer run may spend; every limit is optional.

    `max_candidates`: distinct candidates evaluated besides the baseline. `max_calls`: model requests, counting
    those the request store answers, so that a resumed run stops where an uninterrupted one would (the model calls
    actually made are at most this). `max_minutes`: wall time; a run stopped by time is not reproducible.
    """

    max_candidates: int
    max_calls: int
    max_minutes: float


def describe_demos(demos: Any) -> str:
    if isinstance(demos, Mapping) and 'policy' in demos:
        cap = f', at most {demos["per_label_max"]} per label' if demos.get('per_label_max') else ''
        return f'nearest {demos["k"]}{cap}'
    return str(len(demos or []))


def trial_row(run_id: str, optimizer: str, parent: str, trial: Trial, flags: list[str] | None = None) -> dict[str, Any]:
    return {
        'run_id': run_id,
        'trial': trial.number,
        'kind': trial.kind,
        'optimizer': optimizer,
        'parent_id': parent,
        'candidate': trial.candidate.key,
        'template': trial.candidate.template,
        'instructions': trial.candidate.instructions,
        'demos': trial.candidate.version_demos,
        'output': dict(trial.candidate.output) if trial.candidate.output is not None else None,
        'scope': trial.scope,
        'n': len(trial.example_ids),
        'score': trial.score,
        'dev_score': trial.dev_score,
        'example_scores': trial.example_scores,
        'example_predictions': trial.example_predictions,
        'flags': flags,
        'requests': trial.requests,
        'calls': trial.calls,
        'tokens': trial.tokens,
        'wall_s': trial.wall_s,
        'status': trial.status,
        'errors': trial.errors,
        'error': trial.error,
        'started_at': trial.started_at,
    }


@dataclass
class Setup:
    """Everything an optimizer run is defined by, checked: its id derives from it."""

    name: str
    baseline: Version
    dataset: Dataset
    train: str
    dev: str
    test: str | None
    train_rows: list[dict[str, Any]]
    dev_rows: list[dict[str, Any]]
    metric: Metric
    metric_key: str
    plan: dict[str, Any]
    limits: Budget
    seed: int
    max_errors: int
    teacher: Version | None
    dataset_version: int
    run_id: str


@dataclass
class Search:
    """What the search left: its trials and cost, whether a budget stopped it, the optimizer's own pick, and for
    a raced search the race (who went how far) and the names of its candidates."""

    trials: list[Trial]
    ledger: Ledger
    stop: Any
    picked: str | None
    plan: Plan | None = None
    race: Race | None = None
    names: dict[int, str] = dataclasses.field(default_factory=dict)

    def dev_trials(self) -> list[Trial]:
        """Return the trials scored on the whole dev split, in order."""
        return [t for t in self.trials if t.dev_score is not None]


def task_for(setup: Setup) -> Task:
    from workspace.optimization import dspy_adapter as da

    ds = setup.dataset
    return da.Task.create(
        setup.baseline, ds.inputs, ds.meta.get('expected_column', 'expected'), [*setup.train_rows, *setup.dev_rows],
        dataset=ds.name,
    )  # fmt: skip


class Progress:
    """The run's progress bar: requests against what the run plans to make, candidates scored, calls, time left."""

    def __init__(self, show: bool, name: str, deadline: float | None) -> None:
        self.deadline = deadline
        self.bar: Any = None
        self.fields: dict[str, str] = {}
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=None, desc=f'optimize {name}', unit='req', file=sys.stderr)

    def say(self, text: str) -> None:
        """Show a line above the bar (the plan), or log it."""
        log.info('%s', text)
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)

    def expect(self, total: int) -> None:
        """Set how many requests the run expects to make in all."""
        if self.bar is not None and total != self.bar.total:
            self.bar.total = total
            self.bar.refresh()

    def tick(self, ledger: Ledger) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        left = '' if self.deadline is None else f'{max(0.0, self.deadline - time.monotonic()) / 60:.1f} min'
        self.bar.set_postfix(**self.fields, calls=ledger.calls, **({'left': left} if left else {}), refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def screener(baseline: Version, ds: Dataset) -> Callable[[Mapping[str, Any], Mapping[str, Any] | None], str | None]:
    """Return the optimizer's check of each request before it is sent: the blocking rules of the baseline's prompt,
    input rules on a task request's input fields, prompt rules on every prompt (proposals included)."""
    blocking = rules.blocking_rules(baseline.prompt)

    def screen(request: Mapping[str, Any], inputs: Mapping[str, Any] | None) -> str | None:
        fields = {n: inputs.get(n) for n in ds.inputs} if inputs is not None else None
        found = rules.screen(blocking, fields, request.get('prompt'))
        return rules.blocked_message(found) if found else None

    return screen


def ledger_for(setup: Setup, progress: Progress) -> Ledger:
    from workspace.optimization import dspy_adapter as da

    limits = setup.limits
    return da.Ledger(
        setup.run_id,
        setup.dataset.name,
        max_requests=limits.get('max_calls'),
        deadline=progress.deadline,
        max_errors=setup.max_errors,
        on_request=progress.tick,
        screen=screener(setup.baseline, setup.dataset),
    )


def counts(ledger: Ledger, trials: list[Trial], clock: float) -> dict[str, Any]:
    return {
        'trials': len(trials),
        'requests': ledger.requests,
        'calls': ledger.calls,
        'tokens': ledger.tokens,
        'errors': ledger.errors,
        'wall_s': time.perf_counter() - clock,
    }


def history_seconds(model: str) -> float | None:
    """Return the median seconds per request of the model's last 200 stored answers, if it has any."""
    from workspace.storage import tables

    t = tables.requests()
    rows = (
        t.where(t.model_id == backends.model_identity(model))
        .order_by(t.created_at, asc=False)
        .limit(200)
        .select(t.response)
        .collect()
    )
    seconds = sorted(float(r['response']['latency_s']) for r in rows if (r['response'] or {}).get('latency_s'))
    return seconds[len(seconds) // 2] if seconds else None


def deadline_of(limits: Budget) -> float | None:
    return time.monotonic() + 60 * limits['max_minutes'] if 'max_minutes' in limits else None


def check_stop(setup: Setup, search: Search) -> None:
    """Raise OptimizeError if the run stopped because too many model calls failed."""
    stop, ledger = search.stop, search.ledger
    if stop is not None and stop.reason == 'max_errors':
        raise OptimizeError(
            f'optimizer run {setup.run_id} stopped: {ledger.errors} model calls failed, more than '
            f'max_errors={setup.max_errors}; the last error: {ledger.last_error}. Its trials so far are in '
            f'ws.list_trials({setup.run_id!r}); fix the model or endpoint, or raise max_errors'
        )
