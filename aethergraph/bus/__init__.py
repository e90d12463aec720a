"""JetStream transport: subjects and streams, the embedded nats-server, the event log."""
