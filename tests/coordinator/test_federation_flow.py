"""A whole federation over HTTP against a real coordinator (SQLite and Postgres): the new models and complete
prototypes equal weighted means computed here, independently of the coordinator."""

from __future__ import annotations

import json

import httpx
import numpy as np

from mfcpl.wire.tensors import decode_model, decode_prototypes
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import (
    create_federation,
    enroll,
    known_update,
    local_prototypes,
    post_update,
    small_model,
    wait_round_state,
    wait_task,
)


def _weighted_mean(items: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in items)
    return {name: sum(w[name].astype(np.float64) * n for w, n in items) / total for name in items[0][0]}


def _download_model(http: httpx.Client, fid: str, version: int | str) -> dict[str, np.ndarray]:
    response = http.get(f"/v1/federations/{fid}/models/{version}/weights")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.safetensors"
    return {k: np.array(v) for k, v in decode_model(response.content).items()}


def test_mfcpl_federation_averages_weights_and_prototypes(coordinator: CoordinatorProcess) -> None:
    model = small_model(0)
    with coordinator.client() as admin:
        fid = create_federation(admin, model, rounds=2, clients_per_round=3)
        clients = [enroll(admin, fid, f"node-{i}") for i in range(3)]
        samples = [10, 30, 60]
        global_model = model
        previous_tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # Class sets per round and client: class 2 is sent by nobody in round 2 and must keep its prototype.
        class_plan = {1: [[0, 1], [1, 2], [0, 2]], 2: [[0], [0, 1], [1]]}
        for number in (1, 2):
            tasks = [wait_task(c, fid) for c in clients]
            assert {t["round"] for t in tasks} == {number}
            assert {t["model_version"] for t in tasks} == {number - 1}
            assert {t["prototype_version"] for t in tasks} == ({None} if number == 1 else {1})
            assert len({t["seed"] for t in tasks}) == 3
            sent = []
            shared_sent: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            for i, client in enumerate(clients):
                protos = {"shared": local_prototypes(100 * number + i, class_plan[number][i])}
                weights, body = known_update(global_model, 10 * number + i, num_samples=samples[i],
                                             base_version=number - 1, prototypes=protos,
                                             metrics={"loss": float(i + number)})
                response = post_update(client, fid, number, body)
                assert response.status_code == 201, response.text
                assert response.json()["replayed"] is False
                sent.append((weights, samples[i]))
                p = protos["shared"]
                shared_sent.append((p.classes, p.vectors, p.counts))
            closed = wait_round_state(admin, fid, number)
            assert closed["received"] == 3 and closed["output_model_version"] == number
            assert closed["prototype_version"] == number
            expected_loss = sum((i + number) * n for i, n in enumerate(samples)) / sum(samples)
            assert abs(closed["train_metrics"]["loss"] - expected_loss) < 1e-9

            expected = _weighted_mean(sent)
            got = _download_model(admin, fid, number)
            assert set(got) == set(expected)
            for name in expected:
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)
            global_model = got

            # Complete prototypes: count-weighted mean per class; an unsent class keeps the previous one.
            vectors = np.zeros((3, 4))
            counts = np.zeros(3)
            for classes, vecs, cnts in shared_sent:
                for k, v, c in zip(classes, vecs, cnts, strict=True):
                    vectors[k] += c * v.astype(np.float64)
                    counts[k] += c
            for k in range(3):
                if counts[k] > 0:
                    vectors[k] /= counts[k]
                elif "shared" in previous_tables:
                    vectors[k] = previous_tables["shared"][0][k]
                    counts[k] = previous_tables["shared"][1][k]
            response = admin.get(f"/v1/federations/{fid}/prototypes/{number}/tensors")
            assert response.status_code == 200
            tables = decode_prototypes(response.content)
            np.testing.assert_allclose(tables["shared"].vectors, vectors, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(tables["shared"].counts, counts, rtol=1e-6)
            summary = admin.get(f"/v1/federations/{fid}/prototypes/{number}").json()
            assert summary["levels"][0]["name"] == "shared" and summary["levels"][0]["dim"] == 4
            assert summary["levels"][0]["coverage"] == [True, True, True]
            previous_tables["shared"] = (vectors, counts)

        # After the last round: completed, clients are told done, `latest` is the last version.
        fed = admin.get(f"/v1/federations/{fid}").json()
        assert fed["status"] == "completed" and fed["latest_model_version"] == 2
        assert wait_task(clients[0], fid, action="done")["action"] == "done"
        latest = admin.get(f"/v1/federations/{fid}/models/latest").json()
        assert latest["version"] == 2
        weights = admin.get(f"/v1/federations/{fid}/models/latest/weights")
        assert weights.headers["etag"] == f'"{latest["sha256"]}"'
        etag = weights.headers["etag"]
        cached = admin.get(f"/v1/federations/{fid}/models/2/weights", headers={"If-None-Match": etag})
        assert cached.status_code == 304 and cached.content == b""
        # A client token reads its own federation's models too.
        assert clients[1].http.get(f"/v1/federations/{fid}/models/1").json()["round"] == 1

        metrics = admin.get(f"/v1/federations/{fid}/metrics").json()
        assert [m["round"] for m in metrics] == [1, 2] and all(m["state"] == "closed" for m in metrics)
        evaluation = admin.post(f"/v1/federations/{fid}/rounds/2/evaluations",
                                json={"split": "dev", "metrics": {"macro_f1": 0.5}})
        assert evaluation.status_code == 201 and evaluation.json()["model_version"] == 2
        metrics = admin.get(f"/v1/federations/{fid}/metrics").json()
        assert metrics[1]["evaluations"] == {"dev": {"macro_f1": 0.5}}

        # The event stream ends (federation completed) and holds every transition, in order, without gaps.
        with admin.stream("GET", f"/v1/federations/{fid}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            text = "".join(stream.iter_text())
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        kinds = [(e["type"], e["round"]) for e in events if e["type"] not in ("update.received", "federation.waiting")]
        assert kinds == [("federation.status", None), ("federation.status", None), ("round.opened", 1),
                         ("round.closed", 1), ("round.opened", 2), ("round.closed", 2), ("federation.status", None)]
        assert sum(e["type"] == "update.received" for e in events) == 6
        resumed = admin.get(f"/v1/federations/{fid}/events", headers={"Last-Event-ID": str(len(events) - 1)})
        assert resumed.text.count("data: ") == 1

        prometheus = httpx.get(coordinator.base_url + "/metrics").text
        assert 'mfcpl_updates_total{outcome="accepted"} 6.0' in prometheus
        assert 'mfcpl_rounds_total{transition="closed"} 2.0' in prometheus
        for client in clients:
            client.close()


def test_fedopt_applies_server_momentum(coordinator: CoordinatorProcess) -> None:
    model = small_model(1)
    lr, beta = 0.5, 0.9
    with coordinator.client() as admin:
        fid = create_federation(admin, model, algorithm="fedopt", rounds=2, clients_per_round=2,
                                training={"server_lr": lr, "server_momentum": beta})
        clients = [enroll(admin, fid, f"node-{i}") for i in range(2)]
        global_model = {k: v.astype(np.float64) for k, v in model.items()}
        momentum: dict[str, np.ndarray] | None = None
        for number in (1, 2):
            sent = []
            for i, client in enumerate(clients):
                wait_task(client, fid)
                weights, body = known_update({k: v.astype(np.float32) for k, v in global_model.items()},
                                             7 * number + i, num_samples=(i + 1) * 4, base_version=number - 1)
                assert post_update(client, fid, number, body).status_code == 201
                sent.append((weights, (i + 1) * 4))
            wait_round_state(admin, fid, number)
            averaged = _weighted_mean(sent)
            grad = {k: global_model[k] - averaged[k] for k in averaged}
            momentum = grad if momentum is None else {k: beta * momentum[k] + grad[k] for k in grad}
            global_model = {k: global_model[k] - lr * momentum[k] for k in grad}
            got = _download_model(admin, fid, number)
            for name in global_model:
                np.testing.assert_allclose(got[name], global_model[name], rtol=1e-4, atol=1e-5)
            global_model = {k: v.astype(np.float64) for k, v in got.items()}
        for client in clients:
            client.close()
