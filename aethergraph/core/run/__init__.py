"""Running runs: the executor (graph_fns and tools), the static-graph scheduler, answering a wait, the launcher."""
