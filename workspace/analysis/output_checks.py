"""Checks of text a model wrote about the workspace's own results (suggestions, changelogs) before it is shown.

A small model asked for JSON often copies the schema's placeholders back (`<what goes wrong and why>`), repeats a
worked example of its prompt instead of answering, or states an effect the measurements contradict ("improves
accuracy" for a change that broke more examples than it fixed). Each check returns the problems it found as
sentences; a result with any problem is marked unreliable, with the reasons, and shown as a model's claim rather
than a fact. The checks are deliberately literal (placeholders and examples the prompt holds, claim words against
measured counts): they flag, they never rewrite.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    'placeholders',
    'echoed_placeholders',
    'copied_examples',
    'not_a_sentence',
    'effect_claims',
    'setting_claims',
]

_PLACEHOLDER = re.compile(r'<[^<>{}\n]{2,80}>')
_IMPROVES = re.compile(
    r'\b(improv\w*|better|fix(es|ed)?|more accurate|higher accuracy|increas\w* (the )?accuracy|boost\w*|helps?)\b', re.I
)
_WORSENS = re.compile(
    r'\b(wors\w*|break(s|ing)?|broke|hurts?|regress\w*|less accurate|lower accuracy|decreas\w* (the )?accuracy)\b', re.I
)
_NO_EFFECT = re.compile(
    r'\b(no (change|effect|difference)|nothing (changed|changes)|unchanged|does not change)\b', re.I
)


def placeholders(prompt: str) -> list[str]:
    """Return the `<...>` placeholders a prompt shows a model (e.g. in the JSON it asks for).

    >>> placeholders('Answer {"analysis": "<what goes wrong and why>"}')
    ['<what goes wrong and why>']
    """
    return list(dict.fromkeys(_PLACEHOLDER.findall(prompt)))


def echoed_placeholders(text: str, prompt: str) -> list[str]:
    """Return the placeholders of `prompt` that `text` copies back, or a text that is a placeholder itself.

    >>> echoed_placeholders('<what goes wrong and why>', 'say "<what goes wrong and why>"')
    ['<what goes wrong and why>']
    """
    found = [p for p in placeholders(prompt) if p.casefold() in text.casefold()]
    stripped = text.strip()
    if not found and _PLACEHOLDER.fullmatch(stripped):
        found.append(stripped)
    return found


def _words(text: str) -> list[str]:
    return re.findall(r'\w+', text.casefold())


def copied_examples(text: str, examples: Iterable[str], *, overlap: float = 0.8) -> list[str]:
    """Return the worked examples of a prompt that `text` repeats (at least `overlap` of the example's words, in
    order), instead of answering the question asked.

    >>> copied_examples('Three billing examples were added.', ['Three billing examples were added and more.'], overlap=0.6)
    ['Three billing examples were added and more.']
    """
    import difflib

    words = _words(text)
    found = []
    for example in examples:
        target = _words(example)
        if not target or not words:
            continue
        matcher = difflib.SequenceMatcher(None, target, words, autojunk=False)
        common = sum(block.size for block in matcher.get_matching_blocks())
        if common / len(target) >= overlap:
            found.append(example)
    return found


def not_a_sentence(text: str, *, min_words: int = 3) -> list[str]:
    """Return why `text` is not a description at all: template syntax copied from the prompt, or fewer than
    `min_words` words.

    >>> not_a_sentence('{{ text }}')
    ['it is template syntax ({{ text }}), not a description', 'it has 1 word, too few to describe anything']
    """
    problems = []
    syntax = re.search(r'\{\{.*?\}\}|\{%.*?%\}', text)
    if syntax:
        problems.append(f'it is template syntax ({syntax.group(0)}), not a description')
    words = len(_words(text))
    if words < min_words:
        problems.append(f'it has {words} word{"" if words == 1 else "s"}, too few to describe anything')
    return problems


def effect_claims(text: str, effects: Sequence[Any]) -> list[str]:
    """Return the claims of `text` about a change's effect that the measured effects contradict: "improves" when
    a split broke more examples than it fixed (or the paired difference is negative), "worse" when it fixed more
    than it broke, "no effect" when examples flipped. `effects` have `dataset`, `split`, `fixed`, `broken`, `diff`.
    """
    problems = []
    for e in effects:
        fixed, broken = len(e.fixed), len(e.broken)
        where = f'{e.dataset}/{e.split or "all"}'
        measured = f'on {where} it fixed {fixed} and broke {broken} examples (difference {e.diff:+.3f})'
        if _IMPROVES.search(text) and (broken > fixed or e.diff < 0):
            problems.append(f'it says the change improves results, but {measured}')
        if _WORSENS.search(text) and (fixed > broken or e.diff > 0):
            problems.append(f'it says the change makes results worse, but {measured}')
        if _NO_EFFECT.search(text) and (fixed or broken):
            problems.append(f'it says the change has no effect, but {measured}')
    return problems


_DEMOS = (
    r'\b(demos?|examples?|shots?)\b.*\b(added|removed|dropped|more|fewer)\b|\b(added|removed)\b.*\b(demos?|examples)\b'
)
#: A setting a description may name, the diff fields that back it, and how to say it.
_SETTINGS = (
    (re.compile(r'\btemperature\b', re.I), ('params.temperature',), 'the temperature'),
    (re.compile(_DEMOS, re.I), ('demos', 'template'), 'the demos'),  # examples may be written into the template
    (re.compile(r'\binstructions?\b', re.I), ('instructions', 'template'), 'the instructions'),
    (re.compile(r'\bmax(imum)?[ _]tokens\b', re.I), ('params.max_tokens',), 'max_tokens'),
)


def setting_claims(text: str, changed: Sequence[str]) -> list[str]:
    """Return the settings `text` says changed that the diff does not list (`changed`: the diff's field names,
    plus 'template' and 'instructions' when their text changed).

    >>> setting_claims('The temperature was raised to 0.7.', ['template'])
    ['it mentions a change to the temperature, which the diff does not show']
    """
    problems = []
    for pattern, fields, name in _SETTINGS:
        backed = any(c == f or c.startswith(f'{f}.') for c in changed for f in fields)
        if pattern.search(text) and not backed:
            problems.append(f'it mentions a change to {name}, which the diff does not show')
    return problems
