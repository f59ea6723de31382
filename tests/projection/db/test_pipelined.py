"""pipelined_transaction against the real PostgreSQL: all or nothing, two round trips, and the
connection usable after any failure."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from projection.db.pipelined import pipelined_transaction


@pytest.fixture
def conn(db_url: str):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k int PRIMARY KEY, v text NOT NULL)")
        yield conn


def _rows(conn: psycopg.Connection) -> list[tuple[int, str]]:
    return conn.execute("SELECT k, v FROM t ORDER BY k").fetchall()


def test_the_block_commits_as_one_transaction_and_reads_inside_it_see_its_writes(conn):
    with pipelined_transaction(conn):
        conn.execute("INSERT INTO t VALUES (1, 'a')")
        seen = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s, %s)", [(2, "b"), (3, "c")])
    assert seen == 1
    assert _rows(conn) == [(1, "a"), (2, "b"), (3, "c")]
    assert conn.info.transaction_status == TransactionStatus.IDLE


def test_a_statement_the_server_refuses_rolls_back_the_whole_block(conn):
    with pytest.raises(psycopg.DataError):  # SQLSTATE 22012, raised when the pipeline syncs
        with pipelined_transaction(conn):
            conn.execute("INSERT INTO t VALUES (1, 'a')")
            conn.execute("SELECT 1 / 0")
            conn.execute("INSERT INTO t VALUES (2, 'b')")
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert _rows(conn) == []
    with pipelined_transaction(conn):  # the connection is usable again
        conn.execute("INSERT INTO t VALUES (3, 'c')")
    assert _rows(conn) == [(3, "c")]


def test_an_exception_in_the_block_rolls_back_what_it_sent(conn):
    with pytest.raises(RuntimeError, match="the caller's own bug"):
        with pipelined_transaction(conn):
            conn.execute("INSERT INTO t VALUES (1, 'a')")
            raise RuntimeError("the caller's own bug")
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert _rows(conn) == []


def test_a_constraint_broken_by_the_last_statement_rolls_back_the_first(conn):
    conn.execute("INSERT INTO t VALUES (1, 'kept')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        with pipelined_transaction(conn):
            conn.execute("UPDATE t SET v = 'changed' WHERE k = 1")
            conn.execute("INSERT INTO t VALUES (1, 'duplicate')")
    assert _rows(conn) == [(1, "kept")]


def test_it_needs_an_idle_autocommit_connection(db_url: str):
    with psycopg.connect(db_url) as not_autocommit:
        with pytest.raises(ValueError, match="idle autocommit"):
            with pipelined_transaction(not_autocommit):
                pass
    with psycopg.connect(db_url, autocommit=True) as conn:
        with conn.transaction():
            with pytest.raises(ValueError, match="idle autocommit"):
                with pipelined_transaction(conn):
                    pass
