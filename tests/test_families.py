"""Prompt families end to end on Pixeltable: ingest and dedup, incremental assignment, merge and split, similarity,
versions and datasets from a family, and every bad input."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import ROOT

from workspace import errors
from workspace.mining.families import merge_families, split_family
from workspace.storage import tables

LOG = ROOT / 'datasets' / 'prompt_log.jsonl'


def _lines(n: int, start: int = 0) -> list[str]:
    with LOG.open(encoding='utf-8') as f:
        return f.readlines()[start : start + n]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / 'log.jsonl'
    path.write_text(''.join(_lines(400)), encoding='utf-8')
    return path


def _assigned(ws) -> dict[str, tuple]:
    from workspace.storage import tables

    raw = tables.raw_prompts()
    rows = raw.select(raw.prompt_hash, raw.family_id, raw.confidence, raw.reason, raw.seq).collect()
    return {r['prompt_hash']: (r['family_id'], r['confidence'], json.dumps(r['reason']), r['seq']) for r in rows}


def test_ingest_dedups_and_reingest_adds_nothing(ws, log_file):
    lines = [json.loads(x) for x in _lines(400)]
    report = ws.ingest_prompts(log_file, meta=['app', 'user'], expected='response')
    assert report.lines == report.new_lines == 400
    assert report.new_prompts == len({x['prompt'] for x in lines}) < 400  # retries are one prompt with a count
    again = ws.ingest_prompts(log_file, meta=['app', 'user'], expected='response')
    assert (again.new_lines, again.new_prompts, again.already_ingested) == (0, 0, 400)
    fams = ws.families()
    assert fams['traffic'].sum() == 400 and fams['size'].sum() == report.new_prompts
    assert fams['share'].sum() == pytest.approx(1.0)
    # a prompt seen several times has its count and first/last seen
    counts = pd.Series([x['prompt'] for x in lines]).value_counts()
    repeated = counts.index[0]
    found = ws.similar(repeated, k=1)
    assert found['prompt'][0] == repeated and found['occurrences'][0] == counts.iloc[0]
    assert found['score'][0] == pytest.approx(1.0, abs=1e-4)


def test_appending_assigns_only_new_prompts_and_leaves_old_rows_untouched(ws, log_file):
    ws.ingest_prompts(log_file, meta=['app'])
    before = _assigned(ws)
    with log_file.open('a', encoding='utf-8') as f:
        f.writelines(_lines(300, start=400))
    report = ws.ingest_prompts(log_file, meta=['app'])
    assert report.new_lines == 300 and report.already_ingested == 400
    after = _assigned(ws)
    for h, row in before.items():
        assert after[h] == row
    new = set(after) - set(before)
    assert len(new) == report.new_prompts > 0
    assert min(after[h][3] for h in new) == len(before)  # assigned after every old row
    # the new prompts joined the existing template families (few one-offs start new ones)
    joined = sum(report.joined.values())
    assert joined >= 0.9 * report.new_prompts


def test_an_ingest_leaves_the_cycle_collector_as_it_found_it(ws, log_file, tmp_path):
    """An ingest pauses Python's cycle collector for each step (a batch allocates hundreds of thousands of objects)
    and gives it back as it was: on after it, and still off when the caller had turned it off."""
    import gc

    lines = log_file.read_text(encoding='utf-8').splitlines(keepends=True)
    first, second = tmp_path / 'first.jsonl', tmp_path / 'second.jsonl'
    first.write_text(''.join(lines[:200]), encoding='utf-8')
    second.write_text(''.join(lines[200:]), encoding='utf-8')
    was = gc.isenabled()
    try:
        gc.enable()
        assert ws.ingest_prompts(first, meta=['app']).new_lines == 200
        assert gc.isenabled()
        gc.disable()
        assert ws.ingest_prompts(second, meta=['app']).new_lines == len(lines) - 200
        assert not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()


def test_a_journaled_plan_reads_back_as_written_with_or_without_zstd(monkeypatch):
    """A batch's plan is stored compressed with zstd; a pyarrow without zstd stores it deflated (and says what to
    install when it meets a plan it cannot read), and both read back the same plan."""
    from workspace.errors import WorkspaceError
    from workspace.mining import prompt_log

    plan = {'raw': [{'prompt': 'Résumé:\n{{ x }} — 会議', 'confidence': 0.8125, 'reason': {'how': 'parsed'}}],
            'families': [{'total': [0.1, -2.5e-08, 3.0]}], 'moves': [], 'seen': [], 'n': {1: 'int key'}}  # fmt: skip
    expected = {**plan, 'n': {'1': 'int key'}}  # keys are text in JSON, as json.dumps writes them
    packed = prompt_log._pack(plan)
    assert packed.startswith('zstd+base64:') and prompt_log._unpack(packed) == expected
    monkeypatch.setattr(prompt_log, '_zstd', lambda: None)
    deflated = prompt_log._pack(plan)
    assert deflated.startswith('zlib+base64:') and prompt_log._unpack(deflated) == expected
    with pytest.raises(WorkspaceError, match='zstd, which this pyarrow lacks; install'):
        prompt_log._unpack(packed)


def test_families_match_the_truth_and_give_reasons(ws, log_file):
    from workspace.mining.prompt_log import prompt_hash

    ws.ingest_prompts(log_file)
    truth = [json.loads(x) for x in (ROOT / 'datasets' / 'prompt_log_truth.jsonl').open(encoding='utf-8')][:400]
    lines = [json.loads(x) for x in _lines(400)]
    true_family = {prompt_hash(x['prompt']): t['family'] for x, t in zip(lines, truth)}
    big = ws.families(min_size=10)
    assert len(big) == 7  # the seven templates
    for family_id in big['family_id']:
        members = ws.get_family(family_id).members()
        names = {true_family[h] for h in members['prompt_hash']}
        assert len(names) == 1, f'{family_id} mixes {names}'
        joined = members[members['confidence'] < 1.0]
        for reason in members['reason'][1:]:
            assert 'nearest_members' in reason or 'new_family' in reason
        assert (members['confidence'] > 0.5).all() and len(joined) <= len(members)
    router = next(f for f in big['family_id'] if 'Route the support ticket' in (ws.get_family(f).jinja))
    slots = ws.get_family(router).slots()
    assert dict(zip(slots['name'], slots['type'])) == {
        'ticket': 'id',
        'option': 'enum',
        'email': 'email',
        'date': 'date',
        'value': 'text',
    }


def test_merge_and_split_are_recorded(ws, log_file):
    ws.ingest_prompts(log_file)
    big = list(ws.families(min_size=10)['family_id'])
    a, b = ws.get_family(big[0]), ws.get_family(big[1])
    size_a, size_b = a.size, b.size
    merged = merge_families(a, b, note='test merge')
    assert merged.size == size_a + size_b
    with pytest.raises(errors.FamilyError, match='was merged into'):
        ws.get_family(b.id)
    first_b = b.id  # the split takes b's members back by their text
    pattern = ws.get_family(a.id).members().iloc[-1]['prompt'][:30]
    members = ws.get_family(a.id).members()
    moved_texts = members[members['prompt'].str.startswith(pattern)]
    new = split_family(a.id, '^' + __import__('re').escape(pattern), note='test split')
    assert new.size == len(moved_texts) and new.size + ws.get_family(a.id).size == size_a + size_b
    history = ws.get_family(a.id).history()
    actions = [e[0]['event'] for what, e in zip(history['what'], history['events']) if what in ('merge', 'split')]
    assert actions == ['merge', 'split']
    assert first_b in ws.families(include_merged=True)['family_id'].tolist()
    log = ws.audit(kind='family')  # and both are in the workspace's audit log, with who and when
    assert list(log['kind']) == ['family.split', 'family.merged'] and set(log['subject']) == {a.id}
    assert list(log['note']) == ['test split', 'test merge'] and log['actor'].notna().all()


def test_to_version_and_to_dataset(ws, log_file):
    ws.ingest_prompts(log_file, expected='response')
    big = ws.families(min_size=10)
    router = next(f for f in big['family_id'] if 'Route the support ticket' in ws.get_family(f).jinja)
    family = ws.get_family(router)
    version = family.to_version(
        'router_from_log', model='local', output=ws.choice(['billing', 'shipping', 'technical'])
    )
    assert version.template == family.jinja and version.meta['family_id'] == router
    data = family.to_dataset('router_log')
    assert set(data.inputs) == set(family.slots()['name'])
    rows = data.rows()
    assert {r['expected'] for r in rows} <= {'billing', 'shipping', 'technical'}
    member = family.members().iloc[0]
    example = next(r for r in rows if r['example_id'] == member['prompt_hash'])
    assert version.render({k: example[k] for k in data.inputs}) == member['prompt']
    # a family whose log has no responses cannot make a dataset: the error says what to provide
    translation = next(f for f in big['family_id'] if 'Translate the text' in ws.get_family(f).jinja)
    with pytest.raises(errors.DatasetError, match="expected='<column of the logged response>'"):
        ws.get_family(translation).to_dataset('translations')


def test_similar_among_versions_and_outputs(ws):
    v = ws.create_version('greeter', template='Say hello to {{ name }} in French.')
    ws.create_version('router', template='Route the ticket: {{ text }}\nTeam:')
    found = ws.similar('route this support ticket to a team', k=2, among='versions')
    assert list(found['version_id']) == ['router:v1', v.id] and found['score'][0] > found['score'][1]
    assert ws.similar('anything', among='outputs').empty  # no answers yet
    with pytest.raises(ws.WorkspaceError, match="among='docs' is not one of"):
        ws.similar('x', among='docs')
    with pytest.raises(ws.WorkspaceError, match='non-empty text'):
        ws.similar('  ')


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding='utf-8')
    return path


@pytest.mark.parametrize(
    ('name', 'content', 'kwargs', 'message'),
    [
        ('missing.jsonl', None, {}, 'does not exist'),
        (
            'a.jsonl',
            '{"prompt": "hi", "timestamp": "2026-09-07T00:00:00Z"}\nnot json\n',
            {},
            'a.jsonl: line 2 is not valid JSON',
        ),
        (
            'b.jsonl',
            '{"text": "hi", "timestamp": "2026-09-07"}\n',
            {},
            "no column 'prompt' \\(given as text\\).*Its columns are: text, timestamp",
        ),
        ('c.jsonl', '{"prompt": "hi"}\n', {}, "no column 'timestamp' \\(given as at\\)"),
        ('d.jsonl', '{"prompt": "  ", "timestamp": "2026-09-07"}\n', {}, 'd.jsonl: line 1 has an empty prompt'),
        (
            'e.jsonl',
            '{"prompt": "hi", "timestamp": "last tuesday"}\n',
            {},
            "line 1: timestamp 'last tuesday' is not a time; use ISO 8601",
        ),
        (
            'f.jsonl',
            '{"prompt": {"role": "user"}, "timestamp": "2026-09-07"}\n',
            {},
            'is a JSON dict, not the prompt text',
        ),
        ('g.csv', 'prompt,timestamp\nhi,2026-09-07\n', {'meta': ['app']}, "no column 'app' \\(given as meta\\)"),
        ('h.txt', 'hello\n', {}, "unknown file type '.txt'"),
        ('i.csv', 'prompt,timestamp\n', {}, 'has no prompts'),
        (
            'j.jsonl',
            '{"prompt": "fine", "timestamp": "2026-09-07"}\n{"prompt": "hi\\u0000there", "timestamp": "2026-09-07"}\n',
            {},
            r"j.jsonl: line 2, column 'prompt', holds a NUL byte \(\\x00\), which cannot be stored in text; remove it",
        ),
        (
            'k.jsonl',
            '{"prompt": "hi", "timestamp": "2026-09-07", "user": "a\\ud800b"}\n',
            {'meta': ['user']},
            r'line 1: a meta value has a lone surrogate \(\\ud800\)',
        ),
        (
            'l.jsonl',
            '{"prompt": "hi", "timestamp": "2026-09-07"}\n',
            {'app': 'service'},
            "no column 'service' \\(given as app\\)",
        ),
    ],
)
def test_bad_input_is_refused_and_loses_nothing(ws, log_file, tmp_path, name, content, kwargs, message):
    ws.ingest_prompts(log_file)
    before = ws.families()
    path = tmp_path / name if content is None else _write(tmp_path, name, content)
    with pytest.raises(ws.WorkspaceError, match=message):
        ws.ingest_prompts(path, **kwargs)
    after = ws.families()
    pd.testing.assert_frame_equal(before, after)


def test_dataframe_source_without_times_and_family_errors(ws):
    frame = pd.DataFrame({'prompt': [f'Summarize ticket T-{i}: the parcel is late by {i} days.' for i in range(6)]})
    report = ws.ingest_prompts(frame, at=None, source_name='frame')
    assert report.new_prompts == 6 and len(report.new_families) == 1
    assert ws.ingest_prompts(frame, at=None, source_name='frame').new_lines == 6  # no time: each call is new lines
    family = ws.get_family(report.new_families[0])
    assert family.size == 6 and family.jinja.startswith('Summarize ticket {{ ticket }}')
    with pytest.raises(errors.FamilyError, match="no family 'fam-nope'"):
        ws.get_family('fam-nope')
    with pytest.raises(errors.FamilyError, match='not a valid regular expression'):
        family.split('(')
    with pytest.raises(errors.FamilyError, match='every member'):
        family.split('Summarize')
    with pytest.raises(errors.FamilyError, match='into itself'):
        family.merge(family)
    with pytest.raises(errors.FamilyError, match="window 'month'"):
        ws.drift(family, window='month')


def test_guardrail_rules_check_a_familys_logged_prompts(ws, log_file):
    ws.ingest_prompts(log_file)
    router = next(
        ws.get_family(f)
        for f in ws.families(min_size=10)['family_id']
        if 'Route the support ticket' in ws.get_family(f).jinja
    )
    ws.set_rule('no_emails', 'regex', stage='prompt', pattern=r'[\w.]+@[\w.]+')  # the log uses .example domains
    found = router.violations()
    members = router.members().set_index('prompt_hash')
    assert len(found) > 0 and set(found['rule']) == {'no_emails'}
    for _, v in found.head(5).iterrows():
        start, end = v['span']
        assert members.loc[v['prompt_hash'], 'prompt'][start:end] == v['match'] and '@' in v['match']
    assert router.violations(rules=['another_rule']).empty


def test_an_application_is_a_hard_boundary(ws):
    """The same template sent by two applications makes two families: no family spans two applications."""
    rows = [
        {
            'prompt': f'Summarize ticket T-{i}: the parcel is late by {i} days and the customer is upset.',
            'timestamp': f'2026-09-07T{i % 24:02d}:00:00Z',
            'app': 'helpdesk' if i % 2 else 'billing',
        }
        for i in range(40)
    ]
    report = ws.ingest_prompts(pd.DataFrame(rows), source_name='two apps')
    assert report.new_prompts == 40 and len(report.new_families) == 2
    raw = tables.raw_prompts()
    apps: dict[str, set[str]] = {}
    for r in raw.select(raw.family_id, raw.app).collect():
        apps.setdefault(r['family_id'], set()).add(r['app'])
    assert sorted(map(sorted, apps.values())) == [['billing'], ['helpdesk']]
    for family_id in apps:
        assert (
            ws.get_family(family_id).jinja
            == 'Summarize ticket {{ ticket }}: the parcel is late by {{ late }} days and the customer is upset.'
        )


SHORT_TEMPLATES = {
    'support': [
        'Summarize ticket {n} for customer {name}',
        'Summarize ticket {n} in one short sentence',
        '{name} wants a refund for order number {n}',
        'Classify the urgency of this message: {phrase}',
    ],
    'travel': [
        'What is the weather like in {city} in {month}?',
        'Suggest three names for a cafe in {city} that serves {phrase}',
        'Plan a trip of {days} days to {city} for {name}',
    ],
}


def test_short_templates_form_one_family_each(ws):
    """Short templates (one to three slots at the start, middle or end: numbers, names, short phrases), several
    per application and some sharing their first words, each make one family with their slots; one-offs stay
    alone."""
    import random
    import re

    rng = random.Random(7)
    values = {
        'n': lambda: str(rng.randint(1000, 9999)),
        'days': lambda: str(rng.randint(2, 14)),
        'name': lambda: rng.choice(['Ann', 'Bob', 'Carla', 'Dmitri', 'Eve', 'Farid', 'Grace', 'Hiro', 'Ines']),
        'city': lambda: rng.choice(['Paris', 'Lima', 'Oslo', 'Cairo', 'Delhi', 'Quito', 'Perth', 'Accra', 'Rome']),
        'month': lambda: rng.choice(['May', 'June', 'July', 'March', 'October']),
        'phrase': lambda: rng.choice(
            [
                'the food was cold',
                'my card was charged twice!',
                'green tea',
                'fresh bread and soup',
                'the app crashes on start',
                'a parcel never arrived',
                'cheap coffee',
                'please call me back today',
            ]
        ),  # fmt: skip
    }
    truth: dict[str, str] = {}
    for _ in range(160):
        app = rng.choice(sorted(SHORT_TEMPLATES))
        template = rng.choice(SHORT_TEMPLATES[app])
        truth.setdefault(re.sub(r'\{(\w+)\}', lambda m: values[m.group(1)](), template), template)
    one_offs = ['List the open incidents of this week by severity', 'Which airline lost the most bags last year?']
    rows = [
        {'prompt': p, 'timestamp': f'2026-03-{1 + i // 8:02d}T{i % 8:02d}:00:00Z', 'app': a}
        for i, (p, a) in enumerate(
            [(p, next(a for a, ts in SHORT_TEMPLATES.items() if t in ts)) for p, t in truth.items()]
        )
    ]
    rows.insert(30, {'prompt': one_offs[0], 'timestamp': rows[30]['timestamp'], 'app': 'support'})
    rows.insert(60, {'prompt': one_offs[1], 'timestamp': rows[60]['timestamp'], 'app': 'travel'})
    ws.ingest_prompts(rows)

    raw = tables.raw_prompts()
    family_of = {r['prompt']: r['family_id'] for r in raw.select(raw.prompt, raw.family_id).collect()}
    by_template: dict[str, set[str]] = {}
    for prompt, template in truth.items():
        by_template.setdefault(template, set()).add(family_of[prompt])
    assert all(len(f) == 1 for f in by_template.values()), by_template
    assert len({next(iter(f)) for f in by_template.values()}) == len(by_template)  # one family per template
    for template, (family_id,) in by_template.items():
        mined = re.sub(r'\{\{ \w+ \}\}', '{}', ws.get_family(family_id).jinja)
        assert mined == re.sub(r'\{\w+\}', '{}', template)
    sizes = ws.families().set_index('family_id')['size']
    assert [sizes[family_of[p]] for p in one_offs] == [1, 1]


def _partition() -> tuple[dict[str, str], set[frozenset[str]]]:
    raw = tables.raw_prompts()
    family_of = {r['prompt_hash']: r['family_id'] for r in raw.select(raw.prompt_hash, raw.family_id).collect()}
    groups: dict[str, set[str]] = {}
    for h, f in family_of.items():
        groups.setdefault(f, set()).add(h)
    return family_of, {frozenset(g) for g in groups.values()}


def test_a_real_log_ingested_in_two_parts_gives_the_families_of_one_ingest(ws, tmp_path):
    """A real log (promptsource's e2e_nlg templates with the dataset's references) ingested in two parts gives the
    families of one ingest: the second part reads what the first stored (an application's latest prompts with the
    families they were assigned to, young families' first and last words in the order they were indexed) as one
    ingest had them in memory. Earlier prompts move only by the merges and splits one ingest makes too."""
    import sys

    import pixeltable as pxt

    from workspace import config

    sys.path.insert(0, str(ROOT / 'datasets' / 'prompt_collections'))
    import make_collections

    if not make_collections.SHARED.is_dir():
        pytest.skip(f'{make_collections.SHARED} is absent: the collection renders its inputs from it')
    log, _ = make_collections.make('promptsource', seed=1)
    lines = [json.dumps(x) + '\n' for x in log.lines if x['app'] == 'e2e_nlg'][:200]
    path = tmp_path / 'log.jsonl'
    path.write_text(''.join(lines), encoding='utf-8')
    ws.ingest_prompts(path)
    _, whole = _partition()

    pxt.drop_dir(config.ROOT_DIR, force=True)
    path.write_text(''.join(lines[:100]), encoding='utf-8')
    ws.ingest_prompts(path)
    first, _ = _partition()
    path.write_text(''.join(lines), encoding='utf-8')
    report = ws.ingest_prompts(path)
    after, parts = _partition()
    assert report.already_ingested == 100 and report.new_lines == 100
    assert parts == whole
    history = tables.family_history()
    linked: dict[str, set[str]] = {}  # families joined by a recorded merge or split, one step or several
    for r in history.select(history.family_id, history.other_id).collect():
        linked.setdefault(r['family_id'], set()).add(r['other_id'])
        linked.setdefault(r['other_id'], set()).add(r['family_id'])
    for h, family in first.items():
        reach, todo = {family}, [family]
        while todo:
            for other in linked.get(todo.pop(), ()):
                if other not in reach:
                    reach.add(other)
                    todo.append(other)
        assert after[h] in reach  # an earlier prompt moves only by the merges and splits assignment records


def test_drift_flags_a_share_change_but_not_a_template_appearing_or_retired(ws):
    """A template whose traffic quadruples (and stays so the next week) is flagged in that week; a template that
    starts sending on a Thursday (its first week is part of a week) is a template appearing, and one that stops on a
    Tuesday a template retired: neither is drift of its share, and neither is the steady one."""
    import datetime
    import random

    rng = random.Random(3)
    nouns = ['cat', 'parcel', 'invoice', 'river', 'lamp', 'garden', 'engine', 'letter', 'bridge', 'kettle']
    templates = {
        'steady': lambda: (
            f'Translate to French: the {rng.choice(nouns)} is on the {rng.choice(nouns)} number '
            f'{rng.randint(1, 99_999)}.'
        ),
        'appears': lambda: f'Write a haiku about a quiet {rng.choice(nouns)} seen on day {rng.randint(1, 99_999)}.',
        'grows': lambda: (
            f'Route this support ticket to a team: order {rng.randint(1, 99_999)} for '
            f'{rng.choice(["Ann", "Bob", "Carla", "Dmitri"])} was {rng.choice(["late", "lost", "broken"])}.'
        ),
        'stops': lambda: f'Check the invoice {rng.randint(1, 99_999)} of {rng.choice(nouns)} supplies for errors.',
    }
    weeks = [{'steady': 200, 'grows': 20, 'stops': 60}, {'steady': 200, 'appears': 15, 'grows': 20, 'stops': 10},
             {'steady': 200, 'appears': 60, 'grows': 80}, {'steady': 200, 'appears': 60, 'grows': 80}]  # fmt: skip
    # days of the week (from Monday, 0) a template sends on: every day, but Thursday to Sunday in the week it
    # appears and Monday and Tuesday in the week it stops
    days = {('appears', 1): (3, 4, 5, 6), ('stops', 1): (0, 1)}
    rows, truth = [], {}
    for week, counts in enumerate(weeks):
        for name, n in counts.items():
            on = days.get((name, week), range(7))
            for i in range(n):
                prompt = templates[name]()
                truth[prompt] = name
                day = datetime.date(2026, 9, 7) + datetime.timedelta(days=7 * week + on[i % len(on)])
                at = f'{day.isoformat()}T{(i * 7) % 24:02d}:{i % 60:02d}:00Z'
                rows.append({'prompt': prompt, 'timestamp': at})
    ws.ingest_prompts(pd.DataFrame(rows), source_name='three weeks')
    raw = tables.raw_prompts()
    family_of: dict[str, set[str]] = {}
    for r in raw.select(raw.prompt, raw.family_id).collect():
        family_of.setdefault(truth[r['prompt']], set()).add(r['family_id'])
    assert all(len(f) == 1 for f in family_of.values()), family_of
    flagged = {name: ws.drift(next(iter(f)), window='week').flagged for name, f in family_of.items()}
    assert flagged['steady'].empty and flagged['appears'].empty and flagged['stops'].empty
    assert len(flagged['grows']) == 1 and 'share' in flagged['grows']['reasons'].iloc[0]
    assert flagged['grows']['window'].iloc[0].date().isoformat() == '2026-09-21'


def test_text_added_after_a_trailing_slot_is_a_new_version_despite_a_near_duplicate(ws):
    """FLAN's edit of `Summarize this article:\\n\\n{text}` into `...{text}\\n\\nSummary:` still parses with the old
    template (its slot takes the new text): the latest values all ending with `\\n\\nSummary:` make a new version,
    and a retry with a trailing space among them does not hide it."""
    import random

    rng = random.Random(5)
    vocabulary = 'we propose a model that learns sparse codes from noisy speech and improves recognition by ten points'
    words = vocabulary.split()

    def abstract() -> str:
        return ' '.join(rng.choice(words) for _ in range(rng.randint(12, 30))).capitalize() + '.'

    texts = [f'Summarize this article:\n\n{abstract()}' for _ in range(40)]
    edited = [f'Summarize this article:\n\n{abstract()}\n\nSummary:' for _ in range(12)]
    edited.insert(3, edited[2] + ' ')  # a retry with a trailing space
    rows = [
        {'prompt': p, 'timestamp': f'2026-09-{7 + i // 8:02d}T{i % 8:02d}:00:00Z'} for i, p in enumerate(texts + edited)
    ]
    ws.ingest_prompts(pd.DataFrame(rows), source_name='an edit')
    (family_id,) = ws.families()['family_id']
    family = ws.get_family(family_id)
    assert len(family.templates()) >= 2
    assert family.jinja == 'Summarize this article:\n\n{{ article }}\n\nSummary:'


def test_text_added_after_a_template_with_a_short_start_is_an_edit_and_old_members_still_parse(ws):
    """FLAN's trec edit adds `\\n\\nA:` after the options of `Q: {question}\\n\\nWhich one ...`: the first edited
    prompt parses with no version (a start of one word anchors nothing), yet it holds all of the template's text,
    so it is a candidate edit; once the old wording falls silent it becomes the family's next version. The version
    before the edit parses none of the latest members but stays, so every earlier member still gives its question."""
    import sys

    from workspace.mining.assign import best_version
    from workspace.mining.families import _state_row

    sys.path.insert(0, str(ROOT / 'datasets' / 'prompt_collections'))
    import make_collections

    if not make_collections.SHARED.is_dir():
        pytest.skip(f'{make_collections.SHARED} is absent: the questions are banking77 queries from it')
    queries = list(dict.fromkeys(r['text'].strip() for r in make_collections.shared_inputs()['banking77'].rows))
    body = (
        '\n\nWhich one of the following options would the answer to this be?\n\n'
        'OPTIONS:\n- description\n- entity\n- abbreviation\n- human\n- numeric\n- location'
    )
    old, new = queries[:48], queries[48:96]
    rows = [{'prompt': f'Q: {q}{body}', 'timestamp': f'2026-09-{7 + i // 8:02d}T{2 * (i % 8):02d}:00:00Z'}
            for i, q in enumerate(old)]  # fmt: skip
    rows += [{'prompt': f'Q: {q}{body}\n\nA:', 'timestamp': f'2026-09-{13 + i // 8:02d}T{2 * (i % 8):02d}:00:00Z'}
             for i, q in enumerate(new)]  # fmt: skip
    ws.ingest_prompts(pd.DataFrame(rows), source_name='an edit at the end')
    (family_id,) = ws.families()['family_id']
    family = ws.get_family(family_id)
    assert family.jinja.endswith('- location\n\nA:')
    merges = family.history().query("what == 'merge'")
    assert len(merges) == 1 and 'an edit of the template' in merges['events'].iloc[0][0]['note']
    retired = set((_state_row(family_id)['state'] or {}).get('retired', []))
    versions = [(n, t) for n, t, _ in family.templates() if n not in retired]
    for q, suffix in [(q, '') for q in old] + [(q, '\n\nA:') for q in new]:
        text = f'Q: {q}{body}{suffix}'
        found = best_version(versions, text)
        assert found is not None and list(found[1].parse(text).values()) == [q], text


def test_another_encoding_of_a_task_is_not_absorbed_by_its_template(ws):
    """Natural Instructions sends a task in several encodings: one with its positive examples, one that adds
    negative examples and explanations. The longer one holds all of the shorter's text, its additions where the
    slots are, so it fitted the template 'but for short pieces between slots' and joined. Its values hold several
    times the words any member's do: it is another template, sent once, and stays out of the family."""
    import sys

    sys.path.insert(0, str(ROOT / 'datasets' / 'prompt_collections'))
    import make_collections

    log, _ = make_collections.make('natural_instructions', seed=1)
    apps = {'qasc_find_overlapping_words', 'multirc_identify_bad_question', 'qasc_question_generation'}
    lines = [(x, t) for x, t in zip(log.lines, log.truth) if x['app'] in apps]
    ws.ingest_prompts(pd.DataFrame([x for x, _ in lines]), source_name='three tasks')
    raw = tables.raw_prompts()
    family_of = {r['prompt']: r['family_id'] for r in raw.select(raw.prompt, raw.family_id).collect()}
    sizes = collections.Counter(family_of.values())
    one_offs = {x['prompt'] for x, t in lines if t['kind'] == 'one_off'}
    assert one_offs and all(sizes[family_of[p]] < 3 for p in one_offs), [sizes[family_of[p]] for p in one_offs]


def _banking_queries() -> tuple[Any, list[dict]]:
    """Return banking77's inputs as the prompt collections read them, and its distinct queries (skip without them)."""
    sys.path.insert(0, str(ROOT / 'datasets' / 'prompt_collections'))
    import make_collections

    if not make_collections.SHARED.is_dir():
        pytest.skip(f'{make_collections.SHARED} is absent: the queries are banking77 queries from it')
    inputs = make_collections.shared_inputs()['banking77']
    return inputs, list({r['text'].strip(): r for r in inputs.rows}.values())


def _routed(weeks: list[list[dict]]) -> list[dict]:
    """Return the log lines of a routing template sending each week's queries (weeks from Monday 2026-09-07),
    spread over the days and hours of its week."""
    import datetime

    lines = []
    for week, queries in enumerate(weeks):
        for i, query in enumerate(queries):
            at = datetime.datetime(2026, 9, 7, tzinfo=datetime.timezone.utc) + datetime.timedelta(
                days=7 * week + i % 7, hours=(i * 5) % 24, minutes=i
            )
            lines.append({'prompt': f'Route this banking query to the right team.\nQuery: {query["text"].strip()}',
                          'timestamp': at.isoformat()})  # fmt: skip
    return lines


def test_drift_flags_the_week_a_slots_inputs_narrow_and_no_stable_week(ws):
    """A template's queries (50 a week) are banking77's whole range for four weeks, then only the card intents (the
    narrowing the collections inject): the centre of its slot values shifts that week, against the four weeks
    before, and in no stable week (nor the next, against the narrowed week)."""
    import random

    inputs, rows = _banking_queries()
    rng = random.Random(7)
    rng.shuffle(rows)
    narrow = [r for r in rows if inputs.narrow(r)][:100]
    wide = [r for r in rows if not any(r is n for n in narrow)][:200]  # the whole range, card intents included
    weeks = [[(narrow if week >= 4 else wide).pop() for _ in range(50)] for week in range(6)]
    ws.ingest_prompts(pd.DataFrame(_routed(weeks)), source_name='six weeks')
    (family_id,) = ws.families()['family_id']
    report = ws.drift(family_id, window='week')
    flagged = report.flagged
    assert [w.date().isoformat() for w in flagged['window']] == ['2026-10-05'], report.table[
        ['window', 'new_members', 'centre_shift', 'centre_noise', 'centre_p']
    ].to_string()
    assert 'centre shift' in flagged['reasons'].iloc[0]


def test_drift_flags_inputs_narrowing_to_prompts_sent_before(ws):
    """Queries drawn (with repeats) from 200 banking77 queries for four weeks, then only from the card queries among
    them: the narrowed weeks send few prompts not seen before (under the 20 a test needs), but the prompts they
    send sit elsewhere. The centre is tested on the distinct prompts sent in a window, so the first narrowed week
    is flagged, and no other (the next is compared with the narrowed one)."""
    import random

    inputs, rows = _banking_queries()
    rng = random.Random(11)
    rng.shuffle(rows)
    wide = rows[:200]
    narrow = [r for r in wide if inputs.narrow(r)]
    weeks = [[rng.choice(narrow if week >= 4 else wide) for _ in range(40)] for week in range(6)]
    ws.ingest_prompts(pd.DataFrame(_routed(weeks)), source_name='six weeks with repeats')
    (family_id,) = ws.families()['family_id']
    report = ws.drift(family_id, window='week')
    table = report.table.set_index(report.table['window'].dt.date.astype(str))
    assert table.loc['2026-10-05', 'new_members'] < 20 <= table.loc['2026-10-05', 'prompts_sent'], table.to_string()
    assert [w.date().isoformat() for w in report.flagged['window']] == ['2026-10-05'], report.table[
        ['window', 'new_members', 'prompts_sent', 'centre_shift', 'centre_noise', 'centre_p']
    ].to_string()
    assert 'centre shift' in report.flagged['reasons'].iloc[0]


def test_a_centre_shift_of_one_window_only_is_noted_not_flagged(ws):
    """One week of card queries among wide weeks (a burst, not drift), and a narrowing in the log's last week: the
    burst is noted in its window's reasons but not flagged (the week after is back where it was), and the last
    week's shift waits for the next window to confirm it."""
    import random

    inputs, rows = _banking_queries()
    rng = random.Random(5)
    rng.shuffle(rows)
    narrow = [r for r in rows if inputs.narrow(r)]
    wide = [r for r in rows if not inputs.narrow(r)]
    weeks = [[(narrow if week in (4, 6) else wide).pop() for _ in range(40)] for week in range(7)]
    ws.ingest_prompts(pd.DataFrame(_routed(weeks)), source_name='a burst, then a narrowing at the end')
    (family_id,) = ws.families()['family_id']
    report = ws.drift(family_id, window='week')
    table = report.table.set_index(report.table['window'].dt.date.astype(str))
    shown = table[['centre_noise', 'centre_p', 'centre_next', 'reasons']].to_string()
    assert report.flagged.empty, shown
    assert 'in this window only' in table.loc['2026-10-05', 'reasons'], shown
    assert 'to be confirmed by the next window' in table.loc['2026-10-19', 'reasons'], shown


def test_the_centre_is_not_compared_across_a_template_edit(ws):
    """promptsource's e2e_nlg `generate_text_restaurant` was edited (2021 clean-up): the loop over the meaning
    representation renders other separators, which sit in the slot values. Once the edit is merged as the
    template's next version, the week it began mixes both wordings and is not tested for a centre shift, and the
    next weeks are compared with weeks of the edited wording only; before, that week was flagged at 21 times the
    shuffled shift."""
    sys.path.insert(0, str(ROOT / 'datasets' / 'prompt_collections'))
    import make_collections

    if not make_collections.SHARED.is_dir():
        pytest.skip(f'{make_collections.SHARED} is absent: the inputs are e2e_nlg meaning representations from it')
    log, _ = make_collections.make('promptsource', seed=4)
    name = 'e2e_nlg/generate_text_restaurant'
    lines = [x for x, t in zip(log.lines, log.truth) if t['family'] == name]
    ws.ingest_prompts(pd.DataFrame(lines), source_name=name)
    family_id = ws.families()['family_id'].iloc[0]  # the largest
    merges = ws.get_family(family_id).history().query("what == 'merge'")
    assert len(merges) == 1 and 'an edit of the template' in merges['events'].iloc[0][0]['note']
    edited = [
        x['timestamp'] for x, t in zip(log.lines, log.truth) if t['family'] == name and t['template_version'] == 2
    ]
    week = pd.Timestamp(min(edited)).floor('D') - pd.Timedelta(days=pd.Timestamp(min(edited)).weekday())
    report = ws.drift(family_id, window='week')
    table = report.table.set_index('window')
    shown = table[['prompts_sent', 'centre_noise', 'centre_p', 'reasons']].to_string()
    assert pd.isna(table.loc[week, 'centre_p']) and table.loc[week, 'prompts_sent'] >= 20, shown
    assert not table['reasons'].str.contains('centre shift').any(), shown


def test_prompts_of_a_template_that_is_a_label_after_a_long_slot_make_one_family(ws):
    """promptsource's scitldr `gpt_2_style` is an abstract, then `\\nTL;DR:`: two of its prompts share two words, a
    line of their own at the end. They used to need three shared words, so each prompt started a family of its own
    (286 families for 286 prompts on one rendering of the collections); a whole line shared at an edge is enough."""
    sys.path.insert(0, str(ROOT / 'datasets' / 'prompt_collections'))
    import make_collections

    if not make_collections.SHARED.is_dir():
        pytest.skip(f'{make_collections.SHARED} is absent: the abstracts are scitldr abstracts from it')
    papers = make_collections.shared_inputs()['scitldr'].rows[:30]
    rows = [{'prompt': ' '.join(p['source']) + '\nTL;DR:', 'timestamp': f'2026-09-{7 + i // 5:02d}T{i % 5:02d}:00:00Z'}
            for i, p in enumerate(papers)]  # fmt: skip
    ws.ingest_prompts(pd.DataFrame(rows), source_name='gpt_2_style')
    families = ws.families()
    assert list(families['size']) == [30], families[['family_id', 'size']]
    family = ws.get_family(families['family_id'].iloc[0])
    assert family.jinja.endswith('\nTL;DR:')
    assert [list(family.template.parse(r['prompt']).values()) for r in rows[:3]] == [
        [' '.join(p['source'])] for p in papers[:3]
    ]


def test_a_version_of_the_template_split_off_is_retired_in_the_family_that_stays(ws):
    """Natural Instructions sends multirc_identify_bad_question in several encodings: the prompt alone, the same
    with a definition before it, or with explained examples after it. A young family took prompts of two of them,
    mined a version from that mixture and was split; the version stayed with the definition's family and parsed
    the third encoding's prompts (they start as the prompt alone does) into it, and its next versions then began
    with a slot and took every encoding. A version that parses none of the members that stay, and some that moved,
    is retired with the split: each family holds one encoding."""
    sys.path.insert(0, str(ROOT / 'datasets' / 'prompt_collections'))
    import make_collections

    log, _ = make_collections.make('natural_instructions', seed=3)
    app = 'multirc_identify_bad_question'
    lines = [(x, t) for x, t in zip(log.lines, log.truth) if x['app'] == app]
    ws.ingest_prompts(pd.DataFrame([x for x, _ in lines]), source_name=app)
    raw = tables.raw_prompts()
    family_of = {r['prompt']: r['family_id'] for r in raw.select(raw.prompt, raw.family_id).collect()}
    held: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for x, t in lines:
        held[family_of[x['prompt']]][t['family']] += 1
    mixed = {f: dict(c) for f, c in held.items() if len(c) > 1 and sum(c.values()) >= 10}
    assert not mixed, mixed


def test_a_share_taken_over_by_a_new_family_of_its_application_is_noted_not_flagged(ws):
    """Two applications with two templates each. In the fourth week one template of the first application is
    reworded beyond an edit (a new family takes its traffic, a few stragglers still come); the same week one
    template of the second application just falls to a trickle. Both shares fall; the first is a change of its
    prompts, noted with the family that took its traffic over, and only the second is flagged as share drift."""
    import datetime
    import random

    _, rows = _banking_queries()
    rng = random.Random(3)
    queries = iter(rng.sample([r['text'].strip() for r in rows], 1400))
    texts = {
        'route': 'Route this banking query to the right team.\nQuery: {}',
        'routed': 'You are the triage assistant of a retail bank. Read the message below, decide which team should '
        'handle it and answer with the name of the team only.\nMessage: {}',
        'help': 'Which of our help pages answers this question? {}',
        'faq': 'Find the FAQ entry for this customer question: {}',
        'tone': 'Rate how upset this customer sounds, from 1 to 5: {}',
    }
    lines = []
    for week in range(6):
        plan = {('first', 'help'): 30, ('second', 'faq'): 30, ('second', 'tone'): 30}
        plan[('first', 'route')] = 30 if week < 3 else 2 if week == 4 else 0
        plan[('first', 'routed')] = 30 if week >= 3 else 0
        plan[('second', 'faq')] = 30 if week < 3 else 3
        for (app, name), n in plan.items():
            for i in range(n):
                at = datetime.datetime(2026, 9, 7, tzinfo=datetime.timezone.utc) + datetime.timedelta(
                    days=7 * week + i % 7, hours=(i * 5) % 24, minutes=len(lines) % 60
                )
                lines.append({'prompt': texts[name].format(next(queries)), 'timestamp': at.isoformat(), 'app': app})
    ws.ingest_prompts(pd.DataFrame(lines), source_name='two applications')
    raw = tables.raw_prompts()
    family_of = {r['prompt']: r['family_id'] for r in raw.select(raw.prompt, raw.family_id).collect()}

    def report(name: str) -> pd.DataFrame:
        first = next(x['prompt'] for x in lines if x['prompt'].startswith(texts[name].split('{')[0]))
        table = ws.drift(family_of[first], window='week').table
        return table.set_index(table['window'].dt.date.astype(str))

    route, faq = report('route'), report('faq')
    assert not route['flag'].any(), route[['share', 'share_p', 'reasons']].to_string()
    assert 'taken over by' in route.loc['2026-09-28', 'reasons'], route[['share', 'reasons']].to_string()
    assert list(faq.index[faq['flag']]) == ['2026-09-28'], faq[['share', 'share_p', 'reasons']].to_string()
    assert faq.loc['2026-09-28', 'reasons'].startswith('share')


def test_a_share_change_of_one_window_only_is_noted_not_flagged(ws):
    """A template's traffic triples for one week and falls back the next: a burst, not a change of the traffic it
    gets. It is noted in that week's reasons and not flagged; the steady template beside it is neither."""
    import datetime
    import random

    rng = random.Random(8)
    nouns = ['cat', 'parcel', 'invoice', 'river', 'lamp', 'garden', 'engine', 'letter', 'bridge', 'kettle']
    templates = {
        'steady': lambda: f'Check the invoice {rng.randint(1, 99_999)} of {rng.choice(nouns)} supplies for errors.',
        'burst': lambda: (
            f'Route this support ticket to a team: order {rng.randint(1, 99_999)} for '
            f'{rng.choice(["Ann", "Bob", "Carla", "Dmitri"])} was {rng.choice(["late", "lost", "broken"])}.'
        ),
    }
    rows, truth = [], {}
    for week, burst in enumerate([30, 30, 90, 30, 30]):
        for name, n in (('steady', 100), ('burst', burst)):
            for i in range(n):
                prompt = templates[name]()
                truth[prompt] = name
                day = datetime.date(2026, 9, 7) + datetime.timedelta(days=7 * week + i % 7)
                rows.append({'prompt': prompt, 'timestamp': f'{day.isoformat()}T{(i * 7) % 24:02d}:{i % 60:02d}:00Z'})
    ws.ingest_prompts(pd.DataFrame(rows), source_name='a burst')
    raw = tables.raw_prompts()
    family_of = {truth[r['prompt']]: r['family_id'] for r in raw.select(raw.prompt, raw.family_id).collect()}
    steady, burst = (ws.drift(family_of[name], window='week').table for name in ('steady', 'burst'))
    assert not steady['flag'].any() and not burst['flag'].any(), burst[['window', 'share', 'reasons']].to_string()
    assert 'in this window only' in burst['reasons'].iloc[2], burst[['window', 'share', 'reasons']].to_string()


def test_two_templates_sharing_only_an_ending_are_split_and_its_one_offs_stay_out(ws):
    """FLAN's `{text}\\n\\nIs the sentiment of this review positive or negative?` and `Please tell me the sentiment of
    the following review: {text}` both end with the options list, and their first prompts made one young family
    whose template left each one's wording in its slots (`this` ... `positive or negative?` beside `Please tell
    me` ... `the following`). That mixture is split; and three one-offs of other patterns, which share that
    ending too, stay apart instead of making a family of their own on a piece of the first template's text."""
    import sys

    sys.path.insert(0, str(ROOT / 'datasets' / 'prompt_collections'))
    import make_collections

    log, _ = make_collections.make('flan', seed=1)
    lines = [(x, t) for x, t in zip(log.lines, log.truth) if x['app'] == 'review_sentiment']
    ws.ingest_prompts(pd.DataFrame([x for x, _ in lines]), source_name='review sentiment')
    raw = tables.raw_prompts()
    family_of = {r['prompt']: r['family_id'] for r in raw.select(raw.prompt, raw.family_id).collect()}
    held: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for x, t in lines:
        if t['kind'] == 'template':
            held[family_of[x['prompt']]][t['family']] += 1
    main = {name: max(held, key=lambda f: held[f][name]) for name in ('imdb_reviews/4', 'imdb_reviews/6')}
    assert main['imdb_reviews/4'] != main['imdb_reviews/6'], dict(held[main['imdb_reviews/4']])
    for name, family in main.items():
        assert held[family][name] >= 0.95 * sum(held[family].values()), dict(held[family])
    sizes = collections.Counter(family_of.values())
    one_offs = {x['prompt'] for x, t in lines if t['kind'] == 'one_off'}
    assert one_offs and all(sizes[family_of[p]] < 3 for p in one_offs), [sizes[family_of[p]] for p in one_offs]


def _latest_by_seq(family_id: str) -> list[str]:
    raw = tables.raw_prompts()
    rows = raw.where(raw.family_id == family_id).order_by(raw.seq).select(raw.prompt_hash).collect()
    return [r['prompt_hash'] for r in rows][-32:]


def test_a_familys_latest_members_come_back_with_its_state_and_follow_a_split(ws, log_file):
    """The next ingest gets each family's latest members from the stored state, read by key in one go, not with a
    query per family; a split by hand leaves them true for both families."""
    from workspace.mining.families import load_engine

    ws.ingest_prompts(log_file)

    def no_query(family_id: str) -> list:
        raise AssertionError(f'the members of {family_id} were queried one family at a time')

    engine = load_engine()
    engine.load_recent = no_query
    active = [s for s in engine.states.values() if s.status == 'active']
    assert len(active) >= 5
    for state in active:  # read without a query, the members it had in memory, oldest first
        assert [h for h, _, _ in engine._recent(state)] == _latest_by_seq(state.id)
        assert all(text and at is not None for _, text, at in state.recent)

    family = max(active, key=lambda s: s.n)
    moved = _latest_by_seq(family.id)[-3:]  # its three latest members leave
    new = split_family(family.id, moved, note='test split')
    engine = load_engine()
    engine.load_recent = no_query
    for family_id in (family.id, new.id):
        state = engine.states[family_id]
        assert [h for h, _, _ in engine._recent(state)] == _latest_by_seq(family_id)
    assert set(_latest_by_seq(new.id)).isdisjoint(h for h, _, _ in engine.states[family.id].recent)


def test_stored_latest_members_that_left_the_family_are_not_trusted(ws, log_file):
    """A merge or split by hand killed before it stored the members it left: the family's members are then read
    by its id, never taken from the stale list."""
    from workspace.mining.families import load_engine

    ws.ingest_prompts(log_file)
    state = tables.families()
    families = sorted(load_engine().states.values(), key=lambda s: -s.n)
    family, other = families[0], families[1]
    row = state.where(state.family_id == family.id).select(state.state).collect()[0]
    stale = {**row['state'], 'recent': row['state']['recent'][:-1] + _latest_by_seq(other.id)[-1:]}
    state.update({'state': stale}, where=state.family_id == family.id)

    engine = load_engine()
    assert not engine.states[family.id].recent_loaded  # not preloaded from a list that holds another family's
    assert [h for h, _, _ in engine._recent(engine.states[family.id])] == _latest_by_seq(family.id)
    assert engine.states[other.id].recent_loaded


def test_a_raw_prompts_table_with_stored_vectors_from_an_earlier_release_goes_on_without_them(ws, tmp_path):
    """Raw prompts no longer store their embedding (the embedder gives a text the same vector every time); a table
    from an earlier release loses the column when opened, keeps every row, and ingest and search go on."""
    from udfs.embed import embed_text

    lines = _lines(400)
    first, rest = tmp_path / 'first.jsonl', tmp_path / 'rest.jsonl'
    first.write_text(''.join(lines[:200]), encoding='utf-8')
    rest.write_text(''.join(lines), encoding='utf-8')
    ws.ingest_prompts(first, source_name='log')
    raw = tables.raw_prompts()
    raw.add_computed_column(vector=embed_text(raw.prompt))  # as an earlier release stored it
    before = {r['prompt_hash']: r['family_id'] for r in raw.select(raw.prompt_hash, raw.family_id).collect()}

    raw = tables.raw_prompts()
    assert 'vector' not in raw.columns()
    assert {r['prompt_hash']: r['family_id'] for r in raw.select(raw.prompt_hash, raw.family_id).collect()} == before
    report = ws.ingest_prompts(rest, source_name='log')
    assert report.new_lines == 200 and report.new_prompts > 0
    from workspace.storage.embeddings import embed

    text_of = {r['prompt_hash']: r['prompt'] for r in raw.select(raw.prompt_hash, raw.prompt).collect()}
    joined = [r for r in raw.where(raw.seq >= len(before)).select(raw.prompt, raw.reason).collect()]
    named = [(r['prompt'], m) for r in joined for m in r['reason'].get('nearest_members', [])]
    assert named  # the exemplars' vectors were embedded again, and give the similarities stored vectors gave
    for prompt, member in named[:50]:
        expected = round(float(embed([text_of[member['prompt_hash']]])[0] @ embed([prompt])[0]), 4)
        assert member['similarity'] == expected
    text = json.loads(lines[300])['prompt']
    found = ws.similar(text, k=1)
    assert found['prompt'][0] == text and found['score'][0] == pytest.approx(1.0, abs=1e-4)


def test_a_column_computed_from_an_earlier_releases_vector_is_named_not_dropped(ws, log_file):
    from udfs.embed import embed_text

    ws.ingest_prompts(log_file)
    raw = tables.raw_prompts()
    raw.add_computed_column(vector=embed_text(raw.prompt))
    raw.add_computed_column(first=raw.vector[0])  # the user's own column, computed from it
    with pytest.raises(errors.FamilyError, match='vector, stored by an earlier release, cannot be dropped'):
        tables.raw_prompts()
    assert raw.count() > 0 and 'first' in raw.columns()  # nothing lost


def test_a_search_stopped_while_indexing_resumes_without_a_gap(ws, log_file, monkeypatch):
    """The similarity index is filled a chunk at a time in seq order: a search stopped between two chunks (a
    Ctrl-C, a kill) leaves no prompt out of the index for good, though updates return rows out of seq order."""
    from workspace.mining import similar

    ws.ingest_prompts(log_file)
    raw = tables.raw_prompts()
    raw.update({'occurrences': raw.occurrences + 1}, where=raw.seq % 3 == 0)  # rows come back out of seq order
    monkeypatch.setattr(similar, 'INDEX_CHUNK', 40)
    real, calls = similar.embed, []

    def stops_on_the_second_chunk(texts):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(texts)

    monkeypatch.setattr(similar, 'embed', stops_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        ws.similar('Where is my parcel?', k=1, among='prompts')
    assert 0 < tables.prompt_index().count() < raw.count()
    monkeypatch.setattr(similar, 'embed', real)
    assert len(ws.similar('Where is my parcel?', k=3, among='prompts')) == 3
    index = tables.prompt_index()
    assert {r['prompt_hash'] for r in index.select(index.prompt_hash).collect()} == {
        r['prompt_hash'] for r in raw.select(raw.prompt_hash).collect()
    }


def test_each_applications_latest_prompts_are_read_whatever_its_share_of_the_log(ws):
    """A later ingest reads each application's latest prompts in windows of the whole log; an application that
    sent a few prompts long ago gets them, as one query per application gave."""
    from workspace.mining.assign import APP_RECENT
    from workspace.mining.families import _app_recent

    rows = [{'prompt': f'Rare app question number {i}: is {i} prime?', 'app': 'rare',
             'timestamp': f'2026-09-01T00:{i:02d}:00Z'} for i in range(5)]  # fmt: skip
    rows += [{'prompt': f'Busy app ticket {i}: my order {i * 7} is late', 'app': 'busy' if i % 3 else 'mid',
              'timestamp': f'2026-09-{2 + i // 1440:02d}T{i // 60 % 24:02d}:{i % 60:02d}:00Z'} for i in range(1500)]  # fmt: skip
    ws.ingest_prompts(pd.DataFrame(rows), source_name='apps')
    raw = tables.raw_prompts()
    expected = []
    for app in ['busy', 'mid', 'rare']:
        latest = raw.where(raw.app == app).order_by(raw.seq, asc=False).limit(APP_RECENT)
        found = list(latest.select(raw.family_id, raw.prompt_hash, raw.prompt, raw.reason).collect())
        expected += [(app, (r['reason']['assigned_to'], r['prompt_hash'], r['prompt'])) for r in reversed(found)]
    assert [a for a, _ in expected].count('rare') == 5 and [a for a, _ in expected].count('busy') == APP_RECENT
    assert _app_recent({'rare', 'busy', 'mid'}) == expected
    assert _app_recent({'rare'}) == [x for x in expected if x[0] == 'rare']


# FLAN's e2e_nlg pattern 3 with real E2E meaning representations (seed 1 of bench/families.py), in the order sent; the
# eighth is pattern 8 with the same restaurant's data as the seventh
E2E_SEQUENCE = [
    (
        '2026-09-07T05:20:08',
        'Data: name[The Wrestlers], eatType[coffee shop], food[Chinese], priceRange[moderate], area[riverside], familyFriendly[no], near[Raja Indian Cuisine]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-08T03:45:21',
        'Data: name[Cocum], eatType[coffee shop], food[Chinese], priceRange[high], customer rating[1 out of 5], familyFriendly[no]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-08T11:48:18',
        'Data: name[Wildwood], eatType[coffee shop], food[English], priceRange[high], customer rating[average], near[Ranch]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-09T23:26:45',
        'Data: name[Midsummer House], customer rating[3 out of 5], near[The Bakers]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-10T21:51:31',
        'Data: name[The Punter], eatType[coffee shop], food[English], priceRange[£20-25], customer rating[high], familyFriendly[no], near[Café Sicilia]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-11T06:43:39',
        'Data: name[The Punter], customer rating[average], area[city centre], familyFriendly[no]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-12T00:48:49',
        'Data: name[The Eagle], eatType[coffee shop], food[English], priceRange[£20-25], customer rating[high], area[riverside], familyFriendly[no], near[Burger King]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-12T10:11:49',
        'Data: name[The Eagle], customer rating[1 out of 5], area[riverside], familyFriendly[yes], near[Café Brazil]\n\nSentence about the following data: ',
    ),
    (
        '2026-09-12T11:14:56',
        'Data: name[Fitzbillies], eatType[coffee shop], food[English], priceRange[high], customer rating[average], area[riverside], familyFriendly[yes]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-15T01:08:11',
        'Data: name[Bibimbap House], area[riverside], near[Café Sicilia]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-15T04:25:47',
        'Data: name[Alimentum], area[riverside], familyFriendly[yes], near[Burger King]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-16T03:01:40',
        'Data: name[Cocum], eatType[coffee shop], food[Chinese], priceRange[high], customer rating[average], familyFriendly[yes]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-19T08:47:17',
        'Data: name[The Eagle], customer rating[1 out of 5], area[riverside], familyFriendly[yes], near[Café Brazil]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-21T03:12:02',
        'Data: name[The Cambridge Blue], eatType[coffee shop], customer rating[1 out of 5], area[riverside], familyFriendly[yes], near[Burger King]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-23T02:08:23',
        'Data: name[Aromi], eatType[coffee shop], food[English], customer rating[average], area[riverside], familyFriendly[yes]. What is a sentence that describe this data?',
    ),
    (
        '2026-09-23T03:33:45',
        'Data: name[The Cambridge Blue], eatType[coffee shop], customer rating[1 out of 5], area[riverside], familyFriendly[yes], near[Burger King]. What is a sentence that describe this data?\n\n',
    ),
]


def test_a_prompt_of_another_template_that_joined_leaves_the_template_parsing_the_rest(ws):
    """The eighth prompt, another template with the seventh's data, joined the young family; mined from those
    eight, the template was `Data: {{ data }}` (one word: it parses nothing) and replaced the version that parsed
    them, so the next prompts, without one of the pairs most had, each started a family of their own."""
    rows = [{'prompt': text, 'timestamp': at + 'Z', 'app': 'restaurant_text'} for at, text in E2E_SEQUENCE]
    ws.ingest_prompts(pd.DataFrame(rows), source_name='e2e')
    raw = tables.raw_prompts()
    family = {r['prompt']: r['family_id'] for r in raw.select(raw.prompt, raw.family_id).collect()}
    ours = {family[t] for _, t in E2E_SEQUENCE if 'What is a sentence' in t}
    assert len(ours) == 1, ours
    (family_id,) = ours
    templates = [t.jinja for _, t, _ in ws.get_family(family_id).templates()]
    assert 'Data: {{ data }}. What is a sentence that describe this data?' in templates, templates
    assert 'Data: {{ data }}' not in templates


def test_a_template_trusted_with_a_value_its_first_members_shared_is_merged_into_its_looser_self(ws):
    """FLAN's e2e_nlg pattern 6 (seed 1 of bench/families.py): a young family grew by shared ends, so its first eight
    members all ended their data with `near[Burger King]` and the template trusted from them holds it; prompts
    without it went to another family, whose template is the same text without the value. Once that template parses
    every member of the first, the two are one family, and its history says why."""
    sys.path.insert(0, str(ROOT / 'datasets' / 'prompt_collections'))
    import make_collections

    if not make_collections.SHARED.is_dir():
        pytest.skip(f'{make_collections.SHARED} is absent: the collection renders its inputs from it')
    log, _ = make_collections.make('flan', seed=1)
    rows = [line for line, t in zip(log.lines, log.truth) if t['family'] == 'e2e_nlg/6' and t['kind'] == 'template']
    ws.ingest_prompts(pd.DataFrame(rows[:80]), source_name='e2e_nlg/6')
    raw = tables.raw_prompts()
    family = {r['prompt']: r['family_id'] for r in raw.select(raw.prompt, raw.family_id).collect()}
    (largest, size), *_ = collections.Counter(family.values()).most_common()
    assert size >= 35, size  # the two families held 23 and 15 of the 80 prompts before
    burger_king = [
        p
        for p in family
        if p.endswith('near[Burger King]\n\nCan you represent the content in this sentence in data form?')
    ]
    assert len(burger_king) >= 10 and {family[p] for p in burger_king} == {largest}
    history = ws.get_family(largest).history()
    merges = [e for events in history.loc[history['what'] == 'merge', 'events'] for e in events]
    assert any(e['note'] == 'its template is this one with a value it froze' for e in merges), history
