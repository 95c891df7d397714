"""A short soak, from outside: several federations at once over real HTTP, clients that crash, disconnect mid-body,
post twice and send extreme values. Every round must end (closed or failed) within its deadline plus a grace,
every acknowledged update must count exactly once, and no answer may be a 5xx. Bounded in time; the figures are
printed (docs/operations.md records a run)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

import numpy as np

from mfcpl.wire.tensors import LocalPrototypes
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import (
    SAFETENSORS,
    EnrolledClient,
    create_federation,
    enroll,
    known_update,
    small_model,
)

BUDGET_S = 90.0  # hard bound of the whole soak
DEADLINE_S = 4.0
GRACE_S = 6.0  # close work after the deadline: the timer tick, aggregation, a stuck close reclaimed
ROUNDS = 8
FAULTS = ["none", "none", "none", "crash", "disconnect", "duplicate", "extreme"]


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    acknowledged: dict[tuple[str, int], set[str]] = field(default_factory=dict)

    def status(self, what: str, response_status: int, text: str) -> None:
        with self.lock:
            self.statuses[response_status] += 1
            if response_status >= 500:
                self.server_errors.append(f"{what}: {response_status} {text[:200]}")

    def ack(self, fid: str, number: int, update_id: str) -> None:
        with self.lock:
            self.acknowledged.setdefault((fid, number), set()).add(update_id)


def _disconnect_mid_body(base_url: str, path: str, token: str, body: bytes) -> None:
    """Send the headers and half of the body, then drop the connection."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=5) as sock:
        head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: {SAFETENSORS['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n")
        sock.sendall(head.encode() + body[: len(body) // 2])


def _client_loop(base_url: str, fid: str, client: EnrolledClient, algorithm: str, seed: int, stop_at: float,
                 tally: Tally) -> None:
    rng = random.Random(seed)
    model = small_model(0)
    crashed: set[int] = set()
    posted: set[int] = set()
    while time.monotonic() < stop_at:
        response = client.http.get(f"/v1/federations/{fid}/tasks/next")
        tally.status("task", response.status_code, response.text)
        if response.status_code != 200:
            time.sleep(0.2)
            continue
        task = response.json()
        if task["action"] == "done":
            return
        number = task.get("round")
        if task["action"] == "wait" or number in crashed or number in posted:
            time.sleep(min(float(task.get("retry_after_s") or 0.2), 0.3))
            continue
        fault = rng.choice(FAULTS)
        with tally.lock:
            tally.faults[fault] += 1
        if fault == "crash":  # a client that dies for this round: it never posts
            crashed.add(number)
            continue
        extreme = fault == "extreme"
        metrics = {"loss": 1e308 if extreme else rng.random(), "train_accuracy": rng.random()}
        prototypes = None
        if algorithm == "mfcpl":
            protos = LocalPrototypes(classes=np.array([0, 1], np.int64),
                                     vectors=np.random.default_rng(seed + number).standard_normal((2, 4)).astype(
                                         np.float32),
                                     counts=np.array([3e38, 3e38] if extreme else [5.0, 7.0], np.float32))
            prototypes = {"shared": protos}
        _, body = known_update(model, seed * 1000 + number, num_samples=2 if extreme else rng.randint(1, 50),
                               base_version=task["model_version"], prototypes=prototypes, metrics=metrics)
        path = f"/v1/federations/{fid}/rounds/{number}/updates"
        if fault == "disconnect":
            _disconnect_mid_body(base_url, path, client.token, body)
        key = f"{client.id}-{number}"
        for _ in range(2 if fault == "duplicate" else 1):
            answer = client.http.post(path, content=body, headers={**SAFETENSORS, "Idempotency-Key": key})
            tally.status("update", answer.status_code, answer.text)
            if answer.status_code in (200, 201):
                tally.ack(fid, number, answer.json()["id"])
        posted.add(number)


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_soak_every_round_ends_and_every_acknowledged_update_counts_once(coordinator: CoordinatorProcess) -> None:
    started = time.monotonic()
    stop_at = started + BUDGET_S
    tally = Tally()
    federations: list[tuple[str, str, list[EnrolledClient]]] = []
    with coordinator.client() as admin:
        for i, algorithm in enumerate(["fedavg", "mfcpl", "fedopt", "fedprox"]):
            fid = create_federation(admin, small_model(0), algorithm=algorithm, rounds=ROUNDS, clients_per_round=3,
                                    quorum=1, round_deadline_s=DEADLINE_S, lease_s=60, seed=i)
            federations.append((fid, algorithm, [enroll(admin, fid, f"f{i}-c{j}") for j in range(4)]))
    threads = [threading.Thread(target=_client_loop, args=(coordinator.base_url, fid, client, algorithm,
                                                           100 * i + j, stop_at, tally), daemon=True)
               for i, (fid, algorithm, clients) in enumerate(federations) for j, client in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, stop_at - time.monotonic()) + 5)
    try:
        with coordinator.client() as admin:
            rounds = {fid: admin.get(f"/v1/federations/{fid}/rounds").json() for fid, _, _ in federations}
            statuses = {fid: admin.get(f"/v1/federations/{fid}").json()["status"] for fid, _, _ in federations}
    finally:
        for _, _, clients in federations:
            for client in clients:
                client.close()
    all_rounds = [r for rs in rounds.values() for r in rs]
    figures = {
        "federations": len(federations), "rounds": len(all_rounds),
        "closed": sum(r["state"] == "closed" for r in all_rounds),
        "failed": sum(r["state"] == "failed" for r in all_rounds),
        "faults": dict(tally.faults), "acknowledged": sum(len(v) for v in tally.acknowledged.values()),
        "statuses": dict(tally.statuses), "5xx": len(tally.server_errors),
        "seconds": round(time.monotonic() - started, 1),
    }
    print("soak figures:", json.dumps(figures, sort_keys=True))
    assert not tally.server_errors, tally.server_errors[:5]
    assert set(statuses.values()) == {"completed"}, statuses
    assert sum(tally.faults[f] for f in FAULTS if f != "none") >= 5, tally.faults
    lost = double = 0
    for fid, rs in rounds.items():
        assert sum(r["state"] == "closed" for r in rs) == ROUNDS
        for r in rs:
            assert r["state"] in ("closed", "failed"), r
            assert _seconds(r["opened_at"], r["closed_at"]) <= DEADLINE_S + GRACE_S, r
            acknowledged = tally.acknowledged.get((fid, r["number"]), set())
            lost += max(0, len(acknowledged) - r["received"])
            double += max(0, r["received"] - len(acknowledged))
    assert (lost, double) == (0, 0), (lost, double)
