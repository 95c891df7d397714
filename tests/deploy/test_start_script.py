"""deploy/start.sh against a fresh Postgres database: two replicas started at the same moment (one with two
uvicorn workers) migrate once, both serve, a round driven across both closes with the right model, and
SIGTERM stops them cleanly."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from sqlalchemy.engine import make_url

from coordinator.db.migrate import head_revision

from ._replica import Replica, replica_env
from ._round import run_round
from ._support import free_port

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(postgres_url: str, tmp_path: Path) -> Iterator[tuple[Replica, Replica, str]]:
    token = "admin-" + secrets.token_hex(16)
    pair = []
    for name, workers in (("a", 2), ("b", 1)):
        port = free_port()
        env = replica_env(postgres_url, tmp_path / name, port, token, workers)
        pair.append(Replica(port=port, log_path=tmp_path / f"{name}.log", env=env))
    for replica in pair:  # both at once: their migrations race
        replica.start()
    try:
        for replica in pair:
            replica.wait_ready()
        yield pair[0], pair[1], token
    finally:
        for replica in pair:
            replica.stop()


def _alembic_versions(postgres_url: str) -> list[str]:
    url = make_url(postgres_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database) as conn:
        return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]


def test_two_replicas_migrate_once_serve_and_close_a_round(replicas, postgres_url: str) -> None:
    a, b, token = replicas
    head = head_revision()
    assert _alembic_versions(postgres_url) == [head]
    for replica in (a, b):
        log = replica.log()
        assert f"schema at {head}" in log, log
        assert "Traceback" not in log and " ERROR " not in log, log
        readiness = httpx.get(replica.url + "/readyz", timeout=5).json()
        assert readiness["status"] == "ready"

    # start.sh exec'd uvicorn: the process the runtime signals is the server itself, with its workers.
    assert a.process is not None and "uvicorn" in Path(f"/proc/{a.process.pid}/cmdline").read_text()
    workers = [c for c in a.children() if "multiprocessing.spawn" in c]
    assert len(workers) == 2, a.children()

    # Admin calls alternate between the replicas; client 0 talks to a, client 1 to b.
    outcome = run_round([a.url, b.url], [a.url, b.url], token)
    assert outcome.round["state"] == "closed" and outcome.round["received"] == 2
    assert outcome.round["output_model_version"] == 1
    for name, expected in outcome.expected_weights.items():
        np.testing.assert_allclose(outcome.new_weights[name], expected, rtol=1e-5, atol=1e-6)
    # Both replicas see the new version (state and blobs in Postgres, nothing in process memory).
    for replica in (a, b):
        version = httpx.get(f"{replica.url}/v1/federations/{outcome.federation_id}/models/latest",
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert version.status_code == 200 and version.json()["version"] == 1

    # SIGTERM (docker stop, pod deletion) reaches uvicorn through the exec and it shuts down cleanly.
    for replica in (a, b):
        # uvicorn re-raises the signal after a clean shutdown of a single process; the supervisor exits 0.
        assert replica.stop(timeout_s=20) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in replica.log()
        assert "Traceback" not in replica.log()
    assert a.log().count("Finished server process") == 2


def test_start_script_refuses_a_bad_migrate_setting(tmp_path: Path) -> None:
    env = replica_env(f"sqlite:///{tmp_path / 'x.db'}", tmp_path, free_port(), "t", 1,
                      {"MFCPL_MIGRATE_ON_START": "sometimes"})
    replica = Replica(port=0, log_path=tmp_path / "bad.log", env=env).start()
    assert replica.process is not None and replica.process.wait(30) == 64
    assert "MFCPL_MIGRATE_ON_START must be true or false" in replica.log()
