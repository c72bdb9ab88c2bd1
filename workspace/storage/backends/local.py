"""The embedded model: llama.cpp in-process, deterministic decoding, label outputs under a mask, by rank or
calibrated."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workspace.errors import BackendError
from workspace.storage import calibration
from workspace.storage.backends.base import Completion

__all__ = ['LocalBackend', 'choice_grammar', 'chat_prompt']


def _escape_gbnf(text: str) -> str:
    return text.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


def choice_grammar(labels: list[str]) -> str:
    """Return a GBNF grammar that lets the model answer exactly one of `labels` (after an optional space).

    >>> choice_grammar(['yes', 'no'])
    'root ::= " "? ("yes" | "no")'
    """
    return 'root ::= " "? (' + ' | '.join(f'"{_escape_gbnf(label)}"' for label in labels) + ')'


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration (C libraries write there directly)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_llama_log = logging.getLogger('workspace.llama_cpp')
_log_callback: Any = None


def _route_llama_log(llama_cpp: Any) -> None:
    """Send llama.cpp's own log (context set-up, "using full-size SWA cache", ...) to the `workspace.llama_cpp`
    logger at DEBUG instead of stderr, where a notebook shows it in red. `logging.getLogger('workspace.llama_cpp')
    .setLevel(logging.DEBUG)` with a handler shows it again."""
    global _log_callback
    if _log_callback is not None:
        return

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        _llama_log.debug('%s', text.decode('utf-8', 'replace').rstrip())

    _log_callback = callback  # ctypes calls it for the life of the process: keep a reference
    llama_cpp.llama_log_set(callback, None)


def _logits(llm: Any, i: int) -> Any:
    """Return a view of the logits of output `i` of the last decode (-1: the last); the next decode overwrites it."""
    import llama_cpp
    import numpy as np

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, i), shape=(llm.n_vocab(),))


def _token_logprobs(row: Any, tokens: Sequence[int]) -> dict[int, float]:
    """Return the log-softmax of a logits row at `tokens` (the normalizer summed in float64)."""
    import numpy as np

    top = float(row.max())
    total = top + math.log(float(np.exp(row - top).sum(dtype=np.float64)))
    return {token: float(row[token]) - total for token in tokens}


#: Label continuations decoded in one batch, and sequences (labels) scored at once; llama.cpp allows at most
#: 256 sequences (LLAMA_MAX_SEQ), sequence 0 being the prompt's.
_LABEL_BATCH = 512
_MAX_SEQUENCES = 256


@dataclass(frozen=True)
class _LabelTrie:
    """The token trie of a set of label spellings, for scoring them all in one batched decode.

    `nodes` are the proper prefixes of spellings (every token that has a next token to score), parents first;
    `members[i]` are the labels (as sequence ids 1..n) whose spelling runs through node i, so node i's token is
    decoded once and seen by exactly those sequences. `children[prefix]` are the next tokens after a prefix.
    """

    spellings: dict[str, tuple[int, ...]]
    nodes: list[tuple[int, ...]]
    members: list[list[int]]
    children: dict[tuple[int, ...], list[int]]

    @classmethod
    def build(cls, spellings: dict[str, tuple[int, ...]]) -> _LabelTrie:
        seq = {label: i + 1 for i, label in enumerate(spellings)}
        through: dict[tuple[int, ...], list[int]] = {}
        children: dict[tuple[int, ...], set[int]] = {}
        for label, tokens in spellings.items():
            for i in range(len(tokens)):
                children.setdefault(tokens[:i], set()).add(tokens[i])
                if i:
                    through.setdefault(tokens[:i], []).append(seq[label])
        nodes = sorted(through, key=lambda prefix: (len(prefix), prefix))
        return cls(spellings, nodes, [through[n] for n in nodes], {k: sorted(v) for k, v in children.items()})


def chat_prompt(
    messages: Sequence[Mapping[str, str]], chat_template: str | None, *, bos_token: str = '', eos_token: str = ''
) -> str:
    """Return the text a local model completes for chat `messages`: the model's own chat template (the GGUF's
    `tokenizer.chat_template`, rendered by llama-cpp-python's sandboxed Jinja2 formatter with the generation
    prompt), or, for a model without one (the embedded base Gemma), the messages as plain text
    (`udfs.render.transcript`) followed by an `[assistant]` turn to complete. A leading BOS token is left out:
    the tokenizer adds it.

    >>> chat_prompt([{'role': 'user', 'content': 'Hi'}], None)
    '[user]\\nHi\\n\\n[assistant]\\n'
    """
    if not chat_template:
        from udfs.render import transcript

        return transcript(messages) + '\n\n[assistant]\n'
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(chat_template, eos_token=eos_token, bos_token=bos_token)
    text = formatter(messages=[dict(m) for m in messages]).prompt  # type: ignore[misc]
    return text[len(bos_token) :] if bos_token and text.startswith(bos_token) else text


class LocalBackend:
    """llama.cpp in-process: loads the GGUF once, decodes label outputs under a token mask, one request at a time.

    The same request gets the same answer whatever came before it. llama.cpp reuses the previous prompt's cached
    prefix and decodes only the rest, and logits computed in another split of the prompt differ in the last bits:
    a byte-identical prompt got another answer on 1 of 59 poem_sentiment rows depending on the order. So a prompt
    is always decoded in blocks of `prefix_block` tokens from position 0, and only whole blocks of the previous
    prompt are reused: every block is then computed from the same tokens, in the same shape, whatever came
    before. `prefix_block=0` decodes every prompt from an empty context instead; `None` is llama.cpp's own reuse
    (not deterministic; for benchmarks). Their costs are in docs/benchmarks.md.

    A choice decoded by `rank` or `calibrated` (see `workspace.storage.calibration`) is scored, not generated: the prompt
    is decoded as above, then every label's tokens are decoded in one batch as parallel sequences that share the
    prompt's cached cells (a token trie: a token common to several labels is decoded once, for all of them), and
    the label cells are removed again. The same prompt and labels make the same batch, so a label's score is
    bit-identical whatever came before. Content-free prompts are scored once per process and kept by their text.
    """

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        prefix_block: int | None = 64,
    ) -> None:
        self.path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.prefix_block = prefix_block
        self.calls = 0
        self._llm: Any = None
        self._prompt_tokens = 0  # the length of the last prompt: the tokens after it were generated one by one
        self._grammars: dict[str, Any] = {}
        self._tries: dict[tuple[str, ...], list[list[int]]] = {}
        self._label_tries: dict[tuple[tuple[str, ...], bool], list[_LabelTrie]] = {}
        self._label_batch: Any = None
        #: label scores of content-free prompts, by (prompt, labels): the same for every row of a version
        self._content_free: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}
        self.content_free_scored = 0
        self._lock = threading.Lock()

    def check(self) -> None:
        self._load()

    def _load(self) -> Any:
        if self._llm is None:
            try:
                import llama_cpp
            except ImportError as e:
                raise BackendError(
                    "llama-cpp-python is not installed; run 'make run', which builds it with "
                    'CMAKE_ARGS="-DGGML_NATIVE=OFF"'
                ) from e
            _route_llama_log(llama_cpp)
            with _quiet_stderr():  # llama.cpp's Metal/CPU probes can still write to fd 2 directly
                batch = {'n_batch': self.prefix_block, 'n_ubatch': self.prefix_block} if self.prefix_block else {}
                self._llm = llama_cpp.Llama(
                    model_path=str(self.path),
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    seed=0,
                    verbose=False,
                    **batch,
                )
                self._label_batch = self._open_label_scoring(self._llm)
            # Free the model before the interpreter tears down the modules its destructor needs.
            atexit.register(self.close)
        return self._llm

    @staticmethod
    def _open_label_scoring(llm: Any) -> Any:
        """Give the model's context room for label sequences; return the batch that decodes them.

        llama-cpp-python makes a one-sequence context and has no parameter for more, so the context is made again
        with the same parameters plus `_MAX_SEQUENCES` sequences in one unified cache (a label sequence sees the
        prompt's cells without copying them) and a decode batch that takes a whole label trie. `Llama.eval` still
        decodes prompts in `n_batch` chunks, so a prompt's logits are bit-identical to the one-sequence context's
        (tests/test_calibration.py checks it).
        """
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_seq_max = min(_MAX_SEQUENCES, llama_cpp.llama_max_parallel_sequences())
        params.kv_unified = True
        params.n_batch = params.n_ubatch = max(_LABEL_BATCH, params.n_batch)
        llm._ctx.close()
        llm._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        llm.context_params = params
        return _internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=params.n_seq_max, verbose=False)

    def close(self) -> None:
        """Free the loaded model; the next request loads it again."""
        if self._llm is not None:
            self._label_batch.close()
            self._llm.close()
            self._llm = None

    def _grammar(self, constraint: Mapping[str, Any] | None) -> Any:
        if not constraint or 'json_schema' not in constraint:
            return None
        import llama_cpp

        key = json.dumps(constraint['json_schema'], sort_keys=True)
        if key not in self._grammars:
            schema = json.dumps(constraint['json_schema'] or {'type': 'object'})
            self._grammars[key] = llama_cpp.LlamaGrammar.from_json_schema(schema, verbose=False)
        return self._grammars[key]

    def _label_mask(self, llm: Any, constraint: Mapping[str, Any] | None) -> Any:
        """Return a logits processor that lets the model spell exactly one label, then stop.

        It accepts the same language as `choice_grammar(labels)` over each label's own tokens (with and without a
        leading space). Masking the logits directly costs far less than llama.cpp's grammar sampler on a
        262k-token vocabulary (see docs/benchmarks.md).
        """
        if not constraint or 'choice' not in constraint:
            return None
        import llama_cpp
        import numpy as np

        labels = tuple(constraint['choice'])
        if labels not in self._tries:
            spellings = {
                tuple(llm.tokenize(f'{p}{label}'.encode(), add_bos=False)) for label in labels for p in ('', ' ')
            }
            self._tries[labels] = [list(s) for s in spellings if s]
        sequences = self._tries[labels]
        eos = llm.token_eos()
        start: list[int] = []

        def allow_labels(input_ids: Any, scores: Any) -> Any:
            if not start:
                start.append(len(input_ids))
            done = [int(t) for t in input_ids[start[0] :]]
            allowed = {s[len(done)] for s in sequences if len(s) > len(done) and s[: len(done)] == done}
            if any(s == done for s in sequences) or not allowed:
                allowed.add(eos)
            keep = np.fromiter(allowed, dtype=np.intp)
            masked = np.full_like(scores, -np.inf)
            masked[keep] = scores[keep]
            return masked

        return llama_cpp.LogitsProcessorList([allow_labels])

    def _align(self, llm: Any, tokens: Sequence[int]) -> None:
        """Keep only the whole blocks of the cached prompt that `tokens` start with (see the class docstring)."""
        if self.prefix_block is None:
            return
        keep = 0
        if self.prefix_block:
            import numpy as np

            cached = np.asarray(llm.input_ids[: min(llm.n_tokens, self._prompt_tokens)])
            wanted = np.asarray(tokens[: len(cached)])
            differs = np.flatnonzero(cached[: len(wanted)] != wanted)
            common = int(differs[0]) if len(differs) else len(wanted)
            keep = min(common, len(tokens) - 1) // self.prefix_block * self.prefix_block
        if keep:
            llm.n_tokens = keep  # generate() then reuses exactly these and decodes the rest in aligned blocks
        else:
            llm.reset()
        self._prompt_tokens = len(tokens)

    def _decode_prompt(self, llm: Any, tokens: Sequence[int]) -> Any:
        """Decode a prompt as `complete` would before generating; return a view of its last token's logits."""
        self._align(llm, tokens)
        if self.prefix_block is None:  # llama.cpp's own reuse, as Llama.generate does it (not deterministic)
            cached = llm.input_ids[: llm.n_tokens]
            common = next((i for i, (a, b) in enumerate(zip(cached, tokens)) if a != b), min(len(cached), len(tokens)))
            llm.n_tokens = min(common, len(tokens) - 1)
        llm.eval(tokens[llm.n_tokens :])
        return _logits(llm, -1)

    def _tries_for(self, llm: Any, labels: tuple[str, ...], spaced: bool) -> list[_LabelTrie]:
        """Return the label tries for these labels, spelled with or without a leading space, in groups of
        sequences one decode can hold."""
        key = (labels, spaced)
        if key not in self._label_tries:
            space = ' ' if spaced else ''
            spellings = [(label, tuple(llm.tokenize(f'{space}{label}'.encode(), add_bos=False))) for label in labels]
            per = _MAX_SEQUENCES - 1
            self._label_tries[key] = [
                _LabelTrie.build(dict(spellings[i : i + per])) for i in range(0, len(spellings), per)
            ]
        return self._label_tries[key]

    def _score_labels(self, llm: Any, prompt: str, labels: Sequence[str]) -> tuple[dict[str, float], int]:
        """Return each label's log-probability after `prompt`, and the prompt's length in tokens.

        A label is spelled with one leading space after a prompt that ends without whitespace, as a demo line
        (`Sentiment: positive`) spells it, and without one after a space or newline. A label whose spelling
        begins another label's keeps only the probability of stopping there.
        """
        tokens = llm.tokenize(prompt.encode('utf-8'), add_bos=True, special=True)
        tries = self._tries_for(llm, tuple(labels), spaced=bool(prompt) and not prompt[-1].isspace())
        n, width = len(tokens), max(len(trie.nodes) for trie in tries)
        if n + width > self.n_ctx:
            raise BackendError(
                f"the prompt ({n} tokens) and its labels' tokens ({width}) do not fit the context of {self.n_ctx} "
                'tokens; use fewer or shorter demos, or raise WORKSPACE_LOCAL_N_CTX'
            )
        last = self._decode_prompt(llm, tokens)
        roots = [_token_logprobs(last, trie.children[()]) for trie in tries]  # before the next decode reuses it
        scores: dict[str, float] = {}
        for trie, root in zip(tries, roots):
            logprobs = {(): root} | self._decode_trie(llm, trie, n)
            for label, spelling in trie.spellings.items():
                scores[label] = sum(logprobs[spelling[:i]][token] for i, token in enumerate(spelling))
                if spelling in logprobs:  # another label goes on from here: keep the probability of stopping
                    going_on = sum(math.exp(v) for v in logprobs[spelling].values())
                    scores[label] += math.log1p(-going_on) if going_on < 1.0 else -math.inf
        return scores, n

    def _decode_trie(self, llm: Any, trie: _LabelTrie, n: int) -> dict[tuple[int, ...], dict[int, float]]:
        """Decode a label trie after the `n` prompt tokens of sequence 0; return each node's next-token
        log-probabilities. Each label is a sequence that sees the prompt's cells; its cells are removed after."""
        members = range(1, len(trie.spellings) + 1)
        for seq in members:
            llm._ctx.kv_cache_seq_cp(0, seq, -1, -1)
        logprobs: dict[tuple[int, ...], dict[int, float]] = {}
        batch = self._label_batch.batch
        try:
            for start in range(0, len(trie.nodes), _LABEL_BATCH):
                chunk = trie.nodes[start : start + _LABEL_BATCH]
                batch.n_tokens = len(chunk)
                for j, node in enumerate(chunk):
                    batch.token[j], batch.pos[j], batch.logits[j] = node[-1], n + len(node) - 1, True
                    seqs = trie.members[start + j]
                    batch.n_seq_id[j] = len(seqs)
                    for k, seq in enumerate(seqs):
                        batch.seq_id[j][k] = seq
                llm._ctx.decode(self._label_batch)
                for j, node in enumerate(chunk):
                    logprobs[node] = _token_logprobs(_logits(llm, j), trie.children[node])
        finally:
            for seq in members:
                llm._ctx.kv_cache_seq_rm(seq, -1, -1)
        return logprobs

    def _choose(self, llm: Any, request: Mapping[str, Any], decode: str) -> Completion:
        """Answer a choice request by `rank` or `calibrated`: the label with the best score, with every score."""
        constraint = request['constraint']
        labels = list(constraint['choice'])
        if decode not in ('rank', 'calibrated'):
            raise BackendError(f'decode {decode!r} is not known; use one of {", ".join(calibration.DECODES)}')
        scores, prompt_tokens = self._score_labels(llm, request['prompt'], labels)
        if decode == 'calibrated':
            prompts = constraint.get('content_free')
            if not prompts:
                raise BackendError(
                    "a request with decode 'calibrated' needs its content-free prompts in constraint['content_free']; "
                    'build it with workspace.core.versions.build_request'
                )
            prior = calibration.content_free_prior(
                [self._content_free_scores(llm, self._text(llm, p), labels) for p in prompts]
            )
            scores = calibration.calibrate(scores, prior)
        best = max(labels, key=lambda label: scores[label])  # the first label of equal ones
        return Completion(
            text=best,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(llm.tokenize(f' {best}'.encode(), add_bos=False)),
            latency_s=0.0,
            finish_reason='stop',
            scores=scores,
        )

    def _content_free_scores(self, llm: Any, prompt: str, labels: Sequence[str]) -> dict[str, float]:
        key = (prompt, tuple(labels))
        if key not in self._content_free:
            self._content_free[key] = self._score_labels(llm, prompt, labels)[0]
            self.content_free_scored += 1
        return self._content_free[key]

    def _text(self, llm: Any, prompt: str | Sequence[Mapping[str, str]]) -> str:
        """Return the text to decode: a prompt as it is, chat messages through the model's chat template."""
        if isinstance(prompt, str):
            return prompt
        vocab = llm._model
        return chat_prompt(
            prompt,
            llm.metadata.get('tokenizer.chat_template'),
            bos_token=vocab.token_get_text(llm.token_bos()),
            eos_token=vocab.token_get_text(llm.token_eos()),
        )

    def complete(self, request: Mapping[str, Any]) -> Completion:
        if request.get('messages'):  # a chat request: decoded through the model's chat template
            request = {**request, 'prompt': self._text(self._load(), request['messages'])}
        params = dict(request.get('params') or {})
        decode = (request.get('constraint') or {}).get('decode', 'mask')
        if decode != 'mask':
            with self._lock:
                llm = self._load()
                start = time.perf_counter()
                self.calls += 1
                out = self._choose(llm, request, decode)
                out['latency_s'] = time.perf_counter() - start
            return out
        with self._lock:
            llm = self._load()
            grammar = self._grammar(request.get('constraint'))
            mask = self._label_mask(llm, request.get('constraint'))
            start = time.perf_counter()
            self.calls += 1
            tokens = llm.tokenize(request['prompt'].encode('utf-8'), add_bos=True, special=True)
            self._align(llm, tokens)
            out = llm.create_completion(
                prompt=tokens,
                max_tokens=params.get('max_tokens', 64),
                temperature=params.get('temperature', 0.0),
                top_p=params.get('top_p', 1.0),
                stop=params.get('stop') or [],
                seed=params.get('seed', 0),
                grammar=grammar,
                logits_processor=mask,
            )
            latency = time.perf_counter() - start
        usage = out.get('usage') or {}
        choice = out['choices'][0]
        return Completion(
            text=choice['text'],
            prompt_tokens=usage.get('prompt_tokens'),
            completion_tokens=usage.get('completion_tokens'),
            latency_s=latency,
            finish_reason=choice.get('finish_reason'),
        )
