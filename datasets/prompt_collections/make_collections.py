"""Render the prompt collections: raw prompt logs whose templates were written by other people, with ground truth.

    python datasets/prompt_collections/make_collections.py --out /tmp/collections           # all, seed 1
    python datasets/prompt_collections/make_collections.py --out /tmp/c --seed 2 promptsource

The TEMPLATES are real and unchanged: promptsource's (bigscience-workshop/promptsource), FLAN's
(google-research/FLAN, v1 and v2), and the instructions Natural Instructions v1 sent to GPT-3
(allenai/natural-instructions-v1), read from the JSON files next to this script (README.md: provenance, licences).
The INPUTS are real too: banking77 queries, poem_sentiment verses, e2e_nlg meaning representations and references
and scitldr abstracts from `../shared/datasets` (read here, never copied into the repository), and the Natural
Instructions instances that came with the prompts. What this script makes up is the traffic: which template sends
when, over eight weeks from Monday 2026-09-07, with retries (exact repeats), near duplicates (a trailing space or
line break), one-offs (templates of other datasets and unused encodings, each sent once), the template edits found
in the repositories' histories (FLAN v1 -> v2, promptsource's clean-up commits) taking effect on a known day, and
drifts injected on known days (a template's traffic share x2.5, a template's inputs from a narrower distribution).

Each collection is a folder with `log.jsonl` (`timestamp`, `prompt`, `app`), `truth.jsonl` (for the same line:
`family`, `template_version`, `kind` (template, repeat, near_duplicate, one_off), `slots`, `spans`) and
`meta.json` (every template version's constant pieces and the day it took effect, and the injected drifts), the
format of the bundled log (`datasets/prompt_log*.json*`), which `bundled` copies as the fourth collection.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
#: ../shared/datasets from the project root; SHARED_DATASETS names another folder (a git worktree has no ../shared)
SHARED = Path(os.environ.get('SHARED_DATASETS') or ROOT.parent / 'shared' / 'datasets')
START = datetime.datetime(2026, 9, 7, tzinfo=datetime.timezone.utc)
DAYS = 56
EDIT_DAY = 24  # template edits take effect on this day (a Thursday of week 4)
SHARE_DAY = 28  # Monday of week 5: one template's traffic x2.5
SLOT_DAY = 35  # Monday of week 6: one template's inputs narrow
COLLECTIONS = ['promptsource', 'flan', 'natural_instructions', 'bundled']


@dataclass
class Rendered:
    """A prompt with the [start, end) span of each slot value."""

    text: str
    spans: dict[str, tuple[int, int]]

    def stripped(self) -> Rendered:
        """promptsource strips every prompt: clip the spans to what is left."""
        lead = len(self.text) - len(self.text.lstrip())
        text = self.text.strip()
        spans = {}
        for name, (s, e) in self.spans.items():
            s, e = max(s - lead, 0), min(e - lead, len(text))
            if e > s:
                spans[name] = (s, e)
        return Rendered(text, spans)


def _pieces(rendered: Rendered) -> list[str]:
    """Return the constant pieces of a rendered prompt: the text around its slot values."""
    out, at = [], 0
    for s, e in sorted(rendered.spans.values()):
        out.append(rendered.text[at:s])
        at = e
    out.append(rendered.text[at:])
    return out


# --- promptsource: Jinja2 templates rendered unit by unit, so each slot's span is known -------------------------


def _jinja_env() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.BaseLoader())
    env.globals.update(zip=zip)
    env.filters['choice'] = lambda choices: _CHOICE_RNG[0].choice(choices)
    return env


_CHOICE_RNG = [random.Random(0)]
_TAG = re.compile(r'({{.*?}}|{%.*?%})', re.DOTALL)
TEXT_VAR_LENGTH = 2048  # promptsource truncates every variable to this many characters


class JinjaTemplate:
    """A promptsource template: rendered as promptsource's `Template.apply` does (every `}}` output truncated to
    2,048 characters, the prompt stripped), one top-level unit at a time, so the output of a unit that reads an
    input field is a slot and everything else is constant text."""

    def __init__(self, jinja: str, answer_choices: list[str] | None, fields: list[str]) -> None:
        import jinja2.meta

        self.env = _jinja_env()
        self.source = jinja.replace('}}', f' | string | truncate({TEXT_VAR_LENGTH}) }}}}')
        self.answer_choices = answer_choices
        self.fields = fields
        self._meta = jinja2.meta
        self._cache: dict[str, Any] = {}

    def _reads(self, source: str) -> list[str]:
        """Return the input fields a unit reads, in the order of `fields`."""
        try:
            names = self._meta.find_undeclared_variables(self.env.parse(source))
        except Exception:  # a fragment that only parses in context: look at its names
            names = set(re.findall(r'[A-Za-z_]\w*', source))
        return [f for f in self.fields if f in names]

    def _compiled(self, source: str) -> Any:
        template = self._cache.get(source)
        if template is None:
            template = self._cache[source] = self.env.from_string(source)
        return template

    def _units(self, source: str, context: dict[str, Any], before: str) -> list[tuple[str, list[str]]]:
        """Split `source` into top-level units (source, reads an input field); an `if` whose condition holds is
        replaced by its body, split again."""
        parts = _TAG.split(source)  # literal, tag, literal, tag, ...
        units: list[tuple[str, list[str]]] = []
        i = 0
        while i < len(parts):
            part = parts[i]
            opener = re.match(r'{%-?\s*(for|if)\b(.*?)-?%}', part, re.DOTALL) if i % 2 else None
            if not opener:
                if part:
                    units.append((part, self._reads(part) if i % 2 else []))
                i += 1
                continue
            depth, j = 1, i + 1
            while depth:
                tag = re.match(r'{%-?\s*(\w+)', parts[j]) if j % 2 else None
                if tag and tag.group(1) in ('for', 'if'):
                    depth += 1
                elif tag and tag.group(1) in ('endfor', 'endif'):
                    depth -= 1
                j += 1
            if opener.group(1) == 'if':
                prefix = before + ''.join(u for u, _ in units)
                test = self._compiled(prefix + '{% if ' + opener.group(2) + ' %}\x01{% endif %}')
                if test.render(**context).endswith('\x01'):
                    units.extend(self._units(''.join(parts[i + 1 : j - 1]), context, prefix))
            else:
                block = ''.join(parts[i:j])
                units.append((block, self._reads(block)))
            i = j
        return units

    def render(self, example: dict[str, Any]) -> Rendered | None:
        context = {'label': 0, **example, 'answer_choices': self.answer_choices}  # the answer side reads a label
        units = self._units(self.source, context, '')
        text, spans, done = '', [], ''
        for unit, reads in units:
            full = self._compiled(done + unit).render(**context)
            if not full.startswith(text):
                raise ValueError(f'rendering is not prefix-stable at {unit!r}')
            out = full[len(text) :]
            if reads and out:
                if spans and spans[-1][1] == len(text):  # two slots side by side are one
                    spans[-1] = (spans[-1][0], len(full), spans[-1][2])
                else:
                    spans.append((len(text), len(full), reads[0]))
            text, done = full, done + unit
        cut = text.find('|||')
        if cut < 0:
            return None
        kept: dict[str, tuple[int, int]] = {}
        for s, e, name in spans:
            if s < cut:
                key, n = name, 2
                while key in kept:
                    key, n = f'{name}_{n}', n + 1
                kept[key] = (s, min(e, cut))
        rendered = Rendered(text[:cut], kept).stripped()
        return rendered if rendered.text else None


# --- FLAN and Natural Instructions: str.format templates ------------------------------------------------------


class FormatTemplate:
    """A template in Python's str.format syntax (FLAN's patterns); `constants` fill fields that are not inputs
    (FLAN's `options_`)."""

    def __init__(self, pattern: str, constants: dict[str, str] | None = None) -> None:
        self.pattern = pattern
        self.constants = constants or {}

    def render(self, example: dict[str, Any]) -> Rendered:
        text, spans = '', {}
        for literal, name, _, _ in string.Formatter().parse(self.pattern):
            text += literal
            if name is None:
                continue
            if name in self.constants:
                text += self.constants[name]
            else:
                value = str(example[name])
                spans[name] = (len(text), len(text) + len(value))
                text += value
        return Rendered(text, spans)


# --- inputs from ../shared/datasets ---------------------------------------------------------------------------


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding='utf-8', newline='') as f:
        return list(csv.DictReader(f))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class Inputs:
    """The real inputs of one application, and which of them a slot drift narrows to."""

    rows: list[dict[str, Any]]
    narrow: Callable[[dict[str, Any]], bool]


def shared_inputs(folder: Path = SHARED) -> dict[str, Inputs]:
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder} is missing: the collections read their inputs from ../shared/datasets')
    categories = json.loads((folder / 'banking77' / 'categories.json').read_text())
    banking = [
        {'text': r['text'], 'label': categories.index(r['category']), 'category': r['category']}
        for r in _csv(folder / 'banking77' / 'train.csv')
    ]
    labels = ['negative', 'positive', 'no_impact', 'mixed']  # the order of promptsource's answer_choices
    poems = [
        {'verse_text': r['text'], 'label': labels.index(r['label']), 'sentiment': r['label']}
        for r in _csv(folder / 'poem_sentiment' / 'train.csv')
    ]
    e2e = [
        {'meaning_representation': r['mr'], 'human_reference': r['ref']} for r in _csv(folder / 'e2e_nlg' / 'dev.csv')
    ]
    papers = [
        {'source': r['source'], 'target': r['target'], 'abstract': r['abstract']}
        for r in _jsonl(folder / 'scitldr' / 'train.jsonl')
    ]
    return {
        'banking77': Inputs(banking, lambda r: r['category'].startswith('card') or 'card' in r['category']),
        'poem_sentiment': Inputs(poems, lambda r: r['sentiment'] == 'negative'),
        'e2e_nlg': Inputs(e2e, lambda r: 'area[city centre]' in r['meaning_representation']),
        'scitldr': Inputs(papers, lambda r: 'reinforcement' in r['abstract'].lower()),
    }


# --- the traffic ----------------------------------------------------------------------------------------------


@dataclass
class Source:
    """One template of the log (or one one-off): its application, versions (first day, renderer), weight."""

    family: str
    app: str
    versions: list[tuple[int, Callable[[dict[str, Any]], Rendered | None]]]
    inputs: str
    weight: float = 1.0
    one_off: bool = False
    share_drift: bool = False
    slot_drift: bool = False
    pieces: dict[int, list[str]] = field(default_factory=dict)  # version -> constant pieces, as rendered


@dataclass
class Log:
    lines: list[dict[str, Any]] = field(default_factory=list)
    truth: list[dict[str, Any]] = field(default_factory=list)


def _words_of(text: str) -> list[str]:
    return re.findall(r'\w+', text)


def _far(a: str, b: str) -> bool:
    """Return whether two templates' texts differ in at least half of the longer one's words."""
    import difflib

    wa, wb = _words_of(a), _words_of(b)
    ops = difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes()
    changed = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != 'equal')
    return changed >= ONE_OFF_APART * max(len(wa), len(wb), 1)


def _one_offs(candidates: list[tuple[str, Any]], templates: list[str], rng: random.Random, limit: int) -> list[Any]:
    """Draw up to `limit` one-offs whose template texts differ from every template of the log, and from each other,
    in at least half their words: a one-off is a prompt no recurring template sent, not a variant of one (two
    variants sent once each would be a template of two)."""
    order = list(candidates)
    rng.shuffle(order)
    chosen: list[tuple[str, Any]] = []
    for text, item in order:
        if len(chosen) < limit and all(_far(text, t) for t in templates) and all(_far(text, c) for c, _ in chosen):
            chosen.append((text, item))
    return [item for _, item in chosen]


def _zipf(sources: list[Source], rng: random.Random) -> None:
    """Give each application's templates skewed weights (a real log has a few busy templates)."""
    by_app: dict[str, list[Source]] = {}
    for s in sources:
        if not s.one_off:
            by_app.setdefault(s.app, []).append(s)
    for group in by_app.values():
        order = list(group)
        rng.shuffle(order)
        for rank, s in enumerate(order):
            s.weight = 1.0 / (rank + 1) ** 0.7


def _render(source: Source, day: int, pool: Inputs, rng: random.Random, narrow: bool) -> tuple[int, Rendered, dict]:
    version = max(i for i, (first, _) in enumerate(source.versions) if first <= day)
    render = source.versions[version][1]
    rows = pool.rows
    if narrow:
        rows = [r for r in rows if pool.narrow(r)]
    for _ in range(200):
        row = rows[rng.randrange(len(rows))]
        rendered = render(row)
        if rendered is not None and rendered.text.strip():
            return version + 1, rendered, row
    raise ValueError(f'{source.family}: no input renders a prompt')


def simulate(sources: list[Source], pools: dict[str, Inputs], n: int, rng: random.Random) -> Log:
    """Send `n` log lines over eight weeks: template lines by weight, the one-offs once each at random times,
    retries (7%) and near duplicates (2%) of earlier lines, and the injected drifts."""
    log = Log()
    templates = [s for s in sources if not s.one_off]
    one_offs = [s for s in sources if s.one_off]
    events: list[tuple[float, Source | None]] = []
    n_template = n - len(one_offs) - int(0.09 * n)
    weights = {s.family: s.weight for s in templates}
    # the expected traffic of the share-drifted template goes x2.5 from SHARE_DAY: draw the day first, then the
    # template from the weights of that day
    for _ in range(n_template):
        at = rng.uniform(0, DAYS)
        w = [weights[s.family] * (2.5 if s.share_drift and at >= SHARE_DAY else 1.0) for s in templates]
        events.append((at, rng.choices(templates, weights=w)[0]))
    events += [(rng.uniform(0.5, DAYS - 0.5), s) for s in one_offs]
    events.sort(key=lambda e: e[0])
    sent: list[int] = []  # indexes of template lines, for retries
    out: list[tuple[float, dict, dict]] = []
    for at, source in events:
        day = int(at)
        narrow = source.slot_drift and at >= SLOT_DAY
        version, rendered, row = _render(source, day, pools[source.inputs], rng, narrow)
        source.pieces.setdefault(version, _pieces(rendered))
        kind = 'one_off' if source.one_off else 'template'
        line = {'prompt': rendered.text, 'app': source.app}
        truth = {
            'family': source.family,
            'template_version': version,
            'kind': kind,
            'slots': {k: rendered.text[s:e] for k, (s, e) in rendered.spans.items()},
            'spans': {k: list(v) for k, v in rendered.spans.items()},
        }
        out.append((at, line, truth))
        if not source.one_off:
            sent.append(len(out) - 1)
    extra = n - len(out)
    for k in range(extra):
        at, line, truth = out[rng.choice(sent)]
        later = min(at + rng.uniform(0.0001, 0.05), DAYS - 1e-6)
        if k % 9 < 7:  # a retry: the same prompt again
            out.append((later, dict(line), {**truth, 'kind': 'repeat'}))
        else:  # the same prompt with a trailing space or line break
            tail = rng.choice([' ', '\n', '\n\n'])
            out.append((later, {**line, 'prompt': line['prompt'] + tail}, {**truth, 'kind': 'near_duplicate'}))
    out.sort(key=lambda e: e[0])
    for at, line, truth in out:
        stamp = START + datetime.timedelta(days=at)
        log.lines.append({'timestamp': stamp.isoformat().replace('+00:00', 'Z'), **line})
        log.truth.append(truth)
    return log


def _meta(sources: list[Source], name: str, notes: str) -> dict[str, Any]:
    templates, drifts = {}, []
    for s in sources:
        if s.one_off:
            continue
        templates[s.family] = {
            'app': s.app,
            'versions': [
                {'from': (START + datetime.timedelta(days=first)).date().isoformat(), 'pieces': s.pieces.get(i + 1)}
                for i, (first, _) in enumerate(s.versions)
            ],
        }
        for i, (first, _) in enumerate(s.versions[1:], start=2):
            if i in s.pieces:
                day = (START + datetime.timedelta(days=first)).date().isoformat()
                drifts.append({'kind': 'edit', 'family': s.family, 'from': day, 'version': i})
        if s.share_drift:
            drifts.append({'kind': 'share', 'family': s.family, 'from': _day(SHARE_DAY)})
        if s.slot_drift:
            drifts.append({'kind': 'slot', 'family': s.family, 'from': _day(SLOT_DAY)})
    return {'collection': name, 'notes': notes, 'templates': templates, 'drifts': drifts,
            'one_offs': sum(1 for s in sources if s.one_off)}  # fmt: skip


def _day(day: int) -> str:
    return (START + datetime.timedelta(days=day)).date().isoformat()


# --- the collections --------------------------------------------------------------------------------------------

#: promptsource templates edited in the repository's history whose earlier wording the log sends until EDIT_DAY
PROMPTSOURCE_EDITS = {
    ('banking77', 'what_is_intent'),
    ('banking77', 'generate_subject_for_text'),
    ('poem_sentiment', 'question_answer_format'),
    ('e2e_nlg', 'generate_text_restaurant'),
}
_FIELDS = {
    'banking77': ['text'],
    'poem_sentiment': ['verse_text'],
    'e2e_nlg': ['meaning_representation', 'human_reference'],
    'scitldr': ['source', 'target'],
}


def _adapt(render: Callable[[dict[str, Any]], Rendered | None], app: str) -> Callable[[dict], Rendered | None]:
    if app == 'scitldr':  # promptsource reads the abstract as a list of sentences
        return lambda row: render({**row, 'source': row['source'], 'target': row['target']})
    return render


def promptsource_collection(rng: random.Random, pools: dict[str, Inputs], n: int) -> tuple[Log, dict]:
    data = json.loads((HERE / 'promptsource.json').read_text(encoding='utf-8'))
    sources: list[Source] = []
    for app, entry in data['apps'].items():
        for t in entry['templates']:
            current = JinjaTemplate(t['jinja'], t['answer_choices'], _FIELDS[app])
            versions = [(0, current.render)]
            if (app, t['name']) in PROMPTSOURCE_EDITS:
                old = t['history'][-2]
                versions = [(0, JinjaTemplate(old['jinja'], old['answer_choices'], _FIELDS[app]).render),
                            (EDIT_DAY, current.render)]  # fmt: skip
            sources.append(Source(f'{app}/{t["name"]}', app, versions, app))
    templates = [t['jinja'].split('|||')[0] for entry in data['apps'].values() for t in entry['templates']]
    one_offs = _one_offs([(t['jinja'].split('|||')[0], t) for t in data['one_offs']], templates, rng, 60)
    for k, t in enumerate(one_offs):
        template = JinjaTemplate(t['jinja'], t['answer_choices'], [t['field']])
        field_of = {'banking77': 'text', 'poem_sentiment': 'verse_text', 'e2e_nlg': 'meaning_representation',
                    'scitldr': 'abstract'}[t['app']]  # fmt: skip

        def render(row: dict, template: JinjaTemplate = template, src: str = field_of, dst: str = t['field']) -> Any:
            return template.render({dst: row[src]})

        sources.append(Source(f'one-off-{k + 1}', t['app'], [(0, render)], t['app'], one_off=True))
    _zipf(sources, rng)
    _drifts(sources, rng, share_app='poem_sentiment', slot_app='banking77')
    log = simulate(sources, pools, n, rng)
    return log, _meta(
        sources, 'promptsource', 'promptsource templates of four datasets, inputs from ../shared/datasets'
    )


def _drifts(sources: list[Source], rng: random.Random, *, share_app: str, slot_app: str | None) -> None:
    """Mark one busy template of `share_app` for the share drift and one of `slot_app` for the slot drift."""
    busy = sorted((s for s in sources if not s.one_off and len(s.versions) == 1), key=lambda s: -s.weight)
    share = next(s for s in busy if s.app == share_app)
    share.share_drift = True
    if slot_app is not None:
        slot = next(s for s in busy if s.app == slot_app and s is not share)
        slot.slot_drift = True
        slot.weight = max(slot.weight, 0.9)  # enough members a week to be tested


#: FLAN task -> (application, inputs, how a row fills the pattern's fields, options). Each application sends
#: FLAN_PER_APP of its task's patterns (drawn with the seed); its other patterns are one-offs, sent once each.
FLAN_APPS: dict[str, tuple[str, str, Callable[[dict], dict], list[str] | None]] = {
    'imdb_reviews': ('review_sentiment', 'poem_sentiment', lambda r: {'text': r['verse_text']},
                     ['negative', 'positive']),
    'sst2': ('sentence_polarity', 'poem_sentiment', lambda r: {'sentence': r['verse_text']}, ['negative', 'positive']),
    'e2e_nlg': ('restaurant_text', 'e2e_nlg', lambda r: {'meaning_representation': r['meaning_representation']}, None),
    'xsum': ('article_summary', 'scitldr', lambda r: {'text': r['abstract']}, None),
    'gigaword': ('short_summary', 'scitldr', lambda r: {'text': r['abstract']}, None),
    'fix_punct': ('punctuation', 'e2e_nlg', lambda r: {'no_punct': _no_punct(r['human_reference'])}, None),
    'true_case': ('capitalization', 'e2e_nlg', lambda r: {'lower': r['human_reference'].lower()}, None),
    'trec': ('question_typing', 'banking77', lambda r: {'text': r['text']},
             ['description', 'entity', 'abbreviation', 'human', 'numeric', 'location']),
}  # fmt: skip
FLAN_PER_APP = 4
ONE_OFF_APART = 0.5  # share of words a one-off differs in from every template and other one-off
FLAN_APART = 6  # words (and marks) at least between two patterns of one application, or one sent once
#: Patterns of other FLAN tasks sent once each, in the application whose inputs fill them.
FLAN_ONE_OFFS: dict[str, tuple[str, str, Callable[[dict], dict], list[str] | None]] = {
    'yelp_polarity_reviews': ('review_sentiment', 'poem_sentiment', lambda r: {'text': r['verse_text']},
                              ['negative', 'positive']),
    'sentiment140': ('sentence_polarity', 'poem_sentiment', lambda r: {'text': r['verse_text']},
                     ['negative', 'positive']),
    'multi_news': ('article_summary', 'scitldr', lambda r: {'text': r['abstract']}, None),
    'aeslc': ('short_summary', 'scitldr', lambda r: {'body': r['abstract']}, None),
    'dart': ('restaurant_text', 'e2e_nlg', lambda r: {'tripleset': r['meaning_representation']}, None),
    'web_nlg_en': ('restaurant_text', 'e2e_nlg', lambda r: {'input_string': r['meaning_representation']}, None),
    'word_segment': ('punctuation', 'e2e_nlg', lambda r: {'no_space': r['human_reference'].replace(' ', '')}, None),
    'ag_news_subset': ('question_typing', 'banking77', lambda r: {'title': r['text'], 'text': r['text']},
                       ['World', 'Sports', 'Business', 'Science/Tech']),
}  # fmt: skip


def _no_punct(text: str) -> str:
    """FLAN's fix_punct input: the text without punctuation."""
    return re.sub(r'[^\w\s]', '', text)


def _flan_render(pattern: str, fill: Callable[[dict], dict], options: list[str] | None) -> Callable[[dict], Any]:
    constants = {'options_': 'OPTIONS:\n- ' + '\n- '.join(options)} if options else {}
    template = FormatTemplate(pattern, constants)
    needed = {name for _, name, _, _ in string.Formatter().parse(pattern) if name} - set(constants)

    def render(row: dict) -> Rendered | None:
        values = fill(row)
        if not needed <= set(values):
            return None
        return template.render(values)

    return render


def _is_input_pattern(pattern: str, fill_fields: set[str]) -> bool:
    names = {name for _, name, _, _ in string.Formatter().parse(pattern) if name} - {'options_'}
    return bool(names) and names <= fill_fields


def flan_collection(rng: random.Random, pools: dict[str, Inputs], n: int) -> tuple[Log, dict]:
    data = json.loads((HERE / 'flan.json').read_text(encoding='utf-8'))
    sources: list[Source] = []
    spare: list[tuple[str, str, str, Callable[[dict], Any]]] = []  # (pattern, app, inputs, render) sent once
    used: list[str] = []
    for task, (app, inputs, fill, options) in FLAN_APPS.items():
        fields = set(fill(pools[inputs].rows[0]))
        kept = [p for p, _ in data['v2'][task] if _is_input_pattern(p, fields)]
        # the FLAN v1 wording a v2 pattern was edited from, sent until the edit day
        edited = _edits([p for p, _ in data['v1'].get(task, []) if _is_input_pattern(p, fields)], kept, options)
        chosen = _apart(kept, rng, options)
        for k, (pattern, _) in enumerate(data['v2'][task]):
            if pattern not in kept:
                continue
            render = _flan_render(pattern, fill, options)
            if pattern not in chosen:
                spare.append((pattern, app, inputs, render))
                continue
            used.append(pattern)
            versions = [(0, render)]
            if pattern in edited:
                versions = [(0, _flan_render(edited[pattern], fill, options)), (EDIT_DAY, render)]
            sources.append(Source(f'{task}/{k + 1}', app, versions, inputs))
    for task, (app, inputs, fill, options) in FLAN_ONE_OFFS.items():
        fields = set(fill(pools[inputs].rows[0]))
        for pattern, _ in data['v2'].get(task, []):
            if _is_input_pattern(pattern, fields):
                spare.append((pattern, app, inputs, _flan_render(pattern, fill, options)))
    picked = _one_offs([(x[0].replace('{options_}', ''), x) for x in spare], [u.replace('{options_}', '') for u in used],
                       rng, 60)  # fmt: skip
    for k, (_, app, inputs, render) in enumerate(picked):
        sources.append(Source(f'one-off-{k + 1}', app, [(0, render)], inputs, one_off=True))
    _zipf(sources, rng)
    _drifts(sources, rng, share_app='article_summary', slot_app='restaurant_text')
    log = simulate(sources, pools, n, rng)
    return log, _meta(sources, 'flan', f'FLAN v2 patterns ({FLAN_PER_APP} an application; v1 wording until the edit '
                                       'day), inputs from ../shared/datasets')  # fmt: skip


def _changed_words(a: str, b: str, options: list[str] | None) -> int:
    """Return how many words (and marks) one pattern changes from the other (inserted, deleted or replaced)."""
    import difflib

    def words(p: str) -> list[str]:
        return re.findall(r'\w+|[^\w\s]', p.replace('{options_}', 'OPTIONS: - ' + ' - '.join(options or [])))

    ops = difflib.SequenceMatcher(None, words(a), words(b), autojunk=False).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != 'equal')


def _apart(patterns: list[str], rng: random.Random, options: list[str] | None) -> list[str]:
    """Draw FLAN_PER_APP patterns no two of which are within FLAN_APART words of each other: an application does
    not send two templates that close side by side (one edited into the other is modelled by the edits)."""
    order = list(patterns)
    rng.shuffle(order)
    chosen: list[str] = []
    for p in order:
        if len(chosen) < FLAN_PER_APP and all(_changed_words(p, c, options) >= FLAN_APART for c in chosen):
            chosen.append(p)
    return chosen


def _edits(v1: list[str], v2: list[str], options: list[str] | None) -> dict[str, str]:
    """Return {v2 pattern: the v1 pattern it was edited from}: the same fields, a few words changed (1 to 10 words
    inserted, deleted or replaced), matched one to one, closest first. A pattern whose whitespace alone changed is
    matched too, and sent as it is in v2 (no edit)."""
    import difflib

    def fields(p: str) -> list[str]:
        return sorted(name for _, name, _, _ in string.Formatter().parse(p) if name)

    def words(p: str) -> list[str]:
        return re.findall(r'\w+|[^\w\s]', p.replace('{options_}', 'OPTIONS: - ' + ' - '.join(options or [])))

    pairs = []
    for new in v2:
        for old in v1:
            if old == new or fields(old) != fields(new):
                continue
            ops = difflib.SequenceMatcher(None, words(old), words(new), autojunk=False).get_opcodes()
            changed = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != 'equal')
            if changed <= 10:
                pairs.append((changed, new, old))
    out: dict[str, str] = {}
    for _, new, old in sorted(pairs):
        if new not in out and old not in out.values() and old not in v2 and new not in v1:
            out[new] = old
    return {new: old for new, old in out.items() if words(new) != words(old)}


# --- Natural Instructions v1 --------------------------------------------------------------------------------------

#: The encodings each task's log sends; the task's other encodings are its one-offs (each sent once).
NI_TEMPLATES = ['_Prompt@0_100', '_Definition_Prompt@0_100', 'Positive Examples Full Only', 'Prompt_Negative Examples']
#: The field layout of each task's instance inputs (the task authors' format: its labels are constant text).
NI_FIELDS = {
    'subtask002_quoref_answer_generation': r'Passage: (?P<passage>.*)\. \nQuestion: (?P<question>.*)',
    'subtask003_mctaco_question_generation_event_duration': r'Sentence: (?P<sentence>.*)',
    'subtask005_mctaco_wrong_answer_generation_event_duration': r'Sentence: (?P<sentence>.*) \nQuestion: (?P<question>.*)',
    'subtask008_mctaco_wrong_answer_generation_transient_stationary':
        r'Sentence: (?P<sentence>.*) \nQuestion: (?P<question>.*)',
    'subtask022_cosmosqa_passage_inappropriate_binary': r'Context: (?P<context>.*)',
    'subtask033_winogrande_answer_generation': r'Context Word: (?P<word>.*)\. \nQuestion: (?P<question>.*)',
    'subtask034_winogrande_question_modification_object':
        r'Context Word: (?P<word>.*)\. \nQuestion: (?P<question>.*) \nAnswer: (?P<answer>.*)\.',
    'subtask039_qasc_find_overlapping_words': r'Sentence1: (?P<sentence1>.*) \nSentence2: (?P<sentence2>.*)',
    'subtask040_qasc_question_generation': r'Fact: (?P<fact>.*)',
    'subtask052_multirc_identify_bad_question': r'Paragraph- (?P<paragraph>.*)\? \nQuestion: (?P<question>.*)',
}  # fmt: skip


def _ni_render(instruction: str, layout: re.Pattern[str]) -> Callable[[dict], Rendered | None]:
    head = instruction + '\ninput: '

    def render(row: dict) -> Rendered | None:
        match = layout.fullmatch(row['input'])
        if match is None:
            return None
        spans = {name: (len(head) + match.start(name), len(head) + match.end(name)) for name in layout.groupindex}
        return Rendered(head + row['input'] + '\noutput:', spans)

    return render


def ni_collection(rng: random.Random, n: int) -> tuple[Log, dict]:
    data = json.loads((HERE / 'natural_instructions_v1.json').read_text(encoding='utf-8'))
    sources: list[Source] = []
    pools: dict[str, Inputs] = {}
    k = 0
    for task, entry in data['tasks'].items():
        app = task.split('_', 1)[1]
        layout = re.compile(NI_FIELDS[task], re.DOTALL)
        pools[app] = Inputs([{'input': v} for v in entry['inputs'].values()], lambda r: True)
        by_instruction: dict[str, list[str]] = {}
        for encoding, e in sorted(entry['encodings'].items(), key=lambda kv: len(kv[1]['instruction'])):
            by_instruction.setdefault(e['instruction'], []).append(encoding)
        chosen: set[str] = set()
        for wanted in NI_TEMPLATES:  # the first (shortest) encoding of each kind
            for instruction, encodings in by_instruction.items():
                if instruction not in chosen and any(wanted in enc for enc in encodings):
                    if wanted.startswith('_') and not any(enc.startswith(wanted) for enc in encodings):
                        continue
                    chosen.add(instruction)
                    name = encodings[0].strip('_').split('@')[0].replace(' ', '_').replace('&', 'and')
                    sources.append(Source(f'{app}/{name}', app, [(0, _ni_render(instruction, layout))], app))
                    break
        spare = [(i, i) for i in by_instruction if i not in chosen]
        for instruction in _one_offs(spare, sorted(chosen), rng, 12):
            k += 1
            sources.append(Source(f'one-off-{k}', app, [(0, _ni_render(instruction, layout))], app, one_off=True))
    _zipf(sources, rng)
    _drifts(sources, rng, share_app='qasc_question_generation', slot_app=None)
    log = simulate(sources, pools, n, rng)
    return log, _meta(sources, 'natural_instructions', 'Natural Instructions v1 prompts sent to GPT-3 (10 tasks)')


def bundled() -> tuple[Log, dict]:
    """The bundled generated log (datasets/prompt_log.jsonl), one case among the others."""
    lines = _jsonl(ROOT / 'datasets' / 'prompt_log.jsonl')
    truth = _jsonl(ROOT / 'datasets' / 'prompt_log_truth.jsonl')
    meta = json.loads((ROOT / 'datasets' / 'prompt_log_templates.json').read_text(encoding='utf-8'))
    templates = {}
    for family, versions in meta['templates'].items():
        app = next((x['app'] for x, t in zip(lines, truth) if t['family'] == family), family)
        templates[family] = {
            'app': app,
            'versions': [{'from': v['from'], 'pieces': re.split(r'\{\{ \w+ \}\}', v['template'])} for v in versions],
        }
    drifts = [{'kind': 'slot', 'family': meta['drift']['family'], 'from': meta['drift']['from']},
              {'kind': 'share', 'family': meta['drift']['family'], 'from': meta['drift']['from']}]  # fmt: skip
    for family, versions in meta['templates'].items():
        for i, v in enumerate(versions[1:], start=2):
            drifts.append({'kind': 'edit', 'family': family, 'from': v['from'], 'version': i})
    log = Log([{k: x[k] for k in ('timestamp', 'prompt', 'app')} for x in lines], truth)
    one_offs = sum(1 for t in truth if t['kind'] == 'one_off')
    return log, {'collection': 'bundled', 'notes': 'generated by datasets/make_prompt_log.py', 'templates': templates,
                 'drifts': drifts, 'one_offs': one_offs}  # fmt: skip


SIZES = {'promptsource': 5000, 'flan': 5000, 'natural_instructions': 4500}


def make(name: str, seed: int = 1, pools: dict[str, Inputs] | None = None) -> tuple[Log, dict]:
    """Return one collection's log and meta, rendered with `seed`."""
    rng = random.Random(f'{name}:{seed}')
    _CHOICE_RNG[0] = random.Random(f'choice:{name}:{seed}')
    if name == 'bundled':
        return bundled()
    if name == 'natural_instructions':
        return ni_collection(rng, SIZES[name])
    pools = pools or shared_inputs()
    return (promptsource_collection if name == 'promptsource' else flan_collection)(rng, pools, SIZES[name])


def write(out: Path, names: list[str], seed: int = 1) -> None:
    pools = None
    for name in names:
        if name in ('promptsource', 'flan') and pools is None:
            pools = shared_inputs()
        log, meta = make(name, seed, pools)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / 'log.jsonl').open('w', encoding='utf-8') as f:
            f.writelines(json.dumps(x, ensure_ascii=False) + '\n' for x in log.lines)
        with (folder / 'truth.jsonl').open('w', encoding='utf-8') as f:
            f.writelines(json.dumps(x, ensure_ascii=False) + '\n' for x in log.truth)
        (folder / 'meta.json').write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding='utf-8')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('names', nargs='*', help=f'some of {COLLECTIONS} (default: all)')
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--seed', type=int, default=1)
    args = parser.parse_args()
    unknown = set(args.names) - set(COLLECTIONS)
    if unknown:
        parser.error(f'unknown collection(s) {sorted(unknown)}; choose from {COLLECTIONS}')
    write(args.out, args.names or COLLECTIONS, args.seed)


if __name__ == '__main__':
    main()
