"""The offline embedder (workspace/embeddings.py) and its Pixeltable UDF (udfs/embed.py), on the real model."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from conftest import ROOT

from workspace import embeddings
from workspace.embeddings import DIMENSIONS, EMBEDDER_ID, Embedder, embed
from workspace.errors import EmbedderError, WorkspaceError

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


def test_same_vectors_in_another_process():
    code = 'import sys; from workspace.embeddings import embed; sys.stdout.buffer.write(embed(sys.argv[1:]).tobytes())'
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1'}
    out = subprocess.run([sys.executable, '-c', code, *CARD], env=env, capture_output=True, check=True).stdout
    assert np.array_equal(np.frombuffer(out, dtype=np.float32).reshape(len(CARD), DIMENSIONS), embed(CARD))


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
    empty = embed([''])
    assert empty.shape == (1, DIMENSIONS) and np.isfinite(empty).all()


def test_long_text_is_truncated_not_rejected():
    long = ' '.join(['card'] * 2_000)
    assert np.array_equal(embed([long]), embed([' '.join(['card'] * 1_000)]))


@pytest.mark.parametrize(
    ('texts', 'message'),
    [('just one string', 'sequence of texts'), (['fine', None], 'text 1 is NoneType'), ([3], 'text 0 is int')],
)
def test_bad_input_names_the_problem(texts, message):
    with pytest.raises(EmbedderError, match=message):
        embed(texts)


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(embeddings, '_MODEL', ('no_such_embedder_package', 'model.onnx', '0' * 64))
    with pytest.raises(WorkspaceError, match="'no_such_embedder_package', which is not installed; run: pip install"):
        Embedder().embed(['x'])


def test_changed_model_file_is_refused(monkeypatch):
    package, path, _ = embeddings._MODEL
    monkeypatch.setattr(embeddings, '_MODEL', (package, path, 'f' * 64))
    with pytest.raises(EmbedderError, match='not the pinned ffffffffffff'):
        Embedder().embed(['x'])


def test_runs_offline_in_a_new_process():
    code = 'from workspace.embeddings import embed, EMBEDDER_ID; print(EMBEDDER_ID, embed(["hello"]).shape)'
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}
    # no route to any host: a download attempt would fail
    env.update({'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9'})
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f'{EMBEDDER_ID} (1, {DIMENSIONS})'


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
