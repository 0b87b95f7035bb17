"""The record of what happened: the result schema, the result table (Parquet rows, one per
item attempt) with its one reader, resume (what a rerun trusts as done), and the runs table.
Knows the engine's statistics and the planner's work items, nothing of Ray or the CLI."""
