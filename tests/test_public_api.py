"""The public surface: the front door lists the concepts a notebook starts from, each documented, none an alias;
`import workspace` loads none of the heavy parts."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest
from conftest import ROOT

import workspace

README = (ROOT / 'README.md').read_text()

#: The concepts of the front door, by area. Everything else is imported from the sub-package that owns it.
CONCEPTS = [
    # datasets
    'Dataset', 'import_dataset', 'get_dataset', 'list_datasets',
    # versions and labels
    'Version', 'create_version', 'edit', 'get_version', 'list_versions', 'choice', 'text', 'nearest', 'set_label',
    # evaluation
    'Run', 'evaluate', 'add_scorer', 'get_run', 'list_runs', 'create_judge', 'annotate',
    # analysis
    'compare', 'diff', 'changelog', 'evaluate_models', 'export_report',
    # optimization
    'optimize', 'suggest',
    # notebooks, schedules and prompt files
    'run_notebook', 'scheduled_eval', 'import_prompt',
    # guardrails, serving and experiments
    'set_rule', 'render', 'complete', 'start_experiment', 'log_outcome', 'ab_report', 'executions', 'serving_stats',
    'audit',
    # prompt families
    'ingest_prompts', 'families', 'get_family', 'drift', 'similar',
    # errors
    'WorkspaceError',
]  # fmt: skip


def test_the_front_door_lists_the_concepts():
    assert workspace.__all__ == CONCEPTS
    assert len(CONCEPTS) <= 45


def test_no_name_is_an_alias_of_another():
    values = [getattr(workspace, name) for name in CONCEPTS]
    assert len({id(v) for v in values}) == len(values)


@pytest.mark.parametrize('name', CONCEPTS)
def test_exported_name_has_docstring_and_is_in_readme(name):
    value = getattr(workspace, name)
    assert inspect.getdoc(value), f'{name} has no docstring'
    assert f'`{name}' in README, f'README.md does not document {name}'


def test_layers_and_errors_are_reachable_from_the_package():
    assert workspace.errors.DatasetError.__mro__[1] is workspace.WorkspaceError
    assert workspace.core.evaluate.evaluate is workspace.evaluate
    with pytest.raises(AttributeError, match="has no attribute 'resolve'"):
        workspace.resolve  # noqa: B018


def test_import_workspace_loads_no_heavy_part():
    code = (
        'import sys, workspace\n'
        "heavy = ['pixeltable', 'dspy', 'fastapi', 'presidio_analyzer', 'llama_cpp', 'matplotlib', 'ipywidgets',"
        " 'pandas', 'scipy']\n"
        'print([m for m in heavy if m in sys.modules])\n'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == '[]'


@pytest.mark.parametrize('module', ['udfs.render', 'udfs.parse', 'udfs.scores', 'udfs.embed', 'udfs.rules'])
def test_udf_modules_document_every_export(module):
    mod = importlib.import_module(module)
    for name in mod.__all__:
        doc = inspect.getdoc(getattr(mod, name))
        assert doc and doc.strip(), f'{module}.{name} has no docstring'
