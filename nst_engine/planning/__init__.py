"""Batch planning: manifests (their pydantic models), sources, fingerprints, and work items
with content-addressed ids. Knows the engine's configuration types, nothing of Ray or the CLI."""
