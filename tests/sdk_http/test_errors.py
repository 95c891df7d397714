"""Typed errors by status, carrying the coordinator's problem details, and no retry on other 4xx."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.responses import PlainTextResponse, Response

from client_sdk import errors
from client_sdk.client import MfcplClient
from mfcpl.wire.errors import ERROR_STATUS, GENERIC_CODE
from mfcpl.wire.schemas import ClientProfile
from tests.sdk_http.livehttp import ScriptedServer
from tests.sdk_http.wire import json_response, problem

CASES = [
    (400, "malformed_tensors", errors.BadRequestError),
    (401, "unauthorized", errors.AuthenticationError),
    (403, "forbidden", errors.PermissionDeniedError),
    (404, "not_found", errors.NotFoundError),
    (409, "round_not_open", errors.ConflictError),
    (413, "payload_too_large", errors.PayloadTooLargeError),
    (415, "unsupported_media_type", errors.BadRequestError),
    (422, "validation_error", errors.ValidationError),
]


@pytest.mark.parametrize(("status", "code", "error_class"), CASES)
def test_status_maps_to_typed_error_without_retry(scripted: ScriptedServer, status, code, error_class) -> None:
    scripted.route("GET", "/v1/federations/fed1/tasks/next")(lambda seen, r: problem(status, code, f"why {status}"))
    with MfcplClient(scripted.url, "t", backoff_base=0.01) as client, pytest.raises(error_class) as caught:
        client.tasks.next("fed1")
    err = caught.value
    assert type(err) is error_class
    assert isinstance(err, errors.APIStatusError) and isinstance(err, errors.MfcplError)
    assert (err.status_code, err.code, err.detail) == (status, code, f"why {status}")
    assert err.problem.status == status
    assert len(scripted.calls("GET", "/v1/federations/fed1/tasks/next")) == 1


def test_validation_problem_keeps_field_errors(scripted: ScriptedServer) -> None:
    body = {"title": "Unprocessable", "status": 422, "detail": "2 errors", "code": "validation_error",
            "errors": [{"loc": ["body", "num_samples"], "msg": "must be >= 0"}]}
    scripted.route("PUT", "/v1/federations/fed1/clients/me/profile")(
        lambda seen, r: Response(json.dumps(body), 422, media_type="application/problem+json"))
    with MfcplClient(scripted.url, "t") as client, pytest.raises(errors.ValidationError) as caught:
        client.clients.report_profile("fed1", ClientProfile(modalities=["acc"], class_counts=[1, 2], num_samples=3))
    assert caught.value.problem.errors == body["errors"]
    sent = json.loads(scripted.calls("PUT", "/v1/federations/fed1/clients/me/profile")[0].body)
    assert sent == {"modalities": ["acc"], "class_counts": [1, 2], "num_samples": 3}


def test_non_problem_bodies_still_give_typed_errors(scripted: ScriptedServer) -> None:
    scripted.route("GET", "/v1/federations")(lambda seen, r: PlainTextResponse("bad gateway from nginx", 502))
    scripted.route("GET", "/v1/federations/x")(lambda seen, r: json_response({"detail": "Not Found"}, 404))
    with MfcplClient(scripted.url, "t", max_retries=0) as client:
        with pytest.raises(errors.ServerError) as gateway:
            client.federations.list()
        with pytest.raises(errors.NotFoundError) as missing:
            client.federations.get("x")
    assert gateway.value.code == "internal_error" and "nginx" in gateway.value.detail
    assert gateway.value.problem.title == "Bad Gateway"
    assert missing.value.code == "not_found" and missing.value.detail == "Not Found"


def test_malformed_success_body_is_an_invalid_response(scripted: ScriptedServer) -> None:
    scripted.route("GET", "/v1/federations/fed1")(lambda seen, r: json_response({"id": "fed1"}))
    with MfcplClient(scripted.url, "t") as client, pytest.raises(errors.InvalidResponseError, match="Federation"):
        client.federations.get("fed1")


def test_statuses_and_fallback_codes_follow_the_wire_table() -> None:
    for status, code in GENERIC_CODE.items():
        answer = errors.problem_from_response(httpx.Response(status))
        assert (answer.status, answer.code) == (status, code)
    assert errors.problem_from_response(httpx.Response(429)).code == "http_error"
    for code, status in ERROR_STATUS.items():  # a status the coordinator answers is never a ServerError below 500
        assert issubclass(errors.error_class_for_status(status), errors.ServerError) == (status >= 500), code


def test_builtin_names_are_not_shadowed() -> None:
    assert not hasattr(errors, "ConnectionError") and not hasattr(errors, "TimeoutError")
    assert issubclass(errors.APITimeoutError, errors.APIConnectionError)


def test_env_provides_base_url_and_token(scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted.route("GET", "/v1/federations")(lambda seen, r: json_response([]))
    monkeypatch.setenv("MFCPL_SERVER_URL", scripted.url + "/v1/")
    monkeypatch.delenv("MFCPL_TOKEN", raising=False)
    monkeypatch.setenv("MFCPL_ADMIN_TOKEN", "from-env-admin")
    with MfcplClient() as client:
        assert client.federations.list() == []
    monkeypatch.setenv("MFCPL_TOKEN", "from-env-client")
    with MfcplClient() as client:
        client.federations.list()
    assert [c.headers["authorization"] for c in scripted.calls("GET", "/v1/federations")] == [
        "Bearer from-env-admin", "Bearer from-env-client"]


def test_bad_arguments_fail_before_any_request() -> None:
    with MfcplClient("http://127.0.0.1:9", "t") as client:
        with pytest.raises(ValueError):
            client.models.get("fed1", -1)
        with pytest.raises(ValueError):
            client.models.get("fed1", "newest")
        with pytest.raises(ValueError):
            client.federations.get("a/b")
    with pytest.raises(ValueError):
        MfcplClient("http://x", max_retries=-1)
