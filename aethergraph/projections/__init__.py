"""DuckDB read models built from the event stream (state, lineage, SQL)."""
