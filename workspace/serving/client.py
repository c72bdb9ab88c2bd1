"""A small Python client of the HTTP API, for applications and notebooks (any HTTP client works the same way)."""

from __future__ import annotations

from typing import Any

import httpx

from workspace.errors import GuardrailViolation, ServeError

__all__ = ['Client']


class Client:
    """Call a prompt-workspace server with an API key; errors come back as the workspace's exceptions.

    >>> client = Client('http://127.0.0.1:8000', key=os.environ['PROMPT_WORKSPACE_KEY'])
    >>> client.render('ticket_router@production', {'text': 'My parcel is late'})['text']
    """

    def __init__(self, url: str, key: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=url, headers={'Authorization': f'Bearer {key}'}, timeout=timeout)

    def __repr__(self) -> str:
        return f'<Client {self._http.base_url}>'

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.is_success:
            return response.json()
        try:
            error = response.json()['error']
        except (ValueError, KeyError, TypeError):
            error = {'type': 'http_error', 'message': response.text[:200]}
        if error.get('type') == 'guardrail_violation':
            raise GuardrailViolation(error['violation'], error.get('violations'))
        raise ServeError(f'{response.status_code} {error.get("type")}: {error.get("message")}')

    def prompt(self, ref: str) -> dict[str, Any]:
        """Return the version a reference names (`ticket_router@production`): template, model, params, output."""
        return self._call('GET', f'/v1/prompts/{ref}')

    def render(self, ref: str, fields: dict[str, Any], *, unit_id: str | int | None = None) -> dict[str, Any]:
        """Return the rendered prompt (`text`), `version_id`, `warnings` and `execution_id`."""
        return self._call('POST', '/v1/render', json={'version': ref, 'fields': fields, 'unit_id': unit_id})

    def complete(self, ref: str, fields: dict[str, Any], *, unit_id: str | int | None = None) -> dict[str, Any]:
        """Return the model's `output` and `prediction` with the rendered prompt and `execution_id`."""
        return self._call('POST', '/v1/complete', json={'version': ref, 'fields': fields, 'unit_id': unit_id})

    def log_outcome(self, execution_id: str, outcome: float) -> str:
        """Log the outcome of an execution for its unit's A/B experiment; return the event id."""
        return self._call('POST', '/v1/outcomes', json={'execution_id': execution_id, 'outcome': outcome})['event_id']

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()
