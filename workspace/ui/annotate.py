"""The annotation widget: a person labels a run's predictions pass or fail, one at a time, with a note.

`AnnotationSession` (workspace.analysis.annotations) holds the sample and stores each verdict; this module shows
the current row and wires the buttons to it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import ipywidgets as w
import pandas as pd

from workspace.analysis.annotations import AnnotationSession, Verdict
from workspace.errors import WorkspaceError

__all__ = ['AnnotateView', 'annotate', 'render_annotation_row']


def _text(value: Any) -> str:
    if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)):
        return ''
    if isinstance(value, list):
        return ' | '.join(str(v) for v in value)
    return str(value)


def render_annotation_row(
    row: Mapping[str, Any] | None, *, position: int, total: int, inputs: list[str], given: str | None = None
) -> str:
    """Render one row to annotate: its input fields, the output (prediction, and raw output if it differs), the
    reference, and the verdict already given, if any."""
    if row is None:
        return '<div class="pw-annotate pw-annotate-done"><p>All rows seen. Thank you.</p></div>'
    esc = html.escape
    fields = ''.join(
        f'<div class="pw-field"><b>{esc(name)}</b><pre>{esc(_text(row.get(name)))}</pre></div>' for name in inputs
    )
    output = _text(row.get('prediction'))
    raw = _text(row.get('output')).strip()
    raw_line = f'<div class="pw-raw">raw output: <code>{esc(raw)}</code></div>' if raw and raw != output else ''
    error = (
        f'<div class="pw-error">model error: {esc(_text(row.get("error")))}</div>' if _text(row.get('error')) else ''
    )
    already = f'<div class="pw-given">your verdict so far: <b>{esc(given)}</b></div>' if given else ''
    return (
        '<style>.pw-annotate pre{white-space:pre-wrap;background:#f6f8fa;padding:6px;margin:2px 0 8px}'
        '.pw-annotate .pw-error{color:#c62828}.pw-annotate{font-family:system-ui,sans-serif;font-size:13px}</style>'
        f'<div class="pw-annotate"><div class="pw-position">row {position + 1} of {total} — example '
        f'<code>{esc(str(row.get("example_id")))}</code></div>{fields}'
        f'<div class="pw-field"><b>output</b><pre class="pw-output">{esc(output) or "(none)"}</pre></div>{raw_line}'
        f'{error}<div class="pw-field"><b>reference</b><pre class="pw-reference">{esc(_text(row.get("expected")))}'
        f'</pre></div>{already}</div>'
    )


class AnnotateView(w.VBox):
    """One row at a time with Pass, Fail, Skip and Back buttons and a note; each verdict is stored at once."""

    def __init__(self, session: AnnotationSession) -> None:
        self.session = session
        self.pane = w.HTML()
        self.note = w.Text(placeholder='a note (optional): why it passes or fails', layout=w.Layout(width='60%'))
        self.pass_button = w.Button(description='Pass', button_style='success', icon='check')
        self.fail_button = w.Button(description='Fail', button_style='danger', icon='times')
        self.skip_button = w.Button(description='Skip')
        self.back_button = w.Button(description='Back')
        self.status = w.HTML()
        self.pass_button.on_click(lambda _: self._record('pass'))
        self.fail_button.on_click(lambda _: self._record('fail'))
        self.skip_button.on_click(lambda _: self._move(session.skip))
        self.back_button.on_click(lambda _: self._move(session.back))
        buttons = w.HBox([self.pass_button, self.fail_button, self.skip_button, self.back_button])
        super().__init__([self.pane, self.note, buttons, self.status])
        self.add_class('pw-annotate-view')
        self.refresh()

    def refresh(self) -> None:
        """Show the current row and the counts so far."""
        s = self.session
        row = s.current()
        given = s.verdicts.get(row['example_id'], {}).get('verdict') if row else None
        self.pane.value = render_annotation_row(
            row, position=s.position, total=len(s.rows), inputs=s.inputs, given=given
        )
        counts = s.counts()
        self.status.value = (
            f'{counts["pass"]} pass, {counts["fail"]} fail, {counts["open"]} open; annotating as '
            f'<b>{html.escape(s.annotator)}</b> {s.run.version.id} on {html.escape(s.run.dataset)}'
        )
        for button in (self.pass_button, self.fail_button, self.skip_button):
            button.disabled = row is None

    def _record(self, verdict: Verdict) -> None:
        try:
            self.session.record(verdict, self.note.value)
        except WorkspaceError as e:
            self.status.value = f'<span style="color:#c62828">{html.escape(str(e))}</span>'
            return
        self.note.value = ''
        self.refresh()

    def _move(self, step: Any) -> None:
        step()
        self.note.value = ''
        self.refresh()


def annotate(run: Any, n: int = 50, *, annotator: str | None = None, seed: int = 0) -> AnnotateView:
    """Show n rows of a run one at a time (input, output, reference) with Pass and Fail buttons and a note; each
    verdict is stored with who and when. Rows this person has not annotated come first.

    >>> ws.annotate(run, n=50)
    """
    return AnnotateView(AnnotationSession(run, n, annotator=annotator, seed=seed))
