"""Model and prototype downloads: ETag / If-None-Match caching in memory and on disk, sha256 checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from starlette.responses import Response

from client_sdk.client import MfcplClient
from client_sdk.errors import ContentIntegrityError
from mfcpl.wire.constants import SAFETENSORS_CONTENT_TYPE
from mfcpl.wire.tensors import PrototypeTable, decode_model, encode_model, encode_prototypes
from tests.sdk_http.livehttp import ScriptedServer
from tests.sdk_http.wire import json_response, model_version

WEIGHTS = {"encoder.w": np.arange(12, dtype=np.float32).reshape(3, 4), "head.b": np.array([1, 2], np.int64)}
MODEL = encode_model(WEIGHTS)
MODEL_SHA = hashlib.sha256(MODEL).hexdigest()
PROTOS = encode_prototypes({"shared": PrototypeTable(np.eye(3, 4, dtype=np.float32),
                                                     np.array([2, 0, 1], np.float32))}, model_version=1)
PROTOS_SHA = hashlib.sha256(PROTOS).hexdigest()


def serve_blob(body: bytes, etag_sha: str | None = None):
    etag = f'"{etag_sha or hashlib.sha256(body).hexdigest()}"'

    def handler(seen, request):
        if seen.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type=SAFETENSORS_CONTENT_TYPE, headers={"ETag": etag})

    return handler


def serve_model(server: ScriptedServer, body: bytes = MODEL, etag_sha: str | None = None) -> None:
    meta = model_version("fed1", 1, MODEL_SHA, len(MODEL))
    server.route("GET", "/v1/federations/fed1/models/latest")(lambda seen, r: json_response(meta))
    server.route("GET", "/v1/federations/fed1/models/1")(lambda seen, r: json_response(meta))
    server.route("GET", "/v1/federations/fed1/models/1/weights")(serve_blob(body, etag_sha))


WEIGHTS_PATH = "/v1/federations/fed1/models/1/weights"


def test_second_download_is_a_304_that_reuses_cached_bytes(scripted: ScriptedServer) -> None:
    serve_model(scripted)
    with MfcplClient(scripted.url, "t") as client:
        first = client.models.download("fed1", "latest")
        second = client.models.download("fed1", 1)
        assert (client.cache.downloads, client.cache.not_modified) == (1, 1)
    assert first.version.version == 1 and second.version.sha256 == MODEL_SHA
    for name, array in WEIGHTS.items():
        assert np.array_equal(first.weights[name], array) and np.array_equal(second.weights[name], array)
        assert second.weights[name].dtype == array.dtype
    calls = scripted.calls("GET", WEIGHTS_PATH)
    assert "if-none-match" not in calls[0].headers
    assert calls[1].headers["if-none-match"] == f'"{MODEL_SHA}"'
    assert calls[0].headers["accept"] == SAFETENSORS_CONTENT_TYPE


def test_disk_cache_survives_a_new_client_and_corruption_is_detected(scripted: ScriptedServer,
                                                                     tmp_path: Path) -> None:
    serve_model(scripted)
    with MfcplClient(scripted.url, "t", cache_dir=tmp_path) as client:
        client.models.download("fed1", 1)
    assert (tmp_path / "blobs" / MODEL_SHA).read_bytes() == MODEL
    with MfcplClient(scripted.url, "t", cache_dir=tmp_path) as restarted:
        weights = restarted.models.download("fed1", 1).weights
        assert restarted.cache.not_modified == 1 and restarted.cache.downloads == 0
    assert np.array_equal(weights["encoder.w"], WEIGHTS["encoder.w"])
    (tmp_path / "blobs" / MODEL_SHA).write_bytes(MODEL[:-4] + b"\0\0\0\1")  # bit rot on disk
    with MfcplClient(scripted.url, "t", cache_dir=tmp_path) as third:
        third.models.download("fed1", 1)
        assert third.cache.downloads == 1  # unconditional GET: the bad blob was discarded
    assert "if-none-match" not in scripted.calls("GET", WEIGHTS_PATH)[-1].headers
    assert (tmp_path / "blobs" / MODEL_SHA).read_bytes() == MODEL


def test_known_digest_from_a_task_lets_a_cold_client_revalidate(scripted: ScriptedServer, tmp_path: Path) -> None:
    serve_model(scripted)
    with MfcplClient(scripted.url, "t", cache_dir=tmp_path) as client:
        client.models.download_bytes("fed1", 1)
    for index in (tmp_path / "index").iterdir():
        index.unlink()  # only the content-addressed blob is left
    with MfcplClient(scripted.url, "t", cache_dir=tmp_path) as client:
        body = client.models.download_bytes("fed1", 1, expected_sha256=MODEL_SHA)
        assert client.cache.not_modified == 1
    assert body == MODEL
    assert scripted.calls("GET", WEIGHTS_PATH)[-1].headers["if-none-match"] == f'"{MODEL_SHA}"'


def test_body_that_does_not_match_its_etag_is_rejected(scripted: ScriptedServer) -> None:
    serve_model(scripted, body=MODEL, etag_sha="a" * 64)
    with MfcplClient(scripted.url, "t") as client, pytest.raises(ContentIntegrityError, match="ETag"):
        client.models.download("fed1", 1)


def test_body_that_does_not_match_the_expected_digest_is_rejected(scripted: ScriptedServer) -> None:
    serve_model(scripted)
    with MfcplClient(scripted.url, "t") as client, pytest.raises(ContentIntegrityError, match="expected"):
        client.models.download_bytes("fed1", 1, expected_sha256="b" * 64)


def test_prototype_download_is_cached_and_decoded(scripted: ScriptedServer) -> None:
    path = "/v1/federations/fed1/prototypes/1/tensors"
    scripted.route("GET", path)(serve_blob(PROTOS))
    with MfcplClient(scripted.url, "t") as client:
        tables = client.prototypes.download("fed1", 1, expected_sha256=PROTOS_SHA)
        again = client.prototypes.download("fed1", 1)
        assert client.cache.not_modified == 1
    assert set(tables) == {"shared"}
    assert np.array_equal(tables["shared"].coverage, [True, False, True])
    assert np.array_equal(again["shared"].vectors, np.eye(3, 4, dtype=np.float32))
    assert [c.headers.get("if-none-match") for c in scripted.calls("GET", path)] == [None, f'"{PROTOS_SHA}"']


def test_upload_initial_sends_safetensors_with_an_idempotency_key(scripted: ScriptedServer) -> None:
    meta = model_version("fed1", 0, MODEL_SHA, len(MODEL))
    scripted.route("POST", "/v1/federations/fed1/models")(lambda seen, r: json_response(meta, 201))
    with MfcplClient(scripted.url, "admin") as client:
        version = client.models.upload_initial("fed1", WEIGHTS)
    assert version.version == 0
    (call,) = scripted.calls("POST", "/v1/federations/fed1/models")
    assert call.headers["content-type"] == SAFETENSORS_CONTENT_TYPE and call.headers["idempotency-key"]
    assert hashlib.sha256(call.body).hexdigest() == MODEL_SHA
    assert np.array_equal(decode_model(call.body)["head.b"], [1, 2])
