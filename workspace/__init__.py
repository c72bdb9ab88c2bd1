"""A prompt-optimization workspace for JupyterLab whose data lives in Pixeltable.

>>> import workspace as ws
>>> tickets = ws.import_dataset('support_tickets', 'datasets/support_tickets.csv', input=['text'],
...                             expected='category', split='split', id='id')
>>> v1 = ws.create_version('ticket_router', template='Ticket: {{ text }}\\nCategory:',
...                        output=ws.choice(tickets.labels()))
>>> run = ws.evaluate(v1, tickets, split='dev')
>>> print(run.summary())
"""

import warnings

# platformdirs warns on import (through Pixeltable) when XDG_RUNTIME_DIR is unset, as in containers and CI.
warnings.filterwarnings('ignore', message='XDG_RUNTIME_DIR is not set')

from .ab import ABReport, Assigner, ab_report, assign, log_outcome, log_outcomes  # noqa: E402
from .agreement import Agreement, judge_agreement  # noqa: E402
from .annotate import AnnotateView, add_annotation, annotate, list_annotations  # noqa: E402
from .api import RunningServer, start_server  # noqa: E402
from .audit_log import audit  # noqa: E402
from .changelog import Changelog, changelog, get_changelog  # noqa: E402
from .client import Client  # noqa: E402
from .compare import (  # noqa: E402
    Promotion,
    VersionComparison,
    build_comparison,
    compare_table,
    diff,
    flips,
    promote_if_better,
    significance,
)
from .datasets import Dataset, get_dataset, import_dataset, list_datasets  # noqa: E402
from .demos import DemoPolicy, nearest  # noqa: E402
from .drift import DriftReport, drift  # noqa: E402
from .errors import (  # noqa: E402
    BackendError,
    ComparisonError,
    DatasetError,
    EmbedderError,
    FamilyError,
    GuardrailViolation,
    LabelError,
    OptimizeError,
    RegressionError,
    RuleError,
    ServeError,
    TemplateError,
    VersionError,
    WorkspaceError,
)
from .evaluate import add_scorer, evaluate  # noqa: E402
from .experiments import list_experiments, start_experiment, stop_experiment  # noqa: E402
from .exports import export_run, export_runs, export_version, import_prompt  # noqa: E402
from .families import Family, families, get_family, merge_families, split_family  # noqa: E402
from .history import LineageGraph, lineage_graph  # noqa: E402
from .judges import correctness_judge, create_judge, judge_run, rubric_judge  # noqa: E402
from .keys import create_key, list_keys, revoke_key  # noqa: E402
from .labels import label_history, list_labels, rollback, set_label  # noqa: E402
from .models import ModelComparison, evaluate_models  # noqa: E402
from .notebooks import NotebookRun, list_notebook_runs, run_notebook  # noqa: E402
from .optimize import Budget, OptimizeResult, list_optimizations, list_trials, optimize  # noqa: E402
from .prompt_diff import VersionDiff, diff_versions, render_diff_html, render_diff_text  # noqa: E402
from .prompt_log import IngestReport, ingest_prompts  # noqa: E402
from .report import export_report  # noqa: E402
from .rules import Rule, get_rule, list_rules, set_rule  # noqa: E402
from .runs import Lineage, Run, Summary, get_run, lineage, list_runs  # noqa: E402
from .samples import SampleReport, sample_report  # noqa: E402
from .schedule import ScheduledEval, scheduled_eval, scheduled_history  # noqa: E402
from .serve import Completion, Rendered, complete, log_execution_outcome, render  # noqa: E402
from .similar import similar  # noqa: E402
from .suggest import Suggestion, suggest  # noqa: E402
from .versions import Version, choice, create_version, edit, get_version, json_object, list_versions, text  # noqa: E402
from .widgets import CompareView, compare  # noqa: E402

resolve = get_version

__all__ = [
    # datasets
    'Dataset',
    'import_dataset',
    'get_dataset',
    'list_datasets',
    # versions
    'Version',
    'create_version',
    'edit',
    'get_version',
    'resolve',
    'list_versions',
    'text',
    'choice',
    'json_object',
    'nearest',
    'DemoPolicy',
    # labels
    'set_label',
    'rollback',
    'label_history',
    'list_labels',
    'promote_if_better',
    'Promotion',
    # evaluation
    'evaluate',
    'add_scorer',
    'Run',
    'Summary',
    'get_run',
    'list_runs',
    'lineage',
    'Lineage',
    'lineage_graph',
    'LineageGraph',
    # judges and samples
    'create_judge',
    'correctness_judge',
    'rubric_judge',
    'judge_run',
    'sample_report',
    'SampleReport',
    'annotate',
    'AnnotateView',
    'add_annotation',
    'list_annotations',
    'judge_agreement',
    'Agreement',
    'evaluate_models',
    'ModelComparison',
    'changelog',
    'get_changelog',
    'Changelog',
    # exports and imports
    'export_run',
    'export_runs',
    'export_version',
    'import_prompt',
    # comparison
    'compare',
    'CompareView',
    'build_comparison',
    'VersionComparison',
    'compare_table',
    'flips',
    'significance',
    'diff',
    'export_report',
    # optimization
    'optimize',
    'OptimizeResult',
    'Budget',
    'list_trials',
    'list_optimizations',
    'suggest',
    'Suggestion',
    # notebooks and schedules
    'run_notebook',
    'NotebookRun',
    'list_notebook_runs',
    'scheduled_eval',
    'ScheduledEval',
    'scheduled_history',
    'RegressionError',
    # A/B experiments
    'Assigner',
    'assign',
    'log_outcome',
    'log_outcomes',
    'ab_report',
    'ABReport',
    # diff
    'VersionDiff',
    'diff_versions',
    'render_diff_html',
    'render_diff_text',
    # guardrails
    'set_rule',
    'get_rule',
    'list_rules',
    'Rule',
    # serving
    'render',
    'complete',
    'Rendered',
    'Completion',
    'log_execution_outcome',
    'start_experiment',
    'stop_experiment',
    'list_experiments',
    'start_server',
    'RunningServer',
    'Client',
    'create_key',
    'revoke_key',
    'list_keys',
    # audit
    'audit',
    # prompt families
    'ingest_prompts',
    'IngestReport',
    'similar',
    'families',
    'get_family',
    'Family',
    'merge_families',
    'split_family',
    'drift',
    'DriftReport',
    # errors
    'WorkspaceError',
    'DatasetError',
    'TemplateError',
    'VersionError',
    'LabelError',
    'BackendError',
    'ComparisonError',
    'OptimizeError',
    'EmbedderError',
    'RuleError',
    'GuardrailViolation',
    'ServeError',
    'FamilyError',
]
