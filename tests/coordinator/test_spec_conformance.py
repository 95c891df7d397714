"""Answers a client of the published API can rely on: an update after the deadline is refused even while the round
still shows open; authentication comes before body parsing; a 405 lists every allowed method; no redirect is ever
built from the Host header (SQLite and Postgres)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import httpx

from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import SAFETENSORS, create_federation, enroll, known_update, small_model, wait_for


def test_an_update_after_the_deadline_is_refused_while_the_round_still_shows_open(database_url: str,
                                                                                  tmp_path: Path) -> None:
    # A slow timer (every 4 s) leaves the round showing `open` for seconds after its 1 s deadline.
    with CoordinatorProcess(database_url, tmp_path / "data", tick_s=4.0) as coordinator, \
            coordinator.client() as admin:
        model = small_model(0)
        fid = create_federation(admin, model, clients_per_round=1, round_deadline_s=1.0)
        node = enroll(admin, fid, "late")
        try:
            opened = wait_for(lambda: (r := admin.get(f"/v1/federations/{fid}/rounds/1")).status_code == 200
                              and r.json()["state"] == "open" and r.json(), timeout_s=30, what="round 1 open")
            deadline = datetime.fromisoformat(opened["deadline"])
            time.sleep(max(0.0, (deadline - datetime.now(deadline.tzinfo)).total_seconds()) + 0.3)
            assert admin.get(f"/v1/federations/{fid}/rounds/1").json()["state"] == "open"
            _, body = known_update(model, 1, num_samples=5, base_version=0)
            late = node.http.post(f"/v1/federations/{fid}/rounds/1/updates", content=body, headers=SAFETENSORS)
            assert late.status_code == 409 and late.json()["code"] == "round_not_open", late.text
            assert "deadline" in late.json()["detail"]
            assert admin.get(f"/v1/federations/{fid}/rounds/1").json()["received"] == 0
        finally:
            node.close()


def test_authentication_comes_before_parsing_the_body(coordinator: CoordinatorProcess) -> None:
    not_utf8 = b'{"name": "\xff\xfe"}'
    not_json = b'{"name": '
    with httpx.Client(base_url=coordinator.base_url, timeout=10) as anonymous:
        for body in (not_utf8, not_json):
            for headers in ({}, {"Authorization": "Bearer not-a-token"}):
                answer = anonymous.post("/v1/federations", content=body,
                                        headers={"Content-Type": "application/json", **headers})
                assert answer.status_code == 401, (body, headers, answer.text)
                assert answer.json()["code"] == "unauthorized"
    with coordinator.client() as admin:  # with a valid token the body's fault is what is reported
        answer = admin.post("/v1/federations", content=not_utf8, headers={"Content-Type": "application/json"})
        assert answer.status_code in (400, 422) and answer.json()["code"] in ("bad_request", "validation_error")


def test_a_405_lists_every_allowed_method_and_no_redirect_uses_the_host_header(
        coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid = create_federation(admin)
        answer = admin.delete("/v1/federations")
        assert answer.status_code == 405 and answer.json()["code"] == "method_not_allowed"
        assert {m.strip() for m in answer.headers["allow"].split(",")} == {"GET", "POST"}
        clients = admin.patch(f"/v1/federations/{fid}/clients")
        assert {m.strip() for m in clients.headers["allow"].split(",")} == {"GET", "POST"}
        slash = admin.get("/v1/federations/", headers={"Host": "evil.example"}, follow_redirects=False)
        assert slash.status_code == 404 and "location" not in slash.headers
        assert slash.json()["code"] == "not_found"
