"""A comparison being explored: the versions compared, the ones that can join, and what its controls do.

`CompareState` holds what a comparison view shows and does the work behind its controls (pick versions, change
the baseline, check and save an edited template, evaluate it), with no widgets, so it runs and is tested without
a kernel. The view in `workspace.ui.widgets` lays out controls over it and renders what it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jinja2
import pandas as pd

from udfs import render as render_udfs
from workspace.analysis.compare import VersionComparison, measure, version_labels
from workspace.analysis.grid import GridColumn, GridPage, GridQuery, grid_columns, grid_frame, query_grid
from workspace.analysis.model_comparison import cost_table
from workspace.core.evaluate import check_template, evaluate
from workspace.core.runs import Run, get_run, list_runs
from workspace.core.samples import SampleReport, sample_report
from workspace.core.versions import Version, build_request, edit, get_version, list_versions, with_template
from workspace.errors import TemplateError
from workspace.storage import backends, reads, store

__all__ = ['CompareState', 'TemplateCheck', 'FLIPS_PER_PAGE']

FLIPS_PER_PAGE = 25

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TemplateCheck:
    """An edited template checked against the dataset and rendered in the sandbox, before anything is stored."""

    source: str  # the version the edit starts from
    template: str
    unchanged: bool
    example_id: str = ''
    before: str = ''  # the source's prompt for that example
    after: str = ''  # the edited template's prompt for it
    changed: int = 0  # requests of the split that differ from the source's
    new: int = 0  # of those, requests the store has not answered: the model calls an evaluation makes
    total: int = 0


class CompareState:
    """The comparison a view shows, the versions it can add, and the operations its controls trigger."""

    def __init__(self, cmp: VersionComparison, *, judges: Sequence[str] | str | None = None) -> None:
        self.cmp = cmp
        self.judges = judges  # the judge columns the view's evaluations ask for (see `evaluate`)
        self.runs: dict[str, Run] = {run.version.id: run for run in cmp.runs}
        self.prompts = list(dict.fromkeys(run.version.prompt for run in cmp.runs))
        self.available: list[str] = []
        self.labels: dict[str, list[str]] = {}
        self.notes: dict[str, str] = {}
        self._versions: dict[str, Version] = {run.version.id: run.version for run in cmp.runs}
        self.focus: str | None = next((v for v in cmp.version_ids if v != cmp.baseline), None)
        self.flip_filter = 'any change'
        self.flip_page = 0
        self.flips_per_page = FLIPS_PER_PAGE
        self.editing = cmp.baseline
        self.grid_query = GridQuery()
        self._grid: tuple[VersionComparison, pd.DataFrame] | None = None
        self._columns: tuple[VersionComparison, list[GridColumn]] | None = None
        self.reload()

    @property
    def baseline(self) -> str:
        return self.cmp.baseline

    @property
    def candidates(self) -> list[str]:
        return [v for v in self.cmp.version_ids if v != self.cmp.baseline]

    @property
    def split_name(self) -> str:
        return self.cmp.split or 'all rows'

    @reads.scoped
    def reload(self) -> None:
        """Read every version of the compared prompts and their labels from the tables, so versions made in
        another kernel or notebook are offered too."""
        found: list[str] = []
        for prompt in self.prompts:
            listed = list_versions(prompt)
            found += list(listed['version'])
            self.notes.update({v: str(n or '') for v, n in zip(listed['version'], listed['note'])})
        self.available = list(dict.fromkeys(found + self.cmp.version_ids))
        self.labels = version_labels(self.prompts)

    def version(self, version_id: str) -> Version:
        """Return a version by id, read once."""
        if version_id not in self._versions:
            self._versions[version_id] = get_version(version_id)
        return self._versions[version_id]

    def pending(self, versions: Sequence[str]) -> list[str]:
        """Return which of `versions` have no run in this view yet (selecting them evaluates them)."""
        return [v for v in versions if v not in self.runs]

    def select(self, baseline: str, candidates: Sequence[str], progress: Progress | None = None) -> None:
        """Compare `candidates` against `baseline`, evaluating versions not yet in the view (incrementally: only
        requests the store has not answered reach the model)."""
        chosen = list(dict.fromkeys([baseline, *candidates]))
        for version_id in self.pending(chosen):
            self._evaluate(version_id, progress)
        runs = [self.runs[v] for v in chosen]
        self.cmp = measure(self.cmp.dataset, self.cmp.split, runs, baseline, confidence=0.95, resamples=10_000)
        if self.focus not in chosen[1:]:
            self.focus = chosen[1] if len(chosen) > 1 else None
        if self.editing in self.runs and self.editing not in chosen:  # it left the comparison
            self.editing = baseline
        self.flip_page = 0

    def change_baseline(self, baseline: str, progress: Progress | None = None) -> None:
        """Make `baseline` the baseline; the old baseline stays in the comparison as a candidate."""
        old = self.baseline
        if baseline == old:
            return
        candidates = [old, *(c for c in self.candidates if c != baseline)]
        self.select(baseline, candidates, progress)

    def check(self, template: str, *, source: str | None = None) -> TemplateCheck:
        """Check an edited template before storing it: it must parse, read only the dataset's input fields, and
        render every example of the split in the sandbox. Raise TemplateError naming the problem otherwise."""
        base = self.version(source or self.editing)
        if template == base.template:
            return TemplateCheck(base.id, template, unchanged=True)
        try:
            render_udfs.template_variables(template)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f'the template does not parse: {e.message} (template line {e.lineno})') from None
        draft = with_template(base, template)  # a chat version: the edited user turn, or its messages
        check_template(draft, self.cmp.dataset)
        rows = self.cmp.dataset.rows(self.cmp.split)
        model_id = backends.model_identity(base.model)  # once, not per row
        try:
            after = {row['example_id']: build_request(draft, row, model_id=model_id) for row in rows}
        except jinja2.TemplateError as e:  # the sandbox refused something (an unsafe attribute, a bad filter)
            raise TemplateError(f'the template failed to render in the sandbox: {e}') from None
        before = {row['example_id']: build_request(base, row, model_id=model_id) for row in rows}
        differ = [ex for ex in after if after[ex]['hash'] != before[ex]['hash']]
        hashes = {after[ex]['hash'] for ex in differ}
        new = hashes - set(store.lookup(hashes))  # answered before (errors included) are not sent again
        shown = differ[0] if differ else rows[0]['example_id']
        return TemplateCheck(
            base.id,
            template,
            unchanged=False,
            example_id=shown,
            before=before[shown]['prompt'],
            after=after[shown]['prompt'],
            changed=len(differ),
            new=len(new),
            total=len(rows),
        )

    def save(self, template: str, *, source: str | None = None, note: str = '') -> tuple[Version, bool]:
        """Check `template` (see `check`), then store it as a new version whose parent is `source` (default: the
        version being edited). Return (version, created): an existing version with the same content is returned
        with created False. An unchanged template raises TemplateError: it would not be a new version."""
        checked = self.check(template, source=source)
        if checked.unchanged:
            raise TemplateError(f"the template is the same as {checked.source}'s: no new version saved")
        before = set(self.available)
        version = edit(self.version(checked.source), template=template, note=note or 'edited in the widget')
        self._versions[version.id] = version
        self.reload()
        return version, version.id not in before

    def _evaluate(self, version_id: str, progress: Progress | None) -> Run:
        run = evaluate(
            self.version(version_id), self.cmp.dataset, self.cmp.split, judges=self.judges, progress=progress or False
        )
        self.runs[version_id] = run
        return run

    def evaluate(self, version_id: str, progress: Progress | None = None) -> Run:
        """Evaluate a saved version on the comparison's split (incrementally) and add it as a candidate."""
        run = self._evaluate(version_id, progress)
        self.select(self.baseline, [*self.candidates, version_id])
        self.focus = version_id
        return run

    def grid_columns(self) -> list[GridColumn]:
        """Return the grid's columns for the versions compared now (cheap: the rows are laid out when asked)."""
        if self._columns is None or self._columns[0] is not self.cmp:
            names = {v: v.rsplit(':', 1)[-1] for v in self.cmp.version_ids}
            if len({v.rsplit(':', 1)[0] for v in self.cmp.version_ids}) > 1:
                names = {v: v for v in self.cmp.version_ids}
            columns = grid_columns(self.cmp, names)
            self._columns = (self.cmp, columns)
            keys, q = {c.key for c in columns}, self.grid_query  # a version that left takes its sort and filters
            self.grid_query = q.replace(
                sort=q.sort if q.sort in keys else None, filters=tuple(f for f in q.filters if f.column in keys)
            )
        return self._columns[1]

    def grid_page(self, query: GridQuery | None = None) -> GridPage:
        """Return the page of the grid (every example against every compared version) that `query` (default:
        the view's own, `grid_query`) asks for; the grid is laid out once per comparison, when first asked."""
        columns = self.grid_columns()
        if self._grid is None or self._grid[0] is not self.cmp:
            self._grid = (self.cmp, grid_frame(self.cmp))
        return query_grid(self._grid[1], columns, query or self.grid_query)

    def sample_reports(self) -> list[SampleReport]:
        """Return the sample reports of the compared versions' latest runs with samples on this split."""
        return [sample_report(r) for r in _sampled_runs(self.cmp)]

    def costs(self):  # noqa: ANN201 - a DataFrame
        """Return one row per compared version: quality, latency, tokens and cost (see `cost_table`)."""
        return cost_table(self.cmp)

    def serving(self):  # noqa: ANN201 - a DataFrame
        """Return one row per compared version: how it does when served (see `serving_stats`)."""
        from workspace.analysis.serving_stats import serving_stats

        return serving_stats(versions=self.cmp.version_ids)


def _sampled_runs(cmp: VersionComparison) -> list[Run]:
    """Return, for each compared version, its latest run with samples on the comparison's dataset split (the
    comparison's own runs ask once; `evaluate(..., samples=k)` makes the runs with samples)."""
    found = []
    runs = list_runs(dataset=cmp.dataset.name)
    if runs.empty or 'samples' not in runs.columns:
        return []
    same_split = runs['split'].isna() if cmp.split is None else runs['split'] == cmp.split
    sampled = runs[same_split & (runs['samples'].fillna(1) > 1)]  # newest first
    for version_id in cmp.version_ids:
        mine = sampled[sampled['version_id'] == version_id]
        if len(mine):
            found.append(get_run(str(mine.iloc[0]['run_id'])))
    return found
