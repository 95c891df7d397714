"""Every operation of the OpenAPI document, called by each kind of caller: admin, viewer, client, anonymous.

The document publishes the roles an operation accepts (``x-mfcpl-roles``, from the route's auth dependency in
coordinator/auth.py). Against a running coordinator: anonymous callers get 401 `unauthorized` (with
``WWW-Authenticate: Bearer``) on every protected operation, a role the operation does not accept gets 403
`forbidden` (a viewer on every write), and an accepted role gets a status the operation documents (a viewer:
2xx or 404 on reads), never 401/403/5xx.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import pytest

from mfcpl.wire.constants import SAFETENSORS_CONTENT_TYPE
from mfcpl.wire.tensors import encode_model
from tests.support.federation import (
    create_federation,
    enroll,
    federation_config,
    known_update,
    small_model,
    wait_round_state,
)

ROLES = ("admin", "viewer", "client", "anonymous")
UNAUTHENTICATED = {"/healthz", "/readyz", "/metrics"}


def _request(path: str, method: str, values: dict[str, str], model: dict[str, Any]) -> dict[str, Any]:
    """Path, query and a body that is valid for the operation (so a refusal is about the caller only)."""
    url = path.format(**values)
    kwargs: dict[str, Any] = {}
    if path.endswith("/events"):
        kwargs["params"] = {"follow": "false"}
    if method == "post" and path == "/v1/federations":
        kwargs["json"] = federation_config(name="matrix-extra")
    elif method == "post" and path.endswith("/clients"):
        kwargs["json"] = {"name": f"extra-{values['n']}"}
    elif method == "put" and path.endswith("/me/profile"):
        kwargs["json"] = {"modalities": ["acc"], "class_counts": [5, 5, 5], "num_samples": 15}
    elif method == "post" and path.endswith("/evaluations"):
        kwargs["json"] = {"split": "dev", "metrics": {"accuracy": 0.5}}
    elif method == "post" and path == "/v1/viewer-tokens":
        kwargs["json"] = {"label": "matrix-extra"}
    elif method == "post" and path.endswith("/models"):
        kwargs["content"] = encode_model(model)
        kwargs["headers"] = {"Content-Type": SAFETENSORS_CONTENT_TYPE}
    elif method == "post" and path.endswith("/updates"):
        kwargs["content"] = known_update(model, 1, num_samples=15, base_version=0)[1]
        kwargs["headers"] = {"Content-Type": SAFETENSORS_CONTENT_TYPE}
    return {"method": method.upper(), "url": url, **kwargs}


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ops = [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]
    # cancelling the federation last keeps the other operations meaningful
    return sorted(ops, key=lambda entry: entry[0].endswith("/cancel"))


def test_every_operation_answers_each_role_as_documented(coordinator) -> None:
    admin = coordinator.client()
    model = small_model()
    fid = create_federation(admin, model, clients_per_round=1, quorum=1, rounds=5)
    first, second = enroll(admin, fid, "node-1"), enroll(admin, fid, "node-2")
    participants = wait_round_state(admin, fid, 1, ("open",))["participants"]
    # the client caller is round 1's participant; the other one is revoked by DELETE .../clients/{cid}
    node, victim = (first, second) if participants == [first.id] else (second, first)
    viewer_token = admin.post("/v1/viewer-tokens", json={"label": "matrix"}).json()["token"]
    victim_viewer = admin.post("/v1/viewer-tokens", json={"label": "victim"}).json()["id"]
    callers = {
        "admin": admin,
        "viewer": coordinator.client(viewer_token),
        "client": node.http,
        "anonymous": httpx.Client(base_url=coordinator.base_url, timeout=30),
    }
    document = admin.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        **document["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}

    outcomes: Counter[tuple[str, str]] = Counter()
    checked = 0
    for path, method, operation in _operations(document):
        documented = {int(status) for status in operation["responses"]}
        roles = operation.get("x-mfcpl-roles")
        if path in UNAUTHENTICATED:
            assert roles is None and "security" not in operation, path
            response = callers["anonymous"].request(method.upper(), path)
            assert response.status_code in (200, 503), (path, response.text)
            outcomes[("anonymous", "open")] += 1
            continue
        assert roles and operation["security"] == [{"bearer": []}], (method, path)
        assert {401, 403} <= documented, (method, path)
        for role in ROLES:
            checked += 1
            values = {"fid": fid, "cid": victim.id, "r": "1", "v": "0", "token_id": victim_viewer, "n": str(checked)}
            response = callers[role].request(**_request(path, method, values, model))
            where = (role, method.upper(), path, response.status_code, response.text[:300])
            if role == "anonymous":
                assert response.status_code == 401, where
                assert response.json()["code"] == "unauthorized", where
                assert response.headers["www-authenticate"] == "Bearer", where
                outcomes[(role, "401")] += 1
            elif role not in roles:
                assert response.status_code == 403, where
                assert response.json()["code"] == "forbidden", where
                outcomes[(role, "403")] += 1
            else:
                assert response.status_code in documented, where
                assert response.status_code not in (401, 403) and response.status_code < 500, where
                if role == "viewer":
                    assert method == "get" and (response.status_code < 300 or response.status_code == 404), where
                outcomes[(role, "allowed")] += 1
        if "viewer" not in roles:
            assert method != "get" or path.startswith("/v1/viewer-tokens") or path.endswith("/me") \
                or path.endswith("/tasks/next"), f"viewer refused a read: {path}"
    print("authorization matrix:", dict(sorted(outcomes.items())))
    assert checked == 4 * sum(1 for path, _, _ in _operations(document) if path not in UNAUTHENTICATED)
    assert outcomes[("viewer", "allowed")] >= 13 and outcomes[("viewer", "403")] >= 15
    for http in callers.values():
        http.close()
    victim.close()
    node.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_viewer_token_lifecycle(coordinator) -> None:
    admin = coordinator.client()
    created = admin.post("/v1/viewer-tokens", json={"label": "dashboard"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["token"].startswith("mfcpl_v_") and body["label"] == "dashboard" and body["revoked"] is False
    listed = admin.get("/v1/viewer-tokens").json()
    assert [t["id"] for t in listed] == [body["id"]] and "token" not in listed[0]
    viewer = coordinator.client(body["token"])
    assert viewer.get("/v1/federations").status_code == 200
    assert viewer.post("/v1/viewer-tokens", json={"label": "escalate"}).json()["code"] == "forbidden"
    revoked = admin.delete(f"/v1/viewer-tokens/{body['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    again = viewer.get("/v1/federations")
    assert again.status_code == 401 and "revoked" in again.json()["detail"]
    assert admin.delete("/v1/viewer-tokens/vwt_0000000000000000").json()["code"] == "not_found"
    assert admin.post("/v1/viewer-tokens", json={"label": ""}).status_code == 422
    viewer.close()
