"""Optimize a version's demos and instructions with DSPy's optimizers; the winner becomes a new version.

DSPy does the search (`labeled_fewshot`, `bootstrap_fewshot`, `bootstrap_random_search`, `knn_fewshot`,
`mipro_v2`, `copro`, `gepa`); the workspace supplies the model, the prompt format and the bookkeeping (see
`dspy_adapter`), and chooses the winner itself (see `selection`):

- every model call goes through the request store, so it is cached, counted and traceable to the optimizer run
  and trial that asked for it, and committed at once: a killed run started again with the same arguments repeats
  no call the store has answered, and ends with the same result for a fixed seed;
- every candidate evaluation is a row of the trials table (`prompt_workspace/trials`), written as it finishes,
  with its predictions, its score by the run's metric (a metric of the whole split for labels) and its flags;
- the best eligible candidate becomes a new immutable version whose parent is the baseline, with the optimizer,
  its config, the seed, the dataset versions, the scores, the decision and the cost in its `meta`; it replaces
  the baseline as `best` only if it is better on dev by a paired test, and the test split, if there is one,
  reports the winner against the baseline in the same call.

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

from workspace.config import utc_now
from workspace.core import rules
from workspace.core.datasets import Dataset, get_dataset
from workspace.core.demo_policies import nearest, retrieve
from workspace.core.evaluate import check_template, evaluate
from workspace.core.versions import Version, edit, get_version
from workspace.errors import DatasetError, OptimizeError, VersionError, WorkspaceError
from workspace.optimization.selection import Decision, Metric, MetricFn, Scored, Verdict, build_metric, decide, verdict
from workspace.storage import audit_log, backends, tables
from workspace.storage.embeddings import embed

if TYPE_CHECKING:
    from workspace.optimization.dspy_adapter import Ledger, Task, Trial, TrialRecorder

__all__ = ['OPTIMIZERS', 'Budget', 'MetricFn', 'OptimizeResult', 'optimize', 'list_trials', 'list_optimizations']

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
    it can be inspected or compared; `decision` says in words why it was or was not accepted. `test` compares
    the winner with the baseline on the test split, when there is one and the winner is not the baseline.
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
        lines = [repr(self), '', self.decision]
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
        frame = frame[frame['scope'] == 'dev']
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
    scored_labels: bool = False,
) -> dict[str, Any]:
    """Return the optimizer's knobs: small defaults that suit a small local model, the budget, then `options`.
    `scored_labels` says the baseline is a choice on a model that exposes label probabilities (the local one)."""
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
    elif name == 'knn_fewshot':
        # The demos closest to each example, from the train split: which k, whether to cap demos per label, and (for
        # labels on the local model) whether to calibrate the label choice (docs/benchmarks.md: it corrects the
        # label bias a small model's prompt gives it).
        decodes = ['mask', 'calibrated'] if scored_labels else ['mask']
        plan = {'k': [4, 8, 16], 'per_label_max': [None], 'order': 'nearest_last', 'decode': decodes}
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
    if name == 'knn_fewshot':
        plan['decode'] = [plan['decode']] if isinstance(plan['decode'], str) else list(plan['decode'])
        plan['k'] = [plan['k']] if isinstance(plan['k'], int) else list(plan['k'])
        plan['per_label_max'] = (
            list(plan['per_label_max']) if isinstance(plan['per_label_max'], list) else [plan['per_label_max']]
        )
        variants = len(plan['k']) * len(plan['per_label_max']) * len(plan['decode'])
        if most is not None and variants > most:
            plan['k'] = plan['k'][: max(1, most // (len(plan['per_label_max']) * len(plan['decode'])))]
    return plan


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
        if name == 'knn_fewshot':
            return None, dict(knobs)
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
    train_rows, dev_rows = _allowed(baseline, ds, train_rows, train), _allowed(baseline, ds, dev_rows, dev)
    if test == 'auto':
        test = 'test' if 'test' in ds.splits() and 'test' not in (train, dev) else None
    elif test is not None and test not in ds.splits():
        raise OptimizeError(f'test={test!r}: dataset {ds.name!r} has splits {", ".join(ds.splits())}; or test=None')
    if name == 'knn_fewshot':  # the pool's embedding index first: making it is a new version of the dataset table
        nearest(ds, k=1, split=train)
    expected = {str(r['example_id']): r['expected'] for r in dev_rows}
    scorer = build_metric(metric, task=ds.task, expected=expected, schema=baseline.output.get('schema'))
    teacher_version = _teacher(teacher, baseline, ds)
    scored_labels = baseline.output['kind'] == 'choice' and baseline.model.partition(':')[0] == 'local'
    plan = _plan(name, limits, dict(options or {}), len(train_rows), len(dev_rows), seed, scored_labels=scored_labels)
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


def _allowed(baseline: Version, ds: Dataset, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """Return the rows no blocking input rule of the baseline's prompt fails: the others never reach a model (not
    as examples, nor as demos, nor in a proposer's prompt)."""
    blocking = [r for r in rules.blocking_rules(baseline.prompt) if r.stage == 'input']
    kept = [row for row in rows if not rules.screen(blocking, {n: row[n] for n in ds.inputs}, None)]
    if len(kept) < len(rows):
        log.warning(
            '%d of %d %s examples are left out: a blocking input rule fails them',
            len(rows) - len(kept),
            len(rows),
            split,
        )
    if not kept:
        raise OptimizeError(
            f'every {split} example fails a blocking input rule of {baseline.prompt!r}; see ws.list_rules()'
        )
    return kept


def _screener(baseline: Version, ds: Dataset) -> Callable[[Mapping[str, Any], Mapping[str, Any] | None], str | None]:
    """Return the optimizer's check of each request before it is sent: the blocking rules of the baseline's prompt,
    input rules on a task request's input fields, prompt rules on every prompt (proposals included)."""
    blocking = rules.blocking_rules(baseline.prompt)

    def screen(request: Mapping[str, Any], inputs: Mapping[str, Any] | None) -> str | None:
        fields = {n: inputs.get(n) for n in ds.inputs} if inputs is not None else None
        found = rules.screen(blocking, fields, request.get('prompt'))
        return rules.blocked_message(found) if found else None

    return screen


@dataclass
class _Search:
    """What the DSPy run left: its trials and cost, whether a budget stopped it, and the optimizer's own pick."""

    task: Task
    recorder: TrialRecorder
    ledger: Ledger
    stop: Any
    picked: str | None


class _PoolNeighbours:
    """Stands in for DSPy's in-memory `KNN` inside `KNNFewShot`: the neighbours come from the pool's Pixeltable
    embedding index, through the very function evaluation uses, so the optimizer scores the requests
    `evaluate` will send."""

    def __init__(self, policy: Mapping[str, Any], task: Task) -> None:
        self.policy, self.task = policy, task

    def __call__(self, **inputs: Any) -> list[Any]:
        import dspy

        example = {**inputs, 'example_id': self.task.example_id(inputs)}
        got = retrieve(self.policy, [example], dataset=self.task.dataset)[str(example['example_id'])]
        return [
            dspy.Example(**{n: d[n] for n in self.task.inputs}, **{self.task.output: d['expected']}).with_inputs(
                *self.task.inputs
            )
            for d in got.demos
        ]


def _knn_programs(setup: _Setup, task: Task, student: Any, trainset: list[Any]) -> list[Any]:
    """Return one DSPy `KNNFewShot` program per (k, per_label_max) of the plan, each tagged with its candidate."""
    import dspy

    from udfs import render as render_udfs
    from workspace.optimization.dspy_adapter import Candidate, demo_template

    template = setup.baseline.template
    if not setup.baseline.is_chat and 'demos' not in render_udfs.template_variables(template):  # chat: demo turns
        template = demo_template(template, task.inputs)
    programs = []
    output = dict(setup.baseline.output)
    for decode in setup.plan['decode']:
        spec = None
        if decode != output.get('decode', 'mask'):
            spec = {k: v for k, v in {**output, 'decode': decode}.items() if k != 'decode' or decode != 'mask'}
        for k in setup.plan['k']:
            for cap in setup.plan['per_label_max']:
                policy = nearest(setup.dataset, k=k, split=setup.train, per_label_max=cap, order=setup.plan['order'])
                # labeled demos only: the neighbours as they are, with no bootstrapping call
                knn = dspy.KNNFewShot(
                    k, trainset, vectorizer=dspy.Embedder(embed), max_bootstrapped_demos=0, max_labeled_demos=k
                )
                knn.KNN = _PoolNeighbours(policy, task)
                program = knn.compile(student)
                program.workspace_candidate = Candidate(template, setup.baseline.instructions, (), policy, spec)
                programs.append(program)
    return programs


def _search(setup: _Setup, *, progress: bool, started: Any, clock: float) -> _Search:
    """Run the DSPy optimizer, recording every candidate evaluation as a trial; return what it left."""
    import dspy

    from workspace.optimization import dspy_adapter as da

    baseline, ds = setup.baseline, setup.dataset
    task = da.Task.create(
        baseline, ds.inputs, ds.meta.get('expected_column', 'expected'), [*setup.train_rows, *setup.dev_rows],
        dataset=ds.name,
    )  # fmt: skip
    trainset = [task.example(row) for row in setup.train_rows]
    random.Random(setup.seed).shuffle(trainset)
    devset = [task.example(row) for row in setup.dev_rows]
    bar: Any = None

    def on_request(led: Ledger) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(calls=led.calls, trials=len(recorder.trials), refresh=False)

    limits = setup.limits
    ledger = da.Ledger(
        setup.run_id,
        ds.name,
        max_requests=limits.get('max_calls'),
        deadline=time.monotonic() + 60 * limits['max_minutes'] if 'max_minutes' in limits else None,
        max_errors=setup.max_errors,
        on_request=on_request,
        screen=_screener(baseline, ds),
    )
    trials_table = tables.trials()
    active = da.Active()
    recorder = da.TrialRecorder(
        task,
        ledger,
        [r['example_id'] for r in setup.dev_rows],
        max_candidates=limits.get('max_candidates'),
        on_trial=lambda t: trials_table.batch_update(
            [_trial_row(setup.run_id, setup.name, baseline.id, t)], if_not_exists='insert'
        ),
        split_score=setup.metric.score,
        active=active,
    )
    # Proposals are one line: a base model rambles on past it, and every token costs time on a small machine.
    proposal_params = {'temperature': 0.0, 'max_tokens': 64, 'stop': ['\n'], 'seed': setup.seed}
    student_lm = da.WorkspaceLM(baseline, ledger=ledger, proposal_params=proposal_params)
    teacher_lm = (
        da.WorkspaceLM(setup.teacher, ledger=ledger, proposal_params=proposal_params) if setup.teacher else None
    )
    adapter = da.VersionAdapter(task, active)
    run_row = _first_row(setup, started)
    tables.optimize_runs().batch_update([_run_row(run_row, ledger, recorder, clock)], if_not_exists='insert')
    log.info(
        'optimizer run %s: %s on %s (train %d, dev %d)', setup.run_id, setup.name, ds.name, len(trainset), len(devset)
    )
    audit_log.record('optimizer.started', setup.run_id, after={'optimizer': setup.name, 'baseline': baseline.id})

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
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=limits.get('max_calls'), desc=f'optimize {setup.name}', unit='req', file=sys.stderr)
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
            if setup.name == 'knn_fewshot':
                for program in _knn_programs(setup, task, student, trainset):
                    score_on_dev(program, 'candidate')
            else:
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
        _record_failure(setup, run_row, ledger, recorder, clock, str(e))
        raise OptimizeError(f'optimizer {setup.name!r} failed in run {setup.run_id}: {type(e).__name__}: {e}') from e
    finally:
        if bar is not None:
            bar.close()
    if stop is not None and stop.reason == 'max_errors':
        message = (
            f'optimizer run {setup.run_id} stopped: {ledger.errors} model calls failed, more than '
            f'max_errors={setup.max_errors}; the last error: {ledger.last_error}. Its trials so far are in '
            f'ws.list_trials({setup.run_id!r}); fix the model or endpoint, or raise max_errors'
        )
        _record_failure(setup, run_row, ledger, recorder, clock, message)
        raise OptimizeError(message)
    scored = recorder.dev_trials()
    if not scored or scored[0].kind != 'baseline':
        raise OptimizeError(
            f'optimizer run {setup.run_id} stopped before the baseline was scored on {setup.dev!r} '
            f'({len(devset)} requests): {stop.message if stop else "no dev score"}; raise the budget'
        )
    return _Search(task, recorder, ledger, stop, picked)


def _first_row(setup: _Setup, started: Any) -> dict[str, Any]:
    return {
        'run_id': setup.run_id,
        'optimizer': setup.name,
        'prompt': setup.baseline.prompt,
        'baseline_id': setup.baseline.id,
        'dataset': setup.dataset.name,
        'config': json.loads(json.dumps(setup.plan, default=str)),
        'status': 'running',
        'started_at': started,
    }


def _record_failure(
    setup: _Setup, row: Mapping[str, Any], ledger: Ledger, recorder: TrialRecorder, clock: float, error: str
) -> None:
    tables.optimize_runs().batch_update(
        [_run_row({**row, 'status': 'failed', 'error': error}, ledger, recorder, clock)], if_not_exists='insert'
    )
    audit_log.record(
        'optimizer.finished', setup.run_id, before=setup.baseline.id, after={'status': 'failed'}, note=error
    )


def _decide(setup: _Setup, search: _Search, selection: Mapping[str, Any]) -> Decision:
    """Choose among the candidates scored on all of dev, and record each trial's flags."""
    scored = search.recorder.dev_trials()
    base_key = scored[0].candidate.key
    seen, candidates = {base_key}, []
    for t in scored[1:]:
        if t.candidate.key in seen:
            continue  # the same content scored again (an optimizer's final pick): judged once
        seen.add(t.candidate.key)
        candidates.append(
            Scored(
                t.number,
                f'trial {t.number}',
                t.example_predictions,
                float(t.dev_score or 0.0),
                picked=t.candidate.key == search.picked,
            )  # fmt: skip
        )
    baseline = Scored(
        scored[0].number, setup.baseline.id, scored[0].example_predictions, float(scored[0].dev_score or 0.0)
    )
    decision = decide(setup.metric, baseline, candidates, task=setup.dataset.task, dev=setup.dev, **selection)
    if decision.flags:
        by_number = {t.number: t for t in search.recorder.trials}
        tables.trials().batch_update(
            [
                _trial_row(setup.run_id, setup.name, setup.baseline.id, by_number[n], f)
                for n, f in decision.flags.items()
            ]
        )
    return decision


def _write_candidate(setup: _Setup, search: _Search, decision: Decision, wall_s: float) -> Version | None:
    """Write the top eligible candidate as a version whose parent is the baseline, with its lineage in `meta`."""
    if decision.trial is None:
        return None
    trial = next(t for t in search.recorder.trials if t.number == decision.trial)
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
        'baseline_score': search.recorder.dev_trials()[0].dev_score,
        'dev_score': trial.dev_score,
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
    return edit(
        setup.baseline,
        template=content.template,
        demos=content.version_demos,
        instructions=content.instructions,
        output=dict(content.output) if content.output is not None else None,  # type: ignore[arg-type]
        note=f'{setup.name} run {setup.run_id}, trial {trial.number}'
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
    started, clock = utc_now(), time.perf_counter()
    if not 0 < alpha < 1 or (margin is not None and not 0 <= margin < 1):
        raise OptimizeError(f'alpha={alpha!r} and margin={margin!r}: give 0 < alpha < 1 and 0 <= margin < 1')
    selection = {'alpha': alpha, 'margin': margin, 'allow_degenerate': allow_degenerate}
    setup = _prepare(
        version, dataset, optimizer=optimizer, metric=metric, train=train, dev=dev, test=test, budget=budget,
        teacher=teacher, seed=seed, max_errors=max_errors, options=options,
    )  # fmt: skip
    search = _search(setup, progress=progress, started=started, clock=clock)
    decision = _decide(setup, search, selection)
    candidate = _write_candidate(setup, search, decision, time.perf_counter() - clock)
    best = candidate if decision.accepted and candidate is not None else setup.baseline
    test_verdict = _confirm(setup, best)
    ledger, scored = search.ledger, search.recorder.dev_trials()
    best_trial = decision.trial if decision.accepted and decision.trial is not None else scored[0].number
    best_score = next(t.dev_score for t in scored if t.number == best_trial) or 0.0
    row = {
        **_first_row(setup, started),
        'status': 'stopped' if search.stop else 'done',
        'stopped_by': search.stop.reason if search.stop else None,
        'best_version_id': best.id,
        'decision': decision.reason,
    }
    tables.optimize_runs().batch_update(
        [_run_row(row, ledger, search.recorder, clock, finished=True)], if_not_exists='insert'
    )
    audit_log.record(
        'optimizer.finished', setup.run_id, before=setup.baseline.id, after={'status': row['status'], 'best': best.id}
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
        decision=decision.reason,
        dev_verdict=decision.dev,
        test=test_verdict,
        baseline_score=float(scored[0].dev_score or 0.0),
        best_score=float(best_score),
        best_trial=best_trial,
        n_trials=len(search.recorder.trials),
        stopped_by=search.stop.reason if search.stop else None,
        requests=ledger.requests,
        calls=ledger.calls,
        tokens=ledger.tokens,
        errors=ledger.errors,
        wall_s=time.perf_counter() - clock,
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
        'decision': row.get('decision'),
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
