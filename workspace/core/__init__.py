"""Core: the objects a user evaluates with and the evaluation itself.

Owns datasets, versions, labels, demo policies, evaluation (`evaluate`), runs, samples, judges, guardrail rules,
metrics and paired statistics.

May import: `workspace.storage`, the base modules and `udfs`.
"""
