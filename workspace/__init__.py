"""A prompt-optimization workspace for JupyterLab whose data lives in Pixeltable.

>>> import workspace as ws
>>> tickets = ws.import_dataset('support_tickets', 'datasets/support_tickets.csv', input=['text'],
...                             expected='category', split='split', id='id')
>>> v1 = ws.create_version('ticket_router', template='Ticket: {{ text }}\\nCategory:',
...                        output=ws.choice(tickets.labels()))
>>> run = ws.evaluate(v1, tickets, split='dev')
>>> print(run.summary())
"""

from .datasets import Dataset, get_dataset, import_dataset, list_datasets
from .diff import VersionDiff, diff_versions, render_diff_html, render_diff_text
from .errors import (
    BackendError,
    ComparisonError,
    DatasetError,
    LabelError,
    OptimizeError,
    TemplateError,
    VersionError,
    WorkspaceError,
)
from .evaluate import add_scorer, evaluate
from .labels import label_history, list_labels, rollback, set_label
from .runs import Run, Summary, get_run, lineage, list_runs
from .versions import Version, choice, create_version, edit, get_version, json_object, list_versions, text

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
    # labels
    'set_label',
    'rollback',
    'label_history',
    'list_labels',
    # evaluation
    'evaluate',
    'add_scorer',
    'Run',
    'Summary',
    'get_run',
    'list_runs',
    'lineage',
    # diff
    'VersionDiff',
    'diff_versions',
    'render_diff_html',
    'render_diff_text',
    # errors
    'WorkspaceError',
    'DatasetError',
    'TemplateError',
    'VersionError',
    'LabelError',
    'BackendError',
    'ComparisonError',
    'OptimizeError',
]
