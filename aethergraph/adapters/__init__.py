"""Bus subscribers and entry points: the CLI and console output."""
