"""Canonical templates: the constant text a family's raw prompts share, with typed slots where they differ.

Pure functions, no tables: `mine(texts)` aligns the members' tokens (difflib's SequenceMatcher, the gestalt
alignment) against a reference member and keeps as constant the tokens most members share, in order; the gaps are
slots. `Template.parse(text)` reads one member's slot values back with a regular expression built from the
constant pieces, and `Template.jinja` is the template in the workspace's Jinja2 syntax (`{{ slot_name }}`), so
`render(template.jinja, template.parse(text)) == text` for every member it parses.

Why hand-written: Drain3 (the maintained streaming log-template miner) was measured against this alignment on the
bundled log and recovered fewer templates and slots (docs/benchmarks.md, "Prompt families"): it needs the same
number of whitespace-separated tokens in every member, which free-text, JSON and multi-line slots never have.
"""

from __future__ import annotations

import collections
import functools
import itertools
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cydifflib as difflib  # difflib in C++: the same alignments, ten times faster

__all__ = [
    'words',
    'common_prefix',
    'common_suffix',
    'SlotType',
    'Slot',
    'Template',
    'tokenize',
    'clip',
    'coverage',
    'contains_in_order',
    'mine',
    'infer_type',
    'template_events',
    'MAX_TOKENS',
]

SlotType = Literal['integer', 'number', 'date', 'email', 'url', 'id', 'enum', 'text']

# a run of one punctuation mark ('---', '##') is one token; the whole token is group 1, so findall runs in C
_TOKEN = re.compile(r'(\w+|\s+|([^\w\s])\2*)')
_WORD = re.compile(r'\w')
_WORDS = re.compile(r'\w+')
#: Tokens of a prompt that take part in an alignment: a longer prompt is aligned on its head and tail, so a huge
#: pasted document costs no more than this (its middle is a slot anyway).
MAX_TOKENS = 3000
#: Tokens of what members do not all share (their middles, see `mine`) that are aligned: the head and tail of a
#: long value (a passage, an abstract) hold its edges; text shared deep inside long values is left to them.
MIDDLE_TOKENS = 400
#: A token is constant when at least this share of the other members contain it, in order.
MIN_SUPPORT = 0.8
#: A short constant run (fewer than 3 word tokens) must be shared by nearly every member: common words inside
#: free text (" the ", " to ") otherwise pass as constant and cut one slot into two.
SHORT_RUN_SUPPORT = 0.97
SUPPORT_SAMPLE = 12  # members a reference is aligned with: enough to tell shared text from chance, and fast
ENUM_MAX = 12
TYPE_SHARE = 0.95  # share of a slot's values that must fit a type for the slot to get it

# Characters a slot value may share with the constant text around it without a space: "AO-48213", "x@mail.example",
# "https://host/p/...". Slot boundaries snap outwards over them, so a slot holds whole values, not their tails.
_GLUE = set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.@/+#%&=?~:')
_SENTENCE_END = set('.:?!')


def tokenize(text: str) -> list[str]:
    """Split text into word, whitespace and punctuation tokens; joined, they give the text back.

    >>> tokenize('Order AO-12 (paid)')
    ['Order', ' ', 'AO', '-', '12', ' ', '(', 'paid', ')']
    """
    return list(_tokens(text))


@functools.lru_cache(maxsize=8192)
def _tokens(text: str) -> tuple[str, ...]:
    # assignment tokenizes a family's latest members again for every prompt it compares with them
    return tuple(m[0] for m in _TOKEN.findall(text))


def common_prefix(texts: Sequence[str]) -> str:
    """Return the text all `texts` start with (os.path.commonprefix, compared a block at a time in C)."""
    if len(texts) < 2:
        return texts[0] if texts else ''
    a, b = texts if len(texts) == 2 else (min(texts), max(texts))  # the smallest and the largest share everyone's
    n = min(len(a), len(b))
    if not n or a[0] != b[0]:
        return ''
    at, step = 0, 64
    while at < n:
        end = min(at + step, n)
        if a[at:end] == b[at:end]:
            at, step = end, step * 2
        elif step > 1:
            step //= 2
        else:
            break
    return a[:at]


def common_suffix(texts: Sequence[str]) -> str:
    """Return the text all `texts` end with."""
    return common_prefix([t[::-1] for t in texts])[::-1]


def clip(tokens: list[str], limit: int = MAX_TOKENS) -> list[str]:
    """Return the tokens an alignment uses: all of them, or the head and tail of a very long text."""
    if len(tokens) <= limit:
        return tokens
    half = limit // 2
    return tokens[:half] + tokens[-half:]


def clipped_tokens(text: str, limit: int) -> list[str]:
    """Return `clip(tokenize(text), limit)`, tokenizing only the head and the tail of a long text (a family's long
    members are mined again and again, each time with new edges cut off, so the cache of `tokenize` misses).

    Hand-written: a token ends where the kind of character changes, so the tokens of a text's first characters
    are its first tokens but for the last one, which may be cut, and those of its last characters are its last
    tokens but for the first one.
    """
    half = limit // 2
    window = 16 * half  # characters; a token averages about four
    if len(text) > 2 * window:
        head = [m[0] for m in _TOKEN.findall(text, 0, window)]
        tail = [m[0] for m in _TOKEN.findall(text, len(text) - window)]
        whole_head, whole_tail = len(head) - 1, len(tail) - 1  # tokens that may be cut left out
        if whole_head >= half and whole_tail >= half and whole_head + whole_tail > limit:
            # the windows do not overlap, so the text has more than `limit` tokens: `clip` keeps its head and tail
            return head[:half] + tail[len(tail) - half :]
    return clip(tokenize(text), limit)


# --- slot types --------------------------------------------------------------------------------------------------

_MONTHS = r'(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?'
_TYPES: list[tuple[SlotType, re.Pattern[str]]] = [
    ('integer', re.compile(r'[+-]?(\d{1,3}(,\d{3})+|\d+)')),
    ('number', re.compile(r'[+-]?(\d{1,3}(,\d{3})+|\d+)?\.\d+([eE][+-]?\d+)?|[+-]?\d+[eE][+-]?\d+')),
    (
        'date',
        re.compile(
            r'\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?'
            r'|\d{1,2}/\d{1,2}/\d{2,4}|\d{1,2}\.\d{1,2}\.\d{4}'
            rf'|\d{{1,2}} {_MONTHS},? \d{{4}}|{_MONTHS} \d{{1,2}}(st|nd|rd|th)?,? \d{{4}}',
            re.IGNORECASE,
        ),
    ),
    ('email', re.compile(r'[^@\s<>]+@[^@\s<>]+\.[A-Za-z]{2,}')),
    ('url', re.compile(r'(https?|ftp)://\S+|www\.\S+\.\S+')),
    # one token mixing letters, digits and separators, with a digit: AO-48213, evt_0a1b2c3d, a UUID
    (
        'id',
        re.compile(
            r'(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[A-Za-z0-9][\w-]{2,}|[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}'
        ),
    ),
]


def infer_type(values: Sequence[str]) -> tuple[SlotType, list[str] | None]:
    """Return a slot's type from its values, and the value set when it is an enum.

    A type needs 95% of the non-empty values to fit it (messy logs have the odd "N/A"); an enum is a short value
    set that repeats (at most 12 values, each seen twice on average); anything else is free text.

    >>> infer_type(['12', '7', '300'])
    ('integer', None)
    >>> infer_type(['chat', 'email', 'chat', 'phone', 'email'])
    ('enum', ['chat', 'email', 'phone'])
    """
    present = [v.strip() for v in values if v is not None and v.strip()]
    if not present:
        return 'text', None
    for name, pattern in _TYPES:
        fits = sum(1 for v in present if pattern.fullmatch(v))
        distinct = len(set(present))
        if fits >= TYPE_SHARE * len(present) and (name != 'id' or distinct > ENUM_MAX or distinct == len(present)):
            return name, None
    counts = collections.Counter(present)
    if (
        len(counts) <= ENUM_MAX
        and len(present) >= 2 * len(counts)
        and all(len(v) <= 40 and '\n' not in v for v in counts)
    ):
        return 'enum', sorted(counts)
    return 'text', None


# --- templates ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A variable part of a canonical template: its name, inferred type, example values (enum: all values)."""

    name: str
    type: SlotType
    examples: tuple[str, ...] = ()
    values: tuple[str, ...] | None = None

    def to_json(self) -> dict:
        return {
            'name': self.name,
            'type': self.type,
            'examples': list(self.examples),
            'values': self.values and list(self.values),
        }

    @staticmethod
    def from_json(data: dict) -> Slot:
        values = data.get('values')
        return Slot(data['name'], data['type'], tuple(data.get('examples') or ()), tuple(values) if values else None)


def _jinja_literal(text: str) -> str:
    """Return `text` as Jinja2 template source that renders to itself."""
    if not any(d in text for d in ('{{', '{%', '{#')):
        return text
    if 'endraw' not in text:
        return '{% raw %}' + text + '{% endraw %}'
    return re.sub(r'\{(?=[{%#])', "{{ '{' }}", text)


def _distinctive(piece: str) -> bool:
    """Return whether a constant piece is text a slot value would not contain by chance (a word, 3+ characters)."""
    return len(piece.strip()) >= 3 and _WORD.search(piece) is not None


def words(tokens: Sequence[str]) -> int:
    """Return how many of `tokens` are words (letters or digits): what template sizes and edits are counted in."""
    # A token of `tokenize` is all word characters (\w: alphanumeric or '_') or none, so a word token is alphanumeric
    # or holds a '_', and no other token holds one: both counted in C.
    n = sum(map(str.isalnum, tokens))
    if '_' in ''.join(tokens):
        n += sum(map(operator.contains, tokens, itertools.repeat('_')))
    return n


@dataclass(frozen=True)
class Template:
    """Constant pieces with one slot between each two: `pieces[0] {{ slots[0] }} pieces[1] ... pieces[-1]`.

    A text fits when it starts with the first piece, ends with the last, and holds the pieces between at their
    first occurrence, in order: a slot value never contains the constant piece that follows it (when that piece is
    distinctive text), so a template cannot swallow a longer template's extra text into a value.
    """

    pieces: tuple[str, ...]
    slots: tuple[Slot, ...] = ()
    _size: int = field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.pieces) != len(self.slots) + 1:
            raise ValueError('a template has one more constant piece than slots')

    @property
    def jinja(self) -> str:
        """Return the template in the workspace's Jinja2 syntax, e.g. 'Order {{ order }} for {{ name }}'."""
        out = []
        for i, piece in enumerate(self.pieces):
            literal = _jinja_literal(piece)
            if i < len(self.slots) and literal.endswith('{'):  # '{' then '{{ x }}' would read as '{{{'
                literal = literal[:-1] + "{{ '{' }}"
            out.append(literal)
            if i < len(self.slots):
                out.append('{{ ' + self.slots[i].name + ' }}')
        return ''.join(out)

    @property
    def constant_tokens(self) -> list[str]:
        """Return the tokens of the constant text, in order (what a member must share to belong)."""
        return [t for piece in self.pieces for t in tokenize(piece)]

    @property
    def constant_text(self) -> str:
        return '\u2026'.join(self.pieces)

    @property
    def size(self) -> int:
        """Return the number of words in the constant text."""
        if self._size < 0:
            object.__setattr__(self, '_size', sum(len(_WORDS.findall(p)) for p in self.pieces))
        return self._size

    def spans(self, text: str) -> list[tuple[int, int]] | None:
        """Return the [start, end) character span of each slot value in `text`, or None if it does not fit."""
        pieces = self.pieces
        first, last = pieces[0], pieces[-1]
        if not text.startswith(first):
            return None
        if len(pieces) == 1:
            return [] if len(text) == len(first) else None
        limit = len(text) - len(last)
        if limit < len(first) or not text.endswith(last):
            return None
        at, spans = len(first), []
        for piece in pieces[1:-1]:
            found = text.find(piece, at, limit)
            if found < 0:
                return None
            spans.append((at, found))
            at = found + len(piece)
        if _distinctive(last) and text.find(last, at, limit + len(last) - 1) >= 0:
            return None  # the last value holds the closing text: the text is longer than this template
        spans.append((at, limit))
        return spans

    def parse(self, text: str) -> dict[str, str] | None:
        """Return one member's slot values by name, or None when the text does not fit the template."""
        spans = self.spans(text)
        if spans is None:
            return None
        return {slot.name: text[s:e] for slot, (s, e) in zip(self.slots, spans)}

    def to_json(self) -> dict:
        return {'pieces': list(self.pieces), 'slots': [s.to_json() for s in self.slots]}

    @staticmethod
    def from_json(data: dict) -> Template:
        return Template(tuple(data['pieces']), tuple(Slot.from_json(s) for s in data['slots']))


def _support(reference: list[str], others: Sequence[list[str]]) -> list[float]:
    """Return, for each reference token, the share of `others` that contain it at its place in the alignment."""
    marks = [0] * (len(reference) + 1)  # +1 where a counted block starts, -1 after it ends: one pass sums them
    matcher = difflib.SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(reference)
    for tokens in others:
        matcher.set_seq1(tokens)
        for a, b, size in matcher.get_matching_blocks():
            # A lone space or full stop matches somewhere in any two free texts: only blocks with a word or a line
            # break (or of 4 tokens and more) count as the member sharing that text, or the blocks at the start or
            # end of both (the text both go on with was set aside as shared, see `mine`).
            block = reference[b : b + size]
            edge = (a == 0 and b == 0) or (a + size == len(tokens) and b + size == len(reference))
            if size and (edge or size >= 4 or any(_WORD.match(t) or '\n' in t for t in block)):
                marks[b] += 1
                marks[b + size] -= 1
    return [c / len(others) for c in itertools.accumulate(marks[:-1])]


def _runs(mask: list[bool]) -> list[tuple[int, int]]:
    runs, i = [], 0
    while i < len(mask):
        if mask[i]:
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


def _constant_mask(reference: list[str], support: list[float]) -> list[bool]:
    mask = [s >= MIN_SUPPORT for s in support]
    for i, j in _runs(mask):
        if _label_line(reference[i:j]):
            continue  # a label on a line of its own (`\nQuestion: `) is the template's layout, not a shared value
        if sum(1 for t in reference[i:j] if _WORD.match(t)) < 3:
            for k in range(i, j):  # a short run keeps only what nearly every member shares
                mask[k] = support[k] >= SHORT_RUN_SUPPORT
            for k in range(i, j):  # and the layout (line breaks, spaces) right next to it
                near = (k > i and mask[k - 1]) or (k + 1 < j and support[k + 1] >= SHORT_RUN_SUPPORT)
                if reference[k].isspace() and near:
                    mask[k] = True
    return _drop_bare(reference, mask)


def _label_line(tokens: list[str]) -> bool:
    """Return whether a run of tokens is a label that starts a line: a line break, one or two words, a colon.

    Such a run between two slots (`{passage} \nQuestion: {question}`) is kept at the majority's support: aligned
    against a dozen members with long values, one alignment can miss it, and the strict rule for short runs (what
    nearly every member shares, meant for a phrase most values happen to use) then merged the two slots."""
    text = ''.join(tokens)
    line = text.rsplit('\n', 1)[-1].strip() if '\n' in text else ''
    return bool(line.endswith(':')) and 1 <= len(_WORDS.findall(line)) <= 2


def _drop_bare(reference: list[str], mask: list[bool]) -> list[bool]:
    # A bare space or punctuation mark between two slots is more often a coincidence inside one free-text value
    # than a separator; a line break is kept.
    for i, j in _runs(mask):
        run = ''.join(reference[i:j])
        if 0 < i and j < len(mask) and not _WORD.search(run) and '\n' not in run:
            for k in range(i, j):
                mask[k] = False
    return mask


def _glue(token: str) -> bool:
    return all(c in _GLUE for c in token)


def _snap(reference: list[str], mask: list[bool]) -> list[bool]:
    """Turn constant tokens glued to a slot value (no space between, as in 'AO-' + '48213', '@mail.example') into
    part of the slot, so a slot holds whole values rather than their tails."""
    mask = list(mask)
    changed = True
    while changed:
        changed = False
        for k in range(len(mask)):
            if mask[k]:
                continue
            token = reference[k]
            right = k + 1
            if right < len(mask) and mask[right] and not token[-1].isspace() and _glue(reference[right]):
                follows = reference[right + 1] if right + 1 < len(reference) else ' '
                if not (reference[right] in _SENTENCE_END and follows[0].isspace()):
                    mask[right] = False
                    changed = True
            left = k - 1
            if left >= 0 and mask[left] and not token[0].isspace() and _glue(reference[left]):
                mask[left] = False
                changed = True
    return mask


def _pieces(reference: list[str], mask: list[bool]) -> list[str]:
    """Return the constant pieces of `reference` under `mask`: one more than the variable runs between them."""
    pieces, current, previous = [], [], True
    for token, constant in zip(reference, mask):
        if constant:
            current.append(token)
        elif previous:  # a variable run starts: close the constant piece (empty before a leading slot)
            pieces.append(''.join(current))
            current = []
        previous = constant
    pieces.append(''.join(current))
    return pieces


_STOP = {
    'a', 'an', 'the', 'of', 'at', 'to', 'for', 'from', 'in', 'on', 'by', 'via', 'with', 'and', 'or', 'is', 'are',
    'as', 'most', 'least', 'be', 'this', 'that', 'below', 'above', 'into', 'than', 'then', 'your', 'my', 'our',
}  # fmt: skip


def _name(context: str, slot_type: SlotType, taken: set[str]) -> str:
    """Name a slot from the words just before it ('Customer: ' -> customer), else from its type."""
    lines = [line for line in context.split('\n') if line.strip()]
    words = re.findall(r'[A-Za-z][A-Za-z0-9]*', lines[-1] if lines else '')[-4:]
    base = ''
    for word in reversed(words):
        if word.lower() not in _STOP and len(word) > 1:
            base = word.lower()
            break
    if slot_type in ('email', 'url', 'date') and base not in (slot_type, ''):
        base = base if base.endswith(slot_type) else slot_type
    base = base or {'text': 'value', 'enum': 'option'}.get(slot_type, slot_type)
    if base in ('example_id', 'expected', 'split', 'demos', 'labels', 'instructions'):
        base = f'{base}_value'
    name, n = base, 2
    while name in taken:
        name, n = f'{base}_{n}', n + 1
    taken.add(name)
    return name


def _unbalanced(value: str, pairs: str = '{}[]()""') -> bool:
    return any(
        value.count(o) != value.count(c) if o != c else value.count(o) % 2 for o, c in zip(pairs[::2], pairs[1::2])
    )


def _matched_span(piece: str) -> tuple[int, int]:
    """Return the part of a constant piece after its last unmatched closing brace and before its first unmatched
    opening one ('{' and '['): '}, "b": {"c": ' -> (1, 9)."""
    start, stack = 0, []
    for k, c in enumerate(piece):
        if c in '{[':
            stack.append(k)
        elif c in '}]':
            if stack:
                stack.pop()
            else:
                start = k + 1
    end = stack[0] if stack else len(piece)
    return start, max(start, end)


def _draft(pieces: Sequence[str]) -> Template:
    return Template(tuple(pieces), tuple(Slot(f's{i}', 'text') for i in range(len(pieces) - 1)))


class _Parses:
    """The members' values under draft pieces, parsed once per distinct pieces: the steps of `_build` read the same
    draft again for every slot they do not change."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = texts
        self._done: dict[tuple[str, ...], list[dict[str, str]]] = {}

    def __call__(self, pieces: Sequence[str]) -> list[dict[str, str]]:
        key = tuple(pieces)
        if key not in self._done:
            draft = _draft(key)
            self._done[key] = [p for p in (draft.parse(t) for t in self.texts) if p is not None]
        return self._done[key]


def _balance(pieces: list[str], parses: _Parses) -> list[str]:
    """Join a slot with the next while most of its values open a bracket or quote they do not close.

    The keys of a JSON object pasted into a prompt are shared by every member, but the object is one value.
    """
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):  # braces a piece opens or closes unmatched belong to the values beside it
        start, end = _matched_span(piece)
        if i < last and end < len(piece):  # and so does a key glued to the opening brace: 'name[' of 'name[Ann]'
            while end > 0 and piece[end - 1] in _GLUE:
                end -= 1
        pieces[i] = piece[start if i > 0 else 0 : end if i < last else len(piece)]
    i = 0
    while i < len(pieces) - 2:
        parsed = parses(pieces)
        if parsed and sum(_unbalanced(p[f's{i}']) for p in parsed) > len(parsed) / 2:
            del pieces[i + 1]
        else:
            i += 1
    # a slot empty in nearly every member (a trailing space on a few) is no slot
    parsed = parses(pieces)
    for i in reversed(range(len(pieces) - 1)):
        if parsed and sum(1 for p in parsed if p[f's{i}'].strip()) < 0.1 * len(parsed):
            pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def _claim_marks(pieces: list[str], parses: _Parses) -> list[str]:
    """Give a sentence mark that follows a slot in every member to the slot's values when they are sentences.

    Every abstract ends with a full stop, so the stop looks like template text; but a template that adds a mark
    after a value shows it: some value already ends with a mark of its own ('done..', 'again.?'), or the values are
    no sentences (short, or ending in a bracket). Only when neither shows does the mark go to the value.
    """
    for i in range(len(pieces) - 1):
        after = pieces[i + 1]
        if not after or after[0] not in '.?!' or (len(after) > 1 and not after[1].isspace()):
            continue
        parsed = parses(pieces)
        values = [p[f's{i}'].rstrip() for p in parsed]
        if not values or any(v.endswith(('.', '?', '!')) for v in values):
            continue
        sentences = sum(1 for v in values if v and (v[-1].isalnum() or v[-1] in '"\')\u201d'))
        if sentences >= 0.9 * len(values) and sum(words(tokenize(v)) for v in values) >= 4 * len(values):
            pieces[i + 1] = after[1:]
    return pieces


_PLAIN = re.compile(r"[\w ,'\u2019-]+")


def _join_phrases(pieces: list[str], parses: _Parses) -> list[str]:
    """Join two slots separated only by a short plain phrase (three words at most, no line break or label) when
    both hold text of a few words: a phrase most values happen to use ('coffee shop' in reviews of coffee shops),
    not template text, which sits on lines of its own or ends in a mark ('\nHypothesis: ', ' via ')."""
    i = 1
    while i < len(pieces) - 1:
        piece = pieces[i]
        if piece.strip() and _PLAIN.fullmatch(piece) and len(_WORDS.findall(piece)) <= 3:
            parsed = parses(pieces)
            left = [len(p[f's{i - 1}'].split()) for p in parsed]  # words a space apart: an email is one
            right = [len(p[f's{i}'].split()) for p in parsed]
            if parsed and sum(left) >= 3 * len(parsed) and sum(right) >= 3 * len(parsed):
                del pieces[i]
                continue
        i += 1
    return pieces


def _build(pieces: list[str], parses: _Parses) -> tuple[Template, int]:
    """Type and name the slots of `pieces` from the members it parses; return the template and how many it parses."""
    pieces = _claim_marks(_join_phrases(_balance(list(pieces), parses), parses), parses)
    parsed = parses(pieces)
    taken: set[str] = set()
    slots = []
    for i in range(len(pieces) - 1):
        values = [p[f's{i}'] for p in parsed]
        kind, enum = infer_type(values)
        common = [v for v, _ in collections.Counter(values).most_common(5)]
        name = _name(pieces[i], kind, taken)
        slots.append(Slot(name, kind, tuple(v[:200] for v in common), tuple(enum) if enum else None))
    return Template(tuple(pieces), tuple(slots)), len(parsed)


def mine(texts: Sequence[str], *, min_support: float = MIN_SUPPORT) -> Template:
    """Return the canonical template of a family's members: constant text most of them share, slots elsewhere.

    The members are aligned against two reference members (the shortest and the median by length), each giving a
    majority template (constant: what 80% share) and a strict one (what 97% share); the template that parses the
    most members, then keeps the most constant text, wins. A single member is its own template, with no slot.

    >>> t = mine(['Order AO-1 for Ann', 'Order AO-22 for Bob Li', 'Order AO-3 for Cy'])
    >>> t.jinja
    'Order {{ order }} for {{ value }}'
    """
    texts = list(dict.fromkeys(texts))
    if not texts:
        raise ValueError('mine() needs at least one text')
    # A retry with whitespace added at its end (a space, a line break) is the same prompt: the members are mined
    # with only the trailing whitespace all of them have. Otherwise the ending they share is no common edge, and
    # where some value ends in line breaks, the line break before the ending went to every value
    # (`{{ value }}TL;DR:` for `{{ value }}\nTL;DR:`)
    trailing = [t[len(t.rstrip()) :] for t in texts]
    kept = common_suffix(trailing)
    if any(w != kept for w in trailing):
        texts = list(dict.fromkeys(t.rstrip() + kept for t in texts))
    if len(texts) == 1:
        return Template((texts[0],))
    # The text every member starts (ends) with is constant without aligning: only the middles are aligned, so a
    # long shared instruction costs nothing. Cut at whitespace, so text glued to a value stays with the value.
    head, tail = _common_edges(texts)
    middles = [t[len(head) : len(t) - len(tail)] for t in texts]
    tokens = [clipped_tokens(m, MIDDLE_TOKENS) for m in middles]
    by_length = sorted(range(len(texts)), key=lambda i: (len(tokens[i]), i))
    # the shortest member has the least value text to mistake for template text; with few members the median one
    # is tried too (a short member may miss an optional piece)
    candidates = list(dict.fromkeys([by_length[0], by_length[len(by_length) // 2]]))[: 1 if len(texts) >= 8 else 2]
    best: tuple[tuple[int, int], Template] | None = None
    parses = _Parses(texts)
    for ref in candidates:
        others = [tokens[i] for i in range(len(texts)) if i != ref][-SUPPORT_SAMPLE:]
        support = _support(tokens[ref], others)
        # the majority template (text 80% share is constant) and the strict one (only what 97% share): a value most
        # members happen to share ('via chat') is a slot in the strict one
        for floor in (min_support, SHORT_RUN_SUPPORT):
            mask = _constant_mask(tokens[ref], [x if x >= floor else 0.0 for x in support])
            mask = _drop_bare(tokens[ref], _snap(tokens[ref], mask))
            pieces = _pieces(tokens[ref], mask)
            pieces[0], pieces[-1] = head + pieces[0], pieces[-1] + tail
            template, parsed = _build(pieces, parses)
            key = (parsed, sum(len(p) for p in template.pieces))  # fits the most members, then keeps the most text
            if best is None or key > best[0]:
                best = (key, template)
    assert best is not None
    return best[1]


_OPENING_QUOTES = '"\u201c\u00ab'
_CLOSING_QUOTES = '"\u201d\u00bb'


def _common_edges(texts: Sequence[str]) -> tuple[str, str]:
    """Return the text all `texts` start with and end with, cut back to whitespace, not overlapping.

    Text glued to the values stays with them (`AO-` of `AO-12`, `AO-22`), but a quote mark glued to every value is
    the template's: `What is "{{ q }}" asking about?` quotes whatever it is given. (Cut back to whitespace, the
    quotes went to the values, and the mined template flipped between `"{{ value }}"` and `{{ value }}` with the
    members it was mined from.)
    """
    head = common_prefix(texts)
    cut = max(head.rfind(' '), head.rfind('\n'), head.rfind('\t'))
    glued = head[cut + 1 :]
    head = head[: cut + 1] if cut >= 0 else ''
    if glued and all(c in _OPENING_QUOTES for c in glued):
        head += glued
    shortest = min(len(t) for t in texts) - len(head)
    tail = common_suffix(texts)[-shortest:] if shortest > 0 else ''
    cut = min((i for i in (tail.find(' '), tail.find('\n'), tail.find('\t')) if i >= 0), default=len(tail))
    if not (0 < cut and all(c in _CLOSING_QUOTES for c in tail[:cut])):
        tail = tail[cut:]
    return head, tail


def contains_in_order(text: str, pieces: Sequence[str]) -> bool:
    """Return whether `text` contains every constant piece, in order (the fast path of a template match)."""
    at = 0
    for piece in pieces:
        found = text.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def coverage(tokens: Sequence[str], skeleton: Sequence[str], matcher: difflib.SequenceMatcher | None = None) -> float:
    """Return the share of a template's constant tokens (`skeleton`) that `tokens` contain, in order."""
    if not skeleton:
        return 0.0
    if matcher is None:
        matcher = difflib.SequenceMatcher(None, autojunk=False)
        matcher.set_seq2(list(skeleton))
    matcher.set_seq1(list(tokens))
    return sum(size for _, _, size in matcher.get_matching_blocks()) / len(skeleton)


def template_events(old: Template | None, new: Template) -> list[dict]:
    """Return what changed from `old` to `new`: created, slot added, slot removed, constant text changed.

    >>> [e['event'] for e in template_events(mine(['a 1 b', 'a 2 b']), mine(['a 1 b 5', 'a 2 b 6']))]
    ['slot added', 'constant text changed']
    """
    if old is None:
        return [{'event': 'created', 'slots': [s.name for s in new.slots]}]
    events: list[dict] = []
    old_names, new_names = [s.name for s in old.slots], [s.name for s in new.slots]
    added = [n for n in new_names if n not in old_names]
    removed = [n for n in old_names if n not in new_names]
    if added:
        events.append({'event': 'slot added', 'slots': added})
    if removed:
        events.append({'event': 'slot removed', 'slots': removed})
    if old.pieces != new.pieces:
        before, after = old.constant_text, new.constant_text
        diff = [
            op
            for op in difflib.SequenceMatcher(None, tokenize(before), tokenize(after), autojunk=False).get_opcodes()
            if op[0] != 'equal'
        ]
        if diff or len(old.pieces) != len(new.pieces):
            tb, ta = tokenize(before), tokenize(after)
            changes = [
                {'was': ''.join(tb[i1:i2])[:200], 'now': ''.join(ta[j1:j2])[:200]} for _, i1, i2, j1, j2 in diff[:5]
            ]
            events.append({'event': 'constant text changed', 'changes': changes})
    return events
