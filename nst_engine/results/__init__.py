"""The record of what happened: output roots on any filesystem, the result schema, and
the result store (Parquet rows, one per item attempt) with its one reader. Knows the
engine's statistics and the planner's work items, nothing of Ray or the CLI."""
