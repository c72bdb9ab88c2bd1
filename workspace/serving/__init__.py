"""Serving: versions used by applications.

Owns render and complete with rules and executions logged (`serve`), the HTTP API and its keys, A/B experiments
and the traffic that assigns units to versions, and a small HTTP client.

May import: every layer below it (`mining`, `optimization`, `analysis`, `core`, `storage`), the base modules and
`udfs`.
"""
