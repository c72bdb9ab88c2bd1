"""The workspace's errors: one base class, a few subclasses, each message naming the value and the fix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    'WorkspaceError',
    'DatasetError',
    'TemplateError',
    'VersionError',
    'LabelError',
    'BackendError',
    'ComparisonError',
    'OptimizeError',
    'RegressionError',
    'EmbedderError',
    'RuleError',
    'GuardrailViolation',
    'ServeError',
    'FamilyError',
]


class WorkspaceError(Exception):
    "Base class of every error the workspace raises on purpose."


class DatasetError(WorkspaceError):
    "A dataset file, frame or row is not usable as given."


class TemplateError(WorkspaceError):
    "A prompt template does not parse, or uses a variable the dataset does not have."


class VersionError(WorkspaceError):
    "A prompt version does not exist or cannot be created as asked."


class LabelError(WorkspaceError):
    "A label does not exist or cannot be moved as asked."


class BackendError(WorkspaceError):
    "A model backend is misconfigured or unreachable."


class ComparisonError(WorkspaceError):
    "Two runs or versions cannot be compared as asked."


class OptimizeError(WorkspaceError):
    "An optimizer run cannot start or continue as asked."


class RegressionError(WorkspaceError):
    "A scheduled evaluation scored more than its threshold below the previous run with the same parameters."


class EmbedderError(WorkspaceError):
    "The offline text embedder is not installed, or its model files are not the pinned ones."


class RuleError(WorkspaceError):
    "A guardrail rule cannot be created or changed as asked."


class GuardrailViolation(WorkspaceError):
    "A blocking rule failed on a served request; `violation` names the rule and the matched span."

    def __init__(self, violation: Mapping[str, Any], violations: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.violation = violation
        self.violations = list(violations) if violations is not None else [violation]
        where = f' in field {violation["field"]!r}' if violation.get('field') else ''
        span = ''
        if violation.get('span'):
            start, end = violation['span']
            span = f' at characters {start}-{end} ({violation.get("match")!r})'
        super().__init__(
            f'rule {violation["rule"]!r} blocks this {violation["stage"]}{where}{span}: {violation["message"]}'
        )


class ServeError(WorkspaceError):
    "A prompt cannot be served as asked (an unknown version, missing fields, a model error)."


class FamilyError(WorkspaceError):
    "A prompt family does not exist, or cannot be merged, split or turned into a version as asked."
