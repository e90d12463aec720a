"""``NodeContext`` and its services: channel, logger, waits, kv, artifacts, memory, and registered services."""
