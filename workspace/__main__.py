"""`python -m workspace`: the `prompt-workspace` command line."""

import sys

from workspace.jobs.cli import main

sys.exit(main())
