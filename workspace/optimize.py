"""Optimize a version's demos and instructions with DSPy's optimizers; the winner becomes a new version.

DSPy does the search (`labeled_fewshot`, `bootstrap_fewshot`, `bootstrap_random_search`, `mipro_v2`, `copro`,
`gepa`); the workspace supplies the model, the prompt format and the bookkeeping (see `dspy_adapter`):

- every model call goes through the request store, so it is cached, counted and traceable to the optimizer run
  and trial that asked for it, and committed at once: a killed run started again with the same arguments repeats
  no call the store has answered, and ends with the same result for a fixed seed;
- every candidate evaluation is a row of the trials table (`prompt_workspace/trials`), written as it finishes;
- the best candidate becomes a new immutable version whose parent is the baseline, with the optimizer, its
  config, the seed, the train/dev dataset versions, the dev score and the cost in its `meta`.

The run id derives from the arguments, so a restarted run continues the same trial rows instead of adding more.
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

from udfs import scores

from . import audit_log, backends, tables
from .config import utc_now
from .datasets import Dataset, get_dataset
from .errors import DatasetError, OptimizeError, VersionError, WorkspaceError
from .evaluate import check_template
from .runs import main_score_name
from .versions import Version, edit, get_version

if TYPE_CHECKING:
    from .dspy_adapter import Candidate, Ledger, Trial, TrialRecorder

__all__ = ['OPTIMIZERS', 'Budget', 'MetricFn', 'OptimizeResult', 'optimize', 'list_trials', 'list_optimizations']

log = logging.getLogger(__name__)

#: The optimizers `optimize` runs, by name: each is the DSPy optimizer of that name.
OPTIMIZERS: tuple[str, ...] = (
    'labeled_fewshot',
    'bootstrap_fewshot',
    'bootstrap_random_search',
    'mipro_v2',
    'copro',
    'gepa',
)

#: A metric given as a function: (prediction, expected) in, a score in [0, 1] out, like a scorer.
MetricFn = Callable[[Any, Any], float]

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
    """What an optimizer run produced: the best version, the scores, the cost, and its trials."""

    run_id: str
    optimizer: str
    dataset: str
    dev: str
    metric: str
    baseline: Version
    best: Version
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

    def __repr__(self) -> str:
        stopped = f', stopped by {self.stopped_by}' if self.stopped_by else ''
        if self.best.id == self.baseline.id:
            stopped += ', no candidate beat the baseline'
        return (
            f'<OptimizeResult {self.run_id} {self.optimizer} on {self.dataset}/{self.dev}: {self.metric} '
            f'{self.baseline_score:.3f} -> {self.best_score:.3f}, best {self.best.id} (trial {self.best_trial} of '
            f'{self.n_trials}), {self.requests} requests, {self.calls} model calls{stopped}>'
        )

    def __str__(self) -> str:
        frame = self.trials
        columns = ['trial', 'kind', 'scope', 'score', 'demos', 'instructions', 'calls', 'status']
        shown = frame.assign(
            demos=frame['demos'].map(lambda d: len(d or [])),
            instructions=frame['instructions'].map(lambda s: (s or '')[:40]),
        )[columns]
        return '\n'.join([repr(self), '', shown.to_string(index=False)])

    @property
    def trials(self) -> pd.DataFrame:
        """Return this run's trials, one row per candidate evaluation (read from the trials table)."""
        return list_trials(self.run_id)


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


def _metric(metric: str | MetricFn | None, dataset: Dataset, version: Version) -> tuple[str, MetricFn]:
    """Return the metric's name and a (prediction, expected) -> score function."""
    if callable(metric):
        return getattr(metric, '__name__', 'custom'), metric
    name = metric or main_score_name(dataset.task)
    if name == 'accuracy':
        if dataset.task != 'choice':
            raise OptimizeError(
                f"metric 'accuracy' needs a label dataset, and {dataset.name!r} is {dataset.task}; "
                f'use metric={main_score_name(dataset.task)!r} or another scorer'
            )
        name = 'exact_match'
    try:
        info = scores.get_scorer(name)
    except KeyError as e:
        raise OptimizeError(f'{e.args[0]}; or accuracy, or pass a function (prediction, expected) -> score') from None
    udf: Any = info.udf  # a Pixeltable UDF; py_fn is the plain Python function behind it
    if name == 'json_valid':
        schema = version.output.get('schema')
        return name, lambda prediction, expected: float(udf.py_fn(prediction, schema))
    if not info.uses_expected:
        raise OptimizeError(
            f'scorer {name!r} needs knobs and cannot be an optimizer metric by name; pass a function instead'
        )
    label = 'accuracy' if metric in (None, 'accuracy') and name == 'exact_match' else name
    return label, lambda prediction, expected: float(udf.py_fn(prediction, expected))


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


def _plan(name: str, limits: Budget, options: Mapping[str, Any], n_train: int, n_dev: int, seed: int) -> dict[str, Any]:
    """Return the optimizer's knobs: small defaults that suit a small local model, the budget, then `options`."""
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
    plan.update(options)
    return plan


def _run_id(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=repr)
    return 'opt-' + hashlib.sha256(text.encode()).hexdigest()[:12]


def _trial_row(run_id: str, optimizer: str, parent: str, trial: Trial) -> dict[str, Any]:
    return {
        'run_id': run_id,
        'trial': trial.number,
        'kind': trial.kind,
        'optimizer': optimizer,
        'parent_id': parent,
        'candidate': trial.candidate.key,
        'template': trial.candidate.template,
        'instructions': trial.candidate.instructions,
        'demos': list(trial.candidate.demos),
        'scope': trial.scope,
        'n': len(trial.example_ids),
        'score': trial.score,
        'dev_score': trial.dev_score,
        'example_scores': trial.example_scores,
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


def optimize(
    version: Version | str,
    dataset: Dataset | str,
    *,
    optimizer: str = 'bootstrap_random_search',
    metric: str | MetricFn | None = None,
    train: str = 'train',
    dev: str = 'dev',
    budget: Budget | Mapping[str, Any] | None = None,
    teacher: Version | str | None = None,
    seed: int = 0,
    max_errors: int = 10,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> OptimizeResult:
    """Optimize `version`'s demos and instructions on a dataset with a DSPy optimizer; return the best as a new
    version whose parent is `version` (which is never changed).

    Demos come from the `train` split, candidates are scored on `dev`. `metric` is the task's headline score by
    default (accuracy for labels, rouge_l for text), a scorer name, or a function (prediction, expected) -> score.
    `seed` shuffles the train split and seeds the optimizer and the proposals' sampling.
    `teacher` (a version, a version reference or a model spec such as 'groq:llama-3.3-70b-versatile') bootstraps
    the demos and proposes the instructions; without it the version's own model does both. `options` override the
    optimizer's knobs (e.g. `{'max_bootstrapped_demos': 2}`). The best is the candidate with the highest dev score,
    the baseline included: when nothing beats it, `best` is the baseline itself; when a version with the winner's
    content exists already, `best` is that version. A run stopped by its budget returns the best trial so far,
    with `stopped_by` set. Model errors fail the trial they happen in; more than `max_errors` of them stop
    the run with OptimizeError. Running it again with the same arguments resumes it: no answered call is repeated.

    >>> res = optimize('ticket_router:v1', 'support_tickets', budget={'max_calls': 300})
    """
    started, clock = utc_now(), time.perf_counter()
    name = _check_optimizer(optimizer)
    limits = _check_budget(budget)
    if isinstance(max_errors, bool) or not isinstance(max_errors, int) or max_errors < 0:
        raise OptimizeError(f'max_errors={max_errors!r} is not valid; give a whole number of errors, 0 or more')
    baseline = get_version(version)
    ds = get_dataset(dataset)
    check_template(baseline, ds)
    metric_name, score = _metric(metric, ds, baseline)
    try:
        train_rows, dev_rows = ds.rows(train), ds.rows(dev)
    except DatasetError as e:
        raise OptimizeError(f'{e}; pass train= and dev= naming splits with examples') from None
    teacher_version = _teacher(teacher, baseline, ds)
    plan = _plan(name, limits, dict(options or {}), len(train_rows), len(dev_rows), seed)
    dataset_version = ds.version
    run_id = _run_id(
        baseline=[baseline.id, baseline.content_hash],
        dataset=[ds.name, dataset_version, train, dev],
        optimizer=name,
        plan=plan,
        metric=metric_name if not callable(metric) else getattr(metric, '__qualname__', metric_name),
        teacher=[teacher_version.model, teacher_version.content_hash] if teacher_version else None,
        seed=seed,
        budget=dict(limits),
        max_errors=max_errors,
    )

    from . import dspy_adapter as da

    task = da.Task.create(baseline, ds.inputs, ds.meta.get('expected_column', 'expected'), [*train_rows, *dev_rows])
    trainset = [task.example(row) for row in train_rows]
    random.Random(seed).shuffle(trainset)
    devset = [task.example(row) for row in dev_rows]

    bar: Any = None

    def on_request(led: Ledger) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(calls=led.calls, trials=len(recorder.trials), refresh=False)

    ledger = da.Ledger(
        run_id,
        ds.name,
        max_requests=limits.get('max_calls'),
        deadline=time.monotonic() + 60 * limits['max_minutes'] if 'max_minutes' in limits else None,
        max_errors=max_errors,
        on_request=on_request,
    )
    trials_table = tables.trials()

    def on_trial(trial: Trial) -> None:
        trials_table.batch_update([_trial_row(run_id, name, baseline.id, trial)], if_not_exists='insert')

    recorder = da.TrialRecorder(
        task,
        ledger,
        [r['example_id'] for r in dev_rows],
        max_candidates=limits.get('max_candidates'),
        on_trial=on_trial,
    )
    # Proposals are one line: a base model rambles on past it, and every token costs time on a small machine.
    proposal_params = {'temperature': 0.0, 'max_tokens': 64, 'stop': ['\n'], 'seed': seed}
    student_lm = da.WorkspaceLM(baseline, ledger=ledger, proposal_params=proposal_params)
    teacher_lm = (
        da.WorkspaceLM(teacher_version, ledger=ledger, proposal_params=proposal_params) if teacher_version else None
    )
    adapter = da.VersionAdapter(task)
    run_row = {
        'run_id': run_id,
        'optimizer': name,
        'prompt': baseline.prompt,
        'baseline_id': baseline.id,
        'dataset': ds.name,
        'config': json.loads(json.dumps(plan, default=str)),
        'status': 'running',
        'started_at': started,
    }
    runs_table = tables.optimize_runs()
    runs_table.batch_update([_run_row(run_row, ledger, recorder, clock)], if_not_exists='insert')
    log.info('optimizer run %s: %s on %s (train %d, dev %d)', run_id, name, ds.name, len(trainset), len(devset))
    audit_log.record(
        'optimizer.started', run_id, after={'optimizer': name, 'baseline': baseline.id, 'dataset': ds.name}
    )

    import dspy

    def dspy_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> float:
        return float(score(pred.get(task.output), gold[task.output]))

    def score_on_dev(program: Any, kind: str) -> None:
        recorder.kind = kind  # type: ignore[assignment]
        dspy.Evaluate(devset=devset, metric=dspy_metric, num_threads=1, max_errors=_NO_LIMIT)(program)

    student = dspy.Predict(task.signature)
    student.demos = task.dspy_demos(baseline.demos)
    stop: da.Stop | None = None
    chosen: Candidate | None = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=limits.get('max_calls'), desc=f'optimize {name}', unit='req', file=sys.stderr)
    try:
        with (
            _quiet(),
            dspy.context(
                lm=student_lm,
                adapter=adapter,
                callbacks=[recorder],
                num_threads=1,
                max_errors=_NO_LIMIT,
                disable_history=True,
            ),
        ):
            dspy_optimizer, extra = _build(name, plan, dspy_metric, student_lm, teacher_lm, adapter)
            score_on_dev(student, 'baseline')
            recorder.kind = 'candidate'
            compiled = _compile(name, dspy_optimizer, student, trainset, devset, extra)
            predictor = compiled.predictors()[0]
            chosen = task.candidate(predictor.signature, predictor.demos)
            if not any(t.candidate.key == chosen.key for t in recorder.dev_trials()):
                score_on_dev(compiled, 'final')
    except da.Stop as s:
        stop = s
        log.info('optimizer run %s stopped: %s', run_id, s.message)
    except WorkspaceError:
        raise
    except Exception as e:
        runs_table.batch_update(
            [_run_row({**run_row, 'status': 'failed', 'error': str(e)}, ledger, recorder, clock)],
            if_not_exists='insert',
        )
        audit_log.record('optimizer.finished', run_id, before=baseline.id, after={'status': 'failed'}, note=str(e))
        raise OptimizeError(f'optimizer {name!r} failed in run {run_id}: {type(e).__name__}: {e}') from e
    finally:
        if bar is not None:
            bar.close()

    if stop is not None and stop.reason == 'max_errors':
        message = (
            f'optimizer run {run_id} stopped: {ledger.errors} model calls failed, more than max_errors={max_errors}; '
            f'the last error: {ledger.last_error}. Its trials so far are in ws.list_trials({run_id!r}); fix the '
            'model or endpoint, or raise max_errors'
        )
        runs_table.batch_update(
            [_run_row({**run_row, 'status': 'failed', 'error': message}, ledger, recorder, clock)],
            if_not_exists='insert',
        )
        audit_log.record('optimizer.finished', run_id, before=baseline.id, after={'status': 'failed'}, note=message)
        raise OptimizeError(message)
    scored = recorder.dev_trials()
    if not scored or scored[0].kind != 'baseline':
        raise OptimizeError(
            f'optimizer run {run_id} stopped before the baseline was scored on {dev!r} ({len(devset)} requests): '
            f'{stop.message if stop else "no dev score"}; raise the budget'
        )
    # The best dev score wins, the baseline's included: an optimizer's pick can score below the baseline (DSPy's
    # random search never scores the baseline's own demos). Among equals the optimizer's pick wins, then the
    # earliest trial; a run stopped by its budget has no pick, so it returns the best trial so far.
    picked = chosen.key if stop is None and chosen is not None else None
    best_trial = max(scored, key=lambda t: (t.dev_score, t.candidate.key == picked, -t.number))
    wall_s = time.perf_counter() - clock
    meta = {
        'optimizer': name,
        'optimizer_run_id': run_id,
        'config': run_row['config'],
        'seed': seed,
        'metric': metric_name,
        'train': {'dataset': ds.name, 'split': train, 'dataset_version': dataset_version, 'n': len(trainset)},
        'dev': {'dataset': ds.name, 'split': dev, 'dataset_version': dataset_version, 'n': len(devset)},
        'teacher': teacher_version.model if teacher_version else None,
        'trial': best_trial.number,
        'baseline_score': scored[0].dev_score,
        'dev_score': best_trial.dev_score,
        'stopped_by': stop.reason if stop else None,
        'requests': ledger.requests,
        'calls': ledger.calls,
        'tokens': ledger.tokens,
        'wall_s': round(wall_s, 3),
    }
    content = best_trial.candidate
    best = edit(
        baseline,
        template=content.template,
        demos=list(content.demos),
        instructions=content.instructions,
        note=f'{name} run {run_id}, trial {best_trial.number}',
        meta=meta,
    )
    status = 'stopped' if stop else 'done'
    audit_log.record('optimizer.finished', run_id, before=baseline.id, after={'status': status, 'best': best.id})
    runs_table.batch_update(
        [
            _run_row(
                {**run_row, 'status': status, 'stopped_by': meta['stopped_by'], 'best_version_id': best.id},
                ledger,
                recorder,
                clock,
                finished=True,
            )
        ],
        if_not_exists='insert',
    )
    return OptimizeResult(
        run_id=run_id,
        optimizer=name,
        dataset=ds.name,
        dev=dev,
        metric=metric_name,
        baseline=baseline,
        best=best,
        baseline_score=float(scored[0].dev_score or 0.0),
        best_score=float(best_trial.dev_score or 0.0),
        best_trial=best_trial.number,
        n_trials=len(recorder.trials),
        stopped_by=stop.reason if stop else None,
        requests=ledger.requests,
        calls=ledger.calls,
        tokens=ledger.tokens,
        errors=ledger.errors,
        wall_s=wall_s,
    )


def _run_row(
    row: Mapping[str, Any], ledger: Ledger, recorder: TrialRecorder, clock: float, *, finished: bool = False
) -> dict[str, Any]:
    scored = recorder.dev_trials()
    return {
        'stopped_by': None,
        'best_version_id': None,
        'error': None,
        **row,
        'baseline_score': scored[0].dev_score if scored and scored[0].kind == 'baseline' else None,
        'best_score': max((t.dev_score or 0.0) for t in scored) if scored else None,
        'trials': len(recorder.trials),
        'requests': ledger.requests,
        'calls': ledger.calls,
        'tokens': ledger.tokens,
        'errors': ledger.errors,
        'wall_s': time.perf_counter() - clock,
        'finished_at': utc_now() if finished or row.get('status') == 'failed' else None,
    }


def list_trials(run_id: str | None = None) -> pd.DataFrame:
    """Return the trials of one optimizer run (or of all), one row per candidate evaluation, in order.

    >>> list_trials('opt-1a2b3c4d5e6f')[['trial', 'kind', 'dev_score', 'calls', 'status']]
    """
    t = tables.trials()
    query: Any = t.where(t.run_id == run_id) if run_id is not None else t
    return query.order_by(t.run_id, t.trial).collect().to_pandas()


def list_optimizations(prompt: str | None = None) -> pd.DataFrame:
    """Return past optimizer runs, newest first, with their status, scores, best version and cost.

    >>> list_optimizations('ticket_router')
    """
    t = tables.optimize_runs()
    query: Any = t.where(t.prompt == prompt) if prompt is not None else t
    return query.order_by(t.started_at, asc=False).collect().to_pandas()
