"""`make test` on a fresh machine: the Makefile runs ruff, mypy and scripts/test-services.sh before pytest, .ci/run
is `make test` from scratch, and a missing service skips its tests with a reason naming it (fails them under
CI=true)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import services

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "test-services.sh"


def test_make_test_runs_lint_typecheck_and_the_services_script_before_pytest() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: setup lint typecheck services$", makefile, flags=re.MULTILINE)
    assert re.search(r"^services:\n\tbash scripts/test-services\.sh$", makefile, flags=re.MULTILINE)
    assert re.search(r"^typecheck: setup\n\t\$\(PY\) -m mypy$", makefile, flags=re.MULTILINE)
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert "rm -rf .venv" in ci and any(line.startswith("make test") for line in ci)
    assert "pg_ctlcluster" not in "\n".join(ci) and "apt-get" not in "\n".join(ci)  # one place: the script
    assert "make test" in (ROOT / "README.md").read_text()


def test_services_script_passes_shellcheck() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    done = subprocess.run([str(shellcheck), str(SCRIPT), str(ROOT / ".ci/run")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout


def test_services_script_reports_without_changing_anything() -> None:
    env = {**os.environ, "CHECK_ONLY": "1"}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith("test-services: PostgreSQL:") for line in lines), done.stderr
    assert any(line.startswith("test-services: nginx and openssl:") for line in lines), done.stderr


def test_a_missing_service_skips_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="nginx is not available .*scripts/test-services.sh"):
        services.missing_service("nginx", "not on PATH")


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_a_missing_service_fails_in_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="nginx is not available .*CI=true"):
        services.missing_service("nginx", "not on PATH")


def test_unreachable_postgres_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(services, "POSTGRES_ADMIN_DSN", "host=127.0.0.1 port=9 user=postgres dbname=test")
    services.postgres_problem.cache_clear()
    try:
        with pytest.raises(pytest.skip.Exception, match=r"PostgreSQL at 127\.0\.0\.1:5432 \(database test\)"):
            services.require_postgres()
        monkeypatch.setenv("CI", "true")
        with pytest.raises(pytest.fail.Exception, match="PostgreSQL"):
            services.require_postgres()
    finally:
        services.postgres_problem.cache_clear()
