"""Standalone HTML reports of a comparison, for sharing: they open in any browser, without a kernel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from workspace.analysis.changelog import get_changelog
from workspace.analysis.compare import VersionComparison, build_comparison, prompts_for, version_labels
from workspace.core.datasets import Dataset
from workspace.core.versions import Version
from workspace.ui.views import render_report

__all__ = ['export_report', 'write_report']


def export_report(
    dataset: Dataset | str,
    versions: Sequence[Version | str],
    path: str | Path,
    split: str | None = None,
    *,
    baseline: Version | str | None = None,
    title: str | None = None,
) -> Path:
    """Compare the versions on a split and write the report (metrics with intervals, per-category table,
    confusion matrices, flips, prompt diffs) to `path`; return the path.

    >>> export_report('support_tickets', ['ticket_router:v1', 'ticket_router:v3'], 'reports/v3.html', 'dev')
    """
    return write_report(build_comparison(dataset, versions, split, baseline=baseline), path, title=title)


def write_report(cmp: VersionComparison, path: str | Path, *, title: str | None = None) -> Path:
    """Write the standalone report of a comparison already made to `path` (folders created); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    labels = version_labels([run.version.prompt for run in cmp.runs])
    changelogs = {v: found for v in cmp.version_ids if (found := get_changelog(v)) is not None}
    page = render_report(cmp, title=title, labels=labels, changelogs=changelogs, prompts=prompts_for)
    target.write_text(page, encoding='utf-8')
    return target
