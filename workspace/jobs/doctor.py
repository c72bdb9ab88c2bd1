"""Installation checks: what `prompt-workspace doctor` and `make` run after installing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

from workspace import config

__all__ = ['run_checks']

_DECODE = """
import llama_cpp
from workspace.storage.backends import embedded_model_path
llm = llama_cpp.Llama(model_path=str(embedded_model_path()), n_ctx=256, verbose=False)
out = llm.create_completion(prompt='The capital of France is', max_tokens=3, temperature=0.0)
print(repr(out['choices'][0]['text']))
"""


def run_checks() -> Iterator[tuple[str, bool, str]]:
    """Yield (check, passed, detail) for each part of the installation."""
    try:
        import llama_cpp

        yield 'llama-cpp-python', True, llama_cpp.__version__
    except ImportError as e:
        yield 'llama-cpp-python', False, f'{e}; run make install'
        return
    try:
        from workspace.storage.backends import embedded_model_path

        path = embedded_model_path()
        yield 'embedded model', True, f'{path} ({path.stat().st_size / 2**20:.0f} MiB)'
    except Exception as e:
        yield 'embedded model', False, str(e)
        return
    # In a child process: a natively built llama.cpp dies with SIGILL or SIGSEGV on the first decode.
    proc = subprocess.run([sys.executable, '-c', _DECODE], capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        yield 'first decode', True, proc.stdout.strip().splitlines()[-1]
    else:
        yield (
            'first decode',
            False,
            f'exit code {proc.returncode}: {proc.stderr.strip()[-300:]}. If the code is negative the llama-cpp-python '
            'wheel was built for another CPU: delete ~/.cache/prompt-workspace/wheelhouse and run make install',
        )
    try:
        from workspace.storage.embeddings import EMBEDDER_ID, embed

        embed(['The capital of France is'])
        yield 'embedder', True, EMBEDDER_ID
    except Exception as e:
        yield 'embedder', False, str(e)
    try:
        config.connect()
        yield 'pixeltable', True, f'home {config.pixeltable_home()}'
    except Exception as e:
        yield 'pixeltable', False, f'{e}'
