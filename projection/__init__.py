"""The read model: the projector (Kafka to PostgreSQL), its tables (``db/``), the rebuild, and
the webhook outbox it writes and delivers."""
