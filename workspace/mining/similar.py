"""Similarity search over raw prompts, prompt version templates and model outputs, with the project's embedder.

- prompts: the Pixeltable embedding index on `raw_prompts.vector` (`.similarity()`), so it scales with the log;
- versions: the templates of the versions table, embedded at query time (a workspace has hundreds of versions at
  most, a few milliseconds to embed);
- outputs: the answers in the request store (what models actually said, whichever evaluation asked), embedded at
  query time, answered requests only. The evaluation tables hold the same answers copied per (version, example).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from workspace.errors import WorkspaceError
from workspace.storage import tables
from workspace.storage.embeddings import embed

__all__ = ['similar']

Among = Literal['prompts', 'versions', 'outputs']


def _ranked(text: str, items: list[dict], field: str, k: int) -> pd.DataFrame:
    if not items:
        return pd.DataFrame(columns=['score', *items[0].keys()] if items else ['score'])
    vectors = embed([str(item[field]) for item in items])
    scores = vectors @ embed([text])[0]
    order = np.argsort(-scores, kind='stable')[:k]
    return pd.DataFrame([{'score': float(scores[i]), **items[i]} for i in order])


def similar(text: str, k: int = 10, among: Among = 'prompts') -> pd.DataFrame:
    """Return the `k` items nearest to `text` by cosine similarity of their embeddings, best first, with a score.

    `among='prompts'`: raw prompts (prompt, family, count, first and last seen); `'versions'`: version templates;
    `'outputs'`: model answers in the request store (answer, prompt, model).

    >>> ws.similar('Where is my parcel?', k=5, among='prompts')
    """
    if not isinstance(text, str) or not text.strip():
        raise WorkspaceError(f'similar() needs a non-empty text to search for, got {text!r}')
    if not isinstance(k, int) or k < 1:
        raise WorkspaceError(f'k must be a positive integer, got {k!r}')
    if among == 'prompts':
        raw = tables.raw_prompts()
        sim = raw.vector.similarity(string=text)
        rows = (
            raw.order_by(sim, asc=False)
            .limit(k)
            .select(
                score=sim,
                prompt=raw.prompt,
                family_id=raw.family_id,
                occurrences=raw.occurrences,
                first_seen=raw.first_seen,
                last_seen=raw.last_seen,
                prompt_hash=raw.prompt_hash,
            )
            .collect()
        )
        columns = ['score', 'prompt', 'family_id', 'occurrences', 'first_seen', 'last_seen', 'prompt_hash']
        return pd.DataFrame(list(rows), columns=columns)
    if among == 'versions':
        t = tables.versions()
        items = [dict(r) for r in t.select(t.version_id, t.template).collect()]
        return (
            _ranked(text, items, 'template', k) if items else pd.DataFrame(columns=['score', 'version_id', 'template'])
        )
    if among == 'outputs':
        from workspace.storage.store import sent_prompts

        items = [
            {
                'output': r['response'],
                'prompt': r['prompt'],
                'model_id': r['model_id'],
                'request_hash': r['request_hash'],
            }
            for r in sent_prompts()
            if r['response']
        ]
        columns = ['score', 'output', 'prompt', 'model_id', 'request_hash']
        return _ranked(text, items, 'output', k) if items else pd.DataFrame(columns=columns)
    raise WorkspaceError(f"among={among!r} is not one of 'prompts', 'versions', 'outputs'")
