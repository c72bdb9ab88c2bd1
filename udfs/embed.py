"""Text embeddings for Pixeltable embedding indexes and columns, from the project's one offline embedder.

>>> t.add_embedding_index('text', embedding=embed_text)
>>> sim = t.text.similarity(string='my card has not arrived')
>>> t.order_by(sim, asc=False).limit(8).select(t.text, sim).collect()
"""

from __future__ import annotations

import pixeltable as pxt
from pixeltable.func import Batch

from workspace.storage import embeddings

__all__ = ['embed_text']


@pxt.udf(batch_size=64)
def embed_text(text: Batch[str]) -> Batch[pxt.Array[(embeddings.DIMENSIONS,), pxt.Float]]:
    """Text in, its 256-dimensional L2-normalized embedding out (workspace.storage.embeddings, WordLlama l2_supercat)."""
    return list(embeddings.embed(text))
