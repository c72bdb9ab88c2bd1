"""Assigning new raw prompts to families, one at a time in the order they were first seen: the engine.

Pure Python over the families' state in memory; `families.py` loads that state from the tables and saves it. Every
decision reads only prompts already assigned (and their times), never what comes later or where an ingest starts or
ends, so ingesting a log in two parts gives the same families as ingesting it at once.

A prompt goes, in this order of preference, to:

1. a family one of whose template versions *parses* it (its constant pieces in order, a slot value never holding the
   text that follows the slot); the most specific template wins. Confidence 1.
2. a young family (fewer than three members, no template yet) whose members share with it a solid start or end (or
   a short value before a shared run at an edge) and at least three words, differing only where both have text
   (values), nothing inserted or deleted; between short values a run of two words counts as shared.
3. a family whose template it misses only by short pieces between two slots (mined from too few members): it
   joins, and the template is mined again.
4. a *candidate edit*: a new family that starts as a possible new version of a family whose template it misses by a
   few words (at most 8, at most half the template). If that family then stops receiving prompts (at its earlier
   rate, its silence would have had a chance under 1%) while the candidate goes on, the candidate is merged into
   it as its next template version; if both go on, they are two templates (FLAN has pairs three words apart).
5. else a new family.

An edit that still parses (text added before a leading slot or after a trailing one) shows in the values: when the
latest members' values of a slot all start or end with the same new text (a word, three characters or more) and the
members before them do not, the template is mined again from the latest members as a new version.

An application (`app`) is a hard boundary: a prompt is only compared with families of its own application.
"""

from __future__ import annotations

import collections
import datetime
import functools
import itertools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cydifflib as difflib  # difflib in C++: the same alignments, ten times faster
import numpy as np

from workspace.mining.canonical import (
    Slot,
    Template,
    common_prefix,
    common_suffix,
    mine,
    template_events,
    tokenize,
    words,
)

__all__ = ['Assignment', 'Engine', 'FamilyState', 'Fit', 'Member', 'Move', 'TEMPLATE_MIN', 'align', 'best_version']

TEMPLATE_MIN = 3  # members before a family gets a template (one-offs get none)
TRUST = 8  # members a template must be mined from before prompts are judged by it rather than by its members
YOUNG_VOTES = 4  # latest members a prompt is compared with while the template is not trusted
MINE_AT = (3, 5, 8, 16, 32)  # member counts at which a family's template is mined again; then at 64, 128, 256...
MINE_SAMPLE = 32  # latest members a template is mined from
CANDIDATES = 5  # families compared per prompt by embedding: the nearest centres of its application
EXEMPLARS = 16
MIN_SHARED = 3  # words two prompts of a young family must share
EDIT_NOTE = 'an edit of the template: its next version'  # how the merge of a candidate edit is recorded
EDIT_WORDS = 16  # words inserted or deleted that an edit of a template may have (inserted: at most its size)
REPLACED_P = 0.01  # a candidate edit is merged when the edited family's silence has this probability at its rate
PARALLEL = 2  # prompts the edited family still gets after the candidate appeared that make the two templates
CANDIDATE_DAYS = 28  # a candidate not merged after this long is a template of its own
REFINE_K = 6  # latest members whose values must all carry the new text for a new version
SPLIT_WORDS = 3  # words two members must share beyond their family's template to make a group of their own
SPLIT_COVER = 0.8  # share of a young family's members such groups must hold for it to be split
APP_RECENT = 200  # latest prompts of an application its shared starts and ends are looked up in
YOUNG_SPLIT = 5  # members up to which a prompt sharing far more with some of them splits those off
YOUNG_TEMPLATE = 5  # members a young family's template is mined from before a prompt must mostly fit it
_WORDS = re.compile(r'\w+')
_KEY = 12  # characters of a template's first (or last) piece that index it
LOOSE_VALUES = 2  # times the words of the latest members' values a prompt joining a template loosely may hold
ABSORB_WORDS = 4  # words a trusted template may have beyond a looser one of its application that parses its members
SHORT_VALUE = 4  # words of a value on either side of a short run two young members share
ALIGN_TOKENS = 600  # tokens of two middles aligned whole; longer ones on their head and tail


@dataclass(frozen=True)
class Fit:
    """How a prompt aligns with a template (or a young family's member): counts of words, and the shared pieces."""

    matched: int  # constant words found in the prompt, in order
    deleted: int  # constant words missing, outside any slot
    inserted: int  # prompt words outside any slot that the template does not have
    absorbed: int  # constant words missing where a slot is (a short piece between two slots, mined from few members)
    regions: int  # places where prompt and template differ with text on both sides (values)
    start: bool  # they share a solid start (or the template starts with a slot)
    end: bool  # they share a solid end (or the template ends with a slot)
    shared: tuple[str, ...] = ()  # young: the text both share, piece by piece, a region between each two
    edge: int = 0  # words one text has before (or after) everything they share, where the other has nothing


def _solid(tokens: Sequence[str]) -> bool:
    n = words(tokens)
    return n >= 2 or (n >= 1 and any('\n' in t for t in tokens))


def _long(tokens: Sequence[str]) -> bool:
    """A run two unrelated texts rarely share by chance: four words, or a line break and two words."""
    n = words(tokens)
    return n >= 4 or (n >= 2 and any('\n' in t for t in tokens))


def _clip(tokens: list[str]) -> tuple[list[str], int]:
    """Return a long middle's head and tail (ALIGN_TOKENS in all), and where the tail starts in the clipped list."""
    if len(tokens) <= ALIGN_TOKENS:
        return tokens, len(tokens)
    half = ALIGN_TOKENS // 2
    return tokens[:half] + tokens[-half:], half


def _unclip(a: int, b: int, size: int, cut_a: int, cut_b: int, len_a: int, len_b: int) -> list[tuple[int, int, int]]:
    """Map a block of two clipped lists back to the full ones, splitting it where it crosses a cut."""
    out = []
    while size > 0:
        # how far the block runs before one of the lists reaches its cut
        run = min(size, (cut_a - a) if a < cut_a else size, (cut_b - b) if b < cut_b else size)
        full_a = a if a < cut_a else a + (len_a - ALIGN_TOKENS if len_a > ALIGN_TOKENS else 0)
        full_b = b if b < cut_b else b + (len_b - ALIGN_TOKENS if len_b > ALIGN_TOKENS else 0)
        out.append((full_a, full_b, run))
        a, b, size = a + run, b + run, size - run
    return out


def _beyond_chance(
    blocks: list[tuple[int, int, int]], a: Sequence[str], b: Sequence[str], pre: int, suf: int
) -> list[tuple[int, int, int]]:
    """Keep the runs two members share that chance rarely gives: a long run, or a short one between short values.

    Two long values often share a few words by chance, so a run of a few words counts only when it is close to
    shared text on both sides: a run of two words (or a word and a mark, `, customer `) with at most SHORT_VALUE
    words between it and the next shared run, shared start or end (or the text's edge) on each side, in both texts
    (`Summarize ticket {n} for customer {name}`: ` for customer ` sits between a number and a name). Runs kept this
    way anchor their neighbours in turn.
    """
    keep = [_long(b[bi : bi + size]) for _, bi, size in blocks]
    grown = True
    while grown:
        grown = False
        for i, (ai, bi, size) in enumerate(blocks):
            if keep[i] or not _short_run(b[bi : bi + size]):
                continue
            before = next(((x + n, y + n) for x, y, n in reversed([k for k, ok in zip(blocks[:i], keep) if ok])), None)
            after = next(((x, y) for x, y, _ in [k for k, ok in zip(blocks[i + 1 :], keep[i + 1 :]) if ok]), None)
            start_a, start_b = before or (pre, pre)
            end_a, end_b = after or (len(a) - suf, len(b) - suf)
            gaps = ((a, start_a, ai), (b, start_b, bi), (a, ai + size, end_a), (b, bi + size, end_b))
            if not any(_more_words(tokens, start, end, SHORT_VALUE) for tokens, start, end in gaps):
                keep[i] = grown = True
    return [block for block, ok in zip(blocks, keep) if ok]


def _more_words(tokens: Sequence[str], start: int, end: int, limit: int) -> bool:
    """Return whether `tokens[start:end]` holds more than `limit` words: `words` of the slice, but it stops at
    the first word past the limit (hand-written: a gap between two runs can be most of a long text, and only
    whether it is short matters)."""
    n = 0
    for i in range(start, end):
        token = tokens[i]
        if token.isalnum() or '_' in token:  # a word token (see `words`)
            n += 1
            if n > limit:
                return True
    return False


def _after_short_value(value_a: Sequence[str], value_b: Sequence[str], run: Sequence[str]) -> bool:
    """Return whether two texts have a short value each (a name, a number) where a shared run of three words
    starts (or ends) them: a template with a slot at its edge (`{name} wants a refund for order {n}`)."""
    return 1 <= words(value_a) <= SHORT_VALUE and 1 <= words(value_b) <= SHORT_VALUE and words(run) >= MIN_SHARED


def _short_run(tokens: Sequence[str]) -> bool:
    """A run that may be template text between short values: two words, or a word and a mark."""
    n = words(tokens)
    return n >= 2 or (n == 1 and any(not t.isspace() and not t[:1].isalnum() for t in tokens))


def _same_run(a: list[str], b: list[str], limit: int, *, tail: bool = False) -> int:
    """Return how many tokens (up to `limit`) two lists share at their start (or end). Hand-written: slices a block
    at a time, doubling, compare in C where a loop over tokens would not; long shared instructions are common."""
    at, step, n, m = 0, 16, len(a), len(b)
    while at < limit:
        end = min(at + step, limit)
        same = a[n - end : n - at] == b[m - end : m - at] if tail else a[at:end] == b[at:end]
        if same:
            at, step = end, step * 2
        elif step > 1:
            step //= 2
        else:
            break
    return at


def align(prompt: Sequence[str], pieces: Sequence[Sequence[str]], *, young: bool = False) -> Fit:
    """Align a prompt's tokens with a template's constant pieces (tokens, a slot between each two).

    `young`: the pieces are a member's text rather than a mined template, so only runs unlikely to be shared by
    chance count as shared (besides a solid shared start and end), and wherever both differ with text is a value.
    """
    b: list[str] = []
    slots: list[int] = []
    for i, piece in enumerate(pieces):
        if i:
            slots.append(len(b))
        b.extend(piece)
    a = list(prompt)
    # the shared start and end are matched without aligning (a long instruction costs nothing); they stop at slots
    lo = slots[0] if slots else len(b)
    hi = len(b) - slots[-1] if slots else len(b)
    pre = _same_run(a, b, min(len(a), lo))
    suf = _same_run(a, b, min(len(a) - pre, len(b) - pre, hi), tail=True)
    if young and pre and not _solid(b[:pre]):
        pre = 0
    if young and suf and not _solid(b[len(b) - suf :]):
        suf = 0
    blocks: list[tuple[int, int, int]] = [(0, 0, pre)] if pre else []
    mid_a, mid_b = a[pre : len(a) - suf], b[pre : len(b) - suf]
    if mid_a and mid_b:
        # long middles are aligned on their head and tail only (what differs in the middle of two long values
        # says nothing); the blocks found are mapped back to the full texts
        short_a, cut_a = _clip(mid_a)
        short_b, cut_b = _clip(mid_b)
        matcher = difflib.SequenceMatcher(lambda t: t.isspace(), short_b, short_a, autojunk=False)
        found = [
            (pre + ai, pre + bi, size)
            for short_bi, short_ai, short_size in matcher.get_matching_blocks()
            for ai, bi, size in _unclip(short_ai, short_bi, short_size, cut_a, cut_b, len(mid_a), len(mid_b))
            if size
        ]
        blocks.extend(_beyond_chance(found, a, b, pre, suf) if young else found)
    if suf:
        blocks.append((len(a) - suf, len(b) - suf, suf))
    matched = deleted = inserted = absorbed = regions = 0
    prev_a = prev_b = 0
    shared = ['']  # young: the shared text, a new piece after each place they differ
    for ai, bi, size in [*blocks, (len(a), len(b), 0)]:
        gap_a, gap_b = a[prev_a:ai], b[prev_b:bi]
        slot_here = any(prev_b <= s <= bi for s in slots)
        if slot_here or (young and gap_a and gap_b):
            regions += 1
            absorbed += words(gap_b)
        else:
            deleted += words(gap_b)
            inserted += words(gap_a)
        if gap_a or gap_b:
            shared.append('')
        matched += words(b[bi : bi + size])
        shared[-1] += ''.join(b[bi : bi + size])
        prev_a, prev_b = ai + size, bi + size
    first = blocks[0] if blocks else None
    last = blocks[-1] if blocks else None
    start = (bool(slots) and slots[0] == 0) or (
        first is not None and first[0] == 0 and first[1] == 0 and _solid(b[: first[2]])
    )
    end = (bool(slots) and slots[-1] == len(b)) or (
        last is not None
        and last[0] + last[2] == len(a)
        and last[1] + last[2] == len(b)
        and _solid(b[last[1] : last[1] + last[2]])
    )
    if young and first is not None and last is not None:
        # a short value at both texts' start (end) before (after) a shared run of three words is a slot there
        start = start or _after_short_value(a[: first[0]], b[: first[1]], b[first[1] : first[1] + first[2]])
        tail = last[1] + last[2]
        end = end or _after_short_value(a[last[0] + last[2] :], b[tail:], b[last[1] : tail])
    edge = 0
    if first is not None and last is not None:
        if (first[0] == 0) != (first[1] == 0):
            edge = max(edge, words(a[: first[0]]) + words(b[: first[1]]))
        if (last[0] + last[2] == len(a)) != (last[1] + last[2] == len(b)):
            edge = max(edge, words(a[last[0] + last[2] :]) + words(b[last[1] + last[2] :]))
    return Fit(matched, deleted, inserted, absorbed, regions, start, end, tuple(shared), edge)


Member = tuple[str, str, datetime.datetime]  # prompt hash, text, first seen
Key = tuple[tuple[str, ...], tuple[str, ...], int]  # a young member's first and last words, and its place in order
Recent = tuple[str, str, str]  # one of an application's latest prompts: family assigned to, prompt hash, text


@dataclass
class FamilyState:
    """One family as assignment sees it."""

    id: str
    app: str | None
    created_at: datetime.datetime
    total: np.ndarray
    n: int
    exemplars: list[str] = field(default_factory=list)
    templates: list[Template] = field(default_factory=list)  # its template versions, oldest first
    numbers: list[int] = field(default_factory=list)  # their version numbers
    retired: set[int] = field(default_factory=set)  # versions a later one mined from more members replaced
    recent: collections.deque[Member] = field(default_factory=lambda: collections.deque(maxlen=MINE_SAMPLE))
    recent_loaded: bool = True
    recent_hashes: list[str] | None = None  # its latest members as stored, while `recent` is not loaded yet
    mined_at: int = 0  # members when its template was last mined
    candidate_of: str | None = None  # the family this one may be an edit of
    candidate_since: datetime.datetime | None = None
    edited_since: datetime.datetime | None = None  # the first prompt of the latest edit merged in as a version
    times: collections.deque[datetime.datetime] = field(default_factory=lambda: collections.deque(maxlen=64))
    status: str = 'active'
    merged_into: str | None = None
    changed: bool = False
    draft: tuple[tuple[str, ...], Template] | None = None  # a young family's members' template, by member hashes
    # young: members' first and last words, with when they were indexed (the engine's count of keys)
    keys: list[Key] = field(default_factory=list)

    @property
    def template(self) -> Template | None:
        return self.templates[-1] if self.templates else None

    @property
    def template_number(self) -> int:
        return self.numbers[-1] if self.numbers else 0

    def versions(self) -> list[tuple[int, Template]]:
        """Return the versions members are parsed with (not retired), oldest first."""
        return [(n, t) for n, t in zip(self.numbers, self.templates) if n not in self.retired]


@dataclass(frozen=True)
class Assignment:
    """Where one new raw prompt went: its family, the confidence and the reason."""

    family_id: str
    confidence: float
    reason: dict[str, Any]
    new_family: bool


@dataclass
class Move:
    """Members the engine moved from one family to another, recorded in the family's history: a candidate edit
    merged into the family it edits, or the members of one template split out of a young family that mixed two."""

    action: str  # 'merge' or 'split'
    family_id: str  # where they went
    other_id: str  # where they came from
    hashes: list[str] | None  # the moved members; None: all of them
    members: int
    at: datetime.datetime
    note: str


def best_version(versions: Iterable[tuple[int, Template]], text: str) -> tuple[int, Template] | None:
    """Return the version that parses `text` with the most constant text (the newest of equals), or None."""
    best: tuple[int, Template] | None = None
    stripped = text.rstrip()
    for number, template in versions:
        if template.spans(text) is None and (stripped == text or template.spans(stripped) is None):
            continue
        if best is None or template.size >= best[1].size:
            best = (number, template)
    return best


def _usable(template: Template) -> bool:
    """Return whether a template has enough constant text to parse prompts by: two words, or six characters."""
    return template.size >= 2 or len(''.join(template.pieces).strip()) >= 6


def _parse(template: Template, text: str) -> dict[str, str] | None:
    """Return a member's slot values, reading a near duplicate with whitespace added at its end as its original."""
    found = template.parse(text)
    return found if found is not None or text == text.rstrip() else template.parse(text.rstrip())


Parsed = dict[tuple[int, str], tuple[Template, dict[str, str] | None]]


def _values(cache: Parsed, template: Template, text: str) -> dict[str, str] | None:
    """`_parse`, remembered in an engine's `cache` (do not change the result): `_refine` reads the same latest
    members after every join. Keyed by the template's identity (hashing a template hashes all its slots' common
    values); the entry holds the template, so its id cannot be reused while the entry lives."""
    key = (id(template), text)
    found = cache.get(key)
    if found is not None and found[0] is template:
        return found[1]
    if len(cache) >= 8192:
        cache.clear()
    values = cache[key] = (template, _parse(template, text))
    return values[1]


def _first_words(tokens: Sequence[str], n: int = 3) -> tuple[str, ...]:
    return tuple(itertools.islice((t.lower() for t in tokens if any(c.isalnum() for c in t)), n))


def _last_words(tokens: Sequence[str], n: int = 3) -> tuple[str, ...]:
    return tuple(itertools.islice((t.lower() for t in reversed(tokens) if any(c.isalnum() for c in t)), n))


def _edge(values: Sequence[str], suffix: bool) -> str:
    """Return the text all values start (or end) with, cut back to a token boundary."""
    if suffix:
        if any(not v or v[-1] != values[0][-1] for v in values):
            return ''  # no common end: nothing to reverse
        return _edge([v[::-1] for v in values], False)[::-1]
    common = common_prefix(values)
    if not common or all(v == common for v in values):
        return ''
    tokens = tokenize(common)
    # the last token may be cut short in some value: keep whole tokens only
    keep = tokens if all(len(v) == len(common) or not v[len(common)].isalnum() for v in values) else tokens[:-1]
    return ''.join(keep)


def _new_text(edge: str) -> bool:
    """Return whether text found at the edge of every value is template text: two words, or a labelled word."""
    n = words(tokenize(edge))
    return n >= 2 or (n == 1 and ':' in edge)


def _sub_template(template: Template, texts: Sequence[str]) -> bool:
    """Return whether `texts` share template text the family's `template` leaves in a slot.

    The values of some slot all start (or end) with the same phrase and go on with text of their own (three words
    on average): an equal value (an enum), a phrase followed by a word or two (questions made from a pattern of
    their own) or an opening bracket or quote (structured data) is no template text.
    """
    found = [template.spans(t) for t in texts]
    spans = [s for s in found if s is not None]
    if len(spans) < len(found):
        return False
    for i in range(len(template.slots)):
        values = [t[s[i][0] : s[i][1]] for t, s in zip(texts, spans)]
        for suffix in (False, True):
            edge = _edge(values, suffix)
            if not _new_text(edge) or _unbalanced(edge):
                continue
            # template text sits on lines of its own: the phrase holds a line break or starts (ends) a line
            at_line = all(
                (t[s[i][1] :].startswith('\n') if suffix else t[: s[i][0]].endswith('\n')) or not t[s[i][0] : s[i][1]]
                for t, s in zip(texts, spans)
            )
            if '\n' not in edge.strip(' ') and not at_line:
                continue
            rest = [v[: len(v) - len(edge)] if suffix else v[len(edge) :] for v in values]
            if sum(words(tokenize(r)) for r in rest) >= 3 * len(rest):
                return True
    return False


def _wording(template: Template, texts: Sequence[str]) -> bool:
    """Return whether `texts` hold the same short value in two or more slots of the family's `template`,
    SPLIT_WORDS words in all: the wording of another template, which the mixed template leaves in its slots
    (`Please tell me` ... `the following` beside `this` ... `positive or negative?`). An enum (the same customer)
    fills one slot; the same input sent again (one text translated into several languages) is a long value, no
    wording."""
    spans = [s for s in map(template.spans, texts) if s is not None]
    if len(texts) < 2 or len(spans) < len(texts):
        return False
    equal = []
    for i in range(len(template.slots)):
        values = {t[s[i][0] : s[i][1]].strip() for t, s in zip(texts, spans)}
        if len(values) == 1 and (value := values.pop()):
            equal.append(words(tokenize(value)))
    return len(equal) >= 2 and max(equal) <= SHORT_VALUE and sum(equal) >= SPLIT_WORDS


def _unbalanced(text: str) -> bool:
    return any(text.count(o) != text.count(c) for o, c in ('{}', '[]', '()')) or text.count('"') % 2 == 1


def _edge_shared(a: str, b: str) -> bool:
    """Return whether two texts start or end with the same solid text (two words, or a word and a line break)."""
    for shared in (common_prefix([a, b]), common_suffix([a, b])):
        n = len(_WORDS.findall(shared))
        if n >= 2 or (n == 1 and '\n' in shared):
            return True
    return False


def _edge_line(a: str, b: str) -> bool:
    """Return whether two texts end (or start) with the same whole line of two words or more, after (before) a line
    break (`...training.\nTL;DR:` and `...control.\nTL;DR:`): a template whose only text is a label after a long
    slot shares fewer than MIN_SHARED words, and a line two free texts end with by chance is rare."""
    suffix, prefix = common_suffix([a, b]), common_prefix([a, b])
    lines = [
        suffix[suffix.index('\n') :] if '\n' in suffix else '',
        prefix[: prefix.rindex('\n')] if '\n' in prefix else '',
    ]
    return any(len(_WORDS.findall(line)) >= 2 for line in lines)


def _near_edges(a: str, b: str) -> bool:
    """Return whether two texts share a word among their first (or last) few: a shared run may follow (precede)
    a short value at their start (end)."""
    for first in (True, False):
        found = [_WORDS.findall(t[:200] if first else t[-200:]) for t in (a, b)]
        head = [set(w[: SHORT_VALUE + 1] if first else w[-SHORT_VALUE - 1 :]) for w in found]
        if head[0] & head[1]:
            return True
    return False


def _shared_edges(a: str, b: str) -> int:
    """Return the words two texts share at their start and at their end."""
    start = common_prefix([a, b])
    end = common_suffix([a, b]) if len(start) < min(len(a), len(b)) else ''
    return len(_WORDS.findall(start)) + len(_WORDS.findall(end))


def _pair_shares(texts: Sequence[str]) -> np.ndarray:
    """Return `_shared_edges(texts[i], texts[j])` for every pair (the mixture split compares every pair of up to 32
    members). Hand-written rather than pairwise: sorted, two texts share the shortest of the common prefixes of the
    neighbours between them, so only neighbours are compared; and the words of a text's first `n` characters are
    those that start before `n` (a run of word characters cut by the shared text's edge is still a word)."""
    n = len(texts)
    heads, tails = _pair_prefixes(texts), _pair_prefixes([t[::-1] for t in texts])
    lengths = np.array([len(t) for t in texts])
    tails = np.where(heads < np.minimum.outer(lengths, lengths), tails, 0)
    out = np.zeros((n, n), dtype=np.int64)
    for i, text in enumerate(texts):
        starts, ends = _word_spans(text)
        out[i] = np.searchsorted(starts, heads[i], side='left') + len(starts)
        out[i] -= np.searchsorted(ends, len(text) - tails[i], side='right')
    np.fill_diagonal(out, 0)
    return out


@functools.lru_cache(maxsize=4096)
def _word_spans(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Where each word of a text starts and ends (a member is compared again each time its family is mined)."""
    spans = np.array([m.span() for m in _WORDS.finditer(text)], dtype=np.int64).reshape(-1, 2)
    return spans[:, 0].copy(), spans[:, 1].copy()


def _pair_prefixes(texts: Sequence[str]) -> np.ndarray:
    """Return the length of the common prefix of every pair of texts, comparing only neighbours in sorted order."""
    n = len(texts)
    order = sorted(range(n), key=texts.__getitem__)
    adjacent = np.array([len(common_prefix([texts[order[k]], texts[order[k + 1]]])) for k in range(n - 1)], np.int64)
    ranked = np.zeros((n, n), dtype=np.int64)
    for k in range(n - 1):
        ranked[k, k + 1 :] = np.minimum.accumulate(adjacent[k:])
    ranked = np.maximum(ranked, ranked.T)
    out = np.empty_like(ranked)
    out[np.ix_(order, order)] = ranked
    return out


class Engine:
    """Assign new raw prompts to families, in the order given, over the families' state in memory.

    `load_recent(family_id)` returns a family's latest members (hash, text, first seen), in the order they were
    assigned, for a state loaded without them; `vectors` and `snippets` hold the exemplars' embeddings and first
    characters; `embed` embeds texts (the members a split moves); `last` is when the latest prompt assigned was
    first seen (so the next one knows whether a day has passed) and `taken` the ids of families merged away.
    """

    def __init__(
        self,
        states: Iterable[FamilyState] = (),
        *,
        vectors: dict[str, np.ndarray] | None = None,
        snippets: dict[str, str] | None = None,
        load_recent: Callable[[str], list[Member]] | None = None,
        embed: Callable[[list[str]], np.ndarray] | None = None,
        dimensions: int = 256,
        last: datetime.datetime | None = None,
        taken: Iterable[str] = (),
        app_recent: Iterable[tuple[str | None, Recent]] = (),
    ) -> None:
        self.states: dict[str, FamilyState] = {}
        self._parsed: Parsed = {}  # the latest members' values, by template (see `_values`)
        self.vectors = vectors if vectors is not None else {}
        self.snippets = snippets if snippets is not None else {}
        self.load_recent = load_recent
        self.embed = embed
        self.dimensions = dimensions
        self.templates_out: list[dict[str, Any]] = []
        self.moves: list[Move] = []
        self._apps: dict[str | None, tuple[list[str], np.ndarray]] = {}
        self._by_prefix: dict[tuple[str | None, str], set[str]] = collections.defaultdict(set)
        self._by_suffix: dict[tuple[str | None, str], set[str]] = collections.defaultdict(set)
        self._open: dict[str | None, set[str]] = collections.defaultdict(set)
        self._young_first: dict[tuple[str | None, tuple[str, ...]], list[str]] = collections.defaultdict(list)
        self._young_last: dict[tuple[str | None, tuple[str, ...]], list[str]] = collections.defaultdict(list)
        self._lengths: set[int] = set()
        self._day: datetime.date | None = last.date() if last is not None else None
        self._taken = set(taken)
        self._app_recent: dict[str | None, collections.deque[Recent]] = collections.defaultdict(
            lambda: collections.deque(maxlen=APP_RECENT)
        )
        for app, entry in app_recent:  # oldest first, with the families they were assigned to
            self._app_recent[app].append(entry)
        self._clock = 0  # young keys indexed so far: stored with each key, so a reload indexes them in that order
        for state in states:
            self._add(state)
        young = sorted(
            (k[2], state.id, k) for state in self.states.values() if state.mined_at < TRUST for k in state.keys
        )
        for _, family_id, key in young:
            self._index_keys(self.states[family_id], key)
        self._clock = max((k[0] for k in young), default=-1) + 1

    # --- indexes -----------------------------------------------------------------------------------------------

    def _add(self, state: FamilyState) -> None:
        self.states[state.id] = state
        if state.status != 'active':
            return
        ids, matrix = self._apps.get(state.app, ([], np.zeros((0, self.dimensions), dtype=np.float32)))
        ids.append(state.id)
        matrix = np.vstack([matrix, self._unit(state.total)[None, :]])
        self._apps[state.app] = (ids, matrix)
        for _, template in state.versions():
            self._index_template(state, template)

    def _unit(self, total: np.ndarray) -> np.ndarray:
        # np.linalg.norm of a vector is np.sqrt(x.dot(x)) after checks that cost as much again (a join each)
        return (total / max(float(np.sqrt(total.dot(total))), 1e-12)).astype(np.float32)

    def _set_centre(self, state: FamilyState) -> None:
        ids, matrix = self._apps[state.app]
        matrix[ids.index(state.id)] = self._unit(state.total)

    def _index_template(self, state: FamilyState, template: Template) -> None:
        first, last = template.pieces[0], template.pieces[-1]
        if first:
            key = first[:_KEY]
            self._lengths.add(len(key))
            self._by_prefix[(state.app, key)].add(state.id)
        elif last:
            key = last[-_KEY:]
            self._lengths.add(len(key))
            self._by_suffix[(state.app, key)].add(state.id)
        else:
            self._open[state.app].add(state.id)

    def _index_young(self, state: FamilyState, text: str) -> None:
        tokens = tokenize(text)
        key = (_first_words(tokens), _last_words(tokens), self._clock)
        self._clock += 1
        state.keys.append(key)
        self._index_keys(state, key)

    def _index_keys(self, state: FamilyState, key: Key) -> None:
        self._young_first[(state.app, key[0])].append(state.id)
        self._young_last[(state.app, key[1])].append(state.id)

    def _remove(self, state: FamilyState) -> None:
        ids, matrix = self._apps[state.app]
        i = ids.index(state.id)
        self._apps[state.app] = (ids[:i] + ids[i + 1 :], np.delete(matrix, i, axis=0))
        for index in (self._by_prefix, self._by_suffix):
            for members in index.values():
                members.discard(state.id)
        self._open[state.app].discard(state.id)

    # --- assignment --------------------------------------------------------------------------------------------

    def _recent(self, state: FamilyState) -> collections.deque[Member]:
        if not state.recent_loaded:
            if self.load_recent is not None:
                state.recent.extendleft(reversed(self.load_recent(state.id)))
            state.recent_loaded = True
        return state.recent

    def _parsers(self, text: str, app: str | None) -> set[str]:
        found = set(self._open.get(app, ()))
        for length in self._lengths:
            if len(text) >= length:
                found |= self._by_prefix.get((app, text[:length]), set())
                found |= self._by_suffix.get((app, text[-length:]), set())
        return found

    def _parse(self, text: str, app: str | None) -> tuple[FamilyState, int] | None:
        """Return the family whose template version parses `text` with the most constant text, and the version."""
        best: tuple[tuple[int, int], FamilyState, int] | None = None
        stripped = text.rstrip()
        for family_id in self._parsers(text, app) | (self._parsers(stripped, app) if stripped != text else set()):
            state = self.states[family_id]
            if state.status != 'active' or state.mined_at < TRUST:
                continue  # a template mined from a few members may be too loose yet: its members decide
            usable = [(n, t) for n, t in state.versions() if _usable(t)]
            found = best_version(usable, text)
            if found is None:
                continue
            key = (found[1].size, state.n)
            if best is None or key > best[0]:
                best = (key, state, found[0])
        return None if best is None else (best[1], best[2])

    def _candidates(self, tokens: list[str], vector: np.ndarray, app: str | None) -> list[tuple[str, float]]:
        ids, matrix = self._apps.get(app, ([], None))
        chosen: dict[str, float] = {}
        if not ids:
            return []
        sims = matrix @ vector
        for i in np.argsort(-sims)[:CANDIDATES]:
            chosen[ids[i]] = float(sims[i])
        index = {fid: i for i, fid in enumerate(ids)}
        for key, table in (
            ((app, _first_words(tokens)), self._young_first),
            ((app, _last_words(tokens)), self._young_last),
        ):
            # the latest young families with the key (families trusted since are no longer indexed by their members)
            young = [fid for fid in table.get(key, []) if fid in index and self.states[fid].mined_at < TRUST]
            for fid in young[-CANDIDATES:]:
                if fid not in chosen:
                    chosen[fid] = float(sims[index[fid]])
        return sorted(chosen.items(), key=lambda kv: -kv[1])

    def assign(
        self, prompt_hash: str, text: str, vector: np.ndarray, at: datetime.datetime, app: str | None = None
    ) -> Assignment:
        """Assign one new raw prompt (not seen before) and update the families' state in memory."""
        if self._day is not None and at.date() != self._day:
            self._new_day(at)
        self._day = at.date()
        assignment = self._assign(prompt_hash, text, vector, at, app)
        # the family it was assigned to, which later merges and splits do not change: an application's latest
        # prompts are read with it (a reload reads it from the stored reason)
        assignment.reason['assigned_to'] = assignment.family_id
        self._app_recent[app].append((assignment.family_id, prompt_hash, text))
        return assignment

    def _assign(
        self, prompt_hash: str, text: str, vector: np.ndarray, at: datetime.datetime, app: str | None
    ) -> Assignment:
        parsed = self._parse(text, app)
        if parsed is not None:
            state, number = parsed
            reason = self._reason(state, vector, 'parsed', template=number)
            self._join(state, prompt_hash, text, vector, at)
            return Assignment(state.id, 1.0, reason, False)
        tokens = tokenize(text)
        young: tuple[float, FamilyState, list[Member]] | None = None
        loose: tuple[float, FamilyState] | None = None
        edit: tuple[float, FamilyState] | None = None
        candidates = [f for f, _ in self._candidates(tokens, vector, app)]
        # and the trusted templates that start or end as it does (an edit at the other edge; their centres may be
        # farther than five others' when the prompt's own text is most of it)
        keyed = self._parsers(text, app) - self._open.get(app, set()) - set(candidates)
        candidates += sorted(f for f in keyed if self.states[f].status == 'active' and self.states[f].mined_at >= TRUST)
        for family_id in candidates:
            state = self.states[family_id]
            if state.template is None or state.mined_at < TRUST:
                found = self._young_fit(state, text, tokens)
                if found is not None and (young is None or found[0] > young[0]):
                    young = (found[0], state, found[1])
                continue
            size = state.template.size
            fit = align(tokens, [tokenize(p) for p in state.template.pieces])
            score = fit.matched / max(size, 1)
            changed = fit.deleted + fit.inserted
            if (
                changed == 0
                and fit.absorbed <= 3
                and fit.matched >= 0.7 * size
                and fit.start
                and fit.end
                and self._values_fit(state, words(tokens) - fit.matched)
            ):
                if loose is None or score > loose[0]:
                    loose = (score, state)
            elif (
                changed <= EDIT_WORDS
                and fit.inserted <= size
                and fit.matched >= 0.5 * size
                and (fit.start or fit.end or fit.deleted == 0)
            ):
                # a rewording that keeps half the template's words and adds no more than it had, anchored at a
                # shared start or end, or all of the template's text with a few words added (`...\n\nA:`)
                if edit is None or score > edit[0]:
                    edit = (score, state)
        if young is not None:
            score, state, apart = young
            if apart:
                state = self._split_off(state, apart, at)
            reason = self._reason(state, vector, 'shares its start or end and words with the latest members')
            self._join(state, prompt_hash, text, vector, at)
            return Assignment(state.id, round(score, 4), reason, False)
        if loose is not None:
            score, state = loose
            reason = self._reason(state, vector, 'fits the template but for short pieces between slots')
            self._join(state, prompt_hash, text, vector, at, remine=True)
            return Assignment(state.id, round(score, 4), reason, False)
        new = self._found(prompt_hash, text, vector, at, app)
        if edit is not None:
            new.candidate_of, new.candidate_since = edit[1].id, at
            return Assignment(new.id, 1.0, {'new_family': 'a few words from a template', 'edit_of': edit[1].id}, True)
        return Assignment(new.id, 1.0, {'new_family': 'no family template covers it'}, True)

    def _young_fit(self, state: FamilyState, text: str, tokens: list[str]) -> tuple[float, list[Member]] | None:
        """Return how well a prompt fits a family whose template is not trusted yet, or None; and the members it
        belongs with when the family turns out to mix two templates.

        It is compared with the family's latest members (up to four) and must fit most of them: share a solid
        start or end and three words with each, and the pieces they share must parse both texts, so that a value
        never holds text the template has after it (a prompt with examples added is no value of a shorter one).
        Text one has and the other lacks is not held against it: two values often share a line by chance.

        Two templates whose first prompts shared only an ending (the options list of every template of an
        application) show when a third prompt shares far more with some members than with the others, more
        template text: those members and the prompt then make a family of their own.
        """
        template = state.template
        if template is not None and state.mined_at >= YOUNG_TEMPLATE:
            # a template mined from five members already says what they share: a prompt lacking much of it is
            # another template (sharing only the application's options list), not a member
            if align(tokens, [tokenize(p) for p in template.pieces]).deleted > max(2, template.size // 4):
                return None
        recent = list(self._recent(state))
        members = recent[-YOUNG_VOTES:]
        scores = []
        for _, member, _ in members:
            if not _edge_shared(text, member) and not _near_edges(text, member):
                continue  # no solid shared start or end, nor a word shared near one: no need to align
            fit = align(tokens, [tokenize(member)], young=True)
            if (
                (fit.matched < MIN_SHARED and not _edge_line(text, member))
                or not (fit.start or fit.end)
                or fit.edge >= 2
            ):
                continue  # an edge one has and the other lacks is a section added: another template
            draft = Template(fit.shared, tuple(Slot(f's{i}', 'text') for i in range(len(fit.shared) - 1)))
            if draft.spans(text) is None or draft.spans(member) is None:
                continue
            if not self._anchored(state, text, member, fit, draft):
                continue
            scores.append(fit.matched)
        if not scores:
            return None
        shares = [_shared_edges(text, m) for _, m, _ in recent] if 2 <= len(recent) <= YOUNG_SPLIT else [0]
        top = max(shares)
        close = [m for m, share in zip(recent, shares) if share >= top - 1]
        far = [share for share in shares if share < top - 1]
        if far and max(far) <= top - SPLIT_WORDS:
            draft = self._draft(state)
            if _sub_template(draft, [text] + [m for _, m, _ in close]):
                return 1.0, close
        if 2 * len(scores) <= len(members) and len(members) > 1:
            return None
        return len(scores) / len(members), []  # the confidence: the share of the latest members it fits

    def _values_fit(self, state: FamilyState, value_words: int) -> bool:
        """Return whether a prompt whose values hold `value_words` words is no more than a member: at most twice the
        words the values of any of the latest members hold. Another encoding of the same task (its examples with
        explanations added) has all of the template's text too, and its additions land where slots are."""
        template = state.template
        assert template is not None
        size = template.size
        held = [words(tokenize(t)) - size for _, t, _ in self._recent(state) if template.spans(t) is not None]
        return not held or value_words <= LOOSE_VALUES * max(held)

    def _draft(self, state: FamilyState) -> Template:
        """Return the template mined from a young family's members (kept until a member joins or leaves)."""
        key = tuple(h for h, _, _ in self._recent(state))
        if state.draft is None or state.draft[0] != key:
            state.draft = (key, mine([t for _, t, _ in self._recent(state)]))
        return state.draft[1]

    def _anchored(self, state: FamilyState, text: str, member: str, fit: Fit, draft: Template) -> bool:
        """Return whether the text two prompts share is theirs, not the application's: text that prompts of two
        other families also start (end) with (an options list every template of the application ends with) says
        nothing about a template.

        Two prompts whose values are short and that share solid text between them too (`Summarize ticket {n} for
        customer {name}`) are judged by all they share (`draft`): a start the application's other templates have
        (`Summarize ticket`) does not keep them apart when prompts of fewer than two other families fit all of
        it, so the first two prompts of a template put apart do not keep every later one apart.
        """
        recent = self._app_recent.get(state.app, ())
        for edge, shared in ((fit.start, common_prefix([text, member])), (fit.end, common_suffix([text, member]))):
            if not edge or not _solid(tokenize(shared)):
                continue  # a short value at the edge (`{name} wants a refund ...`): judged by the draft below
            start = shared == text[: len(shared)]
            test = str.startswith if start else str.endswith
            others = {f for f, _, t in recent if f != state.id and test(t, shared)}
            if not others or (len(others) == 1 and not self._inside(others.pop(), shared, start)):
                return True
        if not any(_solid(tokenize(piece)) for piece in fit.shared[1:-1]):
            return False
        for t in (text, member):  # only short values (a number, a name) between what they share
            if any(words(tokenize(t[s:e])) > SHORT_VALUE for s, e in draft.spans(t) or ()):
                return False
        others = set()
        for family_id, _, other in recent:
            if family_id != state.id and family_id not in others and draft.spans(other) is not None:
                others.add(family_id)
                if len(others) >= 2:
                    return False
        return True

    def _inside(self, family_id: str, shared: str, start: bool) -> bool:
        """Return whether `shared` is part of another family's template text at that edge, which goes on with
        solid text of its own (`Is the sentiment of this review positive or negative?` before the options list it
        shares with two one-offs): two prompts sharing only a piece of another template's constant text are not one
        template for it. The other family's mined template decides, not its latest prompts: values often share a
        tail by chance (`familyFriendly[no]`), and a template mined from a few members may hold such a tail too: only a
        trusted template (mined from TRUST members) decides."""
        other = self.states.get(family_id)
        if other is None or other.template is None or other.mined_at < TRUST:
            return False
        piece = other.template.pieces[0 if start else -1]
        if start:
            return piece.startswith(shared) and _solid(tokenize(piece[len(shared) :]))
        return piece.endswith(shared) and _solid(tokenize(piece[: len(piece) - len(shared)]))

    def _reason(self, state: FamilyState, vector: np.ndarray, how: str, **extra: Any) -> dict[str, Any]:
        # x.dot(v) is the same C loop as x @ v for two vectors (the same bits), without the matmul dispatch
        near = sorted(
            ((h, float(self.vectors[h].dot(vector))) for h in state.exemplars if h in self.vectors),
            key=lambda hv: -hv[1],
        )[:3]
        return {
            'how': how,
            **extra,
            'nearest_members': [
                {'prompt_hash': h, 'similarity': round(s, 4), 'prompt': self.snippets.get(h, '')} for h, s in near
            ],
        }

    def _new_id(self, prompt_hash: str) -> str:
        family_id, n = f'fam-{prompt_hash[:10]}', 2
        while family_id in self.states or family_id in self._taken:  # a merged family keeps its id out of reuse
            family_id, n = f'fam-{prompt_hash[:10]}-{n}', n + 1
        self._taken.add(family_id)
        return family_id

    def _found(
        self, prompt_hash: str, text: str, vector: np.ndarray, at: datetime.datetime, app: str | None
    ) -> FamilyState:
        state = FamilyState(self._new_id(prompt_hash), app, at, vector.astype(np.float32), 1, changed=True)
        state.recent.append((prompt_hash, text, at))
        state.times.append(at)
        self._remember(state, prompt_hash, text, vector)
        self._add(state)
        return state

    def _remember(self, state: FamilyState, prompt_hash: str, text: str, vector: np.ndarray) -> None:
        if len(state.exemplars) >= EXEMPLARS:  # keep the first four, roll the rest
            dropped = state.exemplars.pop(4)
            self.vectors.pop(dropped, None)
            self.snippets.pop(dropped, None)
        state.exemplars.append(prompt_hash)
        self.vectors[prompt_hash] = vector.astype(np.float32)
        self.snippets[prompt_hash] = text[:120]

    def _join(
        self,
        state: FamilyState,
        prompt_hash: str,
        text: str,
        vector: np.ndarray,
        at: datetime.datetime,
        *,
        remine: bool = False,
    ) -> None:
        state.total = state.total + vector.astype(np.float32)
        state.n += 1
        state.changed = True
        state.times.append(at)
        self._recent(state).append((prompt_hash, text, at))
        self._remember(state, prompt_hash, text, vector)
        self._set_centre(state)
        if state.template is None and state.n < TEMPLATE_MIN:
            self._index_young(state, text)
        elif remine or state.n in MINE_AT or (state.n > MINE_AT[-1] and state.n & (state.n - 1) == 0):
            mined = self._mine(state, at)
            if state.n in MINE_AT[1:] and mined is not None:
                self._split_mixture(state, mined, at)
            if state.status == 'active' and state.mined_at >= TRUST:
                self._absorb_tighter(state, at)
        else:
            self._refine(state, at)

    # --- templates ---------------------------------------------------------------------------------------------

    def _mine(self, state: FamilyState, at: datetime.datetime) -> Template | None:
        """Mine the template from the latest members (and return it); a new version when its pieces changed. A
        version it parses every member of (on the latest members, of which it parses some) is retired: it was mined
        from fewer members."""
        texts = [t for _, t, _ in self._recent(state)]
        if len(texts) < TEMPLATE_MIN:
            return None
        if state.edited_since is not None:
            # after an edit, the template is the edited wording's: mined from the members since the edit (while
            # enough), not from both wordings at once, which would make a looser template of the two
            edited = [t for _, t, at in self._recent(state) if at >= state.edited_since]
            texts = edited if len(edited) >= TEMPLATE_MIN else texts
        template = mine(texts)
        state.mined_at = state.n
        active = state.versions()
        if any(t.pieces == template.pieces for _, t in active) or (active and not _usable(template)):
            # a template of under two words (`Data: {{ data }}`, mined when a prompt of another template with the
            # same input joined) parses no prompt: it neither becomes a version nor retires the one that does
            return template
        parsed_new = {i for i, t in enumerate(texts) if template.spans(t) is not None}
        best_old = max((sum(t.spans(x) is not None for x in texts) for _, t in active), default=0)
        if len(parsed_new) < best_old:
            return template
        for number, old in active:
            # a version that parses none of the latest members (the wording before an edit) is not retired by them:
            # it still parses the family's earlier members
            parsed_old = {i for i, t in enumerate(texts) if old.spans(t) is not None}
            if parsed_old and parsed_old <= parsed_new:
                state.retired.add(number)
        self._version(state, template, at, texts)
        return template

    def _version(self, state: FamilyState, template: Template, at: datetime.datetime, texts: Sequence[str]) -> None:
        old = state.template
        number = state.template_number + 1
        state.templates.append(template)
        state.numbers.append(number)
        state.changed = True
        self._index_template(state, template)
        self.templates_out.append(
            {
                'family_id': state.id,
                'number': number,
                'template': template.jinja,
                'spec': template.to_json(),
                'events': template_events(old, template),
                'as_of': at,
                'members': len(texts),
                'parsed': sum(template.spans(t) is not None for t in texts),
            }
        )

    def _refine(self, state: FamilyState, at: datetime.datetime) -> None:
        """Record a new version when the latest members' values all gained the same text at one edge.

        Whitespace at the edge does not count: a near duplicate with a trailing space (a retry, a copy) must not
        hide that every value now ends with `\n\nSummary:`.
        """
        template = state.template
        recent = list(self._recent(state))
        if template is None or not template.slots or len(recent) < 2 * REFINE_K:
            return
        latest = [_values(self._parsed, template, t) for _, t, _ in recent[-REFINE_K:]]
        if any(p is None for p in latest):
            return
        before = [
            p
            for p in (_values(self._parsed, template, t) for _, t, _ in recent[-2 * REFINE_K : -REFINE_K])
            if p is not None
        ]
        for slot in template.slots:
            for suffix in (False, True):
                trim = str.rstrip if suffix else str.lstrip
                edge = _edge([trim(p[slot.name]) for p in latest], suffix)  # type: ignore[index]
                if not _new_text(edge):
                    continue
                has = str.endswith if suffix else str.startswith
                if sum(1 for p in before if has(trim(p[slot.name]), edge)) <= len(before) // 5:
                    texts = [t for _, t, _ in recent[-REFINE_K:]]
                    mined = mine(texts)
                    if mined.size > template.size and all(_parse(mined, t) is not None for t in texts):
                        self._version(state, mined, at, texts)
                        state.mined_at = state.n
                    return

    def _split_mixture(self, state: FamilyState, family: Template, at: datetime.datetime) -> None:
        """Split a young family that two templates joined (their first prompts shared an ending, say): members
        that share at least three more words at their start and end with each other than the family's template
        has form groups; when groups of two or more hold most members, every group but the largest is moved to
        a new family of its own (recorded)."""
        members = list(self._recent(state))
        if len(members) < 2 * 2 or state.n > MINE_SAMPLE:
            return
        base = family.size
        parent = list(range(len(members)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        shares = _pair_shares([text for _, text, _ in members])
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                if shares[i][j] >= base + SPLIT_WORDS:
                    parent[root(i)] = root(j)
        groups: dict[int, list[int]] = collections.defaultdict(list)
        for i in range(len(members)):
            groups[root(i)].append(i)
        linked = sorted((g for g in groups.values() if len(g) >= 2), key=len, reverse=True)
        if len(linked) < 2 or sum(map(len, linked)) < SPLIT_COVER * len(members):
            return
        # a group is another template when its values of some slot vary but all start (or end) with the same
        # phrase, or when it holds another template's wording in two or more slots; a group of equal values in one
        # slot (an enum: the same customer) is no template
        texts = [[members[i][1] for i in g] for g in linked]
        apart = [g for g, t in zip(linked, texts) if _sub_template(family, t) or _wording(family, t)]
        kept = next((g for g in linked if g not in apart), linked[0])
        for group in apart:
            if group is not kept:
                self._split_off(state, [members[i] for i in group], at)

    def _split_off(self, state: FamilyState, moved: list[Member], at: datetime.datetime) -> FamilyState:
        texts = [t for _, t, _ in moved]
        vectors = self.embed(texts) if self.embed is not None else np.zeros((len(texts), self.dimensions))
        total = np.asarray(vectors, dtype=np.float32).sum(axis=0, dtype=np.float32)
        new = FamilyState(self._new_id(moved[0][0]), state.app, moved[0][2], total, len(moved), changed=True)
        for member, vector in zip(moved, vectors):
            new.recent.append(member)
            new.times.append(member[2])
            self._remember(new, member[0], member[1], np.asarray(vector))
        hashes = {h for h, _, _ in moved}
        kept = [m for m in state.recent if m[0] not in hashes]
        state.recent.clear()
        state.recent.extend(kept)
        state.times = collections.deque((t for t in state.times if t not in {m[2] for m in moved}), maxlen=64)
        state.exemplars[:] = [h for h in state.exemplars if h not in hashes]
        state.total = state.total - total
        state.n -= len(moved)
        state.changed = True
        self._set_centre(state)
        self._add(new)
        self.moves.append(Move('split', new.id, state.id, sorted(hashes), len(moved), at,
                               'two templates in one young family: the members of one moved to a family of its own'))  # fmt: skip
        if new.n >= TEMPLATE_MIN:
            self._mine(new, at)
        else:
            self._index_young(new, texts[-1])
        if state.n >= TEMPLATE_MIN:
            self._mine(state, at)
        # a version mined while the family held both templates (or from the other one's members) that parses none of
        # the members that stay but some that moved is the other template's: left, it went on parsing that template's
        # later prompts (and a third encoding of the task sharing its start) into this family
        stay = [t for _, t, _ in state.recent]
        for number, template in state.versions():
            if all(_parse(template, t) is None for t in stay) and any(_parse(template, t) is not None for t in texts):
                state.retired.add(number)
        return new

    def _absorb_tighter(self, state: FamilyState, at: datetime.datetime) -> None:
        """Merge into `state` the trusted families of its application whose template is its own with a few words
        more, where its template has a slot, and whose latest members its template parses: the same template, whose
        first members happened to share a value (`near[Burger King]` before the ending of every one of them, the
        young family having grown by shared ends), so that each later prompt without it became a family of its own.
        """
        own = [t for _, t in state.versions() if _usable(t)]
        if not own:
            return
        template = own[-1]
        keys: set[str] = set()
        first, last = template.pieces[0], template.pieces[-1]
        if first:
            for length in self._lengths:
                keys |= self._by_prefix.get((state.app, first[:length]), set())
        if last:
            for length in self._lengths:
                keys |= self._by_suffix.get((state.app, last[-length:]), set())
        for family_id in sorted(keys - {state.id}):
            other = self.states[family_id]
            if other.status != 'active' or other.mined_at < TRUST or other.template is None:
                continue
            if not template.size < other.template.size <= template.size + ABSORB_WORDS:
                continue
            members = list(self._recent(other))
            if not members or any(_parse(template, t) is None for _, t, _ in members):
                continue
            self._merge_into(state, other, at)

    def _merge_into(self, state: FamilyState, other: FamilyState, at: datetime.datetime) -> None:
        times = sorted([*state.times, *other.times])
        state.times.clear()
        state.times.extend(times)
        self._take_in(state, other, at, 'its template is this one with a value it froze')

    def _take_in(self, state: FamilyState, other: FamilyState, at: datetime.datetime, note: str) -> None:
        """Merge `other` into `state` (its members, total, latest members and exemplars; not its times) and record it."""
        state.total = state.total + other.total
        state.n += other.n
        state.changed = True
        merged = sorted([*self._recent(state), *self._recent(other)], key=lambda m: (m[2], m[0]))
        state.recent.clear()
        state.recent.extend(merged)
        for h in other.exemplars:
            if h not in state.exemplars:
                state.exemplars.append(h)
        state.exemplars[:] = state.exemplars[:4] + state.exemplars[4:][-(EXEMPLARS - 4) :]
        self._set_centre(state)
        other.status, other.merged_into, other.changed = 'merged', state.id, True
        other.candidate_of = None
        self._remove(other)
        self.moves.append(Move('merge', state.id, other.id, None, other.n, at, note))
        other.n = 0

    # --- candidate edits ---------------------------------------------------------------------------------------

    def _new_day(self, at: datetime.datetime) -> None:
        """Decide the candidate edits: merged into the family they edit once it fell silent, or templates of their
        own once both go on."""
        for state in list(self.states.values()):
            if state.candidate_of is None or state.status != 'active':
                continue
            old = self.states.get(state.candidate_of)
            since = state.candidate_since
            assert since is not None
            if old is None or old.status != 'active' or (at - since).days > CANDIDATE_DAYS:
                state.candidate_of, state.candidate_since, state.changed = None, None, True
                continue
            if sum(1 for t in old.times if t > since) >= PARALLEL:
                state.candidate_of, state.candidate_since, state.changed = None, None, True
                continue
            if state.n < 2:
                continue
            earlier = [t for t in old.times if t <= since]
            if len(earlier) >= 2:
                rate = (len(earlier) - 1) / max((earlier[-1] - earlier[0]).total_seconds() / 86400, 1e-3)
            else:
                rate = old.n / max((since - old.created_at).total_seconds() / 86400, 1.0)
            silent = (at - max(since, old.times[-1] if old.times else since)).total_seconds() / 86400
            if math.exp(-rate * silent) < REPLACED_P:
                self._merge_edit(old, state, at)

    def _merge_edit(self, old: FamilyState, new: FamilyState, at: datetime.datetime) -> None:
        texts = [t for _, t, _ in self._recent(new)]
        template = mine(texts) if len(texts) > 1 else Template((texts[0],))
        old.times.extend(new.times)
        edited_since = new.candidate_since
        self._take_in(old, new, at, EDIT_NOTE)
        self._version(old, template, at, texts)
        old.mined_at = old.n
        old.edited_since = edited_since

    # --- reading -----------------------------------------------------------------------------------------------

    def changed(self) -> list[FamilyState]:
        return [s for s in self.states.values() if s.changed]
