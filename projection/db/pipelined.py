"""One transaction whose statements travel together: the projector's batch write.

psycopg's ``conn.transaction()`` in pipeline mode sends a Sync and waits for every result on
entering and on leaving each block it nests (it wraps itself in two pipeline levels, and a
savepoint inside adds two more): the projector's batch, one transaction with the projection's
savepoint in it, took eight round trips to PostgreSQL. Here BEGIN and COMMIT are plain
statements in one pipeline on an autocommit connection, so a batch waits only where it reads
(the projection's one read) and at the end: two round trips, half the time per batch
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.pq import TransactionStatus


@contextmanager
def pipelined_transaction(conn: psycopg.Connection) -> Iterator[None]:
    """Run the block in one transaction in pipeline mode; commit at its end, roll back if it
    (or any statement in it) fails, and re-raise. ``conn`` must be in autocommit mode and not in
    a transaction; the block must not open ``conn.transaction()`` blocks of its own (they would
    still work, as savepoints, at the price of their round trips)."""
    if not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("pipelined_transaction needs an idle autocommit connection")
    try:
        with conn.pipeline():  # leaving it sends the Sync and raises the first error, if any
            conn.execute("BEGIN")
            yield
            conn.execute("COMMIT")
    except BaseException:
        # A failed statement leaves the transaction aborted; a failure in the block's own code
        # leaves it open. Either way it ends here, and the connection is usable again.
        if not conn.closed and conn.info.transaction_status in (TransactionStatus.INTRANS,
                                                                TransactionStatus.INERROR):
            conn.execute("ROLLBACK")
        raise
