"""The wire format: the event catalog and its codec, wait payload schemas, node reports."""
