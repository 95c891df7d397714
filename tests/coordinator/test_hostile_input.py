"""Inputs crafted to break parsers or overflow the database get a 4xx problem, never a 500."""

from __future__ import annotations

import json
import struct

import httpx

from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import SAFETENSORS, create_federation, enroll, small_model

HUGE = "99999999999999999999"


def _raw_safetensors(header: object, data: bytes = b"\0" * 16) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def test_hostile_inputs_are_refused_with_4xx(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid = create_federation(admin)
        # Numbers the database cannot hold, in paths and bodies.
        _refused(admin.get(f"/v1/federations/{fid}/rounds/{HUGE}"), 422, "validation_error")
        _refused(admin.get(f"/v1/federations/{fid}/models/{HUGE}"), 422, "validation_error")
        _refused(admin.get(f"/v1/federations/{fid}/prototypes/{HUGE}/tensors"), 422, "validation_error")
        _refused(admin.post(f"/v1/federations/{fid}/rounds/{HUGE}/evaluations",
                            json={"split": "dev", "metrics": {"f1": 0.5}}), 422, "validation_error")
        node = enroll(admin, fid, "n1")
        _refused(node.http.put(f"/v1/federations/{fid}/clients/me/profile",
                               json={"modalities": ["acc"], "class_counts": [1], "num_samples": 2**70}),
                 422, "validation_error")
        # Safetensors headers that are valid JSON but not a valid layout.
        bad_headers = [
            {"w": {"dtype": [], "shape": [4], "data_offsets": [0, 16]}},
            {"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}},
            {"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": "0-16"}},
        ]
        for header in bad_headers:
            response = admin.post(f"/v1/federations/{fid}/models", content=_raw_safetensors(header),
                                  headers=SAFETENSORS)
            assert 400 <= response.status_code < 500, (header, response.text)
        deep = "[" * 50_000 + "]" * 50_000
        response = admin.post(f"/v1/federations/{fid}/models", content=struct.pack("<Q", len(deep)) + deep.encode(),
                              headers=SAFETENSORS)
        assert 400 <= response.status_code < 500, response.text
        # Nothing was created by any of it: a valid model v0 is still accepted.
        from mfcpl.wire.tensors import encode_model

        ok = admin.post(f"/v1/federations/{fid}/models", content=encode_model(small_model(1)), headers=SAFETENSORS)
        assert ok.status_code == 201, ok.text
