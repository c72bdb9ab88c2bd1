"""The comparison widget: controls wired to the pure render functions of `views.py`.

`CompareState` holds what the view shows and does the work (no widgets, testable without a kernel);
`CompareView` lays out ipywidgets controls and refreshes HTML panes from the state when a control changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ipywidgets as w

from . import views
from .compare import VersionComparison, _measure, build_comparison
from .datasets import Dataset
from .errors import WorkspaceError
from .evaluate import evaluate
from .versions import Version, edit

__all__ = ['CompareState', 'CompareView', 'compare']

TABS = ('Summary', 'Per category', 'Confusion', 'Flips', 'Diff', 'Edit')


class CompareState:
    """The comparison a view shows, and the operations its controls trigger."""

    def __init__(self, cmp: VersionComparison) -> None:
        self.cmp = cmp
        self.available: dict[str, Version] = {run.version.id: run.version for run in cmp.runs}
        self.runs = {run.version.id: run for run in cmp.runs}
        self.focus: str | None = next((v for v in cmp.version_ids if v != cmp.baseline), None)
        self.flip_filter = 'all changes'

    @property
    def baseline(self) -> str:
        return self.cmp.baseline

    @property
    def candidates(self) -> list[str]:
        return [v for v in self.cmp.version_ids if v != self.cmp.baseline]

    def select(self, baseline: str, candidates: Sequence[str]) -> None:
        """Compare `candidates` against `baseline` (versions already in the view; no model call)."""
        chosen = [baseline] + [c for c in candidates if c != baseline]
        runs = [self.runs[v] for v in chosen]
        self.cmp = _measure(self.cmp.dataset, self.cmp.split, runs, baseline, confidence=0.95, resamples=10_000)
        if self.focus not in chosen[1:]:
            self.focus = chosen[1] if len(chosen) > 1 else None

    def save(self, template: str, *, parent: str | None = None, note: str = '') -> Version:
        """Save `template` as a new version whose parent is `parent` (default: the baseline)."""
        version = edit(self.available[parent or self.baseline], template=template, note=note or 'edited in the widget')
        self.available[version.id] = version
        return version

    def evaluate(self, version_id: str, progress: Callable[[int, int], None] | None = None) -> None:
        """Evaluate a saved version on the comparison's split (incrementally) and add it to the comparison."""
        run = evaluate(self.available[version_id], self.cmp.dataset, self.cmp.split, progress=progress or False)
        self.runs[version_id] = run
        self.select(self.baseline, [*self.candidates, version_id])
        self.focus = version_id

    def render(self, tab: str) -> str:
        """Return the HTML of one tab."""
        if tab == 'Summary':
            return views.render_summary(self.cmp)
        if tab == 'Per category':
            return views.render_per_category(self.cmp)
        if tab == 'Confusion':
            return views.render_confusions(self.cmp)
        if tab in ('Flips', 'Diff') and self.focus is None:
            return '<p>Pick a candidate to see its flips and its diff against the baseline.</p>'
        if tab == 'Flips':
            return views.render_flips(self.cmp, self.focus, self.flip_filter)  # type: ignore[arg-type]
        if tab == 'Diff':
            return views.render_prompt_diff(self.cmp, self.focus)  # type: ignore[arg-type]
        raise KeyError(f'unknown tab {tab!r}; tabs are {TABS}')


class CompareView(w.VBox):
    """Baseline and candidate pickers over tabs: summary, per category, confusion, flips, diff, edit."""

    def __init__(self, state: CompareState) -> None:
        self.state = state
        ids = list(state.available)
        self.baseline = w.Dropdown(options=ids, value=state.baseline, description='Baseline')
        self.candidates = w.SelectMultiple(
            options=ids, value=tuple(state.candidates), description='Candidates', rows=min(6, len(ids))
        )
        self.focus = w.Dropdown(options=state.candidates, value=state.focus, description='Flips/diff of')
        self.flip_filter = w.ToggleButtons(options=views.FLIP_FILTERS, value=state.flip_filter, description='Show')
        self.panes = {tab: w.HTML() for tab in TABS if tab != 'Edit'}
        self.template = w.Textarea(
            value=state.cmp.version(state.baseline).template,
            description='Template',
            layout=w.Layout(width='100%', height='180px'),
        )
        self.note = w.Text(description='Note', placeholder='what this edit tries')
        self.save_button = w.Button(description='Save as new version', button_style='primary')
        self.evaluate_button = w.Button(description='Evaluate', disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1, description='Calls')
        self.status = w.HTML()
        self._saved: str | None = None
        self._syncing = False
        self._stale: set[str] = set()
        edit_tab = w.VBox(
            [self.template, self.note, w.HBox([self.save_button, self.evaluate_button]), self.progress, self.status]
        )
        flips_tab = w.VBox([self.flip_filter, self.panes['Flips']])
        children = [
            self.panes['Summary'],
            self.panes['Per category'],
            self.panes['Confusion'],
            flips_tab,
            self.panes['Diff'],
            edit_tab,
        ]
        self.tabs = w.Tab(children=children)
        for i, tab in enumerate(TABS):
            self.tabs.set_title(i, tab)
        super().__init__([w.HBox([self.baseline, self.candidates, self.focus]), self.tabs])
        self.baseline.observe(self._on_selection, names='value')
        self.candidates.observe(self._on_selection, names='value')
        self.focus.observe(self._on_focus, names='value')
        self.flip_filter.observe(self._on_filter, names='value')
        self.tabs.observe(self._render_visible, names='selected_index')
        self.save_button.on_click(self._on_save)
        self.evaluate_button.on_click(self._on_evaluate)
        self.refresh()

    def refresh(self) -> None:
        """Re-render the visible pane now and the others when they are opened (charts take a moment)."""
        self._stale = set(self.panes)
        self._render_visible()

    def _render_visible(self, _change: object = None) -> None:
        index = self.tabs.selected_index or 0
        tab = TABS[index]
        if tab in self._stale:
            self.panes[tab].value = self.state.render(tab)
            self._stale.discard(tab)

    def _sync_controls(self) -> None:
        ids = list(self.state.available)
        self._syncing = True  # setting options and values fires the observers; they must not act on half a change
        try:
            self.baseline.options, self.candidates.options = ids, ids
            self.baseline.value = self.state.baseline
            self.candidates.value = tuple(self.state.candidates)
            self.focus.options = self.state.candidates
            self.focus.value = self.state.focus
        finally:
            self._syncing = False

    def _on_selection(self, _change: object) -> None:
        if self._syncing:
            return
        try:
            self.state.select(self.baseline.value, list(self.candidates.value))
        except WorkspaceError as e:
            self.status.value = f'<span style="color:#c62828">{e}</span>'
            return
        self.template.value = self.state.cmp.version(self.state.baseline).template
        self._sync_controls()
        self.refresh()

    def _on_focus(self, change: dict) -> None:
        if change['new'] and not self._syncing:
            self.state.focus = change['new']
            self._stale |= {'Flips', 'Diff'}
            self._render_visible()

    def _on_filter(self, change: dict) -> None:
        self.state.flip_filter = change['new']
        self._stale.add('Flips')
        self._render_visible()

    def _on_save(self, _button: object) -> None:
        try:
            version = self.state.save(self.template.value, note=self.note.value)
        except WorkspaceError as e:
            self.status.value = f'<span style="color:#c62828">{e}</span>'
            return
        self._saved = version.id
        self._sync_controls()
        self.evaluate_button.disabled = False
        self.status.value = f'saved {version.id} (parent {version.parent_id}); press Evaluate to add it'

    def _on_evaluate(self, _button: object) -> None:
        if self._saved is None:
            return

        def progress(done: int, total: int) -> None:
            self.progress.max, self.progress.value = max(total, 1), done

        try:
            self.state.evaluate(self._saved, progress)
        except WorkspaceError as e:
            self.status.value = f'<span style="color:#c62828">{e}</span>'
            return
        run = self.state.runs[self._saved]
        self.status.value = f'evaluated {self._saved}: {run.calls} model calls, {run.reused} rows reused'
        self.evaluate_button.disabled = True
        self._sync_controls()
        self.refresh()


def compare(
    dataset: Dataset | str,
    versions: Sequence[Version | str],
    split: str | None = None,
    *,
    baseline: Version | str | None = None,
) -> CompareView:
    """Evaluate the versions on a split (only missing requests reach the model) and show them side by side.

    >>> ws.compare(tickets, ['ticket_router@production', v2, v3], split='dev')
    """
    return CompareView(CompareState(build_comparison(dataset, versions, split, baseline=baseline, progress=True)))
