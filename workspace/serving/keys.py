"""API keys of the HTTP server: created and revoked from the command line, stored only as SHA-256 hashes.

A key reads `pw_<key id>_<secret>`: the key id (public) finds its row, the secret (32 random bytes) makes it
unguessable, and only the SHA-256 of the whole key is stored, so the table never holds a usable key. The key is
shown once, when it is created. Scopes are ordered: `read` fetches versions, `serve` also renders, completes and
logs outcomes, `admin` also moves labels, changes rules and reads the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from workspace.config import utc_now
from workspace.errors import WorkspaceError
from workspace.storage import audit_log, tables

__all__ = ['Scope', 'SCOPES', 'ApiKey', 'create_key', 'revoke_key', 'list_keys', 'load_keys', 'verify', 'allows']

Scope = Literal['read', 'serve', 'admin']
#: The scopes, each allowing what the ones before it allow.
SCOPES: tuple[str, ...] = ('read', 'serve', 'admin')

_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_.-]{0,63}$')
_KEY = re.compile(r'^pw_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$')
# Hashed instead of a stored key when the key id is unknown, so a wrong key takes as long as a right one.
_DUMMY = hashlib.sha256(b'no such key').hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A key as the server knows it: its name, scope, requests per second, and the hash of the secret."""

    key_id: str
    name: str
    scope: str
    rate: float
    key_hash: str
    revoked: bool


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    name: str, scope: Scope = 'serve', *, rate: float = 50.0, if_exists: Literal['error', 'replace'] = 'error'
) -> str:
    """Create an API key and return it; it is shown only now (the table keeps its SHA-256).

    `rate` is the key's limit in requests per second (bursts up to twice that are allowed). With
    `if_exists='replace'` an active key of the same name is revoked first (a notebook cell run twice).

    >>> key = create_key('checkout-service', 'serve')
    """
    if not _NAME.match(name):
        raise WorkspaceError(f'key name {name!r} is not valid; use letters, digits, _ . and -, starting with a letter')
    if scope not in SCOPES:
        raise WorkspaceError(f'scope {scope!r} is not one of: {", ".join(SCOPES)}')
    if not rate > 0:
        raise WorkspaceError(f'rate {rate!r} must be a positive number of requests per second')
    t = tables.api_keys()
    taken = t.where((t.name == name) & (t.revoked_at == None)).select(t.key_id).collect()  # noqa: E711
    if len(taken) and if_exists == 'replace':
        revoke_key(name)
    elif len(taken):
        raise WorkspaceError(f'an active key is already named {name!r}; revoke it first or choose another name')
    key_id = secrets.token_hex(6)
    key = f'pw_{key_id}_{secrets.token_urlsafe(32)}'
    t.insert(
        [
            {
                'key_id': key_id,
                'name': name,
                'scope': scope,
                'rate': float(rate),
                'key_hash': _hash(key),
                'created_at': utc_now(),
                'created_by': audit_log.actor(),
                'revoked_at': None,
            }
        ]
    )
    audit_log.record('key.created', name, after={'scope': scope, 'key_id': key_id, 'rate': rate})
    return key


def revoke_key(name: str) -> None:
    """Revoke the active key named `name`; the server refuses it within its refresh time."""
    t = tables.api_keys()
    where = (t.name == name) & (t.revoked_at == None)  # noqa: E711
    found = t.where(where).select(t.key_id, t.scope).collect()
    if not len(found):
        raise WorkspaceError(f'no active key named {name!r}; see prompt-workspace keys list')
    t.update({'revoked_at': utc_now()}, where=where)
    audit_log.record('key.revoked', name, before={'scope': found[0]['scope'], 'key_id': found[0]['key_id']})


def list_keys() -> pd.DataFrame:
    """Return the keys: name, key id, scope, rate, created, revoked (never the key or its hash)."""
    t = tables.api_keys()
    return (
        t.select(t.name, t.key_id, t.scope, t.rate, t.created_at, t.created_by, t.revoked_at)
        .order_by(t.created_at)
        .collect()
        .to_pandas()
    )


def load_keys() -> dict[str, ApiKey]:
    """Return every key by key id, as the server caches them."""
    t = tables.api_keys()
    return {
        r['key_id']: ApiKey(r['key_id'], r['name'], r['scope'], r['rate'], r['key_hash'], r['revoked_at'] is not None)
        for r in t.select(t.key_id, t.name, t.scope, t.rate, t.key_hash, t.revoked_at).collect()
    }


def verify(key: str, known: dict[str, ApiKey]) -> ApiKey | None:
    """Return the active key matching `key`, comparing hashes in constant time; None for a wrong or revoked key."""
    match = _KEY.match(key.strip())
    found = known.get(match[1]) if match else None
    ok = hmac.compare_digest(_hash(key.strip()), found.key_hash if found else _DUMMY)
    return found if ok and found is not None and not found.revoked else None


def allows(scope: str, needed: str) -> bool:
    """Return whether a key of `scope` may do what `needed` allows."""
    return SCOPES.index(scope) >= SCOPES.index(needed)
