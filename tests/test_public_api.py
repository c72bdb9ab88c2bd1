"""The public surface: every exported name exists, has a docstring and is documented in the README."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest
from conftest import ROOT

import workspace

README = (ROOT / 'README.md').read_text()


def test_all_public_names_are_exported():
    public = {
        name
        for name, value in vars(workspace).items()
        if not name.startswith('_') and not isinstance(value, types.ModuleType)
    }
    assert public == set(workspace.__all__)


@pytest.mark.parametrize('name', workspace.__all__)
def test_exported_name_has_docstring_and_is_in_readme(name):
    value = getattr(workspace, name)
    assert inspect.getdoc(value), f'{name} has no docstring'
    assert f'`{name}' in README, f'README.md does not document {name}'


@pytest.mark.parametrize('module', ['udfs.render', 'udfs.parse', 'udfs.scores', 'udfs.embed'])
def test_udf_modules_document_every_export(module):
    mod = importlib.import_module(module)
    for name in mod.__all__:
        doc = inspect.getdoc(getattr(mod, name))
        assert doc and doc.strip(), f'{module}.{name} has no docstring'
