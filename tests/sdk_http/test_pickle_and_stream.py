"""SDK errors survive a pickle round trip (worker pools hand them to their parent), and an event stream of a
finished federation ends instead of reconnecting for ever (a real coordinator, SQLite and Postgres)."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
import time

import httpx
import pytest

from client_sdk.client import MfcplClient
from client_sdk.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ValidationError,
    error_class_for_status,
    problem_from_response,
)
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import create_federation

PROBLEMS = [
    (404, {"title": "Not Found", "status": 404, "code": "not_found", "detail": "federation x does not exist"}),
    (409, {"title": "Conflict", "status": 409, "code": "round_not_open", "detail": "round 3 is closed"}),
    (422, {"title": "Unprocessable Content", "status": 422, "code": "validation_error", "detail": "bad",
           "errors": [{"loc": ["body", "name"], "msg": "too long"}]}),
    (429, {"title": "Too Many Requests", "status": 429, "code": "too_many_requests", "detail": "slow down"}),
    (503, {"title": "Service Unavailable", "status": 503, "code": "database_busy", "detail": "retry"}),
]


def _status_error(status: int, body: dict) -> APIStatusError:
    request = httpx.Request("GET", "http://coordinator/v1/federations/x")
    response = httpx.Response(status, json=body, request=request)
    return error_class_for_status(status)(problem_from_response(response), response=response)


def _raise(status: int, body: dict) -> None:
    raise _status_error(status, body)


def _raise_connection(timeout: bool) -> None:
    cls = APITimeoutError if timeout else APIConnectionError
    raise cls("GET /v1/x: timed out", request=httpx.Request("GET", "http://coordinator/v1/x"))


@pytest.mark.parametrize(("status", "body"), PROBLEMS)
def test_status_errors_round_trip_through_pickle_and_a_worker_pool(status: int, body: dict) -> None:
    original = _status_error(status, body)
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is type(original)
    assert (copy.status_code, copy.code, copy.detail, copy.problem) == (status, body["code"], body["detail"],
                                                                       original.problem)
    assert str(copy) == str(original) and copy.response is None
    with multiprocessing.get_context("spawn").Pool(1) as pool, pytest.raises(type(original)) as raised:
        pool.apply(_raise, (status, body))
    assert raised.value.code == body["code"] and raised.value.status_code == status
    expected = {404: NotFoundError, 409: ConflictError, 422: ValidationError, 429: RateLimitError,
                503: ServerError}[status]
    assert isinstance(raised.value, expected)


@pytest.mark.parametrize("timeout", [False, True])
def test_connection_errors_round_trip_through_a_worker_pool(timeout: bool) -> None:
    with multiprocessing.get_context("spawn").Pool(1) as pool, pytest.raises(APIConnectionError) as raised:
        pool.apply(_raise_connection, (timeout,))
    assert isinstance(raised.value, APITimeoutError) is timeout
    assert "timed out" in str(raised.value) and raised.value.request is None


def test_event_stream_of_a_finished_federation_ends(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid = create_federation(admin)
    with MfcplClient(coordinator.base_url, coordinator.admin_token, backoff_base=0.05, timeout=20.0) as client:
        received: list[str] = []
        done = threading.Event()

        def follow() -> None:
            for event in client.events.stream(fid):
                received.append(str(event.type))
            done.set()

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        time.sleep(1.0)
        assert not done.is_set(), "the stream of a running federation must stay open"
        client.federations.cancel(fid)
        assert done.wait(15), "the stream did not end after the federation was cancelled"
        watcher.join(5)
    assert "federation.status" in received
    # Following a federation that is already finished ends at once, after its backlog.
    with MfcplClient(coordinator.base_url, coordinator.admin_token, backoff_base=0.05, timeout=20.0) as client:
        started = time.monotonic()
        backlog = list(client.events.stream(fid))
        assert time.monotonic() - started < 10 and backlog
