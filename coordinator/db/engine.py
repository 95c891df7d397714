"""Engine and session factories.

SQLite: WAL journal, a busy timeout, foreign keys on, and write transactions opened with ``BEGIN IMMEDIATE``
so two writers queue instead of failing when a read lock is upgraded. Postgres: a plain pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
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


DatabaseFault = Literal["busy", "unavailable"]

# Postgres SQLSTATEs of a database that is busy (the same request may pass in a moment): lock_not_available,
# query_canceled (statement_timeout), serialization_failure, deadlock_detected.
_PG_BUSY = frozenset({"55P03", "57014", "40001", "40P01"})
# ... and of one that cannot serve now: connection exceptions (08...), insufficient resources (53...: disk full,
# out of memory, too many connections), system errors (58...), admin/crash shutdown, cannot connect now,
# the database does not exist (dropped or renamed), a read-only transaction (a standby).
_PG_UNAVAILABLE_CLASSES = ("08", "53", "58")
_PG_UNAVAILABLE = frozenset({"57P01", "57P02", "57P03", "57P05", "3D000", "25006"})
# SQLite result codes (``sqlite3.Error.sqlite_errorname``, extended codes share the prefix).
_SQLITE_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")
_SQLITE_UNAVAILABLE = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_NOLFS")


def database_fault(exc: BaseException) -> DatabaseFault | None:
    """What a database error says about the database, not the request: ``busy`` (a lock or statement timeout,
    a full connection pool), ``unavailable`` (unreachable, refusing connections, dropped, disk full or
    read-only), or None (anything else: a bug, or a constraint the caller handles)."""
    if isinstance(exc, sa_exc.TimeoutError):  # QueuePool limit reached: every connection is in use
        return "busy"
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        if sqlstate in _PG_BUSY:
            return "busy"
        if sqlstate[:2] in _PG_UNAVAILABLE_CLASSES or sqlstate in _PG_UNAVAILABLE:
            return "unavailable"
        return None
    if exc.connection_invalidated:
        return "unavailable"
    sqlite_name = getattr(orig, "sqlite_errorname", None)
    if isinstance(sqlite_name, str):
        if sqlite_name.startswith(_SQLITE_BUSY):
            return "busy"
        if sqlite_name.startswith(_SQLITE_UNAVAILABLE):
            return "unavailable"
        return None
    message = str(orig)
    if "database is locked" in message:
        return "busy"
    if "database or disk is full" in message or "readonly database" in message:
        return "unavailable"
    # psycopg raises OperationalError without a SQLSTATE when it cannot connect at all (refused, no route,
    # name resolution, the server closed the connection).
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) \
            and type(orig).__module__.startswith("psycopg"):
        return "unavailable"
    return None


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


_UNIT: ContextVar[tuple[Database, Session] | None] = ContextVar("mfcpl_unit_of_work", default=None)


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
        """A transaction committed on success, rolled back on any exception.

        Inside ``unit_of_work()`` of this database (same thread or task), it is a SAVEPOINT of that one
        transaction instead, committed with it."""
        joined = _UNIT.get()
        if joined is not None and joined[0] is self:
            with joined[1].begin_nested():
                yield joined[1]
            return
        with self._write() as session, session.begin():
            yield session

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """One write transaction that every ``write()`` made inside it joins (as a SAVEPOINT): a service's
        writes and the caller's own row (e.g. an Idempotency-Key record) commit together or not at all."""
        with self.write() as session:
            token = _UNIT.set((self, session))
            try:
                yield session
            finally:
                _UNIT.reset(token)

    def dispose(self) -> None:
        self.engine.dispose()
