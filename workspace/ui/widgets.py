"""The comparison widget: ipywidgets controls over a `CompareState`, its panes rendered by `views.py`.

`CompareState` (workspace.analysis.comparison_state) holds what the view shows and does the work; this module lays
out the controls and refreshes HTML panes from the state when a control changes. It reads no table itself.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence

import ipywidgets as w

from workspace.analysis.compare import VersionComparison, build_comparison, prompts_for
from workspace.analysis.comparison_state import CompareState
from workspace.analysis.grid import FILTER_OPS, GridFilter
from workspace.analysis.model_comparison import ModelComparison
from workspace.core.datasets import Dataset
from workspace.core.runs import Run, main_score_name
from workspace.core.versions import Version
from workspace.display import results as eval_views
from workspace.errors import WorkspaceError
from workspace.ui import views
from workspace.ui.serving import render_serving_pane

__all__ = ['CompareView', 'compare', 'render_tab']

TABS = ('Summary', 'Grid', 'Per category', 'Confusion', 'Flips', 'Diff', 'Samples', 'Cost', 'Serving', 'Edit')

Progress = Callable[[int, int], None]


def render_tab(state: CompareState, tab: str) -> str:
    """Return the HTML of one tab of a comparison view."""
    if tab == 'Summary':
        return views.render_summary(state.cmp, labels=state.labels)
    if tab == 'Grid':
        return views.render_grid(state.grid_page(), state.cmp)
    if tab == 'Per category':
        return views.render_per_category(state.cmp)
    if tab == 'Confusion':
        return views.render_confusions(state.cmp)
    if tab == 'Samples':  # the runs that asked each request several times
        return eval_views.render_samples_pane(state.sample_reports())
    if tab == 'Cost':
        return eval_views.render_cost_quality(state.costs(), metric=main_score_name(state.cmp.task))
    if tab == 'Serving':  # executions and outcomes of the compared versions
        return render_serving_pane(state.serving(), baseline=state.baseline)
    if tab in ('Flips', 'Diff') and state.focus is None:
        return _message('Pick a candidate to see its flips and its diff against the baseline.')
    if tab == 'Flips':
        return views.render_flips(
            state.cmp,
            state.focus,  # type: ignore[arg-type]
            state.flip_filter,
            page=state.flip_page,
            per_page=state.flips_per_page,
            prompts=prompts_for,  # each row expands to both rendered prompts, read from the request store
        )
    if tab == 'Diff':
        return views.render_prompt_diff(state.cmp, state.focus)  # type: ignore[arg-type]
    raise KeyError(f'unknown tab {tab!r}; tabs are {TABS}')


def _message(text: str, kind: str = '') -> str:
    """Return a one-line status in the view's style; kind is '', 'error' or 'ok'."""
    color = {'error': '#c62828', 'ok': '#1a7f37'}.get(kind, '#1f2328')
    return f'<div class="pw-view" style="color:{color}">{text}</div>'


def _count(n: int, what: str) -> str:
    return f'{n:,} {what}{"" if n == 1 else "s"}'


def _esc(text: object) -> str:
    return html.escape(str(text))


class _Clock:
    """Progress of an evaluation for the bar: calls done of calls to make, and about how long is left."""

    def __init__(self, bar: w.IntProgress, label: w.HTML) -> None:
        self.bar, self.label, self.start = bar, label, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        self.bar.max, self.bar.value = max(total, 1), done
        elapsed = time.perf_counter() - self.start
        left = elapsed / done * (total - done) if done else 0.0
        eta = '' if not done or done >= total else ', under a second left' if left < 1 else f', about {left:.0f} s left'
        self.label.value = f'{done:,} / {total:,} {self.what}{eta}'

    what = 'calls'

    def judge(self, done: int, total: int) -> None:
        """Count judge calls as judge calls (a judge the dataset runs on every evaluation, or one asked for)."""
        if self.what != 'judge calls':
            self.what, self.start = 'judge calls', time.perf_counter()
        self(done, total)


class CompareView(w.VBox):
    """Baseline and candidate pickers over tabs: summary, per category, confusion, flips, diff, edit."""

    def __init__(self, state: CompareState) -> None:
        self.state = state
        self._syncing = False
        self._stale: set[str] = set()
        self._saved: str | None = None
        self._dirty = False  # the template differs from the version being edited
        self._expected_calls: int | None = None  # the model calls evaluating the saved version needs
        header = self._picker_controls()
        self.panes = {tab: w.HTML() for tab in TABS if tab != 'Edit'}
        for pane in self.panes.values():
            pane.add_class('pw-pane')
        flips_tab = self._flips_controls()
        self._grid_controls()
        edit_tab = self._edit_controls()
        self.tabs = self._tab_strip(flips_tab, edit_tab)
        super().__init__([w.HTML(views.STYLESHEET), *header, self.tabs], layout=w.Layout(max_width='100%'))
        self.add_class('pw-compare')
        self._wire()
        self._sync_controls()
        self._load_template()
        self.status.value = self._state_message()
        self.refresh()

    def _picker_controls(self) -> list[w.Box]:
        """Make the rows above the tabs: baseline and focus pickers, candidate ticks, status and progress."""
        self.baseline = w.Dropdown(
            description='Baseline', layout=w.Layout(width='340px'), style={'description_width': '70px'}
        )
        self.focus = w.Dropdown(
            description='Flips and diff of', layout=w.Layout(width='360px'), style={'description_width': '110px'}
        )
        self.reload_button = w.Button(
            description='Reload versions',
            icon='refresh',
            tooltip='read versions made elsewhere since',
            layout=w.Layout(width='150px'),
        )
        self.candidate_boxes: dict[str, w.Checkbox] = {}
        self.candidates = w.Box(
            layout=w.Layout(
                display='flex', flex_flow='row wrap', flex='1 1 auto', max_height='120px', overflow_y='auto'
            )
        )
        self.status = w.HTML(layout=w.Layout(flex='1 1 auto', min_width='0'))
        self.status.add_class('pw-pane')
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width='260px'))
        self.progress_label = w.HTML()
        self.progress_row = w.HBox([self.progress, self.progress_label], layout=w.Layout(display='none'))
        top = w.HBox([self.baseline, self.focus, self.reload_button], layout=w.Layout(flex_flow='row wrap'))
        pickers = w.HBox([w.HTML('<b>Candidates</b>', layout=w.Layout(width='90px', flex='0 0 auto')), self.candidates])
        return [top, pickers, w.HBox([self.status, self.progress_row])]

    def _flips_controls(self) -> w.VBox:
        """Make the Flips tab: which flips to show, pages, and the pane."""
        self.flip_filter = w.ToggleButtons(style={'button_width': 'auto'})
        self.previous_page = w.Button(description='Previous', icon='chevron-left', layout=w.Layout(width='100px'))
        self.next_page = w.Button(description='Next', icon='chevron-right', layout=w.Layout(width='100px'))
        pager = w.HBox([self.previous_page, self.next_page], layout=w.Layout(margin='0 0 0 12px'))
        return w.VBox([w.HBox([self.flip_filter, pager], layout=w.Layout(flex_flow='row wrap')), self.panes['Flips']])

    def _edit_controls(self) -> w.VBox:
        """Make the Edit tab: the version to start from, the template, a note, save, evaluate, revert, a preview."""
        self.edit_source = w.Dropdown(
            description='Edit', layout=w.Layout(width='340px'), style={'description_width': '40px'}
        )
        self.editing = w.HTML()
        self.template = w.Textarea(layout=w.Layout(width='auto', height='200px'))
        self.template.add_class('pw-code')
        self.note = w.Text(
            description='Note',
            placeholder='what this edit tries',
            layout=w.Layout(width='auto'),
            style={'description_width': '40px'},
        )
        self.save_button = w.Button(
            description='Save version', button_style='primary', icon='save', layout=w.Layout(width='140px')
        )
        self.evaluate_button = w.Button(
            description='Evaluate', icon='play', disabled=True, layout=w.Layout(width='220px')
        )
        self.revert_button = w.Button(description='Revert', icon='undo', layout=w.Layout(width='100px'))
        self.edit_status = w.HTML()
        self.edit_status.add_class('pw-pane')
        self.preview = w.HTML()
        self.preview.add_class('pw-pane')
        return w.VBox(
            [
                w.HBox([self.edit_source, self.editing], layout=w.Layout(align_items='center')),
                self.template,
                self.note,
                w.HBox([self.save_button, self.evaluate_button, self.revert_button]),
                self.edit_status,
                self.preview,
            ]
        )

    def _tab_strip(self, flips_tab: w.VBox, edit_tab: w.VBox) -> w.Tab:
        """Put the panes and the tabs with controls in TABS order, titled."""
        children = [
            self.panes['Summary'],
            self.grid_tab,
            self.panes['Per category'],
            self.panes['Confusion'],
            flips_tab,
            self.panes['Diff'],
            self.panes['Samples'],
            self.panes['Cost'],
            self.panes['Serving'],
            edit_tab,
        ]
        tabs = w.Tab(children=children)
        for i, tab in enumerate(TABS):
            tabs.set_title(i, tab)
        return tabs

    def _wire(self) -> None:
        """Call the handlers when a control changes; list the controls a busy view disables."""
        self._controls: list[w.DOMWidget] = [
            self.baseline,
            self.focus,
            self.reload_button,
            self.flip_filter,
            self.previous_page,
            self.next_page,
            self.edit_source,
            self.template,
            self.note,
            self.save_button,
            self.revert_button,
            *self.grid_bar.children,
        ]
        self.baseline.observe(self._on_baseline, names='value')
        self.focus.observe(self._on_focus, names='value')
        self.flip_filter.observe(self._on_filter, names='value')
        self.previous_page.on_click(lambda _: self._turn(-1))
        self.next_page.on_click(lambda _: self._turn(1))
        self.reload_button.on_click(self._on_reload)
        self.tabs.observe(self._render_visible, names='selected_index')
        self.edit_source.observe(self._on_edit_source, names='value')
        self.template.observe(self._on_template, names='value')
        self.save_button.on_click(self._on_save)
        self.evaluate_button.on_click(self._on_evaluate)
        self.revert_button.on_click(self._on_revert)

    # --- rendering ----------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-render the visible pane now and the others when they are opened (charts take a moment)."""
        self._stale = set(self.panes)
        self._render_visible()

    def _render_visible(self, _change: object = None) -> None:
        tab = TABS[self.tabs.selected_index or 0]
        if tab == 'Grid' and tab in self._stale:
            self._render_grid()
        elif tab in self._stale:
            self.panes[tab].value = render_tab(self.state, tab)
            self._stale.discard(tab)

    def _state_message(self) -> str:
        s = self.state
        n = len(s.cmp.common_ids)
        versions = f'{len(s.candidates)} candidate{"s" if len(s.candidates) != 1 else ""}'
        return _message(
            f'Comparing {versions} against <b>{_esc(s.baseline)}</b> on {_esc(s.cmp.dataset.name)} / '
            f'{_esc(s.split_name)} ({n:,} examples). Tick a version to add it; one not evaluated yet is evaluated '
            'first (only requests the store has not answered reach the model).'
        )

    def _option(self, version: str) -> str:
        labels = ' '.join(f'@{label}' for label in self.state.labels.get(version, []))
        return f'{version} {labels}'.strip()

    def _sync_controls(self) -> None:
        s = self.state
        self._syncing = True  # setting options and values fires the observers; they must not act on half a change
        try:
            self.baseline.options = [(self._option(v), v) for v in s.available]
            self.baseline.value = s.baseline
            names = views.short_names(s.available)
            boxes = []
            for version in s.available:
                box = self.candidate_boxes.get(version)
                if box is None:
                    box = w.Checkbox(indent=False, layout=w.Layout(width='auto', margin='0 14px 0 0'))
                    box.observe(self._on_candidate, names='value')
                    self.candidate_boxes[version] = box
                labels = ' '.join(f'@{label}' for label in s.labels.get(version, []))
                box.description = f'{names[version]} {labels}'.strip() + (
                    ' (baseline)' if version == s.baseline else ''
                )
                box.tooltip = s.notes.get(version) or version
                box.value = version in s.candidates
                box.disabled = version == s.baseline
                boxes.append(box)
            self.candidates.children = boxes
            self.focus.options = [(self._option(v), v) for v in s.candidates]
            self.focus.value = s.focus
            editable = list(dict.fromkeys([s.baseline, *s.candidates, s.editing]))
            self.edit_source.options = [(self._option(v) + self._role(v), v) for v in editable]
            self.edit_source.value = s.editing
            self._sync_flip_filter()
            self._sync_grid_controls()
        finally:
            self._syncing = False

    def _sync_flip_filter(self) -> None:
        s = self.state
        if s.focus is None:
            self.flip_filter.options, self.flip_filter.value = [(f, f) for f in views.FLIP_FILTERS], s.flip_filter
            return
        counts = views.flip_counts(s.cmp.flips(s.focus))
        self.flip_filter.options = [(f'{f} ({counts[f]:,})', f) for f in views.FLIP_FILTERS]
        self.flip_filter.value = s.flip_filter
        pages = max(1, -(-counts[s.flip_filter] // s.flips_per_page))
        self.previous_page.disabled = s.flip_page <= 0
        self.next_page.disabled = s.flip_page >= pages - 1

    def _busy(self, busy: bool) -> None:
        """Disable every control while the model works, so nothing changes under an evaluation."""
        for control in [*self._controls, *self.candidate_boxes.values()]:
            control.disabled = busy
        if not busy:
            self._sync_controls()  # restores the baseline's disabled checkbox and the page buttons
        self.evaluate_button.disabled = busy or self._saved is None or self._saved in self.state.runs
        self.progress_row.layout.display = 'flex' if busy else 'none'

    def _run(self, what: str, work: Callable[[Progress], object], calls: int | None = None) -> bool:
        """Run model work with the controls disabled and the progress bar showing; return whether it worked.
        `calls` is how many model calls the work will make, when known beforehand."""
        clock = _Clock(self.progress, self.progress_label)
        self.progress.value, self.progress.max = 0, max(calls or 1, 1)
        self.progress_label.value = f'0 / {calls:,} calls' if calls else 'reading which requests are answered…'
        self.status.value = _message(f'{what}…')
        self._busy(True)
        try:
            work(clock)
        except WorkspaceError as e:
            self.status.value = _message(f'{what} failed: {_esc(e)}', 'error')
            return False
        finally:
            self._busy(False)
        return True

    # --- pickers ------------------------------------------------------------------------------------------------

    def _apply(self, what: str, change: Callable[[Progress], None]) -> None:
        editing = self.state.editing
        if self._run(what, change):
            self.status.value = self._state_message()
        self._sync_controls()
        if self.state.editing != editing:
            self._load_template()
        self._show_editing()
        self.refresh()

    def _on_baseline(self, change: dict) -> None:
        if self._syncing or change['new'] is None:
            return
        new = change['new']
        self._apply(f'making {_esc(new)} the baseline', lambda progress: self.state.change_baseline(new, progress))

    def _on_candidate(self, _change: dict) -> None:
        if self._syncing:
            return
        s = self.state
        chosen = [v for v, box in self.candidate_boxes.items() if box.value and v != s.baseline]
        added = s.pending(chosen)
        what = f'evaluating {", ".join(map(_esc, added))} on {_esc(s.split_name)}' if added else 'updating'
        self._apply(what, lambda progress: s.select(s.baseline, chosen, progress))

    def _on_reload(self, _button: object) -> None:
        before = set(self.state.available)
        self.state.reload()
        self._sync_controls()
        self.refresh()  # labels beside the versions may have moved
        new = [v for v in self.state.available if v not in before]
        found = f'found {", ".join(map(_esc, new))}' if new else 'no new version'
        self.status.value = _message(f'Reloaded the versions of {_esc(", ".join(self.state.prompts))}: {found}.')

    def _on_focus(self, change: dict) -> None:
        if change['new'] and not self._syncing:
            self.state.focus = change['new']
            self.state.flip_page = 0
            self._sync_controls()
            self._stale |= {'Flips', 'Diff'}
            self._render_visible()

    def _on_filter(self, change: dict) -> None:
        if self._syncing or change['new'] is None:
            return
        self.state.flip_filter = change['new']
        self.state.flip_page = 0
        self._sync_controls()
        self._stale.add('Flips')
        self._render_visible()

    def _turn(self, step: int) -> None:
        self.state.flip_page = max(0, self.state.flip_page + step)
        self._sync_controls()
        self._stale.add('Flips')
        self._render_visible()

    # --- grid ---------------------------------------------------------------------------------------------------

    def _grid_controls(self) -> None:
        """Make the Grid tab: a search box, a sort column and order, one filter (column, operator, value) and pages."""
        compact = {'description_width': 'initial'}
        self.grid_search = w.Text(
            placeholder='search inputs, outputs, expected, errors',
            layout=w.Layout(width='300px'),
            continuous_update=True,
        )
        self.grid_search.add_class('pw-grid-search')
        self.grid_sort = w.Dropdown(description='Sort by', layout=w.Layout(width='250px'), style=compact)
        self.grid_order = w.ToggleButtons(
            options=[('↑', True), ('↓', False)], tooltips=['ascending', 'descending'], style={'button_width': '34px'}
        )
        self.grid_filter_column = w.Dropdown(description='Filter', layout=w.Layout(width='240px'), style=compact)
        self.grid_filter_op = w.Dropdown(options=list(FILTER_OPS), value='contains', layout=w.Layout(width='140px'))
        self.grid_filter_value = w.Text(placeholder='value (pass, fail, 50%, …)', layout=w.Layout(width='170px'))
        self.grid_previous = w.Button(description='Previous', icon='chevron-left', layout=w.Layout(width='100px'))
        self.grid_next = w.Button(description='Next', icon='chevron-right', layout=w.Layout(width='100px'))
        for control in (self.grid_search, self.grid_sort, self.grid_order, self.grid_filter_column):
            control.observe(self._on_grid, names='value')
        for control in (self.grid_filter_op, self.grid_filter_value):
            control.observe(self._on_grid_filter, names='value')
        self.grid_previous.on_click(lambda _: self._grid_turn(-1))
        self.grid_next.on_click(lambda _: self._grid_turn(1))
        self.grid_bar = w.HBox(
            [
                self.grid_search,
                self.grid_sort,
                self.grid_order,
                self.grid_filter_column,
                self.grid_filter_op,
                self.grid_filter_value,
                self.grid_previous,
                self.grid_next,
            ],
            layout=w.Layout(flex_flow='row wrap', align_items='center'),
        )
        self.grid_tab = w.VBox([self.grid_bar, self.panes['Grid']])
        self.grid_tab.add_class('pw-grid-tab')

    def _sync_grid_controls(self) -> None:
        columns = self.state.grid_columns()
        q = self.state.grid_query
        options = [(c.title, c.key) for c in columns]
        self.grid_sort.options = [('(as listed)', ''), *options]
        self.grid_sort.value = q.sort or ''
        self.grid_order.value = q.ascending
        chosen = self.grid_filter_column.value  # the filter being typed stays, unless its column left the grid
        self.grid_filter_column.options = [('(none)', ''), *options]
        self.grid_filter_column.value = chosen if chosen in {c.key for c in columns} else ''

    def _on_grid(self, _change: object) -> None:
        if self._syncing:
            return
        self._query_grid()

    def _on_grid_filter(self, _change: object) -> None:
        if self._syncing or not self.grid_filter_column.value:
            return
        self._query_grid()

    def _query_grid(self, page: int = 0) -> None:
        column = self.grid_filter_column.value or None
        op = self.grid_filter_op.value
        value = self.grid_filter_value.value
        needs_value = op not in ('is empty', 'is not empty')
        filters = (GridFilter(column, op, value),) if column is not None and (value.strip() or not needs_value) else ()
        self.state.grid_query = self.state.grid_query.replace(
            search=self.grid_search.value,
            sort=self.grid_sort.value or None,
            ascending=self.grid_order.value,
            filters=filters,
            page=page,
        )
        self._render_grid()

    def _grid_turn(self, step: int) -> None:
        self._query_grid(self.state.grid_query.page + step)

    def _render_grid(self) -> None:
        try:
            page = self.state.grid_page()
            self.panes['Grid'].value = views.render_grid(page, self.state.cmp)
            self.grid_previous.disabled = page.page <= 0
            self.grid_next.disabled = page.page >= page.pages - 1
        except WorkspaceError as e:
            self.panes['Grid'].value = _message(_esc(e), 'error')
        self._stale.discard('Grid')
        self._syncing = True
        try:
            self._sync_grid_controls()
        finally:
            self._syncing = False

    # --- edit ---------------------------------------------------------------------------------------------------

    def _role(self, version: str) -> str:
        s = self.state
        if version == s.baseline:
            return ' (baseline)'
        return '' if version in s.candidates else ' (saved, not evaluated yet)'

    def _show_editing(self) -> None:
        self.editing.value = _message(f'editing <b>{_esc(self.state.editing)}</b>{self._role(self.state.editing)}')

    def _load_template(self) -> None:
        s = self.state
        source = s.version(s.editing)
        self._show_editing()
        self._syncing, self._dirty = True, False
        try:
            self.template.value = source.template
        finally:
            self._syncing = False
        lines = source.template.count('\n') + 3
        self.template.layout.height = f'{min(max(lines, 6), 24) * 18 + 12}px'
        self.edit_status.value = _message(
            f'Change the template, then Save version: it is checked against dataset '
            f'{_esc(s.cmp.dataset.name)} and rendered for every example of {_esc(s.split_name)} before a version '
            f'is stored; its parent is {_esc(source.id)}.'
        )
        self.preview.value = ''

    def _on_edit_source(self, change: dict) -> None:
        if self._syncing or change['new'] is None:
            return
        self.state.editing = change['new']
        self._saved = None
        self.evaluate_button.disabled = True
        self._load_template()

    def _on_template(self, _change: dict) -> None:
        if self._syncing:
            return
        dirty = self.template.value != self.state.version(self.state.editing).template
        if dirty:
            self.edit_status.value = _message(
                f'unsaved changes to {_esc(self.state.editing)}: Save version checks and stores them'
            )
        elif self._dirty:  # typed back to what is stored
            self.edit_status.value = _message(f'unchanged from {_esc(self.state.editing)}')
        self._dirty = dirty

    def _on_revert(self, _button: object) -> None:
        self._saved = None
        self.evaluate_button.disabled = True
        self._load_template()

    def _on_save(self, _button: object) -> None:
        s = self.state
        try:
            checked = s.check(self.template.value)
            if checked.unchanged:
                self.edit_status.value = _message(
                    f"The template is the same as {_esc(checked.source)}'s: no new version saved. Change it first."
                )
                return
            version, created = s.save(self.template.value, note=self.note.value)
        except WorkspaceError as e:
            self.edit_status.value = _message(f'Not saved: {_esc(e)}', 'error')
            self.preview.value = ''
            return
        self._saved, self._dirty = version.id, False
        s.editing = version.id  # further edits start from what was saved
        self._sync_controls()
        self._show_editing()
        self.preview.value = views.render_edit_preview(
            checked.example_id,
            checked.before,
            checked.after,
            source=checked.source,
            changed=checked.changed,
            total=checked.total,
        )
        made = (
            f'Saved <b>{_esc(version.id)}</b> (parent {_esc(checked.source)})'
            if created
            else (f'This content is already <b>{_esc(version.id)}</b>: no new version saved')
        )
        if version.id in s.runs:
            self.evaluate_button.disabled = True
            self.edit_status.value = _message(f'{made}; it is already in the comparison.', 'ok')
            return
        calls = _count(checked.new, 'model call')
        self._expected_calls = checked.new
        self.evaluate_button.description = f'Evaluate ({calls})'
        self.evaluate_button.disabled = False
        reused = checked.total - checked.new
        self.edit_status.value = _message(
            f'{made}. Not evaluated yet: Evaluate runs it on {_esc(s.split_name)} with {calls}; the store answers '
            f'the other {_count(reused, "request")}.',
            'ok',
        )

    def _on_evaluate(self, _button: object) -> None:
        version_id = self._saved
        if version_id is None:
            return
        s = self.state
        ran: list[Run] = []
        self.edit_status.value = _message(f'evaluating {_esc(version_id)} on {_esc(s.split_name)}…')
        ok = self._run(
            f'evaluating {_esc(version_id)} on {_esc(s.split_name)}',
            lambda progress: ran.append(s.evaluate(version_id, progress)),
            self._expected_calls,
        )
        self.evaluate_button.description = 'Evaluate'
        if ok:
            run = ran[0]
            self.edit_status.value = _message(
                f'Evaluated <b>{_esc(version_id)}</b> on {_esc(s.split_name)}: {_count(run.calls, "model call")}, '
                f'{_count(run.reused, "row")} reused; added to the comparison as a candidate.',
                'ok',
            )
            self.status.value = self._state_message()
            self._show_editing()
        else:
            self.edit_status.value = self.status.value
        self.evaluate_button.disabled = ok
        self._sync_controls()
        self.refresh()


def compare(
    dataset: Dataset | str | VersionComparison | ModelComparison,
    versions: Sequence[Version | str] = (),
    split: str | None = None,
    *,
    baseline: Version | str | None = None,
    judges: Sequence[str] | str | None = None,
) -> CompareView:
    """Evaluate the versions on a split (only missing requests reach the model) and show them side by side; or show
    a comparison already made (`ws.compare(ws.evaluate_models(...))`). `judges` names judge columns of the dataset
    to judge the rows with, here and in versions added in the view (see `evaluate`); scores judged earlier show
    either way.

    >>> ws.compare(tickets, ['ticket_router@production', v2, v3], split='dev')
    """
    if isinstance(dataset, ModelComparison):
        dataset = dataset.comparison
    if isinstance(dataset, VersionComparison):
        return CompareView(CompareState(dataset, judges=judges))
    if not versions:
        raise WorkspaceError('give the versions to compare, e.g. ws.compare(tickets, [v1, v2], split="dev")')
    cmp = build_comparison(dataset, versions, split, baseline=baseline, progress=True, judges=judges)  # type: ignore[arg-type]
    return CompareView(CompareState(cmp, judges=judges))
