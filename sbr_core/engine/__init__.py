"""The task engine: workflows as sequences of tasks, claimed by nodes under leases.

Decisions are written down in docs/engine.md.
"""
