"""The project's one offline text embedder: WordLlama l2_supercat, 256 dimensions, static token embeddings.

Nearest-neighbour demos, similarity search and prompt families all embed text here, so their vectors share one
space. A text's vector is the mean of its tokens' vectors (the Llama 2 tokenizer, no special tokens), L2-normalized:
WordLlama's pipeline. The 16 MB weight table and the tokenizer ship in the PyPI package `wordllama`; their files are
read and checked against pinned sha256 digests, and nothing is downloaded.

A text's vector depends on that text alone, never on what else is embedded with it or in which batch, so adding
rows to a pool leaves every stored vector valid. Long texts are embedded whole (no truncation). The choice and its
figures: docs/benchmarks.md ("Embedders").

>>> from workspace.storage.embeddings import embed
>>> embed(['Where is my card?', 'My card has not arrived']).shape
(2, 256)
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workspace.errors import EmbedderError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ['EMBEDDER_ID', 'DIMENSIONS', 'Embedder', 'embed']

#: Names the weights (by digest) and the pipeline; recorded in lineage. A change to either gets a new id.
EMBEDDER_ID = 'wordllama-l2_supercat-256@64b47a2d/mean'
DIMENSIONS = 256

_INSTALL = "pip install 'wordllama==0.4.0.post1'"
# (package, path inside it, sha256). Read directly: WordLlama.load() looks for the tokenizer in a folder the wheel
# does not have and then downloads it, and its batched embed() pads every text to the longest of the batch.
_WEIGHTS = (
    'wordllama',
    'weights/l2_supercat_256.safetensors',
    '64b47a2dc493cb8e85944076601189739852d7b64e0e1eedcb1937a251cd9fd5',
)
_TOKENIZER = (
    'wordllama',
    'tokenizers/l2_supercat_tokenizer_config.json',
    '93248f2a9ec36c7b35f700a033d5f36228aae48db61aee31007fa49062cdeb68',
)
_UNKNOWN = 0  # the tokenizer's <unk>: an empty text embeds as it, so every vector has unit length
_CHUNK = 65_536  # tokens summed at a time, so a very long text does not need a (tokens x 256) table at once


def _package_file(package: str, relative: str, sha256: str) -> Path:
    """Return the path of a file shipped in `package`, found without importing the package, checked by digest."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(f'the embedder needs the package {package!r}, which is not installed; run: {_INSTALL}')
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise EmbedderError(f'{path} is missing from the installed {package!r}; reinstall it: {_INSTALL}')
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise EmbedderError(
            f'{path} has sha256 {digest[:12]}..., not the pinned {sha256[:12]}...: its vectors would not match '
            f'{EMBEDDER_ID!r}; reinstall with: {_INSTALL}'
        )
    return path


class Embedder:
    """WordLlama l2_supercat (256 dimensions): loads its tokenizer and weights on the first `embed` call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: tuple[Tokenizer, np.ndarray] | None = None

    def _load(self) -> tuple[Tokenizer, np.ndarray]:
        with self._lock:
            if self._loaded is None:
                try:
                    from safetensors.numpy import load_file
                    from tokenizers import Tokenizer
                except ImportError as e:
                    raise EmbedderError(f'the embedder cannot import {e.name!r}; run: {_INSTALL}') from e
                tokenizer = Tokenizer.from_file(str(_package_file(*_TOKENIZER)))
                tokenizer.no_padding()
                tokenizer.no_truncation()
                weights = load_file(str(_package_file(*_WEIGHTS)))['embedding.weight'].astype(np.float32)
                self._loaded = (tokenizer, weights)
            return self._loaded

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return one L2-normalized float32 vector per text, shape (len(texts), DIMENSIONS)."""
        if isinstance(texts, str):
            raise EmbedderError(f'embed() takes a sequence of texts, got the string {texts[:40]!r}; use [text]')
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EmbedderError(f'text {i} is {type(text).__name__} {text!r}, not a string; embed strings only')
        out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        if not texts:
            return out
        tokenizer, weights = self._load()
        # Tokenized together (the tokenizer's batch runs on every core; without padding a text's tokens are its own),
        # then summed one text at a time in float64 in a fixed order: the vector cannot depend on other texts.
        # encode_batch_fast (tokenizers 0.20+) gives the same ids without the character offsets, a fifth faster
        encode = getattr(tokenizer, 'encode_batch_fast', tokenizer.encode_batch)
        for i, encoding in enumerate(encode(list(texts), add_special_tokens=False)):
            ids = np.asarray(encoding.ids or [_UNKNOWN], dtype=np.int64)
            total = np.zeros(DIMENSIONS, dtype=np.float64)
            for start in range(0, len(ids), _CHUNK):
                total += weights[ids[start : start + _CHUNK]].sum(axis=0, dtype=np.float64)
            out[i] = total / np.linalg.norm(total)
        return out


# The one embedder of this process; its weights load on first use.
_EMBEDDER = Embedder()


def embed(texts: Sequence[str]) -> np.ndarray:
    """Embed texts with the project's embedder: float32, L2-normalized, shape (len(texts), DIMENSIONS).

    >>> embed(['hello']).shape
    (1, 256)
    """
    return _EMBEDDER.embed(texts)
