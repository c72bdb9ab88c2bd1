"""Rank classification and contextual calibration of choice outputs (workspace/calibration.py and the local
backend's label scoring), on the real embedded model: answers are labels, scores are bit-identical whatever was
decoded before, the decoding is part of the request identity, content-free prompts are scored once per version."""

from __future__ import annotations

import math

import pytest

from workspace.core.versions import Version, build_request, choice
from workspace.errors import BackendError, VersionError
from workspace.storage import backends, calibration, store

LABELS = ['negative', 'no_impact', 'positive']
TEMPLATE = (
    '{% for d in demos %}Verse: {{ d.text }}\nSentiment: {{ d.expected }}\n\n{% endfor %}Verse: {{ text }}\nSentiment:'
)
DEMOS = [
    {'text': 'with pale and weary eyes', 'expected': 'negative'},
    {'text': 'the sun rose on the hill', 'expected': 'no_impact'},
    {'text': 'and all was joy and light', 'expected': 'positive'},
]
VERSES = [
    'a bird sang in the morning',
    'the grave is cold and dark',
    'her laughter filled the hall with gladness',
    'the road went on by the river',
]
#: The hash of the request below before `decode` existed: the default must keep it (under the decoding of that
#: time, `blocks64`, which adds nothing to the model identity).
KNOWN_HASH = '1b9a1ec28d25b3c7e2fdfb15027be1cd92c83a66d71f7d1006d16f70c02d0e9e'


def _version(decode: calibration.Decode = 'mask', demos: list[dict] = DEMOS) -> Version:
    return Version(
        id='poems:v1',
        prompt='poems',
        number=1,
        parent_id=None,
        template=TEMPLATE,
        model='local',
        params={'temperature': 0.0, 'max_tokens': 16, 'seed': 0},
        output=choice(LABELS, decode=decode),
        demos=demos,
    )


def _request(decode: calibration.Decode, verse: str, demos: list[dict] = DEMOS) -> dict:
    return build_request(_version(decode, demos), {'text': verse, 'example_id': 'x'})


def _long(decode: calibration.Decode, verse: str) -> dict:
    """A request whose prompt spans three 64-token blocks, so a previous prompt's blocks can be reused."""
    return _request(decode, verse, DEMOS * 3)


def test_the_default_keeps_its_request_hash_and_other_decodings_get_their_own(monkeypatch):
    assert choice(LABELS) == {'kind': 'choice', 'labels': LABELS}
    monkeypatch.setenv('WORKSPACE_LOCAL_DECODING', 'blocks64')
    assert _request('mask', VERSES[0])['hash'] == KNOWN_HASH
    monkeypatch.delenv('WORKSPACE_LOCAL_DECODING')
    default = _request('mask', VERSES[0])
    assert default['constraint'] == {'choice': LABELS}
    assert default['hash'] != KNOWN_HASH  # another local decoding: another identity
    rank, calibrated = _request('rank', VERSES[0]), _request('calibrated', VERSES[0])
    assert rank['constraint'] == {'choice': LABELS, 'decode': 'rank'}
    assert calibrated['constraint']['decode'] == 'calibrated'
    assert [p.rsplit('Verse: ', 1)[1] for p in calibrated['constraint']['content_free']] == [
        'N/A\nSentiment:',
        '\nSentiment:',
        '[MASK]\nSentiment:',
    ]
    assert len({default['hash'], rank['hash'], calibrated['hash']}) == 3
    assert rank['prompt'] == default['prompt']


def test_unknown_decodings_and_remote_models_are_refused(ws):
    with pytest.raises(VersionError, match=r"decode 'greedy' is not known; use one of 'mask', 'rank', 'calibrated'"):
        ws.choice(LABELS, decode='greedy')
    for decode in ('rank', 'calibrated'):
        with pytest.raises(VersionError, match=rf"decode='{decode}' .* model 'groq:x' answers with text only.*"):
            ws.create_version('poems', template=TEMPLATE, model='groq:x', output=ws.choice(LABELS, decode=decode))
    assert ws.create_version('poems', template=TEMPLATE, model='groq:x', output=ws.choice(LABELS)).number == 1
    chat = backends.ChatBackend('openai', 'm', key_env='OPENAI_API_KEY', base_url=None, key_required=False)
    with pytest.raises(BackendError, match=r"decode 'rank' needs every label's log-likelihood"):
        chat.complete(_request('rank', VERSES[0]))


def test_calibration_math():
    prior = calibration.content_free_prior([{'a': math.log(0.9), 'b': math.log(0.1)}, {'a': 0.0, 'b': 0.0}])
    assert math.exp(prior['a']) == pytest.approx(0.7) and math.exp(prior['b']) == pytest.approx(0.3)
    calibrated = calibration.calibrate({'a': math.log(0.6), 'b': math.log(0.4)}, prior)
    assert max(calibrated, key=calibrated.get) == 'b'  # 0.4 / 0.3 beats 0.6 / 0.7
    assert sum(math.exp(v) for v in calibrated.values()) == pytest.approx(1.0)


def _scores(backend: backends.LocalBackend, decode: calibration.Decode, verse: str) -> dict[str, float]:
    request = _long(decode, verse)
    if backend.decoding != 'paragraphs':  # decoded by the backend's own decoding, not the one the identity names
        request.pop('model_id')
    out = backend.complete(request)
    assert out['text'] in LABELS and out['text'] == max(LABELS, key=out['scores'].get)
    return out['scores']


def test_label_scores_are_bit_identical_whatever_was_decoded_before():
    local = backends.get_backend('local')
    assert isinstance(local, backends.LocalBackend)
    target, sibling, other = VERSES[0], VERSES[1], 'Unrelated text: ' + 'the quick brown fox ' * 20
    assert len(local._load().tokenize(_long('rank', target)['prompt'].encode())) > 128
    for decode in ('rank', 'calibrated'):
        after_sibling = (_scores(local, decode, sibling), _scores(local, decode, target))[1]
        local.complete({'prompt': other, 'params': {'max_tokens': 4}, 'constraint': None})
        after_other = _scores(local, decode, target)
        _scores(local, 'rank', VERSES[2])
        again = _scores(local, decode, target)
        assert after_sibling == after_other == again  # bit for bit, not approximately


def test_llama_cpp_prefix_reuse_is_not_bit_identical_and_blocks_match_the_one_sequence_context():
    import llama_cpp
    import numpy as np

    path = backends.embedded_model_path()
    naive = backends.LocalBackend(path, decoding='llama')
    try:
        differs = []
        for target, sibling in zip(VERSES, VERSES[1:]):
            naive.complete({'prompt': 'Unrelated text: the quick brown fox', 'params': {'max_tokens': 2}})
            whole = _scores(naive, 'rank', target)  # decoded from the start
            _scores(naive, 'rank', sibling)
            differs.append(_scores(naive, 'rank', target) != whole)  # only the part after the demos decoded
            if differs[-1]:
                break  # one pair shows it
        assert any(differs), 'llama.cpp prefix reuse gave bit-identical scores; the test prompts need another split'
    finally:
        naive.close()
    # The label-scoring context (256 sequences, one unified cache) decodes a prompt exactly as the one-sequence
    # context llama-cpp-python makes (here in the aligned blocks of `blocks64`, which its eval makes too).
    local = backends.get_backend('local')
    prompt = _long('rank', VERSES[3])['prompt']
    llm = local._load()
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    with local._lock:
        ours = np.array(local._prefill(llm, tokens, 'blocks64'))
    plain = llama_cpp.Llama(model_path=str(path), n_ctx=4096, n_batch=64, n_ubatch=64, seed=0, verbose=False)
    try:
        plain.eval(tokens)
        theirs = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(plain._ctx.ctx, -1), shape=(plain.n_vocab(),))
        assert np.array_equal(ours, theirs)
    finally:
        plain.close()


def test_evaluate_scores_content_free_prompts_once_per_version(ws, tiny_tickets):
    tiny = ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')
    template = (
        'Calibration test.\n{% for d in demos %}Ticket: {{ d.text }}\nCategory: {{ d.expected }}\n\n{% endfor %}'
        'Ticket: {{ text }}\nCategory:'
    )
    labels = tiny.labels()
    local = backends.get_backend('local')
    versions = {
        decode: ws.create_version(
            f'router_{decode}', template=template, output=ws.choice(labels, decode=decode), demos=tiny.demos(1)
        )
        for decode in calibration.DECODES
    }
    before = local.content_free_scored
    runs = {decode: ws.evaluate(v, tiny, 'dev', progress=False) for decode, v in versions.items()}
    assert local.content_free_scored - before == len(calibration.CONTENT_FREE_INPUTS)  # not once per row
    assert all(run.calls == 6 and run.errors == 0 for run in runs.values())
    hashes = {decode: set(run.predictions()['request_hash']) for decode, run in runs.items()}
    assert not hashes['mask'] & hashes['rank'] and not hashes['rank'] & hashes['calibrated']
    for decode in ('rank', 'calibrated'):
        assert set(runs[decode].predictions()['prediction']) <= set(labels)
        for answer in store.lookup(hashes[decode]).values():
            assert set(answer['scores']) == set(labels) and answer['text'] in labels
    if_calibrated = [a['scores'] for a in store.lookup(hashes['calibrated']).values()]
    assert all(sum(math.exp(v) for v in s.values()) == pytest.approx(1.0) for s in if_calibrated)
    assert ws.evaluate(versions['calibrated'], tiny, 'dev', progress=False).calls == 0


def test_a_demo_policy_is_calibrated_with_each_examples_own_demos(ws, tiny_tickets):
    """With retrieved demos the prior depends on the demos, so each example's content-free prompts carry its own."""
    from workspace.core import demo_policies as demos

    tiny = ws.import_dataset('tiny', tiny_tickets, input=['text'], expected='category', split='split', id='id')
    template = '{% for d in demos %}Ticket: {{ d.text }}\nCategory: {{ d.expected }}\n\n{% endfor %}Ticket: {{ text }}\nCategory:'
    output = ws.choice(tiny.labels(), decode='calibrated')
    v = ws.create_version('router_knn', template=template, output=output, demos=ws.nearest(tiny, k=2))
    run = ws.evaluate(v, tiny, 'dev', progress=False)
    assert run.calls == 6 and run.errors == 0
    stored = dict(zip(run.rows()['example_id'], run.rows()['request_hash']))
    rows = tiny.rows('dev')
    retrieved = demos.retrieve(v.demo_policy, rows, dataset='tiny')
    for row in rows:
        got = retrieved[row['example_id']]
        request = build_request(v, row, demos=got.demos)
        assert request['hash'] == stored[row['example_id']]  # the evaluated request carried these prompts
        content_free = request['constraint']['content_free']
        assert len(content_free) == len(calibration.CONTENT_FREE_INPUTS)
        for prompt in content_free:
            assert all(d['text'] in prompt for d in got.demos) and row['text'] not in prompt
    assert set(run.rows()['prediction']) <= set(tiny.labels())
    assert ws.evaluate(v, tiny, 'dev', progress=False).calls == 0
