"""Fixtures shared by the whole suite: a database (SQLite file or a fresh Postgres database) and a real
coordinator process on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.coordinator import CoordinatorProcess
from tests.support.services import require_postgres

POSTGRES_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _pg_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `postgres` are skipped, naming it, when the server is down (they fail under CI=true)."""
    if item.get_closest_marker("postgres") is not None:
        require_postgres()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, uniquely named Postgres database, dropped afterwards (skipped or, under CI=true, failed when the
    server is down)."""
    require_postgres()
    name = f"mfcpl_test_{uuid.uuid4().hex[:12]}"
    _pg_execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.format(name=name)
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mfcpl.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def coordinator(database_url: str, tmp_path: Path) -> Iterator[CoordinatorProcess]:
    """A started coordinator on ``database_url`` with a fast round timer (tick 0.1 s)."""
    proc = CoordinatorProcess(database_url, tmp_path / "data", tick_s=0.1)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
