"""The PostgreSQL read model: migrations, the projection's writes, the API's reads, API keys."""

from projection.db.migrate import migrate

__all__ = ["migrate"]
