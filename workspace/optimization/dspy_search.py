"""DSPy's optimizers over the workspace: their knobs checked before any call, built with the workspace's LM and
adapter (`dspy_adapter`), and run with every candidate evaluation recorded as a trial.

The baseline is scored on all of dev first, then DSPy's optimizer searches (bootstrapping demos from train,
proposing instructions, scoring candidates on dev through `dspy.Evaluate`, which the trial recorder watches).
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from workspace.errors import OptimizeError, WorkspaceError
from workspace.optimization import records
from workspace.optimization.records import Plan
from workspace.optimization.search import (
    Progress,
    Search,
    Setup,
    check_stop,
    counts,
    deadline_of,
    describe_demos,
    history_seconds,
    ledger_for,
    log,
    task_for,
    trial_row,
)

if TYPE_CHECKING:
    from workspace.core.versions import Version
    from workspace.optimization.dspy_adapter import Ledger, Task, Trial, WorkspaceLM

__all__ = ['NO_LIMIT', 'COMPILE_KEYS', 'check_dspy_options', 'dspy_search', 'trial_name']

# DSPy's own error limits are set out of reach: the ledger counts model errors and stops the run itself.
NO_LIMIT = 10**9
COMPILE_KEYS = {
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


#: Knobs the workspace sets itself on each DSPy optimizer (not the caller's to give).
_SET_BY_WORKSPACE = {'metric', 'teacher_settings', 'num_threads', 'max_errors', 'prompt_model', 'task_model'}


def check_dspy_options(name: str, options: Mapping[str, Any]) -> None:
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
    known = (set(params) - {'self'} | COMPILE_KEYS.get(name, set())) - _SET_BY_WORKSPACE
    unknown = sorted(set(options) - known)
    if unknown:
        raise OptimizeError(
            f'options for {name!r} are not valid: unknown knob(s) {", ".join(unknown)}; its knobs are '
            f'{", ".join(sorted(known))} (see the DSPy optimizer)'
        )


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

    compile_keys = COMPILE_KEYS.get(name, set())
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
                metric=metric, teacher_settings=teacher_settings, max_errors=NO_LIMIT, **knobs
            ), extra
        if name == 'bootstrap_random_search':
            return dspy.BootstrapFewShotWithRandomSearch(
                metric=metric, teacher_settings=teacher_settings, num_threads=1, max_errors=NO_LIMIT, **knobs
            ), extra
        if name == 'mipro_v2':
            return dspy.MIPROv2(
                metric=metric,
                prompt_model=prompt_lm,
                task_model=student_lm,
                teacher_settings=teacher_settings,
                num_threads=1,
                max_errors=NO_LIMIT,
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


def _dspy_plan(setup: Setup, answered: int) -> Plan:
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
    seconds = history_seconds(setup.baseline.model)
    return Plan(setup.name, candidates, candidates + 1, n, (n,), most, answered, seconds, budget, planned, test)


def dspy_search(setup: Setup, attempt: records.Attempt, *, progress: bool, clock: float) -> Search:
    """Run a DSPy optimizer, recording every candidate evaluation as a trial; return what it left."""
    import dspy

    from workspace.optimization import dspy_adapter as da

    baseline, limits = setup.baseline, setup.limits
    task = task_for(setup)
    trainset, devset = _examples(setup, task)
    bar = Progress(progress, setup.name, deadline_of(limits))
    ledger = ledger_for(setup, bar)
    trial_log = records.TrialLog(setup.run_id, attempt.number)
    active = da.Active()

    def on_trial(trial: Trial) -> None:
        trial_log.write(trial_row(setup.run_id, setup.name, baseline.id, trial))
        attempt.update(**counts(ledger, recorder.trials, clock))

    recorder = da.TrialRecorder(
        task, ledger, [r['example_id'] for r in setup.dev_rows], max_candidates=limits.get('max_candidates'),
        on_trial=on_trial, split_score=setup.metric.score, active=active,
    )  # fmt: skip
    plan = _dspy_plan(setup, records.answered_by_run(setup.run_id))
    attempt.update(plan=plan.as_dict())
    bar.say(str(plan))
    bar.expect(plan.planned_requests)
    student_lm, teacher_lm = _language_models(setup, ledger)
    adapter = da.VersionAdapter(task, active)
    dspy_metric = _dspy_metric(setup, task)

    def score_on_dev(program: Any, kind: str) -> None:
        recorder.kind = kind  # type: ignore[assignment]
        dspy.Evaluate(devset=devset, metric=dspy_metric, num_threads=1, max_errors=NO_LIMIT)(program)

    student = _student(task, baseline)
    stop: da.Stop | None = None
    picked: str | None = None
    try:
        with (
            _quiet(),
            dspy.context(
                lm=student_lm, adapter=adapter, callbacks=[recorder], num_threads=1, max_errors=NO_LIMIT,
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
    search = Search(recorder.trials, ledger, stop, picked, plan)
    check_stop(setup, search)
    _check_baseline_scored(setup, search, len(devset))
    return search


def _examples(setup: Setup, task: Task) -> tuple[list[Any], list[Any]]:
    """Return train (shuffled by the run's seed) and dev as DSPy examples."""
    trainset = [task.example(row) for row in setup.train_rows]
    random.Random(setup.seed).shuffle(trainset)
    return trainset, [task.example(row) for row in setup.dev_rows]


def _language_models(setup: Setup, ledger: Ledger) -> tuple[WorkspaceLM, WorkspaceLM | None]:
    """Return the student's LM (the baseline's model) and the teacher's, if the run has one, both on the ledger."""
    from workspace.optimization import dspy_adapter as da

    # Proposals are one line: a base model rambles on past it, and every token costs time on a small machine.
    proposal_params = {'temperature': 0.0, 'max_tokens': 64, 'stop': ['\n'], 'seed': setup.seed}
    student_lm = da.WorkspaceLM(setup.baseline, ledger=ledger, proposal_params=proposal_params)
    teacher_lm = (
        da.WorkspaceLM(setup.teacher, ledger=ledger, proposal_params=proposal_params) if setup.teacher else None
    )
    return student_lm, teacher_lm


def _dspy_metric(setup: Setup, task: Task) -> Callable[..., float]:
    """Return the run's per-example metric in the shape DSPy's optimizers call it."""

    def dspy_metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> float:
        return float(setup.metric.per_example(pred.get(task.output), gold[task.output]))

    return dspy_metric


def _student(task: Task, baseline: Version) -> Any:
    """Return the DSPy program of the baseline: its fixed demos, or a marker that it picks demos by its policy."""
    import dspy

    student = dspy.Predict(task.signature)
    if baseline.demo_policy is None:
        student.demos = task.dspy_demos(baseline.demos)  # type: ignore[arg-type]
    else:
        student.workspace_candidate = task.baseline_candidate()
    return student


def _check_baseline_scored(setup: Setup, search: Search, dev_requests: int) -> None:
    """Raise OptimizeError when the run stopped before the baseline had its score on dev."""
    scored = search.dev_trials()
    if not scored or scored[0].kind != 'baseline':
        stop = search.stop
        raise OptimizeError(
            f'optimizer run {setup.run_id} stopped before the baseline was scored on {setup.dev!r} '
            f'({dev_requests} requests): {stop.message if stop else "no dev score"}; raise the budget'
        )


def trial_name(trial: Trial, instructions: str) -> str:
    """Name a DSPy candidate by what it changed: its demos, and its instructions if they are new."""
    content = trial.candidate
    name = f'{describe_demos(content.version_demos)} demos'
    return name + (', new instructions' if content.instructions.strip() not in ('', instructions.strip()) else '')
