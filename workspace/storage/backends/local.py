"""The embedded model: llama.cpp in-process, deterministic decoding, label outputs under a mask, by rank or
calibrated.

How a prompt is decoded (its *decoding*) decides the last bits of its logits, so it is part of the model's identity
in every request (`identity_suffix`): a store keeps the answers of each decoding apart.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workspace.errors import BackendError
from workspace.storage import calibration
from workspace.storage.backends.base import Completion

__all__ = [
    'LocalBackend',
    'Decoding',
    'DECODINGS',
    'DEFAULT_DECODING',
    'chat_prompt',
    'choice_grammar',
    'identity_suffix',
]

#: How the local model decodes a prompt (see `LocalBackend`): `paragraphs` (the default) and `blocks64` (the
#: decoding until 2026-12) are deterministic; `scratch` decodes every prompt from an empty context; `llama` is
#: llama.cpp's own prefix reuse, which is not deterministic (for benchmarks).
Decoding = Literal['paragraphs', 'blocks64', 'scratch', 'llama']
DECODINGS: tuple[Decoding, ...] = ('paragraphs', 'blocks64', 'scratch', 'llama')
DEFAULT_DECODING: Decoding = 'paragraphs'

#: What a decoding adds to the model identity. `blocks64` adds nothing: a store made before decodings were named
#: keeps its answers under it, and asks afresh under any other.
_SUFFIX: dict[str, str] = {
    'paragraphs': '+decode=paragraphs64',
    'blocks64': '',
    'scratch': '+decode=scratch',
    'llama': '+decode=llama',
}

#: The most tokens one decode call takes in a deterministic decoding: a text without paragraph breaks is decoded,
#: and reused, in chunks of this many tokens.
CHUNK_MAX = 64
#: Tokens per decode call where reuse does not need chunks (`scratch`, `llama`), and the label-scoring batch.
_BATCH = 512


def identity_suffix(decoding: str) -> str:
    """Return what `decoding` adds to the local model's identity; raise BackendError for an unknown one.

    >>> identity_suffix('paragraphs')
    '+decode=paragraphs64'
    """
    if decoding not in _SUFFIX:
        raise BackendError(f'local decoding {decoding!r} is not known; use one of {", ".join(map(repr, DECODINGS))}')
    return _SUFFIX[decoding]


def decoding_of(model_id: str | None, default: Decoding) -> Decoding:
    """Return the decoding a request's model identity names: its suffix, `blocks64` for an identity without one (a
    request made before decodings were named), `default` for a request without an identity."""
    if not model_id:
        return default
    for decoding, suffix in _SUFFIX.items():
        if suffix and model_id.endswith(suffix):
            return decoding  # type: ignore[return-value]
    return 'blocks64'


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


def _multibyte_pending(text: bytes) -> int:
    """Return how many more tokens llama-cpp-python waits for before checking stop strings: its check for a
    UTF-8 character cut at the end of `text`, copied so that stop strings act exactly as in `create_completion`."""
    pending = 0
    for k, char in enumerate(text[-3:]):
        k = 3 - k
        for num, pattern in [(2, 192), (3, 224), (4, 240)]:
            if num > k and pattern & char == pattern:
                pending = num - k
    return pending


#: Label sequences scored at once: llama.cpp allows at most 256 sequences (LLAMA_MAX_SEQ), sequence 0 being the
#: prompt's.
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


@dataclass
class _Greedy:
    """What a greedy generation produced: its tokens, its text (stop strings cut off) and why it ended."""

    tokens: list[int]
    text: str
    finish_reason: str


class _FreeCores:
    """The threads a local model should use now: one per core that other processes leave free, re-measured at most
    once a second, between requests.

    llama.cpp's threads meet at a barrier after every step of a decode and wait there spinning, so a thread on a
    core another process holds stalls all the others. Measured with the embedded model on 2 cores (docs/benchmarks.md,
    "Threads on a busy machine"): idle, 2 threads 0.064 s a request and 1 thread 0.130 s; with one core kept busy
    by another process, 2 threads 0.236 s and 1 thread 0.115 s. Answers are the same bits with
    any thread count (tests/test_backends.py), so following the load changes speed only. Hand-written: llama.cpp
    takes a thread count and nothing that measures the machine; psutil gives the machine's and this process's CPU
    times, and their difference is the other processes' work.
    """

    INTERVAL_S = 1.0

    def __init__(self, cores: int) -> None:
        import psutil

        self.cores = cores
        self.threads = cores
        self._process = psutil.Process()
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        """Return (now, seconds every core spent busy, seconds this process spent on a core)."""
        import psutil

        times = psutil.cpu_times()
        total = sum(times) - getattr(times, 'guest', 0.0) - getattr(times, 'guest_nice', 0.0)  # counted in user
        busy = total - times.idle - getattr(times, 'iowait', 0.0)
        own = self._process.cpu_times()
        return time.monotonic(), busy, own.user + own.system

    def measure(self) -> int:
        """Return the threads to use: the cores minus the cores' worth of other processes' work since the last
        measure (rounded), at least 1."""
        now = self._sample()  # two reads of /proc on Linux, a few microseconds beside a request's tens of ms
        wall = now[0] - self._last[0]
        if wall >= self.INTERVAL_S:
            others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
            self.threads = max(1, min(self.cores, self.cores - round(others)))
            self._last = now
        return self.threads

    def apply(self, llm: Any) -> None:
        """Set the model's decode and prompt threads to `measure()` where it changed."""
        threads = self.measure()
        if llm.context_params.n_threads != threads:
            llm._ctx.set_n_threads(threads, threads)
            llm.context_params.n_threads = llm.context_params.n_threads_batch = threads


class LocalBackend:
    """llama.cpp in-process: loads the GGUF once, decodes label outputs under a token mask, one request at a time.

    The same request gets the same answer whatever came before it. The last bits of a token's logits depend on the
    shape of the decode call that computed it and of the calls that computed the cells it attends to (measured:
    the same prompt decoded as one call or split in two gives other logits, and another answer on some rows). So a
    prompt is decoded in *chunks* that depend on its own tokens only, and the cached cells of the previous prompt
    are reused only up to a chunk start the two prompts share: every cell is then computed from the same tokens, in
    the same calls, whatever came before.

    - `paragraphs` (the default): a chunk ends after a paragraph break (a blank line, or a newline after a control
      token such as a chat turn's end) or after `CHUNK_MAX` tokens. A few-shot prompt's demos end in a blank line,
      so the rows of a version reuse every demo and decode their own part in one call, as llama.cpp's own reuse
      does (it reuses a few more tokens, and is not deterministic).
    - `blocks64`: aligned blocks of 64 tokens from position 0, reused only whole (the decoding until 2026-12; on
      short shared prefixes nothing is reused).
    - `scratch` decodes every prompt from an empty context; `llama` is llama.cpp's own prefix reuse (benchmarks).

    The decoding is part of the model's identity in every request (`identity_suffix`); a request names it there,
    and the backend's `decoding` is used for a request without an identity.

    At temperature 0 the backend generates greedily itself: a choice spelled under the label mask decodes nothing
    after the prompt while only one label can follow (one-token labels end at the prompt), and pending label tokens
    are decoded in one call when the next one is a choice. Sampling (temperature above 0) and JSON schemas go
    through llama-cpp-python's sampler after the prompt is decoded as above.

    A choice decoded by `rank` or `calibrated` (see `workspace.storage.calibration`) is scored, not generated: the
    prompt is decoded as above, then every label's tokens are decoded in one batch as parallel sequences that share
    the prompt's cached cells (a token trie: a token common to several labels is decoded once, for all of them),
    and the label cells are removed again. The same prompt and labels make the same batch, so a label's score is
    bit-identical whatever came before. Content-free prompts are scored once per process and kept by their text.
    """

    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        decoding: Decoding = DEFAULT_DECODING,
    ) -> None:
        identity_suffix(decoding)  # an unknown decoding fails here
        self.path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        #: with no thread count given, the threads follow the cores other processes leave free
        self._free_cores = None if n_threads else _FreeCores(self.n_threads)
        self.decoding = decoding
        self.calls = 0
        self._llm: Any = None
        self._cached: Any = None  # the tokens of the last prompt, whose cells are its decoding's chunks
        self._cached_decoding: str | None = None
        self._left_at = 0  # the context's length when the last request was answered
        self._pieces: dict[int, tuple[bytes, bool]] = {}
        self._grammars: dict[str, Any] = {}
        self._tries: dict[tuple[str, ...], list[tuple[int, ...]]] = {}
        self._label_tries: dict[tuple[tuple[str, ...], bool], list[_LabelTrie]] = {}
        self._batch: Any = None
        #: label scores of content-free prompts, by (decoding, prompt, labels): the same for every row of a version
        self._content_free: dict[tuple[str, str, tuple[str, ...]], dict[str, float]] = {}
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
                self._llm = llama_cpp.Llama(
                    model_path=str(self.path),
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    # llama-cpp-python otherwise prefills with one thread per core whatever n_threads says
                    n_threads_batch=self.n_threads,
                    n_batch=_BATCH,
                    n_ubatch=_BATCH,
                    seed=0,
                    verbose=False,
                )
                self._batch = self._open_label_scoring(self._llm)
            # Free the model before the interpreter tears down the modules its destructor needs.
            atexit.register(self.close)
        return self._llm

    @staticmethod
    def _open_label_scoring(llm: Any) -> Any:
        """Give the model's context room for label sequences; return the batch every decode call uses.

        llama-cpp-python makes a one-sequence context and has no parameter for more, so the context is made again
        with the same parameters plus `_MAX_SEQUENCES` sequences in one unified cache (a label sequence sees the
        prompt's cells without copying them). A prompt's logits are bit-identical to the one-sequence context's
        (tests/test_calibration.py checks it).
        """
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_seq_max = min(_MAX_SEQUENCES, llama_cpp.llama_max_parallel_sequences())
        params.kv_unified = True
        params.n_batch = params.n_ubatch = max(_BATCH, params.n_batch)
        llm._ctx.close()
        llm._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        llm.context_params = params
        return _internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=params.n_seq_max, verbose=False)

    def close(self) -> None:
        """Free the loaded model; the next request loads it again."""
        if self._llm is not None:
            self._batch.close()
            self._llm.close()
            self._llm = None
            self._cached = None

    # --- decoding a prompt -----------------------------------------------------------------------------------

    def _piece(self, llm: Any, token: int) -> tuple[bytes, bool]:
        """Return a token's text and whether it is a control token (kept per process)."""
        found = self._pieces.get(token)
        if found is None:
            import llama_cpp

            buffer = ctypes.create_string_buffer(64)
            size = llama_cpp.llama_token_to_piece(llm._model.vocab, token, buffer, 64, 0, False)
            control = bool(llama_cpp.llama_vocab_is_control(llm._model.vocab, token))
            found = self._pieces[token] = (buffer.raw[: max(size, 0)], control)
        return found

    def _chunk_starts(self, llm: Any, tokens: Sequence[int], decoding: str) -> list[int]:
        """Return where each decode call of a prompt starts (0 first): a function of the prompt's tokens alone, and
        of each token's predecessors only, so two prompts that share a prefix share the chunk starts in it."""
        n = len(tokens)
        if decoding == 'blocks64':
            return list(range(0, n, 64))
        if decoding != 'paragraphs':
            return list(range(0, n, _BATCH))
        starts, start, previous = [0], 0, (b'', False)
        for i in range(n - 1):
            piece = self._piece(llm, tokens[i])
            newline = piece[0].endswith(b'\n')
            paragraph = b'\n\n' in piece[0] or (newline and (previous[0].endswith(b'\n') or previous[1]))
            if paragraph or i + 1 - start >= CHUNK_MAX:
                start = i + 1
                starts.append(start)
            previous = piece
        return starts

    def _decode(self, llm: Any, tokens: Sequence[int], start: int, logits: Sequence[int]) -> None:
        """Decode `tokens` at positions from `start` in sequence 0 as one call, with logits for the indices in
        `logits`; record them as the context's tokens."""
        batch = self._batch.batch
        batch.n_tokens = len(tokens)
        for j, token in enumerate(tokens):
            batch.token[j], batch.pos[j], batch.logits[j] = token, start + j, False
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = 0
        for j in logits:
            batch.logits[j] = True
        llm._ctx.decode(self._batch)
        llm.input_ids[start : start + len(tokens)] = tokens
        llm.n_tokens = self._left_at = start + len(tokens)

    def _reusable(self, tokens: Sequence[int], decoding: str) -> int:
        """Return how many leading tokens of `tokens` the cached prompt shares (at most all but the last)."""
        import numpy as np

        if self._cached is None or self._cached_decoding != decoding or self._llm.n_tokens != self._left_at:
            return 0  # another decoding, or the model was driven from outside since (a benchmark's plain loop)
        m = min(len(self._cached), len(tokens))
        differs = np.flatnonzero(self._cached[:m] != np.asarray(tokens[:m]))
        return min(int(differs[0]) if len(differs) else m, len(tokens) - 1)

    def _prefill(self, llm: Any, tokens: Sequence[int], decoding: str) -> Any:
        """Decode a prompt under `decoding`, reusing what the cached prompt allows; return a view of its last
        token's logits (see the class docstring)."""
        import numpy as np

        n = len(tokens)
        if n >= self.n_ctx:
            raise BackendError(
                f'requested tokens ({n}) exceed context window of {self.n_ctx}: the prompt does not fit; use fewer '
                'or shorter demos, or raise WORKSPACE_LOCAL_N_CTX'
            )
        shared = self._reusable(tokens, decoding)
        if decoding == 'llama':
            starts = list(range(shared, n, _BATCH))
        elif decoding == 'scratch':
            starts = self._chunk_starts(llm, tokens, decoding)
        else:
            starts = self._chunk_starts(llm, tokens, decoding)
            keep = max(s for s in starts if s <= shared)
            starts = [s for s in starts if s >= keep]
        self._cached = None  # until every chunk is decoded
        llm._ctx.kv_cache_seq_rm(0, starts[0], -1)
        for a, b in zip(starts, [*starts[1:], n]):
            # llama-cpp-python's eval asks for the logits of each call's last token; `paragraphs` only for the
            # prompt's (a fixed rule either way: the cells are the same; the other decodings stay bit-identical)
            last = [b - a - 1] if decoding != 'paragraphs' or b == n else []
            self._decode(llm, tokens[a:b], a, last)
        llm._requires_eval = False
        self._cached, self._cached_decoding = np.array(tokens), decoding
        return _logits(llm, -1)

    def _extend(self, llm: Any, tokens: Sequence[int], decoding: str) -> Any:
        """Decode generated tokens after the context's; return a view of the last one's logits. `paragraphs`
        decodes them in one call; the others one at a time, as llama-cpp-python's generation does."""
        if decoding == 'paragraphs':
            self._decode(llm, tokens, llm.n_tokens, [len(tokens) - 1])
        else:
            for token in tokens:
                self._decode(llm, [token], llm.n_tokens, [0])
        return _logits(llm, -1)

    # --- generating ------------------------------------------------------------------------------------------

    def _label_options(self, llm: Any, labels: Sequence[str]) -> Callable[[list[int]], list[int]]:
        """Return the tokens allowed after `done` generated tokens so that the answer spells exactly one label
        (with or without a leading space), then stops: the language of `choice_grammar(labels)`, sorted."""
        key = tuple(labels)
        if key not in self._tries:
            spellings = {
                tuple(llm.tokenize(f'{p}{label}'.encode(), add_bos=False)) for label in labels for p in ('', ' ')
            }
            self._tries[key] = [s for s in spellings if s]
        sequences = self._tries[key]
        eos = llm.token_eos()

        def options(done: list[int]) -> list[int]:
            k, prefix = len(done), tuple(done)
            allowed = {s[k] for s in sequences if len(s) > k and s[:k] == prefix}
            if prefix in sequences or not allowed:
                allowed.add(eos)
            return sorted(allowed)

        return options

    def _label_mask(self, llm: Any, constraint: Mapping[str, Any] | None) -> Any:
        """Return a llama-cpp-python logits processor that lets the model spell exactly one label, then stop (for
        sampling, which goes through its sampler). Masking the logits directly costs far less than llama.cpp's
        grammar sampler on a 262k-token vocabulary (see docs/benchmarks.md)."""
        if not constraint or 'choice' not in constraint:
            return None
        import llama_cpp
        import numpy as np

        options = self._label_options(llm, constraint['choice'])
        start: list[int] = []

        def allow_labels(input_ids: Any, scores: Any) -> Any:
            if not start:
                start.append(len(input_ids))
            keep = np.asarray(options([int(t) for t in input_ids[start[0] :]]), dtype=np.intp)
            masked = np.full_like(scores, -np.inf)
            masked[keep] = scores[keep]
            return masked

        return llama_cpp.LogitsProcessorList([allow_labels])

    def _grammar(self, constraint: Mapping[str, Any] | None) -> Any:
        if not constraint or 'json_schema' not in constraint:
            return None
        import llama_cpp

        key = json.dumps(constraint['json_schema'], sort_keys=True)
        if key not in self._grammars:
            schema = json.dumps(constraint['json_schema'] or {'type': 'object'})
            self._grammars[key] = llama_cpp.LlamaGrammar.from_json_schema(schema, verbose=False)
        return self._grammars[key]

    def _max_tokens(self, params: Mapping[str, Any], n: int) -> int:
        """Return the generation limit as llama-cpp-python sets it: unlimited (<= 0) and too many are cut to the
        context."""
        wanted = params.get('max_tokens', 64)
        if wanted is None or wanted <= 0 or wanted + n >= self.n_ctx:
            return self.n_ctx - n
        return int(wanted)

    def _generate(
        self,
        llm: Any,
        tokens: Sequence[int],
        params: Mapping[str, Any],
        decoding: str,
        options: Callable[[list[int]], list[int]] | None = None,
    ) -> _Greedy:
        """Generate greedily (temperature 0) after `tokens`, with the stop rules of llama-cpp-python's
        `create_completion`; `options` restricts each next token (a label mask). A token that is the only option
        needs no logits, so it is decoded only when a later token is a choice (see the class docstring)."""
        import llama_cpp
        import numpy as np

        stop = params.get('stop') or []
        stops = [s.encode('utf-8') for s in ([stop] if isinstance(stop, str) else stop)]
        limit = self._max_tokens(params, len(tokens))
        logits = self._prefill(llm, tokens, decoding)
        done: list[int] = []
        pending: list[int] = []
        waiting = 0
        while True:
            allowed = options(done) if options is not None else None
            if allowed is not None and len(allowed) == 1:
                token = allowed[0]
            else:
                if pending:
                    logits, pending = self._extend(llm, pending, decoding), []
                token = int(np.argmax(logits)) if allowed is None else allowed[int(np.argmax(logits[allowed]))]
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                return _Greedy(done, llm.detokenize(done, prev_tokens=list(tokens)).decode('utf-8', 'ignore'), 'stop')
            done.append(token)
            pending.append(token)
            text = llm.detokenize(done, prev_tokens=list(tokens))
            waiting = _multibyte_pending(text) or waiting
            if waiting:  # a character cut in two: llama-cpp-python checks nothing until it is whole
                waiting -= 1
                continue
            hits = [s for s in stops if s in text]
            if hits:
                return _Greedy(done, text[: text.index(hits[0])].decode('utf-8', 'ignore'), 'stop')
            if len(done) >= limit:
                return _Greedy(done, text.decode('utf-8', 'ignore'), 'length')

    def _complete_sampled(
        self, llm: Any, tokens: Sequence[int], params: Mapping[str, Any], constraint: Mapping[str, Any], decoding: str
    ) -> Completion:
        """Sample (temperature above 0) or follow a JSON schema through llama-cpp-python's sampler, from the prompt
        decoded by `decoding`: it finds the whole prompt cached and samples at once."""
        self._prefill(llm, tokens, decoding)
        out = llm.create_completion(
            prompt=list(tokens),
            max_tokens=params.get('max_tokens', 64),
            temperature=params.get('temperature', 0.0),
            top_p=params.get('top_p', 1.0),
            stop=params.get('stop') or [],
            seed=params.get('seed', 0),
            grammar=self._grammar(constraint),
            logits_processor=self._label_mask(llm, constraint),
        )
        self._left_at = llm.n_tokens
        usage = out.get('usage') or {}
        choice = out['choices'][0]
        return Completion(
            text=choice['text'],
            prompt_tokens=usage.get('prompt_tokens'),
            completion_tokens=usage.get('completion_tokens'),
            latency_s=0.0,
            finish_reason=choice.get('finish_reason'),
        )

    def complete(self, request: Mapping[str, Any]) -> Completion:
        if request.get('messages'):  # a chat request: decoded through the model's chat template
            request = {**request, 'prompt': self._text(self._load(), request['messages'])}
        params = dict(request.get('params') or {})
        constraint = dict(request.get('constraint') or {})
        decode = constraint.get('decode', 'mask')
        decoding = decoding_of(request.get('model_id'), self.decoding)
        with self._lock:
            llm = self._load()
            if self._free_cores is not None:
                self._free_cores.apply(llm)
            start = time.perf_counter()
            self.calls += 1
            if decode != 'mask':
                out = self._choose(llm, request, decode, decoding)
            else:
                tokens = llm.tokenize(request['prompt'].encode('utf-8'), add_bos=True, special=True)
                if (params.get('temperature') or 0.0) != 0.0 or constraint.get('json_schema') is not None:
                    out = self._complete_sampled(llm, tokens, params, constraint, decoding)
                else:
                    labels = constraint.get('choice')
                    options = self._label_options(llm, labels) if labels else None
                    made = self._generate(llm, tokens, params, decoding, options)
                    out = Completion(
                        text=made.text,
                        prompt_tokens=len(tokens),
                        completion_tokens=len(made.tokens),
                        latency_s=0.0,
                        finish_reason=made.finish_reason,
                    )
            out['latency_s'] = time.perf_counter() - start
        return out

    # --- scoring labels ----------------------------------------------------------------------------------------

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

    def _score_labels(
        self, llm: Any, prompt: str, labels: Sequence[str], decoding: str
    ) -> tuple[dict[str, float], int]:
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
        last = self._prefill(llm, tokens, decoding)
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
        batch = self._batch.batch
        try:
            for start in range(0, len(trie.nodes), _BATCH):
                chunk = trie.nodes[start : start + _BATCH]
                batch.n_tokens = len(chunk)
                for j, node in enumerate(chunk):
                    batch.token[j], batch.pos[j], batch.logits[j] = node[-1], n + len(node) - 1, True
                    seqs = trie.members[start + j]
                    batch.n_seq_id[j] = len(seqs)
                    for k, seq in enumerate(seqs):
                        batch.seq_id[j][k] = seq
                llm._ctx.decode(self._batch)
                for j, node in enumerate(chunk):
                    logprobs[node] = _token_logprobs(_logits(llm, j), trie.children[node])
        finally:
            for seq in members:
                llm._ctx.kv_cache_seq_rm(seq, -1, -1)
        return logprobs

    def _choose(self, llm: Any, request: Mapping[str, Any], decode: str, decoding: str) -> Completion:
        """Answer a choice request by `rank` or `calibrated`: the label with the best score, with every score."""
        constraint = request['constraint']
        labels = list(constraint['choice'])
        if decode not in ('rank', 'calibrated'):
            raise BackendError(f'decode {decode!r} is not known; use one of {", ".join(calibration.DECODES)}')
        scores, prompt_tokens = self._score_labels(llm, request['prompt'], labels, decoding)
        if decode == 'calibrated':
            prompts = constraint.get('content_free')
            if not prompts:
                raise BackendError(
                    "a request with decode 'calibrated' needs its content-free prompts in constraint['content_free']; "
                    'build it with workspace.core.versions.build_request'
                )
            per_prompt = [self._content_free_scores(llm, self._text(llm, p), labels, decoding) for p in prompts]
            scores = calibration.calibrate(scores, calibration.content_free_prior(per_prompt))
        best = max(labels, key=lambda label: scores[label])  # the first label of equal ones
        return Completion(
            text=best,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(llm.tokenize(f' {best}'.encode(), add_bos=False)),
            latency_s=0.0,
            finish_reason='stop',
            scores=scores,
        )

    def _content_free_scores(self, llm: Any, prompt: str, labels: Sequence[str], decoding: str) -> dict[str, float]:
        key = (decoding, prompt, tuple(labels))
        if key not in self._content_free:
            self._content_free[key] = self._score_labels(llm, prompt, labels, decoding)[0]
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
