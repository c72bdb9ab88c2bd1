"""Several models side by side: one version evaluated on each model, with quality, latency, tokens and cost.

Each model gets a child version of the given version (same template, params, output spec and demos; parent: the
given version), rather than one run per model of the same version. A version names its model, and its requests'
identity includes the model, so a run of "v3 on Groq" would not be a run of v3: as child versions, each model's
results keep their lineage, show in the lineage graph, compare in the same view as any two versions, and can be
labelled and released (`set_label(child, 'production')`). The same model asked again finds its child version
(versions with equal content are one version), so calling this twice makes no new version and no model call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from workspace.analysis.compare import VersionComparison, build_comparison
from workspace.core.datasets import Dataset, get_dataset
from workspace.core.runs import main_score_name
from workspace.core.versions import Version, edit, get_version
from workspace.errors import ComparisonError
from workspace.storage import costs

__all__ = ['ModelComparison', 'model_version', 'evaluate_models', 'cost_table']


def model_version(version: Version | str, model: str) -> Version:
    """Return `version` on another model: itself if it already uses `model`, else its child version with that
    model (created once; the same call later returns the same version).

    >>> model_version('ticket_router:v3', 'groq:llama-3.1-8b-instant')
    """
    v = get_version(version)
    if model == v.model:
        return v
    return edit(v, model=model, note=f'{v.id} on {model}', meta={'model_of': v.id})


def cost_table(cmp: VersionComparison) -> pd.DataFrame:
    """Return one row per compared version: model, main score, mean latency and tokens, cost per row and of the
    run (NaN where no price is known), calls and errors."""
    metric = main_score_name(cmp.task)
    rows = []
    for run in cmp.runs:
        frame = cmp.frames[run.version.id]
        row_costs = costs.frame_costs(frame, run.version.model)
        total = costs.run_cost(row_costs)
        rows.append(
            {
                'version': run.version.id,
                'model': run.version.model,
                metric: float(cmp.table.loc[run.version.id, metric]),
                'mean_latency_s': float(cmp.table.loc[run.version.id, 'mean_latency_s']),
                'mean_tokens': float(cmp.table.loc[run.version.id, 'mean_tokens']),
                'cost_per_row_usd': float('nan') if total is None else total / max(len(frame), 1),
                'cost_usd': float('nan') if total is None else total,
                'calls': run.calls,
                'errors': int(cmp.table.loc[run.version.id, 'errors']),
            }
        )
    return pd.DataFrame(rows).set_index('version')


@dataclass(frozen=True)
class ModelComparison:
    """One version on several models: the comparison (paired intervals against the baseline model) and a table of
    quality, latency, tokens and cost; in a notebook, the table and a cost-quality chart."""

    comparison: VersionComparison
    table: pd.DataFrame

    @property
    def metric(self) -> str:
        return main_score_name(self.comparison.task)

    def _repr_html_(self) -> str:
        from workspace.display.results import render_cost_quality

        return render_cost_quality(self.table, metric=self.metric, title=f'{self.comparison.dataset.name}: models')

    def __str__(self) -> str:
        shown = self.table[['model', self.metric, 'mean_latency_s', 'mean_tokens', 'cost_per_row_usd', 'cost_usd']]
        return shown.to_string(float_format=lambda x: f'{x:.6g}')


def evaluate_models(
    version: Version | str,
    dataset: Dataset | str,
    models: Sequence[str],
    split: str | None = None,
    *,
    baseline: str | None = None,
    progress: Any = False,
) -> ModelComparison:
    """Evaluate one version on several models (one child version per model, see the module docstring) and
    return them side by side: quality with paired intervals against the baseline model (the first by default),
    latency, tokens and cost per row and per run in dollars.

    >>> ws.evaluate_models('ticket_router:v3', 'support_tickets', ['local', 'groq:llama-3.1-8b-instant'], 'dev')
    """
    if not models:
        raise ComparisonError("give the models to compare, e.g. models=['local', 'groq:llama-3.1-8b-instant']")
    ds = get_dataset(dataset)
    versions = [model_version(version, m) for m in dict.fromkeys(models)]
    base = versions[0] if baseline is None else model_version(version, baseline)
    cmp = build_comparison(ds, versions, split, baseline=base, progress=progress)
    return ModelComparison(cmp, cost_table(cmp))
