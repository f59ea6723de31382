"""Contracts: Avro schemas, their pydantic mirrors, framing, topic names, Kafka settings."""
