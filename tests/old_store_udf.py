"""The model call of a version 0.1 request store (a computed column), for the test that upgrades one."""

from __future__ import annotations

import pixeltable as pxt


@pxt.udf(is_deterministic=False)
def complete(request: pxt.Json) -> pxt.Json:
    """Request dict in; a canned completion out, or an error for a prompt that asks for one."""
    if 'fail' in request['prompt']:
        raise RuntimeError('the endpoint answered 500')
    return {'text': 'ok:' + request['prompt'], 'prompt_tokens': 3, 'completion_tokens': 1, 'latency_s': 0.1}
