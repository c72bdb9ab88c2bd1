"""What several benchmarks share: where the project and the real datasets are, and the busy loop that stands for
a laptop doing other work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: ../shared/datasets next to the project; from a git worktree (../wt/<name>), the one next to the main checkout.
SHARED = next(
    (p for p in (ROOT.parent / 'shared' / 'datasets', ROOT.parent.parent / 'shared' / 'datasets') if p.is_dir()),
    ROOT.parent / 'shared' / 'datasets',
)

#: A pure-Python busy loop that also ends when the bench's process is gone (checked every million turns).
BUSY = 'import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(10**6):\n        pass\n'


def busy_loop() -> subprocess.Popen[bytes]:
    """Start a process that keeps one core busy until it is killed or the bench's process is gone."""
    return subprocess.Popen([sys.executable, '-c', BUSY])
