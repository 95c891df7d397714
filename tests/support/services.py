"""The services some tests need beyond the venv (PostgreSQL, nginx, openssl), which scripts/test-services.sh
brings up where it can. A test whose service is missing is skipped with a reason that names it, except under
``CI=true``, where a missing service fails the test: CI must never pass by skipping."""

from __future__ import annotations

import functools
import os
from typing import NoReturn

import pytest

POSTGRES_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def missing_service(what: str, detail: str) -> NoReturn:
    """Skip the current test because ``what`` is not available (fail it under CI=true)."""
    message = f"{what} is not available ({detail}); scripts/test-services.sh (run by `make test`) provides it"
    if in_ci():
        pytest.fail(f"{message} [CI=true: a missing service fails the test]", pytrace=False)
    pytest.skip(message)


@functools.cache
def postgres_problem() -> str | None:
    """Why the test PostgreSQL (127.0.0.1:5432, database test, trust auth) cannot be used, or None. Asked once."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_DSN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as error:  # any reason is reported in the skip message
        return f"{type(error).__name__}: {' '.join(str(error).split()) or 'no detail'}"
    return None


def require_postgres() -> None:
    problem = postgres_problem()
    if problem is not None:
        missing_service("PostgreSQL at 127.0.0.1:5432 (database test)", problem)
