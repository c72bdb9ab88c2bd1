"""What model calls cost in dollars: a price per input and output token for each model spec, from maintained tables.

Prices come from the `genai-prices` package (kept current by Pydantic, with each provider's price history), and
for models it does not list, from LiteLLM's bundled cost map (installed with DSPy, read as a file so that
nothing reaches the network). The embedded model and any `local:` GGUF file cost nothing. A model neither table
knows (a self-hosted vLLM or Ollama model behind `openai:`) has an unknown cost: None, shown as "n/a", never 0.

`openai:<model>` is priced as OpenAI's model of that name, `groq:<model>` as Groq's.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pandas as pd

from workspace.storage.backends import parse_model

__all__ = ['Price', 'price', 'request_cost', 'frame_costs', 'run_cost']

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    """Dollars per input token and per output token of one model, and where the figures come from."""

    model: str
    input_per_token: float
    output_per_token: float
    source: str

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        """Return the dollars of one call with these token counts (a missing count counts as 0)."""
        return (prompt_tokens or 0) * self.input_per_token + (completion_tokens or 0) * self.output_per_token


def _genai_price(provider: str, name: str) -> Price | None:
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # Python 3.10: genai-prices needs 3.11
        return None
    million = 1_000_000
    try:
        found = calc_price(Usage(input_tokens=million, output_tokens=million), name, provider_id=provider)
    except LookupError:
        return None
    # Prices per million tokens of each kind, read back one kind at a time: the total mixes both.
    per_in = Decimal(found.input_price) / million
    per_out = Decimal(found.output_price) / million
    return Price(f'{provider}:{name}', float(per_in), float(per_out), f'genai-prices ({found.model.name})')


@functools.cache
def _litellm_map() -> dict[str, dict]:
    spec = importlib.util.find_spec('litellm')
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / 'model_prices_and_context_window_backup.json'
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _litellm_price(provider: str, name: str) -> Price | None:
    table = _litellm_map()
    for key in (f'{provider}/{name}', name):
        entry = table.get(key)
        if entry and entry.get('input_cost_per_token') is not None and entry.get('litellm_provider') == provider:
            return Price(
                f'{provider}:{name}',
                float(entry['input_cost_per_token']),
                float(entry.get('output_cost_per_token') or 0.0),
                'LiteLLM cost map',
            )
    return None


@functools.lru_cache(maxsize=256)
def price(model: str) -> Price | None:
    """Return the price of a model spec: zero for local models, the maintained tables' for Groq and OpenAI models,
    None when no table knows the model.

    >>> price('local').input_per_token
    0.0
    """
    kind, name = parse_model(model)
    if kind == 'local':
        return Price(model, 0.0, 0.0, 'local model')
    found = _genai_price(kind, name) or _litellm_price(kind, name)
    if found is None:
        log.info('no price known for %s; its cost shows as n/a', model)
    return found


def request_cost(model: str, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    """Return the dollars one call of `model` with these token counts cost, None if the price is unknown.

    >>> request_cost('openai:gpt-4o-mini', 1_000_000, 0)
    0.15
    """
    known = price(model)
    return None if known is None else known.cost(prompt_tokens, completion_tokens)


def frame_costs(frame: pd.DataFrame, model: str) -> pd.Series:
    """Return the cost in dollars of each row of an evaluation frame (its prompt and completion tokens); rows
    whose call failed cost what the tokens say (usually nothing); an unknown price gives NaN."""
    known = price(model)
    if known is None:
        return pd.Series(float('nan'), index=frame.index)
    prompt = frame['prompt_tokens'].fillna(0).astype(float)
    completion = frame['completion_tokens'].fillna(0).astype(float)
    return prompt * known.input_per_token + completion * known.output_per_token


def run_cost(costs: Iterable[float]) -> float | None:
    """Return the total of row costs, None if any is unknown (NaN)."""
    values = list(costs)
    if any(pd.isna(v) for v in values):
        return None
    return float(sum(values))
