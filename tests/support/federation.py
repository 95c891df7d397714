"""Builders for coordinator tests: a small model, known updates, a federation with ready clients."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from mfcpl.wire.constants import SAFETENSORS_CONTENT_TYPE
from mfcpl.wire.tensors import LocalPrototypes, Update, encode_model, encode_update

TENSORS = {"enc.weight": (8, 4), "enc.bias": (8,), "head.weight": (3, 8)}
SAFETENSORS = {"Content-Type": SAFETENSORS_CONTENT_TYPE}


def small_model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in TENSORS.items()}


def federation_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "test",
        "algorithm": "mfcpl",
        "num_classes": 3,
        "modalities": [{"name": "acc", "kind": "timeseries", "shape": [16, 3]},
                       {"name": "gyro", "kind": "timeseries", "shape": [16, 3]}],
        "rounds": 2,
        "clients_per_round": 3,
        "round_deadline_s": 30,
        "lease_s": 30,
        "seed": 7,
    }
    config.update(overrides)
    return config


@dataclass
class EnrolledClient:
    id: str
    name: str
    token: str
    http: httpx.Client

    def close(self) -> None:
        self.http.close()


def enroll(admin: httpx.Client, fid: str, name: str, modalities: list[str] | None = None,
           num_classes: int = 3) -> EnrolledClient:
    response = admin.post(f"/v1/federations/{fid}/clients", json={"name": name})
    assert response.status_code == 201, response.text
    body = response.json()
    http = httpx.Client(base_url=str(admin.base_url), headers={"Authorization": f"Bearer {body['token']}"},
                        timeout=30)
    client = EnrolledClient(id=body["id"], name=name, token=body["token"], http=http)
    profile = {"modalities": modalities if modalities is not None else ["acc", "gyro"],
               "class_counts": [5] * num_classes, "num_samples": 5 * num_classes}
    response = http.put(f"/v1/federations/{fid}/clients/me/profile", json=profile)
    assert response.status_code == 200, response.text
    return client


def create_federation(admin: httpx.Client, model: dict[str, np.ndarray] | None = None, **overrides: Any) -> str:
    response = admin.post("/v1/federations", json=federation_config(**overrides))
    assert response.status_code == 201, response.text
    fid = response.json()["id"]
    if model is not None:
        upload = admin.post(f"/v1/federations/{fid}/models", content=encode_model(model), headers=SAFETENSORS)
        assert upload.status_code == 201, upload.text
    return fid


def wait_for(predicate: Any, timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def wait_task(client: EnrolledClient, fid: str, action: str = "train", timeout_s: float = 20.0) -> dict[str, Any]:
    def poll() -> dict[str, Any] | None:
        task = client.http.get(f"/v1/federations/{fid}/tasks/next")
        assert task.status_code == 200, task.text
        body = task.json()
        return body if body["action"] == action else None

    return wait_for(poll, timeout_s, what=f"task {action} for {client.name}")


def wait_round_state(admin: httpx.Client, fid: str, number: int, states: tuple[str, ...] = ("closed",),
                     timeout_s: float = 20.0) -> dict[str, Any]:
    def poll() -> dict[str, Any] | None:
        response = admin.get(f"/v1/federations/{fid}/rounds/{number}")
        if response.status_code == 404:
            return None
        body = response.json()
        return body if body["state"] in states else None

    return wait_for(poll, timeout_s, what=f"round {number} in {states}")


def known_update(model: dict[str, np.ndarray], seed: int, *, num_samples: int, base_version: int,
                 prototypes: dict[str, LocalPrototypes] | None = None,
                 metrics: dict[str, float] | None = None) -> tuple[dict[str, np.ndarray], bytes]:
    """Weights = model + a seeded perturbation; returns (weights, safetensors body)."""
    rng = np.random.default_rng(seed)
    weights = {k: (v + rng.standard_normal(v.shape).astype(np.float32)).astype(np.float32) for k, v in model.items()}
    body = encode_update(Update(weights=weights, num_samples=num_samples, base_model_version=base_version,
                                prototypes=prototypes or {}, metrics=metrics or {}))
    return weights, body


def local_prototypes(seed: int, classes: list[int], dim: int = 4) -> LocalPrototypes:
    rng = np.random.default_rng(seed)
    return LocalPrototypes(classes=np.asarray(classes, dtype=np.int64),
                           vectors=rng.standard_normal((len(classes), dim)).astype(np.float32),
                           counts=rng.integers(1, 20, size=len(classes)).astype(np.float32))


def post_update(client: EnrolledClient, fid: str, number: int, body: bytes,
                headers: dict[str, str] | None = None) -> httpx.Response:
    return client.http.post(f"/v1/federations/{fid}/rounds/{number}/updates", content=body,
                            headers={**SAFETENSORS, **(headers or {})})
