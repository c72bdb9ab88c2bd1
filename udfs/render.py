"""Template rendering: a version's Jinja2 template plus one example's input fields in, the prompt text out."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import pixeltable as pxt
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ['RESERVED_VARIABLES', 'template_variables', 'render', 'render_prompt']

#: Variables every template may use besides the dataset's input fields.
RESERVED_VARIABLES = frozenset({'demos', 'labels', 'instructions'})

_env = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False, trim_blocks=False
)


@functools.lru_cache(maxsize=512)
def _compiled(template: str) -> jinja2.Template:
    return _env.from_string(template)


@functools.lru_cache(maxsize=512)
def _variables(template: str) -> frozenset[str]:
    return frozenset(meta.find_undeclared_variables(_env.parse(template)))


def template_variables(template: str) -> set[str]:
    """Return the names of the top-level variables a template reads (raises `jinja2.TemplateSyntaxError`)."""
    return set(_variables(template))


def render(
    template: str,
    fields: Mapping[str, Any],
    *,
    demos: Sequence[Mapping[str, Any]] = (),
    labels: Sequence[str] = (),
    instructions: str = '',
) -> str:
    """Render `template` with one example's `fields`, the version's `demos`, `labels` and `instructions`.

    Instructions a template does not place itself are put on top, separated by a blank line, so that an
    optimizer can propose instructions for any template.
    """
    text = _compiled(template).render(
        {**fields, 'demos': list(demos), 'labels': list(labels), 'instructions': instructions}
    )
    if instructions and 'instructions' not in _variables(template):
        text = f'{instructions}\n\n{text}'
    return text


@pxt.udf
def render_prompt(
    template: str,
    fields: pxt.Json,
    *,
    demos: pxt.Json | None = None,
    labels: pxt.Json | None = None,
    instructions: str = '',
) -> str:
    """Template and input fields (plus demos, labels, instructions) in; rendered prompt text out."""
    return render(template, fields, demos=demos or (), labels=labels or (), instructions=instructions)
