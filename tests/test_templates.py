"""The template miner (workspace/templates.py): slot types, templates recovered, Jinja round trips, events."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT

from udfs.render import render
from workspace.mining.assign import _more_words
from workspace.mining.canonical import clip, clipped_tokens, infer_type, mine, template_events, tokenize, words


@pytest.mark.parametrize(
    ('values', 'expected'),
    [
        (['12', '7', '300', '-4'], ('integer', None)),
        (['1,200', '35', '4,000,000'], ('integer', None)),
        (['3.5', '12.00', '-0.25', '1e-3'], ('number', None)),
        (['2026-09-07', '2026-10-12T08:00:00Z', '2026-01-02 10:30'], ('date', None)),
        (['07/09/2026', '12/31/2025'], ('date', None)),
        (['7 September 2026', 'March 3, 2025'], ('date', None)),
        (['ann@mail.example', 'bo.li+x@shop.example.org'], ('email', None)),
        (['https://shop.example/p/1?ref=2', 'http://a.example', 'www.example.com/x'], ('url', None)),
        (['AO-48213', 'AO-11111', 'AO-99812'], ('id', None)),
        (['evt_0a1b2c3d4e', 'evt_9f8e7d6c5b', 'evt_000000001a'], ('id', None)),
        (['chat', 'email', 'chat', 'phone', 'email', 'chat'], ('enum', ['chat', 'email', 'phone'])),
        (['French', 'German', 'French', 'German'], ('enum', ['French', 'German'])),
        (['Where is my parcel?', 'I was charged twice.', 'Login fails'], ('text', None)),
        (['12', '7', 'N/A'], ('text', None)),  # one in three does not fit: not an integer
        ([str(i) for i in range(40)] + ['n/a'], ('integer', None)),  # one in 41 may be messy
        (['', '  '], ('text', None)),
        (['ご注文の商品', '会議は午後3時'], ('text', None)),
    ],
)
def test_infer_type(values, expected):
    assert infer_type(values) == expected


def test_tokens_join_back_to_the_text():
    text = 'Hi Zoë,\n\n{"a": [1, 2]} --- 会議は午後3時\tok'
    assert ''.join(tokenize(text)) == text
    assert '---' in tokenize('a --- b')


# texts with every kind of token: words with and without '_', digits and other alphanumerics, runs of one mark
TOKEN_KINDS = [
    'Order AO-12 (paid)',
    'snake_case and __dunder__ _lead trail_ a_b_c',
    'Zoë ½ ² 会議は午後3時 — done!!!?? ok',
    '  \n\n\t---...  x',
    '',
]


def _word_tokens(tokens: list[str]) -> int:  # the definition: a token that starts with a word character
    return sum(1 for t in tokens if t[:1].isalnum() or t[:1] == '_')


def test_words_are_the_tokens_of_word_characters_whatever_they_hold():
    for text in TOKEN_KINDS + [' '.join(TOKEN_KINDS) * 3]:
        tokens = tokenize(text)
        assert words(tokens) == _word_tokens(tokens), text
        for start in range(len(tokens) + 1):  # the gap test counts the words of a slice up to a limit
            for end in range(start, min(len(tokens), start + 12) + 1):
                for limit in (0, 1, 3):
                    assert _more_words(tokens, start, end, limit) == (_word_tokens(tokens[start:end]) > limit)


def test_a_long_texts_head_and_tail_tokens_are_those_of_the_whole_text():
    """Mining aligns the head and tail of a long member's tokens; they are read from the ends of the text only."""
    runs = ['word', ' ', 'x' * 3000, '!!!', '\n\n', 'snake_case', '?', '   ', 'é²']
    texts = [
        ' '.join(TOKEN_KINDS) * 200,  # far longer than the windows read
        'a' * 20_000 + ' b',  # a word longer than a window: read whole
        '!' * 10_000 + 'x y ' * 3000,
        ''.join(runs[(i * 7) % len(runs)] for i in range(5000)),
    ]
    for text in texts:
        for cut in (0, 1, 5, 333):
            middle = text[cut : len(text) - cut]
            for limit in (400, 401, 60):
                assert clipped_tokens(middle, limit) == clip(tokenize(middle), limit)


def test_a_retry_with_a_line_break_added_keeps_the_ending_every_member_shares():
    """A member sent again with a space or line break at its end is the same prompt: the ending all members share
    stays template text, with the line break before it (it went to the values before: `{{ value }}TL;DR:`, and
    every value read back ended with a line break); trailing whitespace every member has stays in the template."""
    abstracts = [
        'We study sparse attention in long documents and show gains on three benchmarks.',
        'We propose a simple baseline for few-shot segmentation that beats prior work.',
        'This paper analyzes the loss landscape of deep residual networks at scale.\n\n',  # blank lines after it
        'We introduce a dataset of annotated proofs and evaluate four provers on it.',
    ]
    texts = [f'{a}\nTL;DR:' for a in abstracts]
    for retried in (texts[0] + '\n', texts[2] + ' ', texts[3] + '\n\n'):
        template = mine([*texts, retried])
        assert template.jinja == '{{ value }}\nTL;DR:'
        assert [template.parse(t) for t in texts] == [{'value': a} for a in abstracts]
    template = mine([t + '\n' for t in texts] + [texts[1] + '\n\n'])
    assert template.jinja == '{{ value }}\nTL;DR:\n'


SUPPORT = (
    'You are a support agent.\nCustomer: {name}\nOrder: {order} (placed {date})\nMessage:\n{message}\n\nReply briefly.'
)
MESSAGES = [
    'Hi,\nmy parcel is late.\nThanks.',
    'The zipper broke. Can I get a replacement?',
    'I was charged twice — once by card and once through PayPal.',
    'Where is my order?? The tracking says "label created".',
    'Two items were missing from the box.',
    'Could you change the address to 12 Rue des Lilas, Lyon?',
]


def _support(i: int) -> tuple[str, dict[str, str]]:
    values = {
        'name': ['Anna Müller', 'José García', 'Mei Chen', 'Olu Okafor', 'Søren Dubois', 'Kenji Sato'][i % 6],
        'order': f'AO-{10000 + 137 * i}',
        'date': f'2026-09-{1 + i % 28:02d}',
        'message': MESSAGES[i % len(MESSAGES)],
    }
    return SUPPORT.format(**values), values


def test_mine_recovers_the_template_and_its_typed_slots():
    texts = [_support(i)[0] for i in range(24)]
    template = mine(texts)
    assert template.jinja == (
        'You are a support agent.\nCustomer: {{ customer }}\nOrder: {{ order }} (placed {{ date }})\n'
        'Message:\n{{ message }}\n\nReply briefly.'
    )
    assert [(s.name, s.type) for s in template.slots] == [
        ('customer', 'enum'),  # six names, each four times
        ('order', 'id'),
        ('date', 'date'),
        ('message', 'text'),
    ]
    for i in range(24):
        text, values = _support(i)
        parsed = template.parse(text)
        assert list(parsed.values()) == [values['name'], values['order'], values['date'], values['message']]
        assert render(template.jinja, parsed) == text  # the Jinja template renders each member back exactly


def test_a_json_object_in_a_prompt_is_one_slot_and_braces_render_literally():
    events = [
        {
            'event_id': f'evt_{i:04x}',
            'type': ['signup', 'refund'][i % 2],
            'user_id': 1000 + i,
            'meta': {'ip': f'10.0.0.{i}'},
        }
        for i in range(12)
    ]
    texts = [
        f'Extract the fields from this {{{{ event }}}} JSON.\nEvent:\n{json.dumps(e, indent=2 if i % 2 else None)}\nYAML:'
        for i, e in enumerate(events)
    ]
    template = mine(texts)
    assert [s.name for s in template.slots] == ['event']
    assert template.pieces[0].endswith('Event:\n') and '{{ event }}' in template.pieces[0]
    for text in texts:
        assert render(template.jinja, template.parse(text)) == text


def test_one_member_is_its_own_template_and_odd_text_still_renders():
    odd = 'Print {{ name }} and {% raw %} as they are: {"a": {"b": 1}}'
    template = mine([odd])
    assert template.slots == () and render(template.jinja, {}) == odd


def test_template_events():
    old = mine(['Hello Ann, order 1.', 'Hello Bob, order 22.', 'Hello Cy, order 3.'])
    new = mine(['Hello Ann, order 1 by mail.', 'Hello Bob, order 22 by phone.', 'Hello Cy, order 3 by mail.'])
    assert template_events(None, old) == [{'event': 'created', 'slots': [s.name for s in old.slots]}]
    events = template_events(old, new)
    assert [e['event'] for e in events] == ['slot added', 'constant text changed']
    assert events[0]['slots'] == ['value']  # 'by' is a stop word: the slot is named by its type
    assert template_events(new, old)[0] == {'event': 'slot removed', 'slots': ['value']}
    assert template_events(old, old) == []


def test_a_quote_around_every_value_is_template_text_whatever_the_members():
    """`"{text}"\\nHow would ...` and `What is "{q}" asking about?` quote whatever they are given: the quotes are
    the template's, with any six members (some values hold quotes of their own), not the values'."""
    verses = [
        'wind was cold upon a hill',
        "'tis autumn, season of mists",
        'he said "go" and left',
        'one light burned low westward',
        'and "never" came their call again',
        'sea, sea, open sea!"',
        '"hark," herald angels sing',
        'over rivers and through woods',
        'my heart is like a singing bird',
        'i wandered lonely as clouds do',
        'woods are lovely, dark and deep',
        'so much depends upon red wheels',
    ]
    for prefix, suffix in (('"', '"\nHow would the sentiment of this sentence be perceived?'),
                           ('What is "', '" asking about?\n\nOPTIONS:\n- entity\n- human')):  # fmt: skip
        texts = [f'{prefix}{v}{suffix}' for v in verses]
        for start in range(0, 7, 3):
            template = mine(texts[start : start + 6])
            assert template.pieces == (prefix, suffix), (start, template.jinja)
            for text, verse in zip(texts[start : start + 6], verses[start : start + 6]):
                assert list(template.parse(text).values()) == [verse]


def test_a_label_on_a_line_of_its_own_between_long_values_stays_template_text():
    """Natural Instructions' quoref prompts: `...Passage: {passage} \\nQuestion: {question}\\noutput:`. Mined from 32
    members whose passages run to hundreds of words, the label between the two slots is the template's: it was
    dropped when one of the dozen alignments missed it, and the two slots became one."""
    import sys

    sys.path.insert(0, str(ROOT / 'datasets' / 'prompt_collections'))
    import make_collections

    log, _ = make_collections.make('natural_instructions', seed=1)
    texts = list(
        dict.fromkeys(
            x['prompt']
            for x, t in zip(log.lines, log.truth)
            if t['family'] == 'quoref_answer_generation/Definition_Prompt' and t['kind'] == 'template'
        )
    )
    for start in (0, 32):
        template = mine(texts[start : start + 32])
        assert template.pieces[-2] == ' \nQuestion: ', template.pieces[-2:]
        for text in texts[start : start + 32]:
            passage, question = text.rsplit('Passage: ', 1)[1].rsplit(' \nQuestion: ', 1)
            values = list(template.parse(text).values())[-2:]
            # the question's own mark may be read as the template's (`?\noutput:`): every question ends with one
            asked = question.removesuffix('\noutput:')
            assert values[0] == passage and values[1] in (asked, asked[:-1])
