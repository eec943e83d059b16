"""State across records and runs: duplicate ids, incremental runs against an earlier run, carrying rows over."""
