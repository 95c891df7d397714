"""Migrations on SQLite and Postgres (twice is a no-op, the schema matches the models), the operator CLI, and the
lazy pass-through commands that must not import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from coordinator.db.engine import make_engine
from coordinator.db.registry import metadata
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import federation_config


def _mfcpl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MFCPL_")} | env
    return subprocess.run([sys.executable, "-m", "mfcpl", *args], env=full_env, capture_output=True, text=True,
                          timeout=120)


def test_db_upgrade_twice_is_a_noop(database_url: str, tmp_path: Path) -> None:
    env = {"MFCPL_DATABASE_URL": database_url, "MFCPL_STATE_DIR": str(tmp_path)}
    for _ in range(2):
        done = _mfcpl("db", "upgrade", env=env)
        assert done.returncode == 0, done.stderr
        assert "schema at 0005" in done.stdout
    current = _mfcpl("db", "current", env=env)
    assert current.stdout.split() == ["current", "0005", "head", "0005"]
    engine = make_engine(database_url)
    try:
        assert {"federations", "clients", "rounds", "updates", "model_versions", "prototype_sets", "events",
                "evaluations", "blobs", "idempotency_keys", "alembic_version"} <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == [], diff
    finally:
        engine.dispose()


def test_operator_cli_against_a_server(coordinator: CoordinatorProcess, tmp_path: Path) -> None:
    env = {"MFCPL_SERVER_URL": coordinator.base_url, "MFCPL_ADMIN_TOKEN": coordinator.admin_token}
    config = tmp_path / "federation.json"
    config.write_text(json.dumps(federation_config(name="from-cli")))
    created = _mfcpl("federation", "create", "--file", str(config), env=env)
    assert created.returncode == 0, created.stderr
    fid = json.loads(created.stdout)["id"]
    listed = _mfcpl("federation", "list", "--json", env=env)
    assert [f["id"] for f in json.loads(listed.stdout)] == [fid]
    enrolled = _mfcpl("client", "enroll", "--federation", fid, "--name", "edge-1", env=env)
    assert enrolled.returncode == 0, enrolled.stderr
    token = json.loads(enrolled.stdout)["token"]
    with coordinator.client(token) as client:
        assert client.get(f"/v1/federations/{fid}/clients/me").json()["name"] == "edge-1"
    bad = _mfcpl("client", "enroll", "--federation", fid, "--name", "edge-1", env=env)
    assert bad.returncode != 0 and "409" in bad.stderr
    wrong_token = _mfcpl("federation", "list", env={**env, "MFCPL_ADMIN_TOKEN": "wrong"})
    assert wrong_token.returncode != 0 and "unauthorized" in wrong_token.stderr


def test_coordinator_commands_do_not_import_torch() -> None:
    code = ("import sys; from mfcpl.cli import build_parser; import coordinator.app; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_generated_admin_token_is_private(tmp_path: Path) -> None:
    from coordinator.settings import Settings, ensure_admin_token

    settings = Settings(state_dir=tmp_path, admin_token=None)
    token = ensure_admin_token(settings)
    path = tmp_path / "admin_token"
    assert path.read_text().strip() == token and (path.stat().st_mode & 0o777) == 0o600
    assert ensure_admin_token(Settings(state_dir=tmp_path, admin_token=None)) == token
