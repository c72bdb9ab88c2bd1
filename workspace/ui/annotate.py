"""The annotation widget: a person labels a run's predictions pass or fail, one at a time, with a note, from the
keyboard or with the mouse.

`AnnotationSession` (workspace.analysis.annotations) holds the sample and stores each verdict; this module shows
the current row (`render_annotation_row`, pure HTML) in a small anywidget whose keys JupyterLab does not take.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any, cast

import anywidget
import pandas as pd
import traitlets

from workspace.analysis.annotations import AnnotationSession, Verdict
from workspace.errors import WorkspaceError

__all__ = ['AnnotateView', 'KEYS', 'annotate', 'render_annotation_row']


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


#: The annotation card in the browser: the row, a note field, the buttons, and the keys. Every key pressed inside
#: the widget stops there (JupyterLab listens in the bubbling phase, so its shortcuts never see them: Enter does
#: not put the cell into edit mode, P, F, S, B and the arrows do not act on cells), and after a verdict the
#: focus stays on the card, which shows the next row.
_ESM = """
const KEYS = { p: 'pass', f: 'fail', s: 'skip', arrowright: 'skip', b: 'back', arrowleft: 'back' };

function render({ model, el }) {
  el.classList.add('pw-annotate-view');
  el.innerHTML = `
    <div class="pw-annotate-card" tabindex="0" data-lm-suppress-shortcuts="true"
         aria-label="Annotation: P pass, F fail, S or right arrow skip, B or left arrow back, N note">
      <div class="pw-annotate-keys">Click the card, then <kbd>P</kbd> pass · <kbd>F</kbd> fail ·
        <kbd>S</kbd>/<kbd>→</kbd> skip · <kbd>B</kbd>/<kbd>←</kbd> back · <kbd>N</kbd> note
        (<kbd>Enter</kbd> or <kbd>Esc</kbd> back to the row)</div>
      <div class="pw-annotate-row"></div>
    </div>
    <input class="pw-annotate-note" type="text" data-lm-suppress-shortcuts="true"
           placeholder="a note (optional): why it passes or fails">
    <div class="pw-annotate-buttons">
      <button data-action="pass" class="pw-pass">✓ Pass (P)</button>
      <button data-action="fail" class="pw-fail">✗ Fail (F)</button>
      <button data-action="skip">Skip (S)</button>
      <button data-action="back">Back (B)</button>
    </div>
    <div class="pw-annotate-status"></div>`;
  const card = el.querySelector('.pw-annotate-card');
  const row = el.querySelector('.pw-annotate-row');
  const note = el.querySelector('.pw-annotate-note');
  const status = el.querySelector('.pw-annotate-status');
  const act = (action) => {
    // The note travels with its verdict and is cleared here. The field is not synced to the kernel as it is typed:
    // ipywidgets sends such updates after a message sent meanwhile and echoes them back, so a late echo put the
    // old note back into the cleared field and a quick next verdict carried it again (seen once in CI).
    model.send({ action, note: note.value });
    note.value = '';
    card.focus();
  };
  el.addEventListener('keydown', (event) => {
    event.stopPropagation();
    if (event.target === note) {
      if (event.key === 'Enter' || event.key === 'Escape') { event.preventDefault(); card.focus(); }
      return;
    }
    if (event.target.tagName === 'BUTTON' && (event.key === 'Enter' || event.key === ' ')) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (KEYS[key]) { event.preventDefault(); act(KEYS[key]); }
    else if (key === 'n') { event.preventDefault(); note.focus(); }
    else if (key === 'enter' || key.startsWith('arrow')) event.preventDefault();
  });
  for (const button of el.querySelectorAll('button')) {
    button.addEventListener('click', () => act(button.dataset.action));
  }
  const show = () => {
    row.innerHTML = model.get('row_html');
    status.innerHTML = model.get('status_html');
    const done = model.get('done');
    for (const button of el.querySelectorAll('button.pw-pass, button.pw-fail')) button.disabled = done;
  };
  model.on('change:row_html', show);
  model.on('change:status_html', show);
  model.on('change:done', show);
  model.on('change:note', () => { note.value = model.get('note'); });
  show();
}
export default { render };
"""

_CSS = """
.pw-annotate-view { font-family: system-ui, sans-serif; font-size: 13px; max-width: 100%; }
.pw-annotate-card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 12px; outline: none; }
.pw-annotate-card:focus { border-color: #2563eb; box-shadow: 0 0 0 3px #dbeafe; }
.pw-annotate-keys { color: #59636e; font-size: 12px; margin-bottom: 4px; }
.pw-annotate-keys kbd { font: 11px ui-monospace, monospace; border: 1px solid #d0d7de; border-bottom-width: 2px;
  border-radius: 4px; padding: 0 4px; background: #f6f8fa; }
.pw-annotate-note { width: 60%; margin: 8px 0 4px; padding: 4px 6px; font-size: 13px; }
.pw-annotate-buttons button { margin: 4px 6px 4px 0; padding: 4px 12px; font-size: 13px; cursor: pointer;
  border: 1px solid #d0d7de; border-radius: 4px; background: #f6f8fa; }
.pw-annotate-buttons button.pw-pass { background: #dcfce7; border-color: #86efac; }
.pw-annotate-buttons button.pw-fail { background: #fee2e2; border-color: #fca5a5; }
.pw-annotate-buttons button:disabled { opacity: .5; cursor: default; }
.pw-annotate-status { color: #424a53; margin-top: 2px; }
"""

#: What a key does in the widget (the browser sends the action; `press` does the same from Python).
KEYS: dict[str, str] = {'p': 'pass', 'f': 'fail', 's': 'skip', 'arrowright': 'skip', 'b': 'back', 'arrowleft': 'back'}


class AnnotateView(anywidget.AnyWidget):
    """One row at a time: Pass, Fail, Skip and Back from the keyboard (P, F, S or →, B or ←; N for the note) or
    the buttons; each verdict is stored at once and the next row shows, the focus staying on the card."""

    _esm = _ESM
    _css = _CSS
    row_html = traitlets.Unicode('').tag(sync=True)
    status_html = traitlets.Unicode('').tag(sync=True)
    note = traitlets.Unicode('').tag(sync=True)
    done = traitlets.Bool(False).tag(sync=True)

    def __init__(self, session: AnnotationSession) -> None:
        super().__init__()
        self.session = session
        self.on_msg(self._on_message)
        self.refresh()

    def refresh(self) -> None:
        """Show the current row and the counts so far."""
        s = self.session
        row = s.current()
        given = s.verdicts.get(row['example_id'], {}).get('verdict') if row else None
        counts = s.counts()
        with self.hold_sync():
            self.row_html = render_annotation_row(
                row, position=s.position, total=len(s.rows), inputs=s.inputs, given=given
            )
            self.status_html = (
                f'{counts["pass"]} pass, {counts["fail"]} fail, {counts["open"]} open; annotating as '
                f'<b>{html.escape(s.annotator)}</b> {html.escape(s.run.version.id)} on {html.escape(s.run.dataset)}'
            )
            self.done = row is None

    def press(self, key: str) -> None:
        """Do what a key does in the browser: 'p' pass, 'f' fail, 's' or 'ArrowRight' skip, 'b' or 'ArrowLeft' back."""
        action = KEYS.get(key.lower())
        if action is None:
            raise WorkspaceError(f'key {key!r} does nothing here; the keys are {", ".join(KEYS)}')
        self.act(action)

    def act(self, action: str, note: str | None = None) -> None:
        """Pass, fail, skip or back: store a verdict on the current row with the note, or move, then refresh."""
        # The browser's note comes with its message and is not written to the trait: a write would travel back to
        # the field just cleared for the next row.
        text = self.note if note is None else note
        if action in ('pass', 'fail'):
            try:
                self.session.record(cast(Verdict, action), text)
            except WorkspaceError as e:
                self.status_html = f'<span style="color:#c62828">{html.escape(str(e))}</span>'
                self.note = text  # the note back in its field, not lost with the refused verdict
                return
        elif action == 'skip':
            self.session.skip()
        elif action == 'back':
            self.session.back()
        else:
            raise WorkspaceError(f'action {action!r} is not pass, fail, skip or back')
        self.note = ''
        self.refresh()

    def _on_message(self, _widget: Any, content: Mapping[str, Any], _buffers: Any) -> None:
        self.act(str(content.get('action')), str(content.get('note') or ''))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Show the widget where a widget manager runs, and its current row as HTML where none does (a notebook
        saved by papermill, a static viewer)."""
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if isinstance(data, dict):
            data['text/html'] = f'<div class="pw-annotate-static">{self.row_html}<p>{self.status_html}</p></div>'
        return bundle


def annotate(run: Any, n: int = 50, *, annotator: str | None = None, seed: int = 0) -> AnnotateView:
    """Show n rows of a run one at a time (input, output, reference); click the card, then P passes, F fails, S or
    → skips, B or ← goes back, N writes a note (or use the buttons). Each verdict is stored with who and when, and
    the next row shows. Rows this person has not annotated come first.

    >>> ws.annotate(run, n=50)
    """
    return AnnotateView(AnnotationSession(run, n, annotator=annotator, seed=seed))
