"""Engine and session factories.

SQLite: WAL journal, a busy timeout, foreign keys on, and write transactions opened with ``BEGIN IMMEDIATE``
so two writers queue instead of failing when a read lock is upgraded. Postgres: a plain pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


POSTGRES_LOCK_TIMEOUT_MS = 30_000
POSTGRES_STATEMENT_TIMEOUT_MS = 300_000


def make_engine(url: str, *, fsync: bool = True) -> Engine:
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=20,
                               max_overflow=20)
        _configure_sqlite(engine, fsync=fsync)
        return engine
    # Never wait forever (contract 6): a stuck lock or statement fails the request (503) instead of hanging.
    options = f"-c lock_timeout={POSTGRES_LOCK_TIMEOUT_MS} -c statement_timeout={POSTGRES_STATEMENT_TIMEOUT_MS}"
    return create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True, connect_args={"options": options})


def _configure_sqlite(engine: Engine, *, fsync: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if fsync else 'OFF'}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """Engine plus two session factories: reads, and writes (``BEGIN IMMEDIATE`` on SQLite)."""

    def __init__(self, url: str, *, fsync: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, fsync=fsync)
        self.dialect = self.engine.dialect.name
        write_engine = self.engine.execution_options(sqlite_immediate=True) if self.dialect == "sqlite" else self.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(write_engine, expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction committed on success, rolled back on any exception."""
        with self._write() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
