"""Idempotency-Key on the creating POSTs (federation, enrolment, model version 0, evaluation): a retry with the
same key and body answers the first response and creates nothing; another body with the key is a 409; a
refusal stores nothing; identical requests racing create one resource. SQLite and Postgres."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from coordinator.core import Services
from coordinator.db.engine import make_engine
from coordinator.idempotency import IdempotencyKeyRow, forget_expired, seal, unseal
from coordinator.metrics.orm import EvaluationRow
from coordinator.settings import Settings
from mfcpl.wire.tensors import encode_model
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import (
    SAFETENSORS,
    create_federation,
    enroll,
    federation_config,
    small_model,
    wait_task,
)

KEY = "Idempotency-Key"


def _post(admin: httpx.Client, path: str, key: str | None, **kwargs: Any) -> httpx.Response:
    return admin.post(path, headers={**kwargs.pop("headers", {}), **({KEY: key} if key else {})}, **kwargs)


def _count(database_url: str, row: Any, **where: Any) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            query = select(func.count()).select_from(row)
            for name, value in where.items():
                query = query.where(getattr(row, name) == value)
            return int(conn.scalar(query) or 0)
    finally:
        engine.dispose()


def test_federation_create(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        first = _post(admin, "/v1/federations", "fed-a", json=federation_config(name="a"))
        again = _post(admin, "/v1/federations", "fed-a", json=federation_config(name="a"))
        assert first.status_code == again.status_code == 201, (first.text, again.text)
        assert again.json() == first.json()
        assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
        other = _post(admin, "/v1/federations", "fed-a", json=federation_config(name="b"))
        assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict", other.text
        # Same body, no key (or another key): a new federation each time.
        assert _post(admin, "/v1/federations", None, json=federation_config(name="a")).status_code == 201
        assert _post(admin, "/v1/federations", "fed-b", json=federation_config(name="a")).status_code == 201
        assert len(admin.get("/v1/federations").json()) == 3
        # After the retention window the key is forgotten (collected): the same request creates anew.
        services = Services.build(Settings(database_url=coordinator.database_url, state_dir=coordinator.data_dir,
                                           admin_token=coordinator.admin_token, auto_migrate=False))
        try:
            assert forget_expired(services, datetime.now(UTC) + timedelta(days=2)) == 2
        finally:
            services.db.dispose()
        renewed = _post(admin, "/v1/federations", "fed-a", json=federation_config(name="a"))
        assert renewed.status_code == 201 and renewed.json()["id"] != first.json()["id"]


def test_federation_create_racing_retries_make_one(coordinator: CoordinatorProcess) -> None:
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(6)

    def send() -> None:
        with coordinator.client() as admin:
            barrier.wait()
            answers.append(_post(admin, "/v1/federations", "race", json=federation_config(name="race")))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    with coordinator.client() as admin:
        assert len(admin.get("/v1/federations").json()) == 1


def test_enrolment_reshows_the_token_to_the_same_admin(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid = create_federation(admin)
        path = f"/v1/federations/{fid}/clients"
        # A refused request stores nothing: the key is still free afterwards.
        refused = _post(admin, "/v1/federations/fed_missing/clients", "enrol-1", json={"name": "node-1"})
        assert refused.status_code == 404
        first = _post(admin, path, "enrol-1", json={"name": "node-1"})
        again = _post(admin, path, "enrol-1", json={"name": "node-1"})
        assert first.status_code == again.status_code == 201, (first.text, again.text)
        assert again.json() == first.json() and again.json()["token"].startswith("mfcpl_c_")
        assert _post(admin, path, "enrol-1", json={"name": "node-2"}).json()["code"] == "idempotency_conflict"
        # Without the key, the same name is a duplicate (409 conflict), as before.
        assert _post(admin, path, None, json={"name": "node-1"}).json()["code"] == "conflict"
        assert [c["name"] for c in admin.get(path).json()] == ["node-1"]
    with coordinator.client(first.json()["token"]) as node:
        assert node.get(f"/v1/federations/{fid}/clients/me").json()["id"] == first.json()["id"]
    # The stored answer does not hold the token in the clear.
    engine = make_engine(coordinator.database_url)
    try:
        with engine.connect() as conn:
            body = conn.execute(select(IdempotencyKeyRow.body).where(IdempotencyKeyRow.key == "enrol-1")).scalar_one()
    finally:
        engine.dispose()
    assert body["id"] == first.json()["id"] and body["token"] != first.json()["token"]


def test_seal_needs_the_same_secret() -> None:
    sealed = seal("mfcpl_c_secret", "admin-token", "ctx")
    assert "mfcpl_c_secret" not in sealed and sealed != seal("mfcpl_c_secret", "other-token", "ctx")
    assert unseal(sealed, "admin-token", "ctx") == "mfcpl_c_secret"


def test_model_version_0(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid = create_federation(admin)
        path = f"/v1/federations/{fid}/models"
        body = encode_model(small_model(1))
        first = _post(admin, path, "model-0", content=body, headers=SAFETENSORS)
        again = _post(admin, path, "model-0", content=body, headers=SAFETENSORS)
        assert first.status_code == again.status_code == 201, (first.text, again.text)
        assert again.json() == first.json() and again.headers["ETag"] == first.headers["ETag"]
        other = _post(admin, path, "model-0", content=encode_model(small_model(2)), headers=SAFETENSORS)
        assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"
        # The same body without a key is the content-addressed replay it always was (200).
        assert _post(admin, path, None, content=body, headers=SAFETENSORS).status_code == 200
        assert [m["version"] for m in admin.get(path).json()] == [0]


def test_evaluation(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid = create_federation(admin, small_model(3), clients_per_round=2)
        clients = [enroll(admin, fid, f"node-{i}") for i in range(2)]
        wait_task(clients[0], fid)
        path = f"/v1/federations/{fid}/rounds/1/evaluations"
        evaluation = {"split": "dev", "metrics": {"macro_f1": 0.5}, "model_version": 0}
        first = _post(admin, path, "eval-1", json=evaluation)
        again = _post(admin, path, "eval-1", json=evaluation)
        assert first.status_code == again.status_code == 201, (first.text, again.text)
        assert again.json() == first.json()
        other = _post(admin, path, "eval-1", json={**evaluation, "metrics": {"macro_f1": 0.6}})
        assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"
        # The same key on another route is another request: 409 too.
        assert _post(admin, "/v1/federations", "eval-1", json=federation_config()).status_code == 409
        for client in clients:
            client.close()
    assert _count(coordinator.database_url, EvaluationRow, federation_id=fid) == 1


@pytest.mark.postgres
def test_a_key_committed_after_the_lookup_wins(postgres_url: str, tmp_path: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving behind a racing pair that made two federations on Postgres: this request looks the key up
    and finds nothing, an identical request then commits it, and this one must not delete that fresh row as if it
    had expired: its own insert collides and it answers the winner's response, its own writes rolled back.
    (Postgres only: SQLite opens write transactions with BEGIN IMMEDIATE, so no other writer can commit between.)"""
    from sqlalchemy.orm import Session
    from starlette.requests import Request

    from coordinator import idempotency
    from coordinator.auth import hash_token
    from coordinator.db.migrate import upgrade

    services = Services.build(Settings(database_url=postgres_url, state_dir=tmp_path, admin_token="t" * 32,
                                       auto_migrate=False))
    upgrade(services.db.engine)
    other_engine = make_engine(postgres_url)
    token = "interleaving-token"
    request = Request({"type": "http", "method": "POST", "path": "/v1/federations", "query_string": b"",
                       "headers": [(b"authorization", f"Bearer {token}".encode())]})
    fingerprint = idempotency.request_sha256(request, b"{}")
    real_replay = idempotency._replay
    looked: list[int] = []

    def replay_then_lose_the_race(session: Any, caller: Any, now: datetime, ttl_s: float) -> Any:
        if not looked:  # the first lookup happened just before the winner committed
            looked.append(1)
            with Session(other_engine) as other, other.begin():  # another connection: the racing request
                other.add(IdempotencyKeyRow(principal=hash_token(token), key="k", request_sha256=fingerprint,
                                            status=201, body={"id": "fed_winner"}, headers={}, sealed=[],
                                            created_at=now))
            return None
        return real_replay(session, caller, now, ttl_s)

    created: list[str] = []

    def create() -> idempotency.Created:
        created.append("fed_loser")
        return idempotency.Created(201, {"id": "fed_loser"})

    monkeypatch.setattr(idempotency, "_replay", replay_then_lose_the_race)
    try:
        answer = idempotency.idempotent(services, request, "k", b"{}", create)
    finally:
        services.db.dispose()
        other_engine.dispose()
    assert json.loads(bytes(answer.body)) == {"id": "fed_winner"}, answer.body
    assert answer.headers["Idempotent-Replayed"] == "true"
    assert created == ["fed_loser"]  # it did run (and was rolled back): the collision, not the lookup, decided
    assert _count(postgres_url, IdempotencyKeyRow, key="k") == 1
