"""Annotations: people's verdicts (pass or fail, with a note) on a run's predictions, stored with who and when.

`AnnotationSession` picks the rows and records verdicts (no widgets: testable without a kernel);
`render_annotation_row` draws one row as HTML; `AnnotateView` wires buttons and a note field to them.

```
prompt_workspace/annotations   one row per (dataset, version, example, annotator): verdict, note, the prediction
                               and its request hash, the run, and when
```

Annotating the same prediction again replaces that person's verdict; other people's verdicts stay.
"""

from __future__ import annotations

import html
import random
from collections.abc import Mapping
from typing import Any, Literal

import ipywidgets as w
import pandas as pd

from . import tables
from .config import current_user, utc_now
from .errors import WorkspaceError

__all__ = [
    'AnnotationSession',
    'AnnotateView',
    'annotate',
    'add_annotation',
    'list_annotations',
    'render_annotation_row',
]

Verdict = Literal['pass', 'fail']


def _prediction_row(run: Any, example_id: str) -> dict[str, Any]:
    frame = run.predictions().set_index('example_id', drop=False)
    if example_id not in frame.index:
        raise WorkspaceError(f'example {example_id!r} is not in run {run.run_id} of {run.version.id}')
    return dict(frame.loc[example_id])


def add_annotation(
    run: Any, example_id: str, verdict: Verdict, *, note: str = '', annotator: str | None = None
) -> dict[str, Any]:
    """Store a person's verdict ('pass' or 'fail') on one prediction of a run, with who and when; return the row.

    >>> ws.add_annotation(run, 't017', 'fail', note='refund, not billing')
    """
    if verdict not in ('pass', 'fail'):
        raise WorkspaceError(f"verdict {verdict!r} is not 'pass' or 'fail'")
    row = _prediction_row(run, example_id)
    prediction = row.get('prediction')
    record = {
        'dataset': run.dataset,
        'version_id': run.version.id,
        'example_id': example_id,
        'annotator': annotator or current_user(),
        'request_hash': row.get('request_hash'),
        'prediction': None if prediction is None or pd.isna(prediction) else str(prediction),
        'verdict': verdict,
        'note': note or None,
        'run_id': run.run_id,
        'annotated_at': utc_now(),
    }
    tables.upsert(tables.annotations_table(), [record])
    return record


def list_annotations(
    dataset: str | None = None, *, version: str | None = None, annotator: str | None = None
) -> pd.DataFrame:
    """Return stored annotations (of a dataset, a version, an annotator), oldest first.

    >>> ws.list_annotations('support_tickets', annotator='ana')
    """
    t = tables.annotations_table()
    frame = t.order_by(t.annotated_at).collect().to_pandas()
    if frame.empty:
        return pd.DataFrame(columns=list(t.columns()))
    for column, value in (('dataset', dataset), ('version_id', version), ('annotator', annotator)):
        if value is not None:
            frame = frame[frame[column] == value]
    return frame.reset_index(drop=True)


class AnnotationSession:
    """The rows one person annotates from a run, in a seeded random order (rows they have not annotated first),
    and where they are."""

    def __init__(self, run: Any, n: int = 50, *, annotator: str | None = None, seed: int = 0) -> None:
        if n < 1:
            raise WorkspaceError(f'n={n!r} is below 1; annotate at least one row')
        self.run = run
        self.annotator = annotator or current_user()
        frame = run.predictions()
        done = list_annotations(run.dataset, version=run.version.id, annotator=self.annotator)
        seen = set(done['example_id'])
        ids = list(frame['example_id'])
        random.Random(seed).shuffle(ids)
        ids = [ex for ex in ids if ex not in seen] + [ex for ex in ids if ex in seen]
        by_id = frame.set_index('example_id', drop=False)
        self.rows = [dict(by_id.loc[ex]) for ex in ids[:n]]
        self.verdicts: dict[str, dict[str, Any]] = {
            r['example_id']: r for r in done.to_dict('records') if r['example_id'] in set(ids[:n])
        }
        self.position = 0
        self.inputs = _inputs(run)

    @property
    def done(self) -> bool:
        return self.position >= len(self.rows)

    def current(self) -> dict[str, Any] | None:
        """Return the row shown now, or None when every row has been seen."""
        return None if self.done else self.rows[self.position]

    def record(self, verdict: Verdict, note: str = '') -> dict[str, Any]:
        """Store a verdict on the current row and move to the next."""
        row = self.current()
        if row is None:
            raise WorkspaceError('every row of this session is annotated; start another with ws.annotate(run, n=...)')
        stored = add_annotation(self.run, row['example_id'], verdict, note=note, annotator=self.annotator)
        self.verdicts[row['example_id']] = stored
        self.position += 1
        return stored

    def skip(self) -> None:
        """Move to the next row without a verdict."""
        self.position = min(self.position + 1, len(self.rows))

    def back(self) -> None:
        """Move to the previous row (its verdict can be given again)."""
        self.position = max(self.position - 1, 0)

    def counts(self) -> dict[str, int]:
        """Return how many rows of this session have a pass, a fail, or no verdict."""
        given = [self.verdicts[r['example_id']]['verdict'] for r in self.rows if r['example_id'] in self.verdicts]
        return {'pass': given.count('pass'), 'fail': given.count('fail'), 'open': len(self.rows) - len(given)}


def _inputs(run: Any) -> list[str]:
    from .datasets import get_dataset

    return list(get_dataset(run.dataset).inputs)


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
