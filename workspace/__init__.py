"""A prompt-optimization workspace for JupyterLab whose data lives in Pixeltable.

>>> import workspace as ws
>>> tickets = ws.import_dataset('support_tickets', 'datasets/support_tickets.csv', input=['text'],
...                             expected='category', split='split', id='id')
>>> v1 = ws.create_version('ticket_router', template='Ticket: {{ text }}\\nCategory:',
...                        output=ws.choice(tickets.labels()))
>>> run = ws.evaluate(v1, tickets, split='dev')
>>> print(run.summary())

This front door names the concepts a notebook starts from; everything else lives in the layer that owns it, each
sub-package importing only those below it:

```
jobs/           the CLI, headless notebooks, schedules, the quickstart job, installation checks, exports
ui/             the comparison and annotation widgets, HTML views and reports: data in, HTML out
serving/        render and complete for applications, the HTTP API and its keys, experiments and traffic
mining/         raw prompt logs mined into families with canonical templates, drift, similarity search
optimization/   optimizers over versions (DSPy and the workspace's own), candidate selection, suggestions
analysis/       comparisons, diffs, changelogs, annotations and judge agreement, history, A/B reports
core/           datasets, versions, labels, demo policies, evaluation, runs, samples, judges, rules, metrics
storage/        the Pixeltable tables, the request store, model backends, the embedder, the audit log
config, errors, display    settings, the error classes, and how numbers read: any layer may use them
```

A name is imported when first used, so `import workspace` is fast and a command pays only for what it touches.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

# platformdirs warns on import (through Pixeltable) when XDG_RUNTIME_DIR is unset, as in containers and CI.
warnings.filterwarnings('ignore', message='XDG_RUNTIME_DIR is not set')

if TYPE_CHECKING:
    from workspace.analysis.ab_report import ab_report as ab_report
    from workspace.analysis.changelog import changelog as changelog
    from workspace.analysis.diff import diff as diff
    from workspace.analysis.model_comparison import evaluate_models as evaluate_models
    from workspace.analysis.serving_stats import executions as executions, serving_stats as serving_stats
    from workspace.core.datasets import (
        Dataset as Dataset,
        get_dataset as get_dataset,
        import_dataset as import_dataset,
        list_datasets as list_datasets,
    )
    from workspace.core.demo_policies import nearest as nearest
    from workspace.core.evaluate import add_scorer as add_scorer, evaluate as evaluate
    from workspace.core.judges import create_judge as create_judge
    from workspace.core.labels import set_label as set_label
    from workspace.core.rules import set_rule as set_rule
    from workspace.core.runs import Run as Run, get_run as get_run, list_runs as list_runs
    from workspace.core.versions import (
        Version as Version,
        choice as choice,
        create_version as create_version,
        edit as edit,
        get_version as get_version,
        list_versions as list_versions,
        text as text,
    )
    from workspace.errors import WorkspaceError as WorkspaceError
    from workspace.jobs.exports import import_prompt as import_prompt
    from workspace.jobs.notebooks import run_notebook as run_notebook
    from workspace.jobs.schedule import scheduled_eval as scheduled_eval
    from workspace.mining.drift import drift as drift
    from workspace.mining.families import families as families, get_family as get_family
    from workspace.mining.prompt_log import ingest_prompts as ingest_prompts
    from workspace.mining.similar import similar as similar
    from workspace.optimization.optimize import optimize as optimize
    from workspace.optimization.suggest import suggest as suggest
    from workspace.serving.experiments import start_experiment as start_experiment
    from workspace.serving.serve import complete as complete, render as render
    from workspace.serving.traffic import log_outcome as log_outcome
    from workspace.storage.audit_log import audit as audit
    from workspace.ui.annotate import annotate as annotate
    from workspace.ui.report import export_report as export_report
    from workspace.ui.widgets import compare as compare

#: Each public name and the module that defines it.
_CONCEPTS = {
    # datasets
    'Dataset': 'workspace.core.datasets',
    'import_dataset': 'workspace.core.datasets',
    'get_dataset': 'workspace.core.datasets',
    'list_datasets': 'workspace.core.datasets',
    # versions and labels
    'Version': 'workspace.core.versions',
    'create_version': 'workspace.core.versions',
    'edit': 'workspace.core.versions',
    'get_version': 'workspace.core.versions',
    'list_versions': 'workspace.core.versions',
    'choice': 'workspace.core.versions',
    'text': 'workspace.core.versions',
    'nearest': 'workspace.core.demo_policies',
    'set_label': 'workspace.core.labels',
    # evaluation
    'Run': 'workspace.core.runs',
    'evaluate': 'workspace.core.evaluate',
    'add_scorer': 'workspace.core.evaluate',
    'get_run': 'workspace.core.runs',
    'list_runs': 'workspace.core.runs',
    'create_judge': 'workspace.core.judges',
    'annotate': 'workspace.ui.annotate',
    # analysis
    'compare': 'workspace.ui.widgets',
    'diff': 'workspace.analysis.diff',
    'changelog': 'workspace.analysis.changelog',
    'evaluate_models': 'workspace.analysis.model_comparison',
    'export_report': 'workspace.ui.report',
    # optimization
    'optimize': 'workspace.optimization.optimize',
    'suggest': 'workspace.optimization.suggest',
    # notebooks, schedules and prompt files
    'run_notebook': 'workspace.jobs.notebooks',
    'scheduled_eval': 'workspace.jobs.schedule',
    'import_prompt': 'workspace.jobs.exports',
    # guardrails, serving and experiments
    'set_rule': 'workspace.core.rules',
    'render': 'workspace.serving.serve',
    'complete': 'workspace.serving.serve',
    'start_experiment': 'workspace.serving.experiments',
    'log_outcome': 'workspace.serving.traffic',
    'ab_report': 'workspace.analysis.ab_report',
    'executions': 'workspace.analysis.serving_stats',
    'serving_stats': 'workspace.analysis.serving_stats',
    'audit': 'workspace.storage.audit_log',
    # prompt families
    'ingest_prompts': 'workspace.mining.prompt_log',
    'families': 'workspace.mining.families',
    'get_family': 'workspace.mining.families',
    'drift': 'workspace.mining.drift',
    'similar': 'workspace.mining.similar',
    # errors
    'WorkspaceError': 'workspace.errors',
}

__all__ = list(_CONCEPTS)

_LAYERS = (
    'storage',
    'core',
    'analysis',
    'optimization',
    'mining',
    'serving',
    'ui',
    'jobs',
    'config',
    'errors',
    'display',
)


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used (PEP 562), or a layer sub-package."""
    if name in _CONCEPTS:
        value = getattr(importlib.import_module(_CONCEPTS[name]), name)
        globals()[name] = value
        return value
    if name in _LAYERS:
        return importlib.import_module(f'{__name__}.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted([*globals(), *_CONCEPTS, *_LAYERS])
