"""Never wait forever: no round stays in `closing` for ever, cancel always ends a round, and a federation that
cannot open a round says why (and goes on with the clients that can train). SQLite and Postgres.

Aggregates that could overflow (metrics, prototype counts, the model itself) are checked here first as pure
functions, then through a real coordinator."""

from __future__ import annotations

import errno
import json
import logging
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from coordinator.aggregation import aggregate_prototypes, aggregate_round, weighted_metrics
from coordinator.core import Services
from coordinator.db.engine import make_engine
from coordinator.rounds.service import get_round
from coordinator.rounds.timer import tick
from coordinator.settings import Settings
from mfcpl.wire.schemas import FederationCreate
from mfcpl.wire.tensors import LocalPrototypes, Update, encode_model, encode_update
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import (
    create_federation,
    enroll,
    federation_config,
    known_update,
    local_prototypes,
    post_update,
    small_model,
    wait_for,
    wait_round_state,
    wait_task,
)

F32_MAX = float(np.finfo(np.float32).max)


def _events(admin: httpx.Client, fid: str) -> list[dict[str, Any]]:
    body = admin.get(f"/v1/federations/{fid}/events", params={"follow": "false"}).text
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


def _sql(database_url: str, statement: str, **params: Any) -> int:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            return int(conn.execute(text(statement), params).rowcount)
    finally:
        engine.dispose()


def _naive_utc(delta: timedelta = timedelta()) -> datetime:
    return (datetime.now(UTC) + delta).replace(tzinfo=None)


# ------------------------------------------------------------------------------------- pure aggregation


def test_weighted_metrics_cannot_overflow() -> None:
    # The weighted sum 2 * 1e308 overflows; the mean does not.
    assert weighted_metrics([({"loss": 1e308}, 2.0), ({"loss": 1e308}, 2.0)]) == {"loss": 1e308}
    got = weighted_metrics([({"loss": 1e308, "acc": 0.5}, 1e300), ({"loss": -1e308, "acc": 1.0}, 3e300)])
    assert math.isclose(got["loss"], -0.5e308) and math.isclose(got["acc"], 0.875)
    # The plain mean stays exact where it was.
    assert weighted_metrics([({"loss": 1.0}, 10.0), ({"loss": 2.0}, 30.0)]) == {"loss": 1.75}


def test_weighted_metrics_leave_out_a_non_finite_mean_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mfcpl.aggregation"):
        got = weighted_metrics([({"loss": math.inf, "acc": 0.5}, 1.0), ({"loss": -math.inf, "acc": 0.5}, 1.0)])
    assert got == {"acc": 0.5}
    assert any("'loss' left out" in r.getMessage() for r in caplog.records)


def test_prototype_counts_beyond_float32_are_refused() -> None:
    def sent(count: float) -> dict[str, LocalPrototypes]:
        return {"shared": LocalPrototypes(classes=np.array([0], np.int64), vectors=np.ones((1, 4), np.float32),
                                          counts=np.array([count], np.float32))}

    # One client's count at the top of float32 is fine: the sums are float64 and the vectors are a mean.
    one = aggregate_prototypes([sent(3e38)], num_classes=2, previous=None)["shared"]
    assert np.isfinite(one.counts).all() and np.allclose(one.vectors[0], 1.0)
    ok = aggregate_prototypes([sent(1.5e38), sent(1.5e38)], num_classes=2, previous=None)["shared"]
    assert np.isfinite(ok.counts).all() and np.allclose(ok.vectors[0], 1.0)
    with pytest.raises(ValueError, match=r"level 'shared', class 0: prototype counts sum to 6e\+38"):
        aggregate_prototypes([sent(3e38), sent(3e38)], num_classes=2, previous=None)


def test_an_aggregated_model_that_overflows_is_refused() -> None:
    config = FederationCreate.model_validate(federation_config(algorithm="fedopt",
                                                               training={"server_lr": 1.0, "server_momentum": 0.0}))
    big = {"w": np.full(4, 3e38, np.float32)}
    # FedOpt's pseudo-gradient global - average = 3e38 - (-3e38) overflows float32.
    body = encode_update(Update(weights={"w": -big["w"]}, num_samples=1, base_model_version=0))
    with pytest.raises(ValueError, match=r"tensor 'w' overflowed to NaN or Inf"), np.errstate(over="ignore"):
        aggregate_round(config, [(body, 1.0)], {"w": np.dtype(np.float32)}, global_weights={"w": big["w"]})


# ------------------------------------------------------------------------------- finding 1 over HTTP


def test_huge_metrics_close_the_round(coordinator: CoordinatorProcess) -> None:
    """loss = 1e308 with num_samples = 2 used to overflow to Infinity: the close failed on Postgres (json) and the
    round was re-claimed for ever; on SQLite the metric became null."""
    model = small_model(11)
    with coordinator.client() as admin:
        fid = create_federation(admin, model, rounds=1, clients_per_round=2)
        clients = [enroll(admin, fid, f"node-{i}") for i in range(2)]
        for i, client in enumerate(clients):
            wait_task(client, fid)
            _, body = known_update(model, i, num_samples=2, base_version=0, metrics={"loss": 1e308, "acc": 0.25})
            assert post_update(client, fid, 1, body).status_code == 201
        closed = wait_round_state(admin, fid, 1, ("closed", "failed"), timeout_s=15)
        assert closed["state"] == "closed", closed
        assert closed["train_metrics"] == {"acc": 0.25, "loss": 1e308}
        assert admin.get(f"/v1/federations/{fid}/models/1").status_code == 200
        assert admin.get(f"/v1/federations/{fid}/metrics").json()[0]["train"]["loss"] == 1e308
        assert admin.get(f"/v1/federations/{fid}").json()["status"] == "completed"
        for client in clients:
            client.close()


def test_prototype_count_overflow_fails_the_round_and_the_federation_goes_on(
        coordinator: CoordinatorProcess) -> None:
    """Valid float32 counts of 3e38 from two clients sum past float32: the round fails visibly (it used to stay in
    closing, model version 1 answering 404 for ever), the next round opens and closes normally."""
    model = small_model(12)
    with coordinator.client() as admin:
        fid = create_federation(admin, model, rounds=1, clients_per_round=2)
        clients = [enroll(admin, fid, f"node-{i}") for i in range(2)]
        for i, client in enumerate(clients):
            wait_task(client, fid)
            protos = {"shared": LocalPrototypes(classes=np.array([0, 1], np.int64),
                                                vectors=np.ones((2, 4), np.float32),
                                                counts=np.array([3e38, 1.0], np.float32))}
            _, body = known_update(model, i, num_samples=3, base_version=0, prototypes=protos)
            assert post_update(client, fid, 1, body).status_code == 201
        failed = wait_round_state(admin, fid, 1, ("closed", "failed"), timeout_s=15)
        assert failed["state"] == "failed", failed
        assert "prototype counts sum to 6e+38" in failed["failure_reason"]
        assert [e["data"]["reason"] for e in _events(admin, fid) if e["type"] == "round.failed"] == \
            [failed["failure_reason"]]

        tasks = [wait_task(c, fid) for c in clients]
        assert {t["round"] for t in tasks} == {2} and {t["model_version"] for t in tasks} == {0}
        for i, client in enumerate(clients):
            _, body = known_update(model, 10 + i, num_samples=3, base_version=0,
                                   prototypes={"shared": local_prototypes(i, [0, 1])})
            assert post_update(client, fid, 2, body).status_code == 201
        assert wait_round_state(admin, fid, 2)["output_model_version"] == 1
        assert admin.get(f"/v1/federations/{fid}/models/1").json()["round"] == 2
        assert admin.get(f"/v1/federations/{fid}").json()["status"] == "completed"
        for client in clients:
            client.close()


def test_cancel_ends_a_closing_round(coordinator: CoordinatorProcess, database_url: str) -> None:
    """A round held in closing by a closer (alive, stuck or dead) no longer survives the federation's cancel."""
    model = small_model(13)
    with coordinator.client() as admin:
        fid = create_federation(admin, model, rounds=2, clients_per_round=2)
        clients = [enroll(admin, fid, f"node-{i}") for i in range(2)]
        wait_task(clients[0], fid)
        held = _sql(database_url, "UPDATE rounds SET state = 'closing', claim_token = 'busy', claimed_at = :t, "
                    "close_attempts = 1 WHERE federation_id = :f AND number = 1 AND state = 'open'",
                    t=_naive_utc(), f=fid)
        assert held == 1
        reason = admin.get(f"/v1/federations/{fid}").json()["status_reason"]
        assert reason == "round 1 closing (attempt 1 of 3)"
        assert wait_task(clients[0], fid, action="wait")["reason"] == reason

        cancelled = admin.post(f"/v1/federations/{fid}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled" and cancelled.json()["status_reason"] is None
        round1 = admin.get(f"/v1/federations/{fid}/rounds/1").json()
        assert round1["state"] == "failed" and round1["failure_reason"] == "federation cancelled"
        assert wait_task(clients[1], fid, action="done")["reason"] == "federation cancelled"
        failed = [e for e in _events(admin, fid) if e["type"] == "round.failed"]
        assert [(e["round"], e["data"]["reason"]) for e in failed] == [(1, "federation cancelled")]
        for client in clients:
            client.close()


def test_a_close_out_of_attempts_fails_instead_of_being_claimed_again(database_url: str, tmp_path: Path) -> None:
    """A round whose closers crashed max_close_attempts times fails with the reason; the next round opens."""
    server = CoordinatorProcess(database_url, tmp_path / "data", tick_s=0.1, env={"MFCPL_CLOSING_TIMEOUT_S": "1"})
    server.start()
    model = small_model(14)
    try:
        with server.client() as admin:
            fid = create_federation(admin, model, rounds=2, clients_per_round=2)
            clients = [enroll(admin, fid, f"node-{i}") for i in range(2)]
            wait_task(clients[0], fid)
            held = _sql(database_url, "UPDATE rounds SET state = 'closing', claim_token = 'crashed', "
                        "claimed_at = :t, close_attempts = 3 WHERE federation_id = :f AND number = 1",
                        t=_naive_utc(-timedelta(minutes=5)), f=fid)
            assert held == 1
            failed = wait_round_state(admin, fid, 1, ("failed",), timeout_s=15)
            assert failed["failure_reason"] == ("closing failed 3 times (max_close_attempts 3); last attempt: the "
                                                "closer crashed or timed out")
            assert wait_task(clients[0], fid)["round"] == 2
            assert [e["round"] for e in _events(admin, fid) if e["type"] == "round.failed"] == [1]
            for client in clients:
                client.close()
    finally:
        server.stop()


def test_a_full_disk_while_closing_fails_the_round_after_max_attempts(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Storing the round's model fails every time (ENOSPC): each attempt is recorded and released, the third
    fails the round visibly, nothing is logged as an unhandled error, and the next round opens."""
    data = tmp_path / "data"
    server = CoordinatorProcess(database_url, data, tick_s=0.1)
    server.start()
    model = small_model(15)
    try:
        with server.client() as admin:
            fid = create_federation(admin, model, rounds=2, clients_per_round=2, quorum=1, lease_s=600)
            clients = [enroll(admin, fid, f"node-{i}") for i in range(2)]
            wait_task(clients[0], fid)
            _, body = known_update(model, 1, num_samples=4, base_version=0)
            assert post_update(clients[0], fid, 1, body).status_code == 201
            for client in clients:
                client.close()
    finally:
        server.stop()
    # The round is due (deadline passed); this process is the only closer, and its disk is full.
    assert _sql(database_url, "UPDATE rounds SET deadline = :t WHERE federation_id = :f AND number = 1",
                t=_naive_utc(-timedelta(seconds=1)), f=fid) == 1
    services = Services.build(Settings(database_url=database_url, state_dir=data, admin_token="x",
                                       max_close_attempts=3))

    def full_disk(data: Any) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(services.blobs, "put", full_disk)
    try:
        with caplog.at_level(logging.INFO):
            for attempt in (1, 2):
                tick(services)
                round1 = get_round(services, fid, 1)
                assert round1.state == "closing"
                assert round1.failure_reason == \
                    f"close attempt {attempt} failed: OSError: [Errno 28] No space left on device"
            tick(services)
            round1 = get_round(services, fid, 1)
            assert round1.state == "failed"
            assert round1.failure_reason == ("closing failed 3 times (max_close_attempts 3); last attempt: "
                                             "OSError: [Errno 28] No space left on device")
            round2 = get_round(services, fid, 2)  # the federation went on
            assert round2.state == "open" and round2.input_model_version == 0
    finally:
        services.db.dispose()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert sum("tried again" in r.getMessage() for r in caplog.records) == 2


# ------------------------------------------------------------------------------- finding 2: waiting


def _status_reason(admin: httpx.Client, fid: str) -> str | None:
    federation = admin.get(f"/v1/federations/{fid}").json()
    reason: str | None = federation["status_reason"]
    return reason


def test_clients_without_modality_do_not_hold_a_federation_back(coordinator: CoordinatorProcess) -> None:
    """min_clients unset: clients that lost every modality count as present, are never sampled, and a round
    opens with those that can train; until then the federation says why, once per change."""
    model = small_model(16)
    with coordinator.client() as admin:
        fid = create_federation(admin, None, rounds=1, clients_per_round=3)
        assert _status_reason(admin, fid) == "no model version 0 uploaded yet"
        admin.post(f"/v1/federations/{fid}/models", content=encode_model(model),
                   headers={"Content-Type": "application/vnd.safetensors"}).raise_for_status()
        able = enroll(admin, fid, "node-a")
        lost = enroll(admin, fid, "node-b", modalities=[])
        expected = "2 of 3 clients needed (clients_per_round) are live (1 can train, 1 with no modality)"
        wait_for(lambda: _status_reason(admin, fid) == expected, 10, what="the waiting reason")
        wait = wait_task(able, fid, action="wait")
        assert wait["reason"] == expected
        wait_for(lambda: any(e["type"] == "federation.waiting" and e["data"]["reason"] == expected
                             for e in _events(admin, fid)), 10, what="the federation.waiting event")
        time.sleep(0.6)  # several ticks: the same reason is not recorded again
        waiting = [e for e in _events(admin, fid) if e["type"] == "federation.waiting"]
        assert [e["data"]["reason"] for e in waiting].count(expected) == 1
        assert waiting[-1]["data"] == {"reason": expected, "needed": 3, "live": 2, "can_train": 1,
                                       "no_modality": 1, "no_profile": 0}

        also_lost = enroll(admin, fid, "node-c", modalities=[])
        task = wait_task(able, fid)
        round1 = admin.get(f"/v1/federations/{fid}/rounds/1").json()
        assert round1["participants"] == [able.id] and round1["quorum"] == 1
        assert wait_task(lost, fid, action="wait")["reason"] == \
            "not sampled: this client reported no modality, so it cannot train"
        assert _status_reason(admin, fid) == "round 1 open: 0 of 1 updates received (quorum 1)"
        _, body = known_update(model, 3, num_samples=5, base_version=task["model_version"])
        assert post_update(able, fid, 1, body).status_code == 201
        assert wait_round_state(admin, fid, 1)["output_model_version"] == 1
        for client in (able, lost, also_lost):
            client.close()


def test_an_explicit_min_clients_is_honoured_and_named(coordinator: CoordinatorProcess) -> None:
    model = small_model(17)
    with coordinator.client() as admin:
        fid = create_federation(admin, model, rounds=1, clients_per_round=3, min_clients=3)
        clients = [enroll(admin, fid, f"node-{i}", modalities=[] if i >= 2 else None) for i in range(4)]
        expected = "2 of 3 clients needed (min_clients) can train (4 live, 2 with no modality)"
        wait_for(lambda: _status_reason(admin, fid) == expected, 10, what="the waiting reason")
        time.sleep(0.5)
        assert admin.get(f"/v1/federations/{fid}/rounds").json() == []
        assert admin.get(f"/v1/federations/{fid}").json()["status"] == "waiting"
        assert wait_task(clients[0], fid, action="wait")["reason"] == expected

        profile = {"modalities": ["acc"], "class_counts": [5, 5, 5], "num_samples": 15}
        assert clients[3].http.put(f"/v1/federations/{fid}/clients/me/profile", json=profile).status_code == 200
        wait_task(clients[3], fid)
        round1 = admin.get(f"/v1/federations/{fid}/rounds/1").json()
        assert sorted(round1["participants"]) == sorted(c.id for c in (clients[0], clients[1], clients[3]))
        for client in clients:
            client.close()
