"""Similarity search over raw prompts, prompt version templates and model outputs, with the project's embedder.

- prompts: a Pixeltable embedding index over the raw prompts' vectors, kept in `prompt_index` (`.similarity()`), so
  it scales with the log; brought up to date with the prompts ingested since the last search when it is searched;
- versions: the templates of the versions table, embedded at query time (a workspace has hundreds of versions at
  most, a few milliseconds to embed);
- outputs: the answers in the request store (what models actually said, whichever evaluation asked), embedded at
  query time, answered requests only. The evaluation tables hold the same answers copied per (version, example).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import pixeltable.functions as pxtf

from workspace.errors import WorkspaceError
from workspace.storage import tables
from workspace.storage.embeddings import embed

__all__ = ['similar']

Among = Literal['prompts', 'versions', 'outputs']

INDEX_CHUNK = 5000  # raw prompts embedded and added to the similarity index at a time


def _ranked(text: str, items: list[dict], field: str, k: int) -> pd.DataFrame:
    if not items:
        return pd.DataFrame(columns=['score', *items[0].keys()] if items else ['score'])
    vectors = embed([str(item[field]) for item in items])
    scores = vectors @ embed([text])[0]
    order = np.argsort(-scores, kind='stable')[:k]
    return pd.DataFrame([{'score': float(scores[i]), **items[i]} for i in order])


def _prompt_index() -> Any:
    """Return the similarity index over raw prompts, first adding the prompts ingested since it was last searched.

    Ingest does not maintain it (an index updated on every insert costs ten times the insert); the first search
    after an ingest pays once for the prompts it added, in the order they were assigned.
    """
    raw, index = tables.raw_prompts(), tables.prompt_index()
    done = index.select(top=pxtf.max(index.seq)).collect()[0]['top']
    start = -1 if done is None else done
    # in seq order, so that a search stopped between two chunks resumes after the last one it indexed (rows updated
    # since they were inserted do not come back in seq order)
    missing = raw.where(raw.seq > start).order_by(raw.seq).select(raw.prompt_hash, raw.seq, raw.prompt)
    rows = [dict(r) for r in missing.collect()]
    for begin in range(0, len(rows), INDEX_CHUNK):  # raw prompts store no vector: the embedder gives each one again
        chunk = rows[begin : begin + INDEX_CHUNK]
        vectors = embed([r.pop('prompt') for r in chunk])
        tables.insert_new(index, [{**r, 'vector': v} for r, v in zip(chunk, vectors)], 'prompt_hash')
    return index


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
        index = _prompt_index()
        sim = index.vector.similarity(string=text)
        found = list(index.order_by(sim, asc=False).limit(k).select(index.prompt_hash, score=sim).collect())
        raw = tables.raw_prompts()
        rows = {
            r['prompt_hash']: dict(r)
            for r in raw.where(raw.prompt_hash.isin([f['prompt_hash'] for f in found]))
            .select(raw.prompt, raw.family_id, raw.occurrences, raw.first_seen, raw.last_seen, raw.prompt_hash)
            .collect()
        }
        columns = ['score', 'prompt', 'family_id', 'occurrences', 'first_seen', 'last_seen', 'prompt_hash']
        out = [{'score': f['score'], **rows[f['prompt_hash']]} for f in found if f['prompt_hash'] in rows]
        return pd.DataFrame(out, columns=columns)
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
