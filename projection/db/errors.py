"""Errors of the PostgreSQL read model (``projection/db``)."""

from __future__ import annotations

from schemas.errors import ComputeError


class DatabaseError(ComputeError):
    """Something about the read model's database is wrong; the message says what to do."""


class MigrationError(DatabaseError):
    """A migration could not be applied, or an applied one was changed afterwards.

    Nothing of the failing migration was kept (each runs in its own transaction). Fix the SQL, or
    if a released migration was edited, restore it and add a new numbered migration instead.
    """


class NotEmptyError(DatabaseError):
    """``rebuild`` was pointed at a database whose tasks table already holds rows.

    Rebuild into a fresh database (``createdb``), or drop the projection tables first.
    """
