"""The PostgreSQL read model: migrations, the projection's writes, the API's reads, API keys."""

from state.db.migrate import migrate

__all__ = ["migrate"]
