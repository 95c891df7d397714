"""Schema upgrades with Alembic, safe when several processes start at once.

Postgres: the upgrade runs under a session-level advisory lock, so the second process waits and then finds
the schema at head. SQLite: an exclusive file lock next to the database file does the same.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

log = logging.getLogger("mfcpl.migrate")

ADVISORY_LOCK_KEY = 0x6D6663706C  # "mfcpl"
MIGRATIONS_PACKAGE = "coordinator.migrations"  # the repository's top-level migrations/, installed here


@cache
def migrations_dir() -> Path:
    """The folder of the Alembic scripts, from the installed package (editable install or wheel)."""
    location = resources.files(MIGRATIONS_PACKAGE)
    if not isinstance(location, Path) or not (location / "env.py").is_file():
        raise RuntimeError(f"the Alembic scripts of {MIGRATIONS_PACKAGE} are not files on disk: {location!r}")
    return location


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    database = make_url(engine.url).database
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine) -> str | None:
    """Upgrade the schema to head (a no-op when already there); returns the head revision."""
    head = head_revision()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            conn.commit()
            try:
                if current_revision(conn) != head:
                    log.info("upgrading the schema to %s", head)
                    command.upgrade(alembic_config(conn), "head")
                    conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                conn.commit()
        return head
    with _sqlite_file_lock(engine), engine.connect() as conn:
        if current_revision(conn) != head:
            log.info("upgrading the schema to %s", head)
            command.upgrade(alembic_config(conn), "head")
            conn.commit()
    return head
