"""Jobs: the workspace run from outside a notebook.

Owns the `prompt-workspace` command line and its command server (a process that keeps the workspace loaded
between commands), headless notebook runs with papermill, scheduled evaluations, the
quickstart job behind `make run`, installation checks, and exports and imports of runs and prompt files.

May import: every layer.
"""
