"""Drive one FedAvg round over plain HTTP, spreading the clients over several base URLs (replicas or a proxy).

Only the wire contract is used: mfcpl.wire.schemas for the JSON bodies, mfcpl.wire.tensors for the
safetensors bodies. The new model version is checked against the sample-weighted mean computed here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from mfcpl.wire.constants import SAFETENSORS_CONTENT_TYPE
from mfcpl.wire.schemas import FederationCreate, ModalitySpec
from mfcpl.wire.tensors import Update, decode_model, encode_model, encode_update

ClientFactory = Callable[[str, str], httpx.Client]  # (base_url, bearer token) -> client


def plain_client(base_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0)


@dataclass
class RoundOutcome:
    federation_id: str
    round: dict
    new_weights: dict[str, np.ndarray]
    expected_weights: dict[str, np.ndarray]
    update_statuses: list[int] = field(default_factory=list)


def initial_weights(large_params: int) -> dict[str, np.ndarray]:
    """Model version 0: two small tensors, plus one large one when large_params > 0 (big update bodies)."""
    weights = {"head.weight": np.zeros((6, 4), np.float32), "head.bias": np.zeros(6, np.float32)}
    if large_params:
        weights["encoder.weight"] = np.zeros(large_params, np.float32)
    return weights


def client_weights(base: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + index)
    return {name: (array + rng.standard_normal(array.shape).astype(np.float32)) for name, array in base.items()}


def run_round(
    admin_urls: list[str],
    client_urls: list[str],
    admin_token: str,
    *,
    connect: ClientFactory = plain_client,
    large_params: int = 0,
    timeout_s: float = 60.0,
    before_last_update: Callable[[str], None] | None = None,
) -> RoundOutcome:
    """Create a 1-round FedAvg federation of len(client_urls) clients; client i talks to client_urls[i]."""
    n_clients = len(client_urls)
    config = FederationCreate(
        name="deploy-check", algorithm="fedavg", num_classes=6, rounds=1, clients_per_round=n_clients,
        modalities=[ModalitySpec(name="acc", kind="vector", shape=[4])], round_deadline_s=120, lease_s=120, seed=7,
    )
    admin = connect(admin_urls[0], admin_token)
    created = admin.post("/v1/federations", json=config.model_dump(mode="json"))
    assert created.status_code == 201, created.text
    fid = created.json()["id"]

    tokens = []
    for i in range(n_clients):
        enrolled = connect(admin_urls[i % len(admin_urls)], admin_token).post(
            f"/v1/federations/{fid}/clients", json={"name": f"node{i}"}
        )
        assert enrolled.status_code == 201, enrolled.text
        tokens.append(enrolled.json()["token"])

    base = initial_weights(large_params)
    upload = admin.post(f"/v1/federations/{fid}/models", content=encode_model(base),
                        headers={"Content-Type": SAFETENSORS_CONTENT_TYPE})
    assert upload.status_code == 201, upload.text

    clients = [connect(url, token) for url, token in zip(client_urls, tokens, strict=True)]
    samples = [10 * (i + 1) for i in range(n_clients)]
    for client, n in zip(clients, samples, strict=True):
        profile = client.put(f"/v1/federations/{fid}/clients/me/profile",
                             json={"modalities": ["acc"], "class_counts": [n, 0, 0, 0, 0, 0], "num_samples": n})
        assert profile.status_code == 200, profile.text

    tasks = _wait_for_train_tasks(clients, fid, timeout_s)
    number = tasks[0]["round"]
    statuses = []
    for i, (client, task, n) in enumerate(zip(clients, tasks, samples, strict=True)):
        weights_response = client.get(f"/v1/federations/{fid}/models/{task['model_version']}/weights")
        assert weights_response.status_code == 200
        received = decode_model(weights_response.content)
        assert set(received) == set(base)
        body = encode_update(Update(weights=client_weights(base, i), num_samples=n,
                                    base_model_version=task["model_version"], metrics={"loss": float(i)}))
        if i == n_clients - 1 and before_last_update is not None:
            before_last_update(fid)
        posted = client.post(f"/v1/federations/{fid}/rounds/{number}/updates", content=body,
                             headers={"Content-Type": SAFETENSORS_CONTENT_TYPE, "Idempotency-Key": f"u-{fid}-{i}"})
        assert posted.status_code == 201, posted.text
        statuses.append(posted.status_code)

    closed = _wait_for_round(admin, fid, number, timeout_s)
    new = admin.get(f"/v1/federations/{fid}/models/{closed['output_model_version']}/weights")
    assert new.status_code == 200, new.text
    total = sum(samples)
    expected = {name: sum(client_weights(base, i)[name] * (n / total) for i, n in enumerate(samples))
                for name in base}
    return RoundOutcome(fid, closed, {k: np.array(v) for k, v in decode_model(new.content).items()}, expected,
                        statuses)


def _wait_for_train_tasks(clients: list[httpx.Client], fid: str, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    tasks: list[dict | None] = [None] * len(clients)
    while time.monotonic() < deadline:
        for i, client in enumerate(clients):
            if tasks[i] is None:
                task = client.get(f"/v1/federations/{fid}/tasks/next")
                assert task.status_code == 200, task.text
                if task.json()["action"] == "train":
                    tasks[i] = task.json()
        if all(t is not None for t in tasks):
            return [t for t in tasks if t is not None]
        time.sleep(0.1)
    raise AssertionError(f"no train task for every client within {timeout_s}s: {tasks}")


def _wait_for_round(admin: httpx.Client, fid: str, number: int, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        response = admin.get(f"/v1/federations/{fid}/rounds/{number}")
        assert response.status_code == 200, response.text
        state = response.json()
        if state["state"] == "closed":
            return state
        assert state["state"] != "failed", state
        time.sleep(0.1)
    raise AssertionError(f"round {number} did not close within {timeout_s}s: {state}")
