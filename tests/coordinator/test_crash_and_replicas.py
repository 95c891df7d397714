"""Crash safety and several replicas: SIGKILL mid-round (and mid-close) loses no acknowledged update and counts
none twice; two coordinator processes on one Postgres count every update once and close each round once."""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from coordinator.db.engine import make_engine
from mfcpl.wire.tensors import decode_model
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import (
    SAFETENSORS,
    create_federation,
    enroll,
    known_update,
    post_update,
    small_model,
    wait_round_state,
    wait_task,
)


def _mean(items: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in items)
    return {k: sum(w[k].astype(np.float64) * n for w, n in items) / total for k in items[0][0]}


def _events(admin: httpx.Client, fid: str) -> list[dict]:
    text_ = admin.get(f"/v1/federations/{fid}/events", params={"follow": "false"}).text
    return [json.loads(line[6:]) for line in text_.splitlines() if line.startswith("data: ")]


def test_sigkill_mid_round_and_mid_close(database_url: str, tmp_path: Path) -> None:
    server = CoordinatorProcess(database_url, tmp_path / "data", tick_s=0.1, env={"MFCPL_CLOSING_TIMEOUT_S": "1"})
    server.start()
    model = small_model(5)
    try:
        with server.client() as admin:
            fid = create_federation(admin, model, rounds=2, clients_per_round=4, quorum=3, round_deadline_s=60)
            clients = [enroll(admin, fid, f"node-{i}") for i in range(4)]
            for client in clients:
                wait_task(client, fid)
            bodies = [known_update(model, 40 + i, num_samples=5 * (i + 1), base_version=0) for i in range(4)]
            acked = [post_update(clients[i], fid, 1, bodies[i][1]) for i in range(2)]
            assert [r.status_code for r in acked] == [201, 201]

            server.kill()
            server.start()
            round1 = admin.get(f"/v1/federations/{fid}/rounds/1").json()
            assert round1["state"] == "open" and round1["received"] == 2
            for i in range(2):  # a client that lost the ack retries: answered, not counted again
                again = post_update(clients[i], fid, 1, bodies[i][1])
                assert again.status_code == 200 and again.json()["replayed"] is True
                assert wait_task(clients[i], fid, action="wait")["round"] == 1
            assert post_update(clients[2], fid, 1, bodies[2][1]).status_code == 201
            assert admin.get(f"/v1/federations/{fid}/rounds/1").json()["received"] == 3

            # Crash while closing: the process dies after claiming the round (state closing, claim held).
            server.kill()
            engine = make_engine(database_url)
            with engine.begin() as conn:
                claimed = conn.execute(
                    text("UPDATE rounds SET state = 'closing', claim_token = 'crashed', claimed_at = :t "
                         "WHERE federation_id = :f AND number = 1 AND state = 'open'"),
                    {"t": datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5), "f": fid},
                ).rowcount
            engine.dispose()
            assert claimed == 1
            server.start()
            closed = wait_round_state(admin, fid, 1)
            assert closed["received"] == 3 and closed["output_model_version"] == 1
            late = post_update(clients[3], fid, 1, bodies[3][1])
            assert late.status_code == 409 and late.json()["code"] in ("round_not_open", "stale_round")

            got = decode_model(admin.get(f"/v1/federations/{fid}/models/1/weights").content)
            expected = _mean([(bodies[i][0], 5 * (i + 1)) for i in range(3)])
            for name in expected:
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)
            ups = admin.get(f"/v1/federations/{fid}/rounds/1/updates").json()
            assert sorted(u["client_id"] for u in ups) == sorted(c.id for c in clients[:3])
            closes = [e for e in _events(admin, fid) if e["type"] == "round.closed" and e["round"] == 1]
            assert len(closes) == 1
            for client in clients:
                client.close()
    finally:
        server.stop()


@pytest.mark.postgres
def test_two_replicas_on_one_postgres(postgres_url: str, tmp_path: Path) -> None:
    env = {"MFCPL_BLOB_STORE": "db"}
    first = CoordinatorProcess(postgres_url, tmp_path / "a", tick_s=0.05, env=env)
    first.start()
    second = CoordinatorProcess(postgres_url, tmp_path / "b", tick_s=0.05, env=env,
                                admin_token=first.admin_token)
    second.start()
    servers = [first, second]
    model = small_model(6)
    n_clients, n_rounds = 12, 3
    try:
        with first.client() as admin:
            fid = create_federation(admin, model, rounds=n_rounds, clients_per_round=n_clients,
                                    round_deadline_s=120)
            clients = [enroll(admin, fid, f"node-{i:02d}") for i in range(n_clients)]
            sent: dict[int, list[tuple[dict[str, np.ndarray], int]]] = {r: [] for r in range(1, n_rounds + 1)}
            lock = threading.Lock()
            errors: list[str] = []

            def run(index: int) -> None:
                rng = random.Random(index)
                token = clients[index].token
                https = [httpx.Client(base_url=s.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
                         for s in servers]
                try:
                    for _ in range(2000):
                        task = rng.choice(https).get(f"/v1/federations/{fid}/tasks/next").json()
                        if task["action"] == "done":
                            return
                        if task["action"] == "wait":
                            threading.Event().wait(min(task["retry_after_s"], 0.05))
                            continue
                        number, version = task["round"], task["model_version"]
                        base = decode_model(https[0].get(f"/v1/federations/{fid}/models/{version}/weights").content)
                        weights, body = known_update({k: np.array(v) for k, v in base.items()}, 1000 * number + index,
                                                     num_samples=index + 1, base_version=version)
                        # The same update sent to both replicas at once: exactly one is counted.
                        results: list[int] = []
                        url = f"/v1/federations/{fid}/rounds/{number}/updates"

                        def send(h: httpx.Client, url: str = url, body: bytes = body, out: list[int] = results) -> None:
                            out.append(h.post(url, content=body, headers=SAFETENSORS).status_code)

                        posts = [threading.Thread(target=send, args=(h,)) for h in https]
                        for p in posts:
                            p.start()
                        for p in posts:
                            p.join()
                        if sorted(results) != [200, 201]:
                            errors.append(f"client {index} round {number}: {results}")
                        with lock:
                            sent[number].append((weights, index + 1))
                    errors.append(f"client {index} never finished")
                finally:
                    for h in https:
                        h.close()

            threads = [threading.Thread(target=run, args=(i,)) for i in range(n_clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(180)
            assert not errors, errors
            rounds = admin.get(f"/v1/federations/{fid}/rounds").json()
            assert [(r["number"], r["state"], r["received"]) for r in rounds] == [
                (r, "closed", n_clients) for r in range(1, n_rounds + 1)]
            for number in range(1, n_rounds + 1):
                ups = admin.get(f"/v1/federations/{fid}/rounds/{number}/updates").json()
                assert len(ups) == n_clients and len({u["client_id"] for u in ups}) == n_clients
            events = _events(admin, fid)
            closes = [e["round"] for e in events if e["type"] == "round.closed"]
            assert closes == list(range(1, n_rounds + 1))
            assert [e["id"] for e in events] == list(range(1, len(events) + 1))
            assert admin.get(f"/v1/federations/{fid}").json()["status"] == "completed"
            got = decode_model(admin.get(f"/v1/federations/{fid}/models/{n_rounds}/weights").content)
            expected = _mean(sent[n_rounds])
            for name in expected:
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)
            for client in clients:
                client.close()
    finally:
        for server in servers:
            server.stop()
