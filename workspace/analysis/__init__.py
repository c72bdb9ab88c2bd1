"""Analysis: what runs mean side by side.

Owns comparisons with paired intervals (`compare`, and `comparison_state` behind the comparison widget), version
diffs, changelogs, annotations and judge agreement, a prompt's history graph, one version on several models, and
A/B reports.

May import: `workspace.core`, `workspace.storage`, the base modules and `udfs`.
"""
