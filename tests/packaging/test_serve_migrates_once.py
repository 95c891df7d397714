"""`mfcpl serve` migrates once, in the parent, and starts its workers with MFCPL_AUTO_MIGRATE=false; an app
started without it (a bare `uvicorn coordinator.app:create_app --factory`) still migrates on start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

import coordinator.app
import coordinator.db.migrate
from mfcpl.cli import main


@pytest.fixture
def upgrades(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Every schema upgrade, by who asked; a clean MFCPL_* environment on a fresh SQLite state folder."""
    for name in [k for k in os.environ if k.startswith("MFCPL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MFCPL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MFCPL_ADMIN_TOKEN", "mfcpl_a_test")
    monkeypatch.setenv("MFCPL_AUTO_MIGRATE", "true")  # recorded, so the value `serve` sets is undone afterwards
    monkeypatch.delenv("MFCPL_AUTO_MIGRATE")
    calls: list[str] = []
    real = coordinator.db.migrate.upgrade

    def counting(who: str) -> Any:
        def upgrade(engine: Any) -> str | None:
            calls.append(who)
            return real(engine)
        return upgrade

    monkeypatch.setattr(coordinator.db.migrate, "upgrade", counting("mfcpl serve"))
    monkeypatch.setattr(coordinator.app, "upgrade", counting("worker"))
    return calls


def _run_worker() -> int:
    """What a uvicorn worker does with the factory: build the app from the environment, run its lifespan."""
    with TestClient(coordinator.app.create_app()) as client:
        return client.get("/readyz").status_code


def test_serve_migrates_in_the_parent_and_not_in_its_workers(upgrades: list[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    workers: list[dict[str, Any]] = []

    def fake_run(app: str, **options: Any) -> None:
        assert app == "coordinator.app:create_app" and options["factory"] is True
        assert os.environ["MFCPL_AUTO_MIGRATE"] == "false"  # what every spawned worker inherits
        for _ in range(options["workers"]):
            assert _run_worker() == 200  # the schema is at head: ready without migrating
        workers.append(options)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert main(["serve", "--workers", "2", "--port", "1"]) == 0
    assert workers and upgrades == ["mfcpl serve"]


def test_serve_with_auto_migrate_off_does_not_migrate(upgrades: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFCPL_AUTO_MIGRATE", "false")
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)
    assert main(["serve"]) == 0
    assert upgrades == []


def test_a_bare_uvicorn_app_migrates_on_start(upgrades: list[str]) -> None:
    assert _run_worker() == 200
    assert upgrades == ["worker"]
