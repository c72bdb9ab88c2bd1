"""Run the benchmarks and print their figures as Markdown (copy them into docs/benchmarks.md).

Every section runs in its own process and a fresh, temporary Pixeltable home, so its request store starts empty.

    python bench/run.py                 # all sections
    python bench/run.py contract        # one section
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECTIONS = [
    'startup',
    'contract',
    'compare',
    'optimize',
    'calibration',
    'embedders',
    'store',
    'judges',
    'guardrails',
    'serve',
    'families',
    'threads',
]


def _machine() -> str:
    try:
        cpu = next(
            line.split(':', 1)[1].strip()
            for line in Path('/proc/cpuinfo').read_text().splitlines()
            if line.startswith('model name')
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or 'unknown CPU'
    memory = ''
    try:
        kib = int(
            next(
                line.split()[1]
                for line in Path('/proc/meminfo').read_text().splitlines()
                if line.startswith('MemTotal')
            )
        )
        memory = f', {kib / 2**20:.0f} GiB'
    except (OSError, StopIteration, ValueError):
        pass
    return f'{os.cpu_count()} cores ({cpu}){memory}, Python {platform.python_version()}, {platform.system()}'


def main(argv: list[str]) -> int:
    section_only = argv[:1] == ['--section']
    wanted = argv[1:] if section_only else argv or SECTIONS
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        print(f'unknown section(s) {unknown}; choose from {SECTIONS}', file=sys.stderr)
        return 2
    if len(wanted) > 1:  # each section in its own process and Pixeltable home: no section sees another's answers
        print(f'# Benchmark run {datetime.date.today().isoformat()}\n\nMachine: {_machine()}\n', flush=True)
        failed = [name for name in wanted if subprocess.run([sys.executable, __file__, '--section', name]).returncode]
        if failed:
            print(f'section(s) {failed} failed', file=sys.stderr)
        return 1 if failed else 0
    home = tempfile.mkdtemp(prefix='pw-bench-')
    os.environ['PIXELTABLE_HOME'] = home
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if not section_only:
        print(f'# Benchmark run {datetime.date.today().isoformat()}\n\nMachine: {_machine()}\n')
    try:
        for name in wanted:
            module = __import__(name)
            start = time.perf_counter()
            print('\n'.join(module.run()))
            print(f'\n(section took {time.perf_counter() - start:.0f} s)\n', flush=True)
    finally:
        try:
            from pixeltable.env import Env

            if Env._instance is not None and Env._instance._db_server is not None:
                Env._instance._db_server.cleanup_mode = 'stop'
                Env._instance._db_server._cleanup()
        except Exception:
            pass
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
