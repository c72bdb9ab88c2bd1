"""Mining: prompts applications actually sent, grouped into families.

Owns ingesting raw prompt logs, families with canonical templates and typed slots (`canonical`), drift over time
windows, and similarity search.

May import: `workspace.analysis`, `workspace.core`, `workspace.storage`, the base modules and `udfs`; not
`workspace.optimization` (a peer).
"""
