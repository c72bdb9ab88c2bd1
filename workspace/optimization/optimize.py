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
  (`racing`, `knn`): a budget of any size ends with the best candidate scored so far and its evidence; the
  others are DSPy's (`dspy_search`);
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

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from workspace.core import rules
from workspace.core.baselines import References, reference_baselines
from workspace.core.datasets import Dataset, get_dataset
from workspace.core.demo_policies import nearest
from workspace.core.evaluate import check_template, evaluate
from workspace.core.versions import Version, edit, get_version
from workspace.errors import DatasetError, OptimizeError, VersionError, WorkspaceError
from workspace.optimization import records
from workspace.optimization.dspy_search import check_dspy_options, dspy_search, trial_name
from workspace.optimization.records import Plan, list_optimizations, list_trials, optimizer_records
from workspace.optimization.search import Budget, Search, Setup, counts, describe_demos
from workspace.optimization.selection import Decision, MetricFn, Scored, Verdict, build_metric, decide, verdict
from workspace.storage import audit_log, backends

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
    #: the top candidate's trial, dev score and dev rows (also when its version existed before, with its own meta)
    candidate_trial: int | None = None
    candidate_score: float | None = None
    candidate_n: int | None = None

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
            demos=frame['demos'].map(describe_demos),
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
    check_dspy_options(name, options)
    plan.update(options)
    return plan


def _run_id(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=repr)
    return 'opt-' + hashlib.sha256(text.encode()).hexdigest()[:12]


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
) -> Setup:
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
    # The pool's embedding index first (retrieved demos and the reference baselines read it): making it is a new
    # version of the dataset table, which the run records.
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
    return Setup(
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


def _first_row(setup: Setup) -> dict[str, Any]:
    return {
        'run_id': setup.run_id,
        'optimizer': setup.name,
        'prompt': setup.baseline.prompt,
        'baseline_id': setup.baseline.id,
        'dataset': setup.dataset.name,
        'config': json.loads(json.dumps(setup.plan, default=str)),
    }


def _scored(setup: Setup, search: Search) -> tuple[Scored, list[Scored]]:
    """Return the baseline and the candidates as the decision sees them: for a race, each candidate's
    predictions, its metric on the last rung it completed, and how far it went; else the dev-scored trials."""
    if search.race is not None:
        from workspace.optimization.knn import race_scored  # imports DSPy: only when a race ran

        return race_scored(setup, search)
    scored = search.dev_trials()
    seen, candidates = {scored[0].candidate.key}, []
    for t in scored[1:]:
        if t.candidate.key in seen:
            continue  # the same content scored again (an optimizer's final pick): judged once
        seen.add(t.candidate.key)
        picked = t.candidate.key == search.picked
        candidates.append(
            Scored(
                t.number,
                trial_name(t, setup.baseline.instructions),
                t.example_predictions,
                float(t.dev_score or 0.0),
                picked=picked,
            )
        )
    first = scored[0]
    return Scored(first.number, setup.baseline.id, first.example_predictions, float(first.dev_score or 0.0)), candidates


def _decide(setup: Setup, search: Search, selection: Mapping[str, Any]) -> tuple[Decision, Scored, list[Scored]]:
    """Choose among the scored candidates, and note each flagged trial's flags on its record."""
    baseline, candidates = _scored(setup, search)
    decision = decide(setup.metric, baseline, candidates, task=setup.dataset.task, dev=setup.dev, **selection)
    if decision.flags:
        trial_log = records.TrialLog(setup.run_id, 0)
        trial_log.flag([{'trial': n, 'flags': f} for n, f in decision.flags.items()])
    return decision, baseline, candidates


def _references(
    setup: Setup, decision: Decision, baseline: Scored, candidates: list[Scored]
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
    setup: Setup, search: Search, decision: Decision, scored: tuple[Scored, list[Scored]], wall_s: float
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


def _confirm(setup: Setup, best: Version) -> Verdict | None:
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
        from workspace.optimization.knn import race_search

        searched = race_search if setup.name == 'knn_fewshot' else dspy_search
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
    top = next((c for c in candidates if c.trial == decision.trial), None)
    status = 'stopped' if search.stop else 'done'
    attempt.update(
        **counts(ledger, search.trials, clock), status=status, stopped_by=search.stop.reason if search.stop else None,
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
        candidate_trial=None if top is None else top.trial,
        candidate_score=None if top is None else float(top.value),
        candidate_n=None if top is None else len(top.predictions),
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
