"""The workspace's errors: one base class, a few subclasses, each message naming the value and the fix."""

from __future__ import annotations

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
