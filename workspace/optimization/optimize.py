"""Optimize a version's demos and instructions with DSPy's optimizers; the winner becomes a new version.

DSPy does the search (`labeled_fewshot`, `bootstrap_fewshot`, `bootstrap_random_search`, `knn_fewshot`,
`mipro_v2`, `copro`, `gepa`); the workspace supplies the model, the prompt format and the bookkeeping (see
`dspy_adapter`), and chooses the winner itself (see `selection`):

- every model call goes through the request store, so it is cached, counted and traceable to the optimizer run
  and trial that asked for it, and committed at once: a killed run started again with the same arguments repeats
  no call the store has answered, and ends with the same result for a fixed seed;
- every candidate evaluation is a row of the trials table (`prompt_workspace/trials`), written as it finishes,
  with its predictions, its score by the run's metric (a metric of the whole split for labels) and its flags;
- the default optimizer, `knn_fewshot`, races its candidates and the baseline on growing dev subsamples
  (`racing`, `knn`): a budget of any size ends with the best candidate scored so far and its evidence;
- every attempt says its plan before it starts and keeps its own record (`records`): a rerun adds a record;
- the best eligible candidate becomes a new immutable version whose parent is the baseline, with the optimizer,
  its config, the seed, the dataset versions, the scores, the decision and the cost in its `meta`; it replaces
  the baseline as `best` only if it is better on dev by a paired test, and the test split, if there is one,
  reports the winner against the baseline in the same call.

The run id derives from the arguments, so a restarted run continues the same trial rows instead of adding more.
The decision names the reference baselines of dev (`workspace.core.baselines`: the majority label, the k-nearest
vote, the nearest training output), computed with no model call, so that a version the embedder alone can match
shows as such.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import pandas as pd

from workspace.core.baselines import References, reference_baselines
from workspace.core.datasets import Dataset, get_dataset
from workspace.core.demo_policies import nearest
from workspace.core.evaluate import check_template, evaluate
from workspace.core.versions import Version, edit, get_version
from workspace.errors import DatasetError, OptimizeError, VersionError, WorkspaceError
from workspace.optimization import records
from workspace.optimization.records import Plan, list_optimizations, list_trials, optimizer_records
from workspace.optimization.selection import Decision, Metric, MetricFn, Scored, Verdict, build_metric, decide, verdict
from workspace.storage import audit_log, backends

if TYPE_CHECKING:
    from workspace.optimization.dspy_adapter import Candidate, Ledger, Task, Trial
    from workspace.optimization.racing import Race

__all__ = [
    'OPTIMIZERS',
    'Budget',
    'MetricFn',
    'OptimizeResult',
    'Plan',
    'optimize',
    'list_trials',
    'list_optimizations',
    'optimizer_records',
]

log = logging.getLogger(__name__)

#: The optimizers `optimize` runs, by name: each is the DSPy optimizer of that name.
OPTIMIZERS: tuple[str, ...] = (
    'labeled_fewshot',
    'bootstrap_fewshot',
    'bootstrap_random_search',
    'knn_fewshot',
    'mipro_v2',
    'copro',
    'gepa',
)

# DSPy's own error limits are set out of reach: the ledger counts model errors and stops the run itself.
_NO_LIMIT = 10**9
_COMPILE_KEYS = {
    'bootstrap_random_search': {'restrict', 'labeled_sample'},
    'mipro_v2': {
        'num_trials',
        'minibatch',
        'minibatch_size',
        'minibatch_full_eval_steps',
        'view_data_batch_size',
        'program_aware_proposer',
        'data_aware_proposer',
        'tip_aware_proposer',
        'fewshot_aware_proposer',
    },
    'labeled_fewshot': {'sample'},
}


class Budget(TypedDict, total=False):
    """How much an optimizer run may spend; every limit is optional.

    `max_candidates`: distinct candidates evaluated besides the baseline. `max_calls`: model requests, counting
    those the request store answers, so that a resumed run stops where an uninterrupted one would (the model calls
    actually made are at most this). `max_minutes`: wall time; a run stopped by time is not reproducible.
    """

    max_candidates: int
    max_calls: int
    max_minutes: float


@dataclass(frozen=True)
class OptimizeResult:
    """What an optimizer run produced: the best version, the decision and its evidence, the cost, its trials.

    `best` is the version to use: the top candidate if it beat the baseline on dev by the paired test
    (`accepted`), else the baseline itself. `candidate` is the top eligible candidate as a version either way, so
    it can be inspected or compared; `decision` says in words why it was or was not accepted, and what the
    reference baselines score on the same dev rows (`references`, no model call). `test` compares the winner
    with the baseline on the test split, when there is one and the winner is not the baseline. `plan` is what
    the run said it would do before it started.
    """

    run_id: str
    optimizer: str
    dataset: str
    dev: str
    metric: str
    baseline: Version
    best: Version
    candidate: Version | None
    accepted: bool
    decision: str
    dev_verdict: Verdict | None
    test: Verdict | None
    baseline_score: float
    best_score: float
    best_trial: int
    n_trials: int
    stopped_by: str | None
    requests: int
    calls: int
    tokens: int
    errors: int
    wall_s: float
    plan: Plan | None = None
    references: References | None = None

    def __repr__(self) -> str:
        stopped = f', stopped by {self.stopped_by}' if self.stopped_by else ''
        return (
            f'<OptimizeResult {self.run_id} {self.optimizer} on {self.dataset}/{self.dev}: {self.metric} '
            f'{self.baseline_score:.3f} -> {self.best_score:.3f}, best {self.best.id} '
            f'({"accepted" if self.accepted else "the baseline kept"}), {self.n_trials} trials, '
            f'{self.requests} requests, {self.calls} model calls{stopped}>'
        )

    def __str__(self) -> str:
        frame = self.trials
        columns = ['trial', 'kind', 'scope', 'score', 'demos', 'instructions', 'flags', 'calls', 'status']
        shown = frame.assign(
            demos=frame['demos'].map(_describe_demos),
            instructions=frame['instructions'].map(lambda s: (s or '')[:40]),
            flags=frame['flags'].map(lambda f: '; '.join(f or [])),
        )[columns]
        lines = [repr(self), '', *([str(self.plan), ''] if self.plan else []), self.decision]
        if self.test is not None:
            lines.append(self.test.sentence())
        return '\n'.join([*lines, '', shown.to_string(index=False)])

    @property
    def trials(self) -> pd.DataFrame:
        """Return this run's trials, one row per candidate evaluation (read from the trials table)."""
        return list_trials(self.run_id)

    def label_shares(self) -> pd.DataFrame:
        """Return, per dev-scored trial, the share of its predictions on each label (and the expected shares),
        so a candidate that answers mostly one label shows at a glance."""
        frame = self.trials
        frame = frame[frame['scope'].isin(['dev', 'dev_sample'])].sort_values('trial')
        frame = frame.drop_duplicates('candidate', keep='last')  # a raced candidate: its latest (largest) trial
        shares = {
            f'trial {row.trial}': pd.Series(list((row.example_predictions or {}).values()), dtype=object)
            .fillna('(none)')
            .value_counts(normalize=True)
            for row in frame.itertuples()
        }
        return pd.DataFrame(shares).fillna(0.0).T.round(3)


def _describe_demos(demos: Any) -> str:
    if isinstance(demos, Mapping) and 'policy' in demos:
        cap = f', at most {demos["per_label_max"]} per label' if demos.get('per_label_max') else ''
        return f'nearest {demos["k"]}{cap}'
    return str(len(demos or []))


def _check_optimizer(name: str) -> str:
    if name not in OPTIMIZERS:
        import difflib

        close = difflib.get_close_matches(name, OPTIMIZERS, n=1)
        hint = f' Did you mean {close[0]!r}?' if close else ''
        raise OptimizeError(f'unknown optimizer {name!r}.{hint} Known optimizers: {", ".join(OPTIMIZERS)}')
    return name


def _check_budget(budget: Mapping[str, Any] | None) -> Budget:
    limits: Budget = {}
    for key, value in (budget or {}).items():
        if key not in Budget.__annotations__:
            raise OptimizeError(
                f'unknown budget key {key!r}; a budget has max_candidates, max_calls and max_minutes, '
                "e.g. budget={'max_calls': 200}"
            )
        integral = key != 'max_minutes'
        ok = isinstance(value, int) if integral else isinstance(value, (int, float))
        if not ok or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
            kind = 'a whole number' if integral else 'a number of minutes'
            raise OptimizeError(f'budget {key}={value!r} is not valid; give {kind} above 0, or leave it out')
        limits[key] = value  # type: ignore[literal-required]
    return limits


def _teacher(teacher: Version | str | None, baseline: Version, dataset: Dataset) -> Version | None:
    """Return the version the teacher LM renders and answers as: a version, or the baseline on another model."""
    if teacher is None:
        return None
    if isinstance(teacher, str) and teacher.partition(':')[0] in backends.KINDS:
        backends.parse_model(teacher)
        return dataclasses.replace(baseline, model=teacher, id=f'{baseline.id}@{teacher}')
    try:
        version = get_version(teacher)
    except VersionError as e:
        raise OptimizeError(
            f"teacher {teacher!r} is neither a model ('local:/path.gguf', 'groq:<model>', 'openai:<model>') "
            f'nor a version: {e}'
        ) from None
    check_template(version, dataset)
    return version


def _plan(
    name: str,
    limits: Budget,
    options: Mapping[str, Any],
    n_train: int,
    n_dev: int,
    seed: int,
    *,
    labels: bool = False,
    scored_labels: bool = False,
) -> dict[str, Any]:
    """Return the optimizer's knobs: small defaults that suit a small local model, the budget, then `options`,
    checked before any call. `labels` says the baseline answers a label; `scored_labels` that its model exposes
    label probabilities (the local one)."""
    if name == 'knn_fewshot':
        from workspace.optimization.knn import knn_options

        return knn_options(options, labels=labels, scored=scored_labels)
    most = limits.get('max_candidates')
    plan: dict[str, Any]
    if name == 'labeled_fewshot':
        plan = {'k': 4}
    elif name == 'bootstrap_fewshot':
        plan = {'max_bootstrapped_demos': 4, 'max_labeled_demos': 4, 'max_rounds': 1}
    elif name == 'bootstrap_random_search':
        # DSPy adds three fixed candidates (zero-shot, labeled only, unshuffled bootstrap) to the random ones.
        plan = {'max_bootstrapped_demos': 4, 'max_labeled_demos': 4, 'max_rounds': 1, 'num_candidate_programs': 6}
        if most is not None:
            plan['num_candidate_programs'] = max(0, most - 3)
            if most < 3:
                plan['restrict'] = [-1, -2, -3][:most]
    elif name == 'mipro_v2':
        plan = {
            'auto': 'light',
            'max_bootstrapped_demos': 3,
            'max_labeled_demos': 3,
            'init_temperature': 1.0,
            'seed': seed,
        }
        if most is not None:
            plan.update(auto=None, num_candidates=max(2, most), num_trials=most)
        if plan.get('auto') is None:
            plan.update(minibatch=n_dev > 50, minibatch_size=min(35, n_dev))
    elif name == 'copro':
        plan = {'breadth': 3, 'depth': 2, 'init_temperature': 1.4}
        if most is not None:
            breadth = max(2, min(most, 6))
            plan.update(breadth=breadth, depth=max(1, most // breadth))
    else:
        plan = {
            'max_metric_calls': limits.get('max_calls') or 4 * (n_train + n_dev),
            'reflection_minibatch_size': min(3, n_train),
            'candidate_selection_strategy': 'pareto',
            'use_merge': False,
            'seed': seed,
        }
    _check_dspy_options(name, options)
    plan.update(options)
    return plan


#: Knobs the workspace sets itself on each DSPy optimizer (not the caller's to give).
_SET_BY_WORKSPACE = {'metric', 'teacher_settings', 'num_threads', 'max_errors', 'prompt_model', 'task_model'}


def _check_dspy_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise OptimizeError naming any knob the DSPy optimizer does not take, before any call is made."""
    import inspect

    import dspy

    cls = {
        'labeled_fewshot': dspy.LabeledFewShot,
        'bootstrap_fewshot': dspy.BootstrapFewShot,
        'bootstrap_random_search': dspy.BootstrapFewShotWithRandomSearch,
        'mipro_v2': dspy.MIPROv2,
        'copro': dspy.COPRO,
        'gepa': dspy.GEPA,
    }[name]
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = (set(params) - {'self'} | _COMPILE_KEYS.get(name, set())) - _SET_BY_WORKSPACE
    unknown = sorted(set(options) - known)
    if unknown:
        raise OptimizeError(
            f'options for {name!r} are not valid: unknown knob(s) {", ".join(unknown)}; its knobs are '
            f'{", ".join(sorted(known))} (see the DSPy optimizer)'
        )


def _run_id(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=repr)
    return 'opt-' + hashlib.sha256(text.encode()).hexdigest()[:12]


def _trial_row(
    run_id: str, optimizer: str, parent: str, trial: Trial, flags: list[str] | None = None
) -> dict[str, Any]:
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


class _LogSink(io.TextIOBase):
    """A stream that sends DSPy's prints and progress bars to the log, so that only ours shows."""

    def write(self, text: str) -> int:
        for line in text.replace('\r', '\n').splitlines():
            if line.strip():
                log.debug('dspy: %s', line.rstrip())
        return len(text)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with (
        contextlib.redirect_stdout(_LogSink()),
        contextlib.redirect_stderr(_LogSink()),
        warnings.catch_warnings(),
    ):
        # DSPy 3.4 deprecates custom LMs over forward(); the workspace pins dspy<3.5, where it still works.
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        yield


def _build(
    name: str, plan: Mapping[str, Any], metric: Callable[..., float], student_lm: Any, teacher_lm: Any, adapter: Any
) -> tuple[Any, dict[str, Any]]:
    """Return the DSPy optimizer and the extra compile arguments for `plan`."""
    import dspy

    compile_keys = _COMPILE_KEYS.get(name, set())
    knobs = {k: v for k, v in plan.items() if k not in compile_keys}
    extra = {k: v for k, v in plan.items() if k in compile_keys}
    if 'restrict' in extra:
        extra['restrict'] = set(extra['restrict'])
    teacher_settings = {'lm': teacher_lm} if teacher_lm is not None else {}
    prompt_lm = teacher_lm or student_lm
    try:
        if name == 'labeled_fewshot':
            return dspy.LabeledFewShot(**knobs), extra
        if name == 'bootstrap_fewshot':
            return dspy.BootstrapFewShot(
                metric=metric, teacher_settings=teacher_settings, max_errors=_NO_LIMIT, **knobs
            ), extra
        if name == 'bootstrap_random_search':
            return dspy.BootstrapFewShotWithRandomSearch(
                metric=metric, teacher_settings=teacher_settings, num_threads=1, max_errors=_NO_LIMIT, **knobs
            ), extra
        if name == 'mipro_v2':
            return dspy.MIPROv2(
                metric=metric,
                prompt_model=prompt_lm,
                task_model=student_lm,
                teacher_settings=teacher_settings,
                num_threads=1,
                max_errors=_NO_LIMIT,
                verbose=False,
                track_stats=False,
                **knobs,
            ), extra
        if name == 'copro':
            return dspy.COPRO(metric=metric, prompt_model=prompt_lm, **knobs), {
                'eval_kwargs': {'num_threads': 1, 'display_progress': False}
            }
        from dspy.teleprompt.gepa.instruction_proposal import InstructionProposer

        return dspy.GEPA(
            metric=metric,
            reflection_lm=prompt_lm,
            instruction_proposer=InstructionProposer(adapter=adapter),
            num_threads=1,
            **knobs,
        ), extra
    except TypeError as e:
        raise OptimizeError(f'options for {name!r} are not valid: {e}; see the DSPy optimizer for its knobs') from None


def _compile(name: str, optimizer: Any, student: Any, trainset: list[Any], devset: list[Any], extra: Any) -> Any:
    if name in ('labeled_fewshot', 'bootstrap_fewshot'):
        return optimizer.compile(student, trainset=trainset, **extra)
    if name == 'copro':  # COPRO scores its instruction candidates on the set it is given: dev, the selection set
        return optimizer.compile(student, trainset=devset, **extra)
    return optimizer.compile(student, trainset=trainset, valset=devset, **extra)


@dataclass
class _Setup:
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


def _prepare(
    version: Version | str,
    dataset: Dataset | str,
    *,
    optimizer: str,
    metric: str | MetricFn | None,
    train: str,
    dev: str,
    test: str | None,
    budget: Mapping[str, Any] | None,
    teacher: Version | str | None,
    seed: int,
    max_errors: int,
    options: Mapping[str, Any] | None,
) -> _Setup:
    """Check the arguments and read the splits; raise OptimizeError naming the value and the fix."""
    name = _check_optimizer(optimizer)
    limits = _check_budget(budget)
    if isinstance(max_errors, bool) or not isinstance(max_errors, int) or max_errors < 0:
        raise OptimizeError(f'max_errors={max_errors!r} is not valid; give a whole number of errors, 0 or more')
    baseline = get_version(version)
    ds = get_dataset(dataset)
    check_template(baseline, ds)
    try:
        train_rows, dev_rows = ds.rows(train), ds.rows(dev)
    except DatasetError as e:
        raise OptimizeError(f'{e}; pass train= and dev= naming splits with examples') from None
    if test == 'auto':
        test = 'test' if 'test' in ds.splits() and 'test' not in (train, dev) else None
    elif test is not None and test not in ds.splits():
        raise OptimizeError(f'test={test!r}: dataset {ds.name!r} has splits {", ".join(ds.splits())}; or test=None')
    if name == 'knn_fewshot':  # the pool's embedding index first: making it is a new version of the dataset table
        nearest(ds, k=1, split=train)
    expected = {str(r['example_id']): r['expected'] for r in dev_rows}
    scorer = build_metric(metric, task=ds.task, expected=expected, schema=baseline.output.get('schema'))
    teacher_version = _teacher(teacher, baseline, ds)
    labels = baseline.output['kind'] == 'choice'
    scored_labels = labels and baseline.model.partition(':')[0] == 'local'
    plan = _plan(
        name, limits, dict(options or {}), len(train_rows), len(dev_rows), seed, labels=labels,
        scored_labels=scored_labels,
    )  # fmt: skip
    metric_key = getattr(metric, '__qualname__', scorer.name) if callable(metric) else scorer.name
    dataset_version = ds.version
    run_id = _run_id(
        baseline=[baseline.id, baseline.content_hash],
        dataset=[ds.name, dataset_version, train, dev],
        optimizer=name,
        plan=plan,
        metric=metric_key,
        teacher=[teacher_version.model, teacher_version.content_hash] if teacher_version else None,
        seed=seed,
        budget=dict(limits),
        max_errors=max_errors,
    )
    return _Setup(
        name, baseline, ds, train, dev, test, train_rows, dev_rows, scorer, metric_key, plan, limits, seed,
        max_errors, teacher_version, dataset_version, run_id,
    )  # fmt: skip


@dataclass
class _Search:
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


def _task(setup: _Setup) -> Task:
    from workspace.optimization import dspy_adapter as da

    ds = setup.dataset
    return da.Task.create(
        setup.baseline, ds.inputs, ds.meta.get('expected_column', 'expected'), [*setup.train_rows, *setup.dev_rows],
        dataset=ds.name,
    )  # fmt: skip


class _Progress:
    """The run's progress bar: requests against what the run plans to make, candidates scored, calls, time left."""

    def __init__(self, show: bool, name: str, deadline: float | None) -> None:
        self.deadline, self.bar, self.fields = deadline, None, {}
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


def _ledger(setup: _Setup, progress: _Progress) -> Ledger:
    from workspace.optimization import dspy_adapter as da

    limits = setup.limits
    return da.Ledger(
        setup.run_id,
        setup.dataset.name,
        max_requests=limits.get('max_calls'),
        deadline=progress.deadline,
        max_errors=setup.max_errors,
        on_request=progress.tick,
    )


def _counts(ledger: Ledger, trials: list[Trial], clock: float) -> dict[str, Any]:
    return {
        'trials': len(trials),
        'requests': ledger.requests,
        'calls': ledger.calls,
        'tokens': ledger.tokens,
        'errors': ledger.errors,
        'wall_s': time.perf_counter() - clock,
    }


def _history_seconds(model: str) -> float | None:
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


def _dspy_plan(setup: _Setup, answered: int) -> Plan:
    """The plan of a DSPy optimizer: the baseline on dev, then DSPy's own search, up to the call budget."""
    n, plan, limits = len(setup.dev_rows), setup.plan, setup.limits
    candidates = {
        'labeled_fewshot': 1,
        'bootstrap_fewshot': 1,
        'bootstrap_random_search': len(plan.get('restrict') or []) or plan.get('num_candidate_programs', 0) + 3,
        'mipro_v2': plan.get('num_trials') or 10,
        'copro': plan.get('breadth', 1) * plan.get('depth', 1),
    }.get(setup.name, limits.get('max_candidates') or 0)
    candidates = min(candidates, limits.get('max_candidates') or candidates)
    most = (candidates + 1) * n
    planned = min(most, limits['max_calls']) if 'max_calls' in limits else most
    test = 2 * len(setup.dataset.rows(setup.test)) if setup.test else 0
    budget = 60 * limits['max_minutes'] if 'max_minutes' in limits else None
    seconds = _history_seconds(setup.baseline.model)
    return Plan(setup.name, candidates, candidates + 1, n, (n,), most, answered, seconds, budget, planned, test)


def _dspy_search(setup: _Setup, attempt: records.Attempt, *, progress: bool, clock: float) -> _Search:
    """Run a DSPy optimizer, recording every candidate evaluation as a trial; return what it left."""
    import dspy

    from workspace.optimization import dspy_adapter as da

    baseline, limits = setup.baseline, setup.limits
    task = _task(setup)
    trainset = [task.example(row) for row in setup.train_rows]
    random.Random(setup.seed).shuffle(trainset)
    devset = [task.example(row) for row in setup.dev_rows]
    bar = _Progress(progress, setup.name, _deadline(limits))
    ledger = _ledger(setup, bar)
    trial_log = records.TrialLog(setup.run_id, attempt.number)
    active = da.Active()

    def on_trial(trial: Trial) -> None:
        trial_log.write(_trial_row(setup.run_id, setup.name, baseline.id, trial))
        attempt.update(**_counts(ledger, recorder.trials, clock))

    recorder = da.TrialRecorder(
        task, ledger, [r['example_id'] for r in setup.dev_rows], max_candidates=limits.get('max_candidates'),
        on_trial=on_trial, split_score=setup.metric.score, active=active,
    )  # fmt: skip
    plan = _dspy_plan(setup, records.answered_by_run(setup.run_id))
    attempt.update(plan=plan.as_dict())
    bar.say(str(plan))
    bar.expect(plan.planned_requests)
    # Proposals are one line: a base model rambles on past it, and every token costs time on a small machine.
    proposal_params = {'temperature': 0.0, 'max_tokens': 64, 'stop': ['\n'], 'seed': setup.seed}
    student_lm = da.WorkspaceLM(baseline, ledger=ledger, proposal_params=proposal_params)
    teacher_lm = (
        da.WorkspaceLM(setup.teacher, ledger=ledger, proposal_params=proposal_params) if setup.teacher else None
    )
    adapter = da.VersionAdapter(task, active)

    def dspy_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> float:
        return float(setup.metric.per_example(pred.get(task.output), gold[task.output]))

    def score_on_dev(program: Any, kind: str) -> None:
        recorder.kind = kind  # type: ignore[assignment]
        dspy.Evaluate(devset=devset, metric=dspy_metric, num_threads=1, max_errors=_NO_LIMIT)(program)

    student = dspy.Predict(task.signature)
    if baseline.demo_policy is None:
        student.demos = task.dspy_demos(baseline.demos)  # type: ignore[arg-type]
    else:
        student.workspace_candidate = task.baseline_candidate()
    stop: da.Stop | None = None
    picked: str | None = None
    try:
        with (
            _quiet(),
            dspy.context(
                lm=student_lm, adapter=adapter, callbacks=[recorder], num_threads=1, max_errors=_NO_LIMIT,
                disable_history=True,
            ),
        ):  # fmt: skip
            score_on_dev(student, 'baseline')
            recorder.kind = 'candidate'
            dspy_optimizer, extra = _build(setup.name, setup.plan, dspy_metric, student_lm, teacher_lm, adapter)
            compiled = _compile(setup.name, dspy_optimizer, student, trainset, devset, extra)
            predictor = compiled.predictors()[0]
            chosen = task.candidate(predictor.signature, predictor.demos)
            picked = chosen.key
            if not any(t.candidate.key == chosen.key for t in recorder.dev_trials()):
                score_on_dev(compiled, 'final')
    except da.Stop as s:
        stop = s
        picked = None  # a run stopped by its budget has no pick of its own
        log.info('optimizer run %s stopped: %s', setup.run_id, s.message)
    except WorkspaceError:
        raise
    except Exception as e:
        raise OptimizeError(f'optimizer {setup.name!r} failed in run {setup.run_id}: {type(e).__name__}: {e}') from e
    finally:
        bar.close()
    search = _Search(recorder.trials, ledger, stop, picked, plan)
    _check_stop(setup, search)
    scored = search.dev_trials()
    if not scored or scored[0].kind != 'baseline':
        raise OptimizeError(
            f'optimizer run {setup.run_id} stopped before the baseline was scored on {setup.dev!r} '
            f'({len(devset)} requests): {stop.message if stop else "no dev score"}; raise the budget'
        )
    return search


def _deadline(limits: Budget) -> float | None:
    return time.monotonic() + 60 * limits['max_minutes'] if 'max_minutes' in limits else None


def _check_stop(setup: _Setup, search: _Search) -> None:
    """Raise OptimizeError if the run stopped because too many model calls failed."""
    stop, ledger = search.stop, search.ledger
    if stop is not None and stop.reason == 'max_errors':
        raise OptimizeError(
            f'optimizer run {setup.run_id} stopped: {ledger.errors} model calls failed, more than '
            f'max_errors={setup.max_errors}; the last error: {ledger.last_error}. Its trials so far are in '
            f'ws.list_trials({setup.run_id!r}); fix the model or endpoint, or raise max_errors'
        )


def _race_setup(setup: _Setup, task: Task) -> tuple[dict[int, Candidate], list[Any]]:
    """Return the raced candidates by entrant number (0 is the baseline) and their groups."""
    from workspace.optimization import knn, racing

    named = [(setup.baseline.id, task.baseline_candidate())]
    named += knn.knn_candidates(setup.plan, setup.baseline, setup.dataset.name, setup.train, setup.dataset.inputs)
    most = setup.limits.get('max_candidates')
    named = named[: most + 1] if most is not None else named
    groups: dict[str, Any] = {}
    for number, (name, content) in enumerate(named):
        key = knn.group_key(content)
        entrant = racing.Entrant(number, name, key, baseline=number == 0)
        groups.setdefault(key, racing.Group(key, [])).members.append(entrant)
    return {number: content for number, (_, content) in enumerate(named)}, list(groups.values())


def _race_plan(setup: _Setup, race: Race, answered: int) -> Plan:
    n, limits = len(race.order), setup.limits
    most = len(race.groups) * n
    full = sum((g.seconds or 0.0) * n for g in race.groups)
    measured = full / most if any(g.seconds for g in race.groups) else _history_seconds(setup.baseline.model)
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


def _race_search(setup: _Setup, attempt: records.Attempt, *, progress: bool, clock: float) -> _Search:
    """Race the knn_fewshot candidates and the baseline on growing dev subsamples; return what the race left."""
    from workspace.optimization import knn, racing

    bar = _Progress(progress, setup.name, _deadline(setup.limits))
    ledger = _ledger(setup, bar)
    contents, groups = _race_setup(setup, _task(setup))
    trial_log = records.TrialLog(setup.run_id, attempt.number)
    n_entrants = len(contents)
    race = racing.Race(
        groups, racing.interleaved(setup.metric.expected, setup.seed, stratify=setup.dataset.task == 'choice'),
        racing.rung_sizes(len(setup.dev_rows)), value=lambda e, ids: _value(setup, e, ids),
        p_better=lambda a, b, ids: _p_better(setup, a, b, ids), may_lead=lambda e, ids: _may_lead(setup, race, e, ids),
        seconds_left=lambda: None if bar.deadline is None else bar.deadline - time.monotonic(),
    )  # fmt: skip

    def on_trial(trial: Trial) -> None:
        trial_log.write(_trial_row(setup.run_id, setup.name, setup.baseline.id, trial))
        attempt.update(**_counts(ledger, scorer.trials, clock))
        left = sum(len(race.order) - len(g.scored) for g in race.groups if g.alive())
        bar.fields = {'candidates': f'{len(race.alive())}/{n_entrants} in the race'}
        bar.expect(ledger.requests + min(left, max(0, (plan.planned_requests if plan else left) - ledger.requests)))

    scorer = knn.RaceScorer(
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
    finally:
        bar.close()
    scorer.flush(race.groups)
    for event in race.events:
        log.info('optimizer run %s: %s', setup.run_id, event)
    names = {e.number: e.name for e in race.entrants}
    search = _Search(scorer.trials, ledger, scorer.stopped, None, plan, race, names)
    _check_stop(setup, search)
    if not race.entrants[0].predictions:
        stop = scorer.stopped
        raise OptimizeError(
            f'optimizer run {setup.run_id} stopped before the baseline was scored on {setup.dev!r}: '
            f'{stop.message if stop else "no dev score"}; raise the budget'
        )
    return search


def _value(setup: _Setup, entrant: Any, ids: Any) -> float:
    return setup.metric.score({ex: entrant.predictions[ex] for ex in ids if ex in entrant.predictions})


def _p_better(setup: _Setup, a: Any, b: Any, ids: Any) -> float:
    """Return the p-value that `a` beats `b` on `ids` (a quick paired permutation test), or 1.0 if it does not."""
    pa = {ex: a.predictions[ex] for ex in ids if ex in a.predictions}
    pb = {ex: b.predictions[ex] for ex in ids if ex in b.predictions}
    result = verdict(setup.metric, pb, pa, split=setup.dev, names=(b.name, a.name), resamples=1000)
    return result.p_value if result.diff > 0 else 1.0


def _may_lead(setup: _Setup, race: Race, entrant: Any, ids: Any) -> bool:
    """A label candidate whose predictions pile onto one label (or trade macro-F1 for accuracy) may not lead."""
    from workspace.optimization.selection import candidate_flags

    base = race.entrants[0]
    if entrant.baseline or setup.dataset.task != 'choice' or not all(ex in base.predictions for ex in ids):
        return True
    expected = {ex: setup.metric.expected[ex] for ex in ids}
    return not candidate_flags(entrant.predictions, base.predictions, expected)


def _first_row(setup: _Setup) -> dict[str, Any]:
    return {
        'run_id': setup.run_id,
        'optimizer': setup.name,
        'prompt': setup.baseline.prompt,
        'baseline_id': setup.baseline.id,
        'dataset': setup.dataset.name,
        'config': json.loads(json.dumps(setup.plan, default=str)),
    }


def _scored(setup: _Setup, search: _Search) -> tuple[Scored, list[Scored]]:
    """Return the baseline and the candidates as the decision sees them: for a race, each candidate's
    predictions, its metric on the last rung it completed, and how far it went; else the dev-scored trials."""
    if search.race is not None:
        race = search.race
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
    scored = search.dev_trials()
    seen, candidates = {scored[0].candidate.key}, []
    for t in scored[1:]:
        if t.candidate.key in seen:
            continue  # the same content scored again (an optimizer's final pick): judged once
        seen.add(t.candidate.key)
        picked = t.candidate.key == search.picked
        candidates.append(
            Scored(t.number, f'trial {t.number}', t.example_predictions, float(t.dev_score or 0.0), picked=picked)
        )
    first = scored[0]
    return Scored(first.number, setup.baseline.id, first.example_predictions, float(first.dev_score or 0.0)), candidates


def _decide(setup: _Setup, search: _Search, selection: Mapping[str, Any]) -> tuple[Decision, Scored, list[Scored]]:
    """Choose among the scored candidates, and note each flagged trial's flags on its record."""
    baseline, candidates = _scored(setup, search)
    decision = decide(setup.metric, baseline, candidates, task=setup.dataset.task, dev=setup.dev, **selection)
    if decision.flags:
        trial_log = records.TrialLog(setup.run_id, 0)
        trial_log.flag([{'trial': n, 'flags': f} for n, f in decision.flags.items()])
    return decision, baseline, candidates


def _references(
    setup: _Setup, decision: Decision, baseline: Scored, candidates: list[Scored]
) -> tuple[References | None, str]:
    """Return the reference baselines of dev on the examples the decision compared, and a sentence saying them
    beside the best candidate (no model call)."""
    best = next((c for c in candidates if c.trial == decision.trial), None)
    ids = [
        ex for ex in setup.metric.expected if ex in baseline.predictions and (best is None or ex in best.predictions)
    ]
    refs = reference_baselines(setup.dataset, setup.dev, pool=setup.train, example_ids=ids)
    if not refs:
        return None, ''
    parts = []
    if best is not None:
        winner = 'optimized' if decision.accepted else 'best candidate'
        parts.append(f'{winner} {setup.metric.score({ex: best.predictions[ex] for ex in ids}):.3f}')
    parts.append(f'baseline {setup.metric.score({ex: baseline.predictions[ex] for ex in ids}):.3f}')
    values = {r.name: setup.metric.score({ex: r.predictions[ex] for ex in ids}) for r in refs.items}
    parts += [f'{name} {value:.3f}' for name, value in values.items()]
    sentence = (
        f'{setup.metric.name} on the same {len(ids)} {setup.dev} rows: '
        + '; '.join(parts)
        + ' (reference baselines: no model call).'
    )
    vote = refs.get('knn_vote') or refs.get('nearest_output')
    if (
        best is not None
        and vote is not None
        and values[vote.name] >= setup.metric.score({ex: best.predictions[ex] for ex in ids})
    ):
        sentence += f' The {vote.name} alone scores as well: the model adds nothing over its retrieval here.'
    return refs, sentence


def _write_candidate(
    setup: _Setup, search: _Search, decision: Decision, scored: tuple[Scored, list[Scored]], wall_s: float
) -> Version | None:
    """Write the top eligible candidate as a version whose parent is the baseline, with its lineage in `meta`."""
    if decision.trial is None:
        return None
    trial = next(t for t in search.trials if t.number == decision.trial)
    baseline, candidates = scored
    best = next(c for c in candidates if c.trial == decision.trial)
    ledger, ds = search.ledger, setup.dataset
    split = {'dataset': ds.name, 'dataset_version': setup.dataset_version}
    meta = {
        'optimizer': setup.name,
        'optimizer_run_id': setup.run_id,
        'config': json.loads(json.dumps(setup.plan, default=str)),
        'seed': setup.seed,
        'metric': setup.metric.name,
        'train': {**split, 'split': setup.train, 'n': len(setup.train_rows)},
        'dev': {**split, 'split': setup.dev, 'n': len(setup.dev_rows)},
        'teacher': setup.teacher.model if setup.teacher else None,
        'trial': trial.number,
        'baseline_score': baseline.value,
        'dev_score': best.value,
        'dev_n': len(best.predictions),
        'accepted': decision.accepted,
        'decision': decision.reason,
        'dev_p_value': decision.dev.p_value if decision.dev else None,
        'stopped_by': search.stop.reason if search.stop else None,
        'requests': ledger.requests,
        'calls': ledger.calls,
        'tokens': ledger.tokens,
        'wall_s': round(wall_s, 3),
    }
    content = trial.candidate
    what = search.names.get(trial.number % len(search.race.entrants)) if search.race is not None else None
    return edit(
        setup.baseline,
        template=content.template,
        demos=content.version_demos,
        instructions=content.instructions,
        output=dict(content.output) if content.output is not None else None,  # type: ignore[arg-type]
        note=f'{setup.name} run {setup.run_id}, trial {trial.number}'
        + (f' ({what})' if what else '')
        + ('' if decision.accepted else ' (not accepted)'),
        meta=meta,
    )


def _confirm(setup: _Setup, best: Version) -> Verdict | None:
    """Compare the winner with the baseline on the test split (only missing requests reach the model)."""
    if setup.test is None or best.id == setup.baseline.id:
        return None
    runs = [evaluate(v, setup.dataset, setup.test, progress=False) for v in (setup.baseline, best)]
    predictions = [dict(zip(r.rows()['example_id'], r.rows()['prediction'])) for r in runs]
    expected = {str(r['example_id']): r['expected'] for r in setup.dataset.rows(setup.test)}
    return verdict(setup.metric, *predictions, split=setup.test, names=(setup.baseline.id, best.id), expected=expected)


def optimize(
    version: Version | str,
    dataset: Dataset | str,
    *,
    optimizer: str = 'knn_fewshot',
    metric: str | MetricFn | None = None,
    train: str = 'train',
    dev: str = 'dev',
    test: str | None = 'auto',
    budget: Budget | Mapping[str, Any] | None = None,
    teacher: Version | str | None = None,
    seed: int = 0,
    max_errors: int = 10,
    options: Mapping[str, Any] | None = None,
    alpha: float = 0.1,
    margin: float | None = None,
    allow_degenerate: bool = False,
    progress: bool = True,
) -> OptimizeResult:
    """Optimize `version`'s demos and instructions on a dataset with a DSPy optimizer; return the result, whose
    `best` is a new version (parent: `version`, which is never changed) only if it is better on dev.

    Demos come from the `train` split; candidates are scored on `dev` by `metric`: for labels `'macro_f1'` (the
    default), `'balanced_accuracy'` or `'accuracy'`, computed on the whole split; for text a scorer name
    (`'rouge_l'`, the default); or a function (prediction, expected) -> score, averaged. A candidate that answers
    mostly one label, or whose macro-F1 falls while its accuracy rises, is refused unless `allow_degenerate`. The
    best remaining candidate replaces the baseline only if a paired permutation test on dev gives p < `alpha`
    (or, if `margin` is given, it is better by at least `margin`); `decision` says which and why. With a `test`
    split (by default the dataset's `test`, if any), the winner is compared with the baseline on it too.

    `optimizer`: 'knn_fewshot' (the default: demos retrieved per example, see `ws.nearest`; the best measured on
    public data with a small model, docs/benchmarks.md), 'labeled_fewshot', 'bootstrap_fewshot',
    'bootstrap_random_search', 'mipro_v2', 'copro', 'gepa'. `teacher` (a version, a reference or a model such
    as 'groq:llama-3.3-70b-versatile') bootstraps demos and proposes instructions. `options` override the
    optimizer's knobs (e.g. `{'k': [4, 8]}` for knn_fewshot). A run stopped by its budget decides among the trials
    so far, with `stopped_by` set. Model errors fail the trial they happen in; more than `max_errors` stop the run
    with OptimizeError. Running it again with the same arguments resumes it: no answered call is repeated.

    >>> res = optimize('ticket_router:v1', 'support_tickets', optimizer='knn_fewshot')
    >>> print(res.decision)
    """
    clock = time.perf_counter()
    if not 0 < alpha < 1 or (margin is not None and not 0 <= margin < 1):
        raise OptimizeError(f'alpha={alpha!r} and margin={margin!r}: give 0 < alpha < 1 and 0 <= margin < 1')
    selection = {'alpha': alpha, 'margin': margin, 'allow_degenerate': allow_degenerate}
    setup = _prepare(
        version, dataset, optimizer=optimizer, metric=metric, train=train, dev=dev, test=test, budget=budget,
        teacher=teacher, seed=seed, max_errors=max_errors, options=options,
    )  # fmt: skip
    attempt = records.Attempt.begin(_first_row(setup))
    log.info('optimizer run %s (attempt %d): %s on %s', setup.run_id, attempt.number, setup.name, setup.dataset.name)
    audit_log.record('optimizer.started', setup.run_id, after={'optimizer': setup.name, 'baseline': setup.baseline.id})
    try:
        searched = _race_search if setup.name == 'knn_fewshot' else _dspy_search
        search = searched(setup, attempt, progress=progress, clock=clock)
    except (OptimizeError, WorkspaceError, KeyboardInterrupt) as e:
        attempt.update(status='failed', error=str(e) or type(e).__name__, wall_s=time.perf_counter() - clock)
        audit_log.record(
            'optimizer.finished', setup.run_id, before=setup.baseline.id, after={'status': 'failed'}, note=str(e)
        )
        raise
    decision, base, candidates = _decide(setup, search, selection)
    refs, said = _references(setup, decision, base, candidates)
    reason = f'{decision.reason} {said}'.strip()
    decision = dataclasses.replace(decision, reason=reason)
    candidate = _write_candidate(setup, search, decision, (base, candidates), time.perf_counter() - clock)
    best = candidate if decision.accepted and candidate is not None else setup.baseline
    test_verdict = _confirm(setup, best)
    ledger = search.ledger
    best_score = (
        next((c.value for c in candidates if c.trial == decision.trial), base.value)
        if decision.accepted
        else base.value
    )
    status = 'stopped' if search.stop else 'done'
    attempt.update(
        **_counts(ledger, search.trials, clock), status=status, stopped_by=search.stop.reason if search.stop else None,
        best_version_id=best.id, baseline_score=base.value, best_score=best_score, decision=reason,
        references=None if refs is None else {r.name: r.metrics for r in refs.items},
    )  # fmt: skip
    audit_log.record(
        'optimizer.finished', setup.run_id, before=setup.baseline.id, after={'status': status, 'best': best.id}
    )
    return OptimizeResult(
        run_id=setup.run_id,
        optimizer=setup.name,
        dataset=setup.dataset.name,
        dev=setup.dev,
        metric=setup.metric.name,
        baseline=setup.baseline,
        best=best,
        candidate=candidate,
        accepted=decision.accepted and candidate is not None,
        decision=reason,
        dev_verdict=decision.dev,
        test=test_verdict,
        baseline_score=base.value,
        best_score=float(best_score),
        best_trial=decision.trial if decision.accepted and decision.trial is not None else base.trial,
        n_trials=len(search.trials),
        stopped_by=search.stop.reason if search.stop else None,
        requests=ledger.requests,
        calls=ledger.calls,
        tokens=ledger.tokens,
        errors=ledger.errors,
        wall_s=time.perf_counter() - clock,
        plan=search.plan,
        references=refs,
    )
