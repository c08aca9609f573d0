"""Fleet: events over NATS JetStream (outbox, publisher) into PostgreSQL (collector, reader)."""
