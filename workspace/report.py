"""Standalone HTML reports of a comparison, for sharing: they open in any browser, without a kernel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .compare import build_comparison, version_labels
from .datasets import Dataset
from .versions import Version
from .views import render_report

__all__ = ['export_report']


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
    cmp = build_comparison(dataset, versions, split, baseline=baseline)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    labels = version_labels([run.version.prompt for run in cmp.runs])
    target.write_text(render_report(cmp, title=title, labels=labels), encoding='utf-8')
    return target
