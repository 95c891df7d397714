"""Every bad input gets its status and problem code, and nothing accepted before is changed by it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mfcpl.wire.tensors import LocalPrototypes, encode, encode_model
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import (
    SAFETENSORS,
    create_federation,
    enroll,
    known_update,
    local_prototypes,
    post_update,
    small_model,
    wait_round_state,
    wait_task,
)

MAX_UPDATE = 20_000
MAX_JSON = 4_096


@pytest.fixture
def small_limits(database_url: str, tmp_path: Path) -> Iterator[CoordinatorProcess]:
    env = {"MFCPL_MAX_UPDATE_BYTES": str(MAX_UPDATE), "MFCPL_MAX_JSON_BYTES": str(MAX_JSON)}
    proc = CoordinatorProcess(database_url, tmp_path / "data", tick_s=0.1, env=env)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code and body["status"] == status and body["detail"], body
    return body


def test_refusals_change_nothing(small_limits: CoordinatorProcess) -> None:
    server = small_limits
    model = small_model(3)
    with server.client() as admin:
        # JSON bodies: schema errors and size.
        _problem(admin.post("/v1/federations", json={"name": "x"}), 422, "validation_error")
        _problem(admin.post("/v1/federations", content=b"{not json", headers={"Content-Type": "application/json"}),
                 422, "validation_error")
        _problem(admin.post("/v1/federations", json={"name": "x" * MAX_JSON}), 413, "payload_too_large")
        _problem(admin.get("/v1/federations/fed_missing"), 404, "not_found")
        _problem(admin.get("/v1/nothing-here"), 404, "not_found")

        fid = create_federation(admin, model, rounds=2, clients_per_round=2, min_clients=3)
        _problem(admin.post(f"/v1/federations/{fid}/models", content=encode_model(small_model(4)),
                            headers=SAFETENSORS), 409, "conflict")
        assert admin.post(f"/v1/federations/{fid}/models", content=encode_model(model),
                          headers=SAFETENSORS).status_code == 200  # identical re-upload
        other = create_federation(admin, None, name="other")
        bad_model = {"w": np.array([1.0, np.nan], dtype=np.float32)}
        _problem(admin.post(f"/v1/federations/{other}/models", content=encode_model(bad_model), headers=SAFETENSORS),
                 422, "non_finite")
        _problem(admin.post(f"/v1/federations/{other}/models", content=b"garbage", headers=SAFETENSORS),
                 422, "malformed_tensors")
        outsider = enroll(admin, other, "outsider")

        clients = [enroll(admin, fid, f"node-{i}") for i in range(3)]
        _problem(clients[0].http.put(f"/v1/federations/{fid}/clients/me/profile",
                                     json={"modalities": ["audio"], "class_counts": [1, 1, 1], "num_samples": 3}),
                 422, "validation_error")
        _problem(clients[0].http.put(f"/v1/federations/{fid}/clients/me/profile",
                                     json={"modalities": ["acc"], "class_counts": [1], "num_samples": 3}),
                 422, "validation_error")
        by_id = {c.id: c for c in clients}
        for client in clients:
            client.http.get(f"/v1/federations/{fid}/tasks/next")
        round1 = wait_round_state(admin, fid, 1, ("open",))
        a, b = (by_id[cid] for cid in round1["participants"])
        (c,) = (cl for cl in clients if cl.id not in round1["participants"])
        wait_task(a, fid)

        good_a_weights, good_a = known_update(model, 1, num_samples=10, base_version=0,
                                              prototypes={"shared": local_prototypes(1, [0, 1])})
        url = f"/v1/federations/{fid}/rounds/1/updates"

        # Auth.
        _problem(httpx.post(server.base_url + url, content=good_a, headers=SAFETENSORS), 401, "unauthorized")
        _problem(httpx.post(server.base_url + url, content=good_a,
                            headers={**SAFETENSORS, "Authorization": "Bearer nope"}), 401, "unauthorized")
        _problem(admin.post(url, content=good_a, headers=SAFETENSORS), 403, "forbidden")
        _problem(post_update(outsider, fid, 1, good_a), 403, "forbidden")
        # Transport-level refusals.
        _problem(a.http.post(url, content=good_a, headers={"Content-Type": "application/json"}), 415,
                 "unsupported_media_type")
        _problem(post_update(a, fid, 1, b"\0" * (MAX_UPDATE + 1)), 413, "payload_too_large")
        chunks = iter([b"\0" * 8192] * 4)
        _problem(a.http.post(url, content=chunks, headers=SAFETENSORS), 413, "payload_too_large")
        _problem(post_update(a, fid, 99, good_a), 404, "not_found")
        _problem(post_update(c, fid, 1, good_a), 403, "not_participant")

        # Content refusals.
        def update_with(weights: dict | None = None, **kwargs) -> bytes:
            return known_update(model, 9, num_samples=kwargs.pop("num_samples", 5),
                                base_version=kwargs.pop("base_version", 0), **kwargs)[1] if weights is None else \
                encode({**{f"weights/{k}": v for k, v in weights.items()}},
                       {"format": "mfcpl.update.v1", "num_samples": "5", "base_model_version": "0", "metrics": "{}"})

        _problem(post_update(a, fid, 1, b"definitely not safetensors"), 422, "malformed_tensors")
        _problem(post_update(a, fid, 1, update_with(num_samples=0)), 422, "malformed_tensors")
        _problem(post_update(a, fid, 1, update_with(base_version=5)), 409, "stale_round")
        missing = {k: v for k, v in model.items() if k != "enc.bias"}
        _problem(post_update(a, fid, 1, update_with(missing)), 422, "missing_tensor")
        _problem(post_update(a, fid, 1, update_with({**model, "extra": np.zeros(2, np.float32)})), 422,
                 "unknown_tensor")
        _problem(post_update(a, fid, 1, update_with({**model, "enc.bias": np.zeros(9, np.float32)})), 422,
                 "shape_mismatch")
        _problem(post_update(a, fid, 1, update_with({**model, "enc.bias": np.zeros(8, np.float64)})), 422,
                 "dtype_mismatch")
        nan_bias = np.zeros(8, np.float32)
        nan_bias[3] = np.nan
        _problem(post_update(a, fid, 1, update_with({**model, "enc.bias": nan_bias})), 422, "non_finite")
        inf_protos = LocalPrototypes(classes=np.array([0], np.int64), vectors=np.array([[np.inf] * 4], np.float32),
                                     counts=np.array([1.0], np.float32))
        _problem(post_update(a, fid, 1, update_with(prototypes={"shared": inf_protos})), 422, "non_finite")
        _problem(post_update(a, fid, 1, update_with(prototypes={"shared": local_prototypes(2, [0, 3])})), 422,
                 "class_out_of_range")
        _problem(post_update(a, fid, 1, update_with(prototypes={"audio": local_prototypes(2, [0])})), 422,
                 "unknown_tensor")
        raw_extra = encode({**{f"weights/{k}": v for k, v in model.items()}, "junk": np.zeros(1, np.float32)},
                           {"format": "mfcpl.update.v1", "num_samples": "5", "base_model_version": "0"})
        _problem(post_update(a, fid, 1, raw_extra), 422, "unknown_tensor")

        def state() -> tuple[int, list]:
            rnd = admin.get(f"/v1/federations/{fid}/rounds/1").json()
            ups = admin.get(f"/v1/federations/{fid}/rounds/1/updates").json()
            return rnd["received"], sorted((u["client_id"], u["sha256"]) for u in ups)

        assert state() == (0, [])

        # Accepted, then replays and conflicts.
        first = post_update(a, fid, 1, good_a)
        assert first.status_code == 201, first.text
        replay = post_update(a, fid, 1, good_a)
        assert replay.status_code == 200 and replay.json()["replayed"] is True
        assert replay.json()["id"] == first.json()["id"]
        _problem(post_update(a, fid, 1, update_with()), 409, "idempotency_conflict")
        after_a = state()
        assert after_a == (1, [(a.id, first.json()["sha256"])])
        # Prototype dims must agree with those already accepted this round (4).
        _problem(post_update(b, fid, 1, update_with(prototypes={"shared": local_prototypes(3, [0], dim=5)})), 422,
                 "shape_mismatch")
        assert state() == after_a

        good_b_weights, good_b = known_update(model, 2, num_samples=30, base_version=0)
        _problem(admin.get(f"/v1/federations/{fid}/rounds/1/updates", headers={"Authorization": f"Bearer {b.token}"}),
                 403, "forbidden")
        keyed = post_update(b, fid, 1, good_b, headers={"Idempotency-Key": "k-1"})
        assert keyed.status_code == 201, keyed.text
        # The round is complete now; it closes, round 2 opens. Replays still answer; a late update is stale.
        wait_round_state(admin, fid, 1)
        again = post_update(b, fid, 1, good_b, headers={"Idempotency-Key": "k-1"})
        assert again.status_code == 200 and again.json()["replayed"] is True
        _problem(post_update(b, fid, 1, update_with(), headers={"Idempotency-Key": "k-1"}), 409,
                 "idempotency_conflict")
        for client in clients:
            client.http.get(f"/v1/federations/{fid}/tasks/next")
        wait_round_state(admin, fid, 2, ("open",))
        _problem(post_update(c, fid, 1, update_with()), 409, "stale_round")

        # Exactly the two accepted updates made model version 1.
        final = admin.get(f"/v1/federations/{fid}/rounds/1").json()
        assert final["received"] == 2 and final["output_model_version"] == 1
        ups = admin.get(f"/v1/federations/{fid}/rounds/1/updates").json()
        assert sorted(u["client_id"] for u in ups) == sorted([a.id, b.id])
        from mfcpl.wire.tensors import decode_model

        got = decode_model(admin.get(f"/v1/federations/{fid}/models/1/weights").content)
        for name in model:
            expected = (10 * good_a_weights[name].astype(np.float64) + 30 * good_b_weights[name]) / 40
            np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6)

        # Revocation and cancellation.
        revoked = admin.delete(f"/v1/federations/{fid}/clients/{c.id}")
        assert revoked.status_code == 200 and revoked.json()["revoked"] is True
        _problem(c.http.get(f"/v1/federations/{fid}/tasks/next"), 401, "unauthorized")
        assert admin.post(f"/v1/federations/{fid}/cancel").json()["status"] == "cancelled"
        _problem(admin.post(f"/v1/federations/{fid}/pause"), 409, "conflict")
        assert wait_task(a, fid, action="done")["action"] == "done"
        assert admin.get(f"/v1/federations/{fid}/rounds/2").json()["state"] == "failed"
        _problem(post_update(a, fid, 2, update_with(base_version=1)), 409, "federation_not_running")
        for client in [*clients, outsider]:
            client.close()
