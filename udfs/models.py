"""Model calls: one request (model, params, rendered prompt, output constraint) in, one completion out."""

from __future__ import annotations

import pixeltable as pxt

__all__ = ['complete']


@pxt.udf(is_deterministic=False)
def complete(request: pxt.Json) -> pxt.Json:
    """Request dict in; completion dict (text, prompt_tokens, completion_tokens, latency_s, finish_reason) out."""
    from workspace.backends import get_backend

    return dict(get_backend(request['model']).complete(request))
