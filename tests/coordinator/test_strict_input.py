"""Strict reading of numbers and names: Unicode digits, booleans as numbers, NUL and control characters and
oversized metric maps get a 4xx problem on SQLite and Postgres alike, never a 500 or a silent reinterpretation."""

from __future__ import annotations

import json

import httpx
import pytest

from mfcpl.wire.tensors import UPDATE_FORMAT, TensorFormatError, parse_update_metadata
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import create_federation, federation_config, small_model


def _refused(response: httpx.Response, statuses: tuple[int, ...], code: str | None = None) -> None:
    assert response.status_code in statuses, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if code is not None:
        assert response.json()["code"] == code, response.text


BAD_SEGMENTS = ["%C2%B2", "%D9%A0", "%EF%BC%91", "1" * 5000, "2147483648", "-1", "+1", "%201"]
BAD_EVENT_IDS = [b"\xb2", b"\xd9\xa0", b"abc", b"-1", b"1" * 5000, b"2147483648"]


def test_path_and_header_numbers_take_only_bounded_ascii_digits(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid = create_federation(admin, model=small_model(1))
        assert admin.get(f"/v1/federations/{fid}/models/0").status_code == 200
        assert admin.get(f"/v1/federations/{fid}/models/latest").json()["version"] == 0
        for segment in BAD_SEGMENTS:
            for path in (f"models/{segment}", f"models/{segment}/weights", f"prototypes/{segment}",
                         f"prototypes/{segment}/tensors"):
                _refused(admin.get(f"/v1/federations/{fid}/{path}"), (404, 422))
        events = f"/v1/federations/{fid}/events"
        for value in BAD_EVENT_IDS:
            _refused(admin.get(events, params={"follow": "false"}, headers={"Last-Event-ID": value}), (400,),
                     "bad_request")
        ok = admin.get(events, params={"follow": "false"}, headers={"Last-Event-ID": b"0"})
        assert ok.status_code == 200, ok.text
        _refused(admin.get(events, params={"follow": "false", "after": "9" * 30}), (422,), "validation_error")


def test_booleans_and_strings_are_not_numbers(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid = create_federation(admin)
        for field, value in [("num_classes", True), ("rounds", 2.0), ("seed", "7"), ("lease_s", False),
                             ("clients_per_round", True)]:
            _refused(admin.post("/v1/federations", json=federation_config(**{field: value})), (422,),
                     "validation_error")
        _refused(admin.post("/v1/federations", json=federation_config(training={"lr": True})), (422,),
                 "validation_error")
        ok = admin.post("/v1/federations", json=federation_config(lease_s=30, training={"lr": 1}))
        assert ok.status_code == 201, ok.text
        evaluations = f"/v1/federations/{fid}/rounds/1/evaluations"
        for body in ({"split": "dev", "metrics": {"f1": 0.5}, "model_version": False},
                     {"split": "dev", "metrics": {"f1": True}},
                     {"split": "dev", "metrics": {"f1": 0.5}, "model_version": 1.0}):
            _refused(admin.post(evaluations, json=body), (422,), "validation_error")
        document = admin.get("/openapi.json")
        seed = json.loads(document.text)["components"]["schemas"]["FederationCreate"]["properties"]["seed"]
        assert seed["exclusiveMaximum"] == 2**63 and isinstance(seed["exclusiveMaximum"], int), seed
        assert '"exclusiveMaximum":9223372036854775808' in document.text.replace(" ", "")


def test_control_characters_and_oversized_metrics_are_refused(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid = create_federation(admin)
        for name in ("a\0b", "tab\there", "bell\x07", "c1\x85"):
            _refused(admin.post("/v1/federations", json=federation_config(name=name)), (422,), "validation_error")
            _refused(admin.post(f"/v1/federations/{fid}/clients", json={"name": name}), (422,), "validation_error")
            _refused(admin.post("/v1/federations", json=federation_config(class_names=["a", "b", name])), (422,),
                     "validation_error")
        evaluations = f"/v1/federations/{fid}/rounds/1/evaluations"
        for metrics in ({"f\0": 0.5}, {"x" * 129: 0.5}, {"": 0.5}, {f"m{i}": 0.5 for i in range(257)}):
            _refused(admin.post(evaluations, json={"split": "dev", "metrics": metrics}), (422,), "validation_error")
        names = admin.get("/v1/federations").json()
        assert all("\0" not in f["config"]["name"] for f in names)
        ok = admin.post("/v1/federations", json=federation_config(name="émoji ✓ ok", class_names=["a", "b", "c"]))
        assert ok.status_code == 201, ok.text


@pytest.mark.parametrize("metrics", [{"f\0": 1.0}, {"x" * 129: 1.0}, {"": 1.0}, {f"m{i}": 1.0 for i in range(257)}])
def test_update_metric_keys_are_bounded(metrics: dict[str, float]) -> None:
    metadata = {"format": UPDATE_FORMAT, "num_samples": "3", "base_model_version": "0",
                "metrics": json.dumps(metrics)}
    with pytest.raises(TensorFormatError) as caught:
        parse_update_metadata(metadata)
    assert caught.value.code == "malformed_tensors"
    good = dict(metadata)
    good["metrics"] = json.dumps({f"m{i}": 1.0 for i in range(255)} | {"x" * 128: 2.0})
    assert len(parse_update_metadata(good)[2]) == 256
