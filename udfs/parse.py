"""Output parsing: a model's raw text and the version's output spec in, the prediction out."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pixeltable as pxt

__all__ = ['parse', 'parse_output', 'extract_json']

_WORD = re.compile(r'[\w-]+')


def _fold(text: str) -> str:
    return ' '.join(_WORD.findall(text.casefold()))


def _parse_choice(text: str, labels: list[str]) -> str | None:
    stripped = text.strip().strip('"\'`*.:').strip()
    if stripped in labels:
        return stripped
    folded = {_fold(label): label for label in labels}
    if _fold(stripped) in folded:
        return folded[_fold(stripped)]
    # A chatty model answers "The category is BILLING."; take the label that appears first.
    haystack = f' {_fold(text)} '
    hits = [(haystack.find(f' {key} '), label) for key, label in folded.items() if f' {key} ' in haystack]
    return min(hits)[1] if hits else None


def extract_json(text: str) -> Any:
    """Return the first JSON value in `text` (an object or array, possibly inside a code fence), or raise ValueError."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r'[\[{]', text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        return value
    raise ValueError(f'no JSON object in output {text[:80]!r}')


def parse(output: str | None, spec: Mapping[str, Any] | None) -> str | None:
    """Return the prediction for a raw model output: a label, stripped text, or canonical JSON text; None if none."""
    if output is None:
        return None
    kind = (spec or {}).get('kind', 'text')
    if kind == 'choice':
        return _parse_choice(output, list(spec['labels']))  # type: ignore[index]
    if kind == 'json':
        try:
            return json.dumps(extract_json(output), sort_keys=True, ensure_ascii=False)
        except ValueError:
            return None
    return output.strip()


@pxt.udf
def parse_output(output: str | None, spec: pxt.Json) -> str | None:
    """Raw model output and output spec in; prediction (label, text or canonical JSON) out, None if unparseable."""
    return parse(output, spec)
