"""The house in layers: each sub-package imports only from its own layer or those below it, no module imports
another that (directly or through others) imports it back, and the UI never reaches storage or Pixeltable.

Every `import` counts, at the top of a module or inside a function: a circle closed by a function-level import is
still a circle. And no function in `workspace/` or `udfs/` runs over 80 lines of code (docstring excluded)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / 'workspace'
#: Rank of each layer; a module may import its own layer or a lower rank. Peers (same rank, different layer) may
#: not import each other.
RANK = {
    'base': 0,
    'storage': 1,
    'core': 2,
    'analysis': 3,
    'optimization': 4,
    'mining': 4,
    'serving': 5,
    'ui': 6,
    'jobs': 7,
}
BASE = {'errors', 'config', 'display'}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(ROOT).with_suffix('').parts
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        found[name] = path
    return found


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ''
        if node.level:
            parts = module.split('.')
            if MODULES[module].name != '__init__.py':
                parts = parts[:-1]
            parts = parts[: len(parts) - node.level + 1]
            base = '.'.join(parts + ([base] if base else []))
        names = [f'{base}.{alias.name}' for alias in node.names] + [base]
    found = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition('.')[0]
        if name and name not in (module, 'workspace'):
            found.add(name)
    return found


def _imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= _targets(module, node)
    return found


EDGES = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> str | None:
    parts = module.split('.')
    if len(parts) < 2 or parts[1] == '__main__':  # the package itself, and `python -m workspace`
        return None
    return 'base' if parts[1] in BASE else parts[1]


def test_every_module_belongs_to_a_layer():
    assert {_layer(m) for m in MODULES} - {None} == set(RANK)


def test_imports_only_go_down():
    upward = []
    for module, targets in EDGES.items():
        mine = _layer(module)
        for target in targets:
            theirs = _layer(target)
            if mine is None or theirs is None or mine == theirs:
                continue
            if RANK[theirs] >= RANK[mine]:
                upward.append(f'{module} -> {target}')
    assert upward == []


def test_no_module_imports_itself_back():
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in EDGES[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted({tuple(sorted((a, b))) for a in MODULES for b in EDGES[a] if a in reach(b)})
    assert circles == []


@pytest.mark.parametrize('module', sorted(m for m in MODULES if _layer(m) == 'ui'))
def test_the_ui_reads_no_table(module):
    assert not any(_layer(t) == 'storage' for t in EDGES[module]), f'{module} imports storage'
    tree = ast.parse(MODULES[module].read_text())
    imported = {
        alias.name.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    } | {node.module.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert 'pixeltable' not in imported, f'{module} imports pixeltable'


@pytest.mark.parametrize('layer', sorted(RANK.keys() - {'base'}) + ['display'])
def test_each_layer_says_what_it_owns_and_may_import(layer):
    doc = importlib.import_module(f'workspace.{layer}').__doc__ or ''
    assert 'Owns' in doc and 'May import' in doc or layer == 'display' and 'Owns' in doc


def test_no_private_name_is_imported_across_modules():
    private = []
    for module in MODULES:
        for node in ast.walk(ast.parse(MODULES[module].read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('workspace'):
                private += [f'{module}: {node.module}.{a.name}' for a in node.names if a.name.startswith('_')]
    assert private == []


#: (file, function) pairs allowed over the limit: none.
LONG_FUNCTIONS_ALLOWED: set[tuple[str, str]] = set()
MAX_FUNCTION_LINES = 80


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Count a function's lines from its first statement after the docstring to its end."""
    body = node.body
    if (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1 if body and node.end_lineno else 0


def test_no_function_is_over_80_lines():
    long = []
    for path in sorted([*PACKAGE.rglob('*.py'), *(ROOT / 'udfs').rglob('*.py')]):
        where = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and (where, node.name) not in LONG_FUNCTIONS_ALLOWED
            ):
                lines = _code_lines(node)
                if lines > MAX_FUNCTION_LINES:
                    long.append(f'{where}:{node.lineno} {node.name} has {lines} lines of code')
    assert long == [], f'split these functions (over {MAX_FUNCTION_LINES} lines):\n' + '\n'.join(long)
