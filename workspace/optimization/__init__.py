"""Optimization: new versions from a baseline, chosen honestly on a dev split.

Owns the optimizer (`optimize`: DSPy's optimizers and the workspace's own), the DSPy adapter over the request
store, candidate selection, and suggestions a model writes from a run's failures.

May import: `workspace.analysis`, `workspace.core`, `workspace.storage`, the base modules and `udfs`; not
`workspace.mining` (a peer).
"""
