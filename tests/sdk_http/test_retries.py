"""Retries, backoff, Retry-After and Idempotency-Key reuse against a real scripted HTTP server."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest

from client_sdk.client import MfcplClient
from client_sdk.errors import APIConnectionError, APITimeoutError, RateLimitError, ServerError
from mfcpl.wire.schemas import FederationCreate, ModalitySpec
from mfcpl.wire.tensors import LocalPrototypes, Update, decode_update
from tests.sdk_http.livehttp import DroppingProxy, ScriptedServer
from tests.sdk_http.wire import federation, json_response, problem, receipt

FAST = {"backoff_base": 0.01, "backoff_max": 0.05}


def _config() -> FederationCreate:
    return FederationCreate(name="demo", num_classes=2, modalities=[ModalitySpec(name="acc", kind="timeseries",
                                                                                  shape=[8, 3])])


def _fail_then(server: ScriptedServer, method: str, path: str, failures: list, success) -> None:
    remaining = list(failures)

    @server.route(method, path)
    def handler(seen, request):
        return remaining.pop(0)() if remaining else success(seen)


def test_update_submit_retries_5xx_and_reuses_one_idempotency_key(scripted: ScriptedServer) -> None:
    path = "/v1/federations/fed1/rounds/2/updates"
    _fail_then(scripted, "POST", path,
               [lambda: problem(503, "internal_error"), lambda: problem(500, "internal_error")],
               lambda seen: json_response(receipt("fed1", 2, False), 201))
    with MfcplClient(scripted.url, "node", **FAST) as client:
        first = client.updates.submit("fed1", 2, _update())
        again = client.updates.submit("fed1", 2, _update())
    assert first.round == 2 and again.round == 2
    calls = scripted.calls("POST", path)
    assert len(calls) == 4
    keys = [c.headers.get("idempotency-key") for c in calls]
    assert keys[0] and keys[0] == keys[1] == keys[2]  # one logical call, three tries
    assert keys[3] and keys[3] != keys[0]  # a new logical call gets a new key
    assert all(c.headers["authorization"] == "Bearer node" for c in calls)


def test_creates_are_retried_after_5xx_with_one_idempotency_key(scripted: ScriptedServer) -> None:
    # The coordinator deduplicates every create by its key, so a 5xx (which may come after the federation was
    # stored) is retried with the same key: the retry answers the stored federation, never a second one.
    _fail_then(scripted, "POST", "/v1/federations", [lambda: problem(503, "database_busy"),
                                                     lambda: problem(429, "too_many_requests")],
               lambda seen: json_response(federation(), 201))
    with MfcplClient(scripted.url, "admin", **FAST) as client:
        assert client.federations.create(_config()).id == "fed1"
        assert client.federations.create(_config()).id == "fed1"
    calls = scripted.calls("POST", "/v1/federations")
    assert len(calls) == 4
    keys = [c.headers["idempotency-key"] for c in calls]
    assert keys[0] == keys[1] == keys[2] and keys[3] != keys[0]


def test_reads_carry_no_idempotency_key_and_retry_408_429(scripted: ScriptedServer) -> None:
    _fail_then(scripted, "GET", "/v1/federations/fed1",
               [lambda: problem(408, "bad_request"), lambda: problem(429, "bad_request")],
               lambda seen: json_response(federation()))
    with MfcplClient(scripted.url, "t", **FAST) as client:
        assert client.federations.get("fed1").status == "running"
    calls = scripted.calls("GET", "/v1/federations/fed1")
    assert len(calls) == 3
    assert all("idempotency-key" not in c.headers for c in calls)


def test_retry_after_seconds_is_honoured(scripted: ScriptedServer) -> None:
    _fail_then(scripted, "GET", "/v1/federations/fed1",
               [lambda: problem(503, "internal_error", headers={"Retry-After": "1"})],
               lambda seen: json_response(federation()))
    with MfcplClient(scripted.url, "t", backoff_base=0.0, backoff_max=5.0) as client:
        started = time.monotonic()
        client.federations.get("fed1")
        elapsed = time.monotonic() - started
    assert 0.95 <= elapsed < 3.0  # backoff alone would have waited 0 s


def test_retry_after_is_capped_by_backoff_max(scripted: ScriptedServer) -> None:
    _fail_then(scripted, "GET", "/v1/federations/fed1",
               [lambda: problem(429, "bad_request", headers={"Retry-After": "3600"})],
               lambda seen: json_response(federation()))
    with MfcplClient(scripted.url, "t", backoff_base=0.0, backoff_max=0.2) as client:
        started = time.monotonic()
        client.federations.get("fed1")
        assert time.monotonic() - started < 2.0


def test_retries_exhausted_raise_the_typed_error_with_problem(scripted: ScriptedServer) -> None:
    scripted.route("GET", "/v1/federations")(lambda seen, r: problem(500, "internal_error", "db down"))
    scripted.route("GET", "/v1/federations/fed1")(lambda seen, r: problem(429, "bad_request", "slow down"))
    with MfcplClient(scripted.url, "t", max_retries=2, **FAST) as client:
        with pytest.raises(ServerError) as server_error:
            client.federations.list()
        with pytest.raises(RateLimitError) as rate_error:
            client.federations.get("fed1")
    assert server_error.value.status_code == 500 and server_error.value.detail == "db down"
    assert rate_error.value.code == "bad_request" and rate_error.value.problem.detail == "slow down"
    assert len(scripted.calls("GET", "/v1/federations")) == 3
    assert len(scripted.calls("GET", "/v1/federations/fed1")) == 3


def test_max_retries_zero_tries_once(scripted: ScriptedServer) -> None:
    scripted.route("GET", "/v1/federations")(lambda seen, r: problem(503, "internal_error"))
    with MfcplClient(scripted.url, "t", max_retries=5, **FAST) as client, pytest.raises(ServerError):
        client.with_options(max_retries=0).federations.list()
    assert len(scripted.calls("GET", "/v1/federations")) == 1


def test_connection_refused_is_retried_then_raises() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there
    client = MfcplClient(f"http://127.0.0.1:{port}", "t", max_retries=2, **FAST)
    sleeps: list[float] = []
    client._sleep = sleeps.append
    with client, pytest.raises(APIConnectionError) as caught:
        client.federations.list()
    assert not isinstance(caught.value, APITimeoutError)
    assert len(sleeps) == 2 and all(0 <= s <= 0.05 for s in sleeps)


def test_read_timeout_is_retried_then_raises_timeout_error(scripted: ScriptedServer) -> None:
    async def slow(seen, request):
        await asyncio.sleep(1.0)
        return json_response([])

    scripted.route("GET", "/v1/federations")(slow)
    with MfcplClient(scripted.url, "t", timeout=0.2, max_retries=1, **FAST) as client, pytest.raises(APITimeoutError):
        client.federations.list()
    assert len(scripted.calls("GET", "/v1/federations")) == 2


def _update() -> Update:
    return Update(
        weights={"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        num_samples=5,
        base_model_version=0,
        prototypes={"shared": LocalPrototypes(classes=np.array([1]), vectors=np.ones((1, 4), np.float32),
                                              counts=np.array([5.0], np.float32))},
        metrics={"loss": 0.5},
    )


def test_dropped_answer_to_a_submit_is_replayed_once(scripted: ScriptedServer) -> None:
    stored: dict[str, bytes] = {}

    @scripted.route("POST", "/v1/federations/fed1/rounds/3/updates")
    def accept(seen, request):
        key = seen.headers["idempotency-key"]
        replay = key in stored
        stored.setdefault(key, seen.body)
        return json_response(receipt("fed1", 3, replay), 200 if replay else 201)

    host, port = scripted.url.removeprefix("http://").split(":")
    proxy = DroppingProxy(host, int(port))
    proxy.drop_once(b"POST /v1/federations/fed1/rounds/3/updates")
    try:
        with MfcplClient(proxy.url, "client-token", **FAST) as client:
            got = client.updates.submit("fed1", 3, _update())
    finally:
        proxy.close()
    assert proxy.dropped == 1
    calls = scripted.calls("POST", "/v1/federations/fed1/rounds/3/updates")
    assert len(calls) == 2 and calls[0].headers["idempotency-key"] == calls[1].headers["idempotency-key"]
    assert len(stored) == 1 and got.replayed
    assert calls[0].headers["content-type"] == "application/vnd.safetensors"
    sent = decode_update(calls[1].body)
    assert sent.num_samples == 5 and np.array_equal(sent.weights["w"], _update().weights["w"])
    assert np.array_equal(sent.prototypes["shared"].classes, [1]) and sent.metrics == {"loss": 0.5}


def test_caller_supplied_idempotency_key_is_sent(scripted: ScriptedServer) -> None:
    scripted.route("POST", "/v1/federations/fed1/rounds/1/updates")(
        lambda seen, r: json_response(receipt("fed1", 1, False), 201))
    with MfcplClient(scripted.url, "t", **FAST) as client:
        client.updates.submit("fed1", 1, _update(), idempotency_key="node-7-round-1")
    assert scripted.calls("POST", "/v1/federations/fed1/rounds/1/updates")[0].headers["idempotency-key"] == (
        "node-7-round-1")
