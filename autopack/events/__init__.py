"""Durable events: the outbox table, the dispatcher that fans events out to idempotent handlers,
and the Redis Streams mirror for live views and outside consumers."""
