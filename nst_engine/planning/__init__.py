"""Batch planning: manifests, work items with content-addressed ids, and the result
table. Knows the engine's configuration types, nothing of Ray or the CLI."""
