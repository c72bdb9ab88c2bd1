"""Annotations: people's verdicts (pass or fail, with a note) on a run's predictions, stored with who and when.

`AnnotationSession` picks the rows and records verdicts (no widgets: testable without a kernel);
the widget over it is `workspace.ui.annotate.AnnotateView`.

```
prompt_workspace/annotations   one row per (dataset, version, example, annotator): verdict, note, the prediction
                               and its request hash, the run, and when
```

Annotating the same prediction again replaces that person's verdict; other people's verdicts stay.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import pandas as pd

from workspace.config import current_user, utc_now
from workspace.errors import WorkspaceError
from workspace.storage import tables

__all__ = [
    'AnnotationSession',
    'add_annotation',
    'input_fields',
    'list_annotations',
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
        self.inputs = input_fields(run)

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


def input_fields(run: Any) -> list[str]:
    """Return the input fields of a run's dataset, in order."""
    from workspace.core.datasets import get_dataset

    return list(get_dataset(run.dataset).inputs)
