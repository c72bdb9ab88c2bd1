"""How the local model chooses one label of a `choice` output: under a token mask, by rank, or calibrated.

- ``mask`` (the default): the model generates, and a token mask lets it spell exactly one label.
- ``rank`` (rank classification): every label is scored by its log-likelihood after the prompt, and the most
  likely label is the answer. A label's score is the sum of its tokens' log-probabilities, spelled as a demo would
  spell it: with one leading space after a prompt that ends without whitespace (``Sentiment:`` then
  `` positive``), without one after a prompt that ends in a space or newline. When a label's tokens begin another
  label's, its score keeps only the probability that the answer stops there (the other label's continuation is
  taken out), so a short label is not favoured for being a prefix.
- ``calibrated`` (contextual calibration, Zhao et al. 2021, "Calibrate Before Use"): the rank scores divided by
  the probabilities the same prompt gives each label for content-free inputs, i.e. the version's template
  rendered with every input field replaced by ``N/A``, by ``""`` and by ``[MASK]``; each content-free
  distribution is normalized over the labels and the three are averaged. The answer is the label with the
  largest ratio, which removes the prompt's own bias towards a label (its majority demo, its last demo, a
  frequent word).

The answer is the label's text, and the stored completion carries every label's `scores`: for `rank` each
label's log-probability, for `calibrated` the calibrated log-probabilities normalized over the labels.

Two options use the demos a request shows (most useful with demos retrieved per example, `ws.nearest`):

- ``restrict='demos'``: the request's label set is the labels of its demos (in the version's label order), so
  the model chooses among the labels of the nearest examples. Fewer labels to score make `rank` and `calibrated`
  cheaper (docs/benchmarks.md), and the model cannot drift to a label no neighbour has. A request whose demos
  hold none of the version's labels keeps them all; one whose demos all carry one label is answered with it
  without a model call (`workspace.storage.backends.complete`).
- ``vote=w`` (with `rank` or `calibrated`): the answer is the label with the largest
  ``(1 - w) * p_model(label) + w * share of the demos with that label``, the model's label probabilities mixed
  with the neighbours' vote; with ``vote_by='rank'`` the i-th nearest demo's vote weighs 1/i (distance-weighted
  k-nearest neighbours, by rank), so the nearest counts most. The vote is applied to the stored answer's `scores` (`answer_label`), so it is not
  part of the request: versions that differ only in `w` send the same requests, and choosing `w` on dev costs no
  model call.

`rank` and `calibrated` read the model's probabilities, which only the local model exposes; a version with a
remote model is refused. The decoding is part of the request (`{'choice': labels, 'decode': 'rank'}`), so it is
part of the request's identity; `mask` adds nothing, so requests made before these options existed keep their
hashes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import jinja2

from workspace.errors import TemplateError, VersionError


class _Version(Protocol):
    """What calibration reads of a `workspace.core.versions.Version` (a protocol, so the backends, which use this module,
    do not depend on versions)."""

    @property
    def id(self) -> str: ...

    @property
    def output(self) -> Any: ...

    @property
    def labels(self) -> list[str]: ...

    def variables(self) -> Any: ...

    def render(self, fields: Mapping[str, Any], *, demos: Sequence[Mapping[str, Any]] | None = None) -> str: ...


__all__ = [
    'Decode',
    'DECODES',
    'CONTENT_FREE_INPUTS',
    'check_decode',
    'choice_constraint',
    'content_free_prompts',
    'normalize',
    'content_free_prior',
    'calibrate',
    'check_choice_options',
    'demo_labels',
    'VOTES_BY',
    'combine_vote',
    'answer_label',
]

Decode = Literal['mask', 'rank', 'calibrated']

#: The ways a choice output can be decoded; the first is the default.
DECODES: tuple[Decode, ...] = ('mask', 'rank', 'calibrated')

#: What replaces every input field of a content-free prompt (Zhao et al. 2021 average these three).
CONTENT_FREE_INPUTS = ('N/A', '', '[MASK]')


def check_decode(decode: str, model: str | None = None) -> None:
    """Raise VersionError if `decode` is not a known decoding, or needs label scores `model` cannot give."""
    if decode not in DECODES:
        raise VersionError(f'decode {decode!r} is not known; use one of {", ".join(map(repr, DECODES))}')
    if decode != 'mask' and model is not None and model.partition(':')[0] != 'local':
        raise VersionError(
            f'decode={decode!r} scores every label by its log-likelihood, which only the local model exposes; '
            f'model {model!r} answers with text only. Use ws.choice(labels) (decode="mask") with {model!r}, '
            "or model='local'"
        )


def content_free_prompts(version: _Version, demos: Sequence[Mapping[str, Any]] | None = None) -> list[Any]:
    """Return the version's prompt for each content-free input: every input field replaced by it. A version with a
    demo policy is calibrated per example, with the demos retrieved for that example (the prior depends on the
    demos, and the local model decodes the shared demo blocks once).

    >>> content_free_prompts(v)  # doctest: +SKIP
    ['Verse: N/A\\nSentiment:', 'Verse: \\nSentiment:', 'Verse: [MASK]\\nSentiment:']
    """
    names = sorted(version.variables())
    # a chat version's content-free prompts are messages: the local model decodes them through its chat template
    render = version.render_messages if getattr(version, 'messages', None) else version.render  # type: ignore[attr-defined]
    try:
        return [render(dict.fromkeys(names, value), demos=demos) for value in CONTENT_FREE_INPUTS]
    except jinja2.TemplateError as e:
        raise TemplateError(
            f'template of {version.id} does not render with its input fields set to "N/A" ({e}); contextual '
            'calibration needs a template whose fields can be plain text, or use decode="rank"'
        ) from None


def choice_constraint(version: _Version, demos: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Return the constraint of a choice version's requests: its labels, and how to decode them if not masked.

    >>> choice_constraint(v)  # doctest: +SKIP
    {'choice': ['negative', 'no_impact', 'positive'], 'decode': 'rank'}
    """
    labels = version.labels
    if version.output.get('restrict') == 'demos' and demos:
        shown = {str(d.get('expected')) for d in demos}
        labels = [label for label in labels if label in shown] or labels
    constraint: dict[str, Any] = {'choice': labels}
    decode = version.output.get('decode', 'mask')
    if decode != 'mask':
        constraint['decode'] = decode
    if decode == 'calibrated':
        constraint['content_free'] = content_free_prompts(version, demos)
    return constraint


def logsumexp(values: Sequence[float]) -> float:
    """Return log(sum(exp(values))), computed stably (scipy's, imported on first use: it costs 0.2 s at start)."""
    from scipy.special import logsumexp as scipy_logsumexp

    return float(scipy_logsumexp(values))


def normalize(scores: Mapping[str, float]) -> dict[str, float]:
    """Return log-probabilities over the labels from unnormalized log-scores (a log-softmax).

    >>> normalize({'a': 0.0, 'b': 0.0})
    {'a': -0.6931471805599453, 'b': -0.6931471805599453}
    """
    total = float(logsumexp(list(scores.values())))
    return {label: score - total for label, score in scores.items()}


def content_free_prior(per_prompt: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Return the log of the mean, over content-free prompts, of each label's probability normalized over labels.

    >>> content_free_prior([{'a': math.log(0.9), 'b': math.log(0.1)}, {'a': math.log(0.5), 'b': math.log(0.5)}])
    {'a': -0.35667494393873245, 'b': -1.2039728043259361}
    """
    normalized = [normalize(scores) for scores in per_prompt]
    return {
        label: float(logsumexp([n[label] for n in normalized]) - math.log(len(normalized))) for label in normalized[0]
    }


def calibrate(scores: Mapping[str, float], prior: Mapping[str, float]) -> dict[str, float]:
    """Return calibrated log-probabilities over the labels: each label's probability divided by its prior,
    normalized. The argmax is the label with the largest ratio p(label | input) / p(label | content-free).

    >>> calibrate({'a': math.log(0.6), 'b': math.log(0.4)}, {'a': math.log(0.8), 'b': math.log(0.2)})['b'] > -0.7
    True
    """
    return normalize({label: scores[label] - prior[label] for label in scores})


def check_choice_options(decode: str, restrict: str | None, vote: float | None, vote_by: str = 'share') -> None:
    """Raise VersionError naming the problem with a choice output's `restrict` or `vote`, and the fix."""
    if restrict not in (None, 'demos'):
        raise VersionError(f"restrict={restrict!r} is not known; use restrict='demos' or leave it out")
    if vote_by not in VOTES_BY:
        raise VersionError(f"vote_by={vote_by!r} is not known; use 'share' or 'rank'")
    if vote is None:
        return
    if isinstance(vote, bool) or not isinstance(vote, (int, float)) or not 0 < vote < 1:
        raise VersionError(f'vote={vote!r} is not valid; give a weight between 0 and 1 (exclusive), e.g. vote=0.5')
    if decode not in ('rank', 'calibrated'):
        raise VersionError(
            f"vote={vote!r} mixes the model's label probabilities with the demos' vote, which decode={decode!r} does "
            "not give; use decode='rank' or decode='calibrated'"
        )


#: How the demos' vote counts them: each alike (`share`), or the i-th nearest by 1/i (`rank`).
VOTES_BY = ('share', 'rank')


def demo_labels(demos: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """Return the expected label of each demo, in order (what a neighbour vote counts)."""
    return [str(d.get('expected')) for d in demos or ()]


def combine_vote(scores: Mapping[str, float], votes: Sequence[str], weight: float, by: str = 'share') -> str:
    """Return the label with the largest `(1 - weight) * p_model + weight * vote share`, where `p_model` is the
    softmax of `scores` (log-scores over the labels) and the vote share is a label's share of `votes` (nearest
    first; with `by='rank'` the i-th vote weighs 1/i). Ties go to the label the model prefers, then to the first.

    >>> combine_vote({'a': math.log(0.6), 'b': math.log(0.4)}, ['b', 'b', 'a'], 0.5)
    'b'
    """
    model = {label: math.exp(value) for label, value in normalize(scores).items()}
    weights = [(v, 1.0 / (i + 1) if by == 'rank' else 1.0) for i, v in enumerate(votes) if v in model]
    total = sum(w for _, w in weights)
    share = {label: sum(w for v, w in weights if v == label) / total if total else 0.0 for label in model}
    mixed = {label: (1 - weight) * model[label] + weight * share[label] for label in model}
    return max(model, key=lambda label: (round(mixed[label], 12), model[label]))


def answer_label(
    output: Mapping[str, Any],
    text: str | None,
    scores: Mapping[str, float] | None,
    demos: Sequence[Mapping[str, Any]] | None,
) -> str | None:
    """Return a choice version's answer from the model's stored answer: its text, or with `vote` in the output
    spec, the label the model's `scores` and the demos' vote choose together (see `combine_vote`; `demos`
    nearest first)."""
    weight = output.get('vote')
    if weight is None or not scores or text is None:
        return text
    return combine_vote(scores, demo_labels(demos), float(weight), output.get('vote_by', 'share'))
