"""Unbounded work one client could cause, each bounded now (SQLite and Postgres, a real coordinator over HTTP).

* Safetensors bodies must be tiled exactly by their tensors (no trailing or hidden bytes, no overlaps) and
  their JSON header may not repeat a key: refused with 422 ``malformed_tensors`` (updates and model uploads).
* Metric maps: 200,000 keys are refused at once; the round's metrics (``/rounds``, ``/metrics``) keep at most
  256 names however many clients invent names.
* Per-token concurrency: event streams and uploads past the token's limit get 429 ``too_many_requests`` with
  ``Retry-After``, other tokens are not affected, and a slot is free again once its request ended.
* A declared Content-Length reserves no memory: the coordinator's RSS follows the bytes that arrived.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from mfcpl.wire.tensors import encode_model
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import (
    SAFETENSORS,
    EnrolledClient,
    create_federation,
    enroll,
    known_update,
    post_update,
    small_model,
    wait_for,
    wait_round_state,
    wait_task,
)

MiB = 1024 * 1024


def _refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == code, problem
    return problem


def _split(body: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", body[:8])
    return json.loads(body[8 : 8 + n]), body[8 + n :]


def _join(header: dict[str, Any] | str, data: bytes) -> bytes:
    head = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(head)) + head + data


def _running_round(admin: httpx.Client, clients: int = 3, **overrides: Any) -> tuple[str, list[EnrolledClient]]:
    model = small_model(0)
    fid = create_federation(admin, model, rounds=1, clients_per_round=clients, **overrides)
    nodes = [enroll(admin, fid, f"node-{i}") for i in range(clients)]
    for node in nodes:
        wait_task(node, fid)
    return fid, nodes


def _layout_corruptions(body: bytes) -> dict[str, bytes]:
    """The outside test's findings, each made from a valid body."""
    header, data = _split(body)
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    first, second = names[0], names[1]
    gap = json.loads(json.dumps(header))
    for name in names[1:]:
        begin, end = gap[name]["data_offsets"]
        gap[name]["data_offsets"] = [begin + 8, end + 8]
    cut = header[second]["data_offsets"][0]
    overlap = {**header, "weights/zz.alias": header[names[-1]]}  # a second name on the last tensor's bytes
    text = json.dumps(header)
    duplicate_name = text[:-1] + f', {json.dumps(first)}: {json.dumps(header[first])}}}'
    duplicate_meta = text.replace('"__metadata__": {', '"__metadata__": {"format": "mfcpl.other.v0", ', 1)
    return {
        "trailing 4 MiB": body + b"\0" * (4 * MiB),
        "gap": _join(gap, data[:cut] + b"\0" * 8 + data[cut:]),
        "overlap": _join(overlap, data),
        "duplicate tensor name": _join(duplicate_name, data),
        "duplicate metadata key": _join(duplicate_meta, data),
    }


def test_updates_and_models_must_be_tiled_exactly_by_their_tensors(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid, nodes = _running_round(admin, clients=1)
        _, body = known_update(small_model(0), 1, num_samples=5, base_version=0, metrics={"loss": 0.5})
        for finding, bad in _layout_corruptions(body).items():
            problem = _refused(post_update(nodes[0], fid, 1, bad), 422, "malformed_tensors")
            assert problem["detail"], finding
        # The model upload reads with the same reader.
        other = create_federation(admin)
        for finding, bad in _layout_corruptions(encode_model(small_model(2))).items():
            _refused(admin.post(f"/v1/federations/{other}/models", content=bad, headers=SAFETENSORS), 422,
                     "malformed_tensors")
            assert finding
        # None of it counted: the valid update is the first one.
        accepted = post_update(nodes[0], fid, 1, body)
        assert accepted.status_code == 201, accepted.text
        assert wait_round_state(admin, fid, 1)["received"] == 1


def test_metric_keys_are_bounded_at_upload_and_in_the_round(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid, nodes = _running_round(admin, clients=3)
        model = small_model(0)
        # 200,000 keys: refused at once (the metrics text is over its bound before it is parsed).
        _, huge = known_update(model, 1, num_samples=5, base_version=0,
                               metrics={f"metric-{i:06d}": 1.0 for i in range(200_000)})
        assert len(huge) > 4 * MiB
        started = time.monotonic()
        problem = _refused(post_update(nodes[0], fid, 1, huge), 422, "malformed_tensors")
        assert "metrics" in problem["detail"]
        assert time.monotonic() - started < 10
        # 257 keys, a 129-character key, a key given twice: refused.
        for metrics_text in (json.dumps({f"m{i}": 1.0 for i in range(257)}), json.dumps({"k" * 129: 1.0}),
                             '{"loss": 1.0, "loss": 2.0}'):
            _, valid = known_update(model, 2, num_samples=5, base_version=0, metrics={"loss": 1.0})
            header, data = _split(valid)
            header["__metadata__"]["metrics"] = metrics_text
            _refused(post_update(nodes[0], fid, 1, _join(header, data)), 422, "malformed_tensors")
        # Every client sends 256 names of 128 characters of its own: accepted, but the round keeps 256 names.
        for i, node in enumerate(nodes):
            metrics = {f"{i}-{j:03d}".ljust(128, "x"): float(j) for j in range(255)} | {"loss": float(i)}
            _, body = known_update(model, 10 + i, num_samples=5, base_version=0, metrics=metrics)
            accepted = post_update(node, fid, 1, body)
            assert accepted.status_code == 201, accepted.text
        closed = wait_round_state(admin, fid, 1)
        assert len(closed["train_metrics"]) == 256
        assert closed["train_metrics"]["loss"] == pytest.approx(1.0)  # reported by all three: kept
        for path in (f"/v1/federations/{fid}/rounds", f"/v1/federations/{fid}/rounds/1",
                     f"/v1/federations/{fid}/metrics"):
            response = admin.get(path)
            assert response.status_code == 200, response.text
            assert len(response.content) < 100_000, (path, len(response.content))


@contextmanager
def _held_upload(coordinator: CoordinatorProcess, path: str, token: str, declared: int,
                 sent: bytes = b"\0" * 16) -> Iterator[socket.socket]:
    """A POST that declares ``declared`` bytes, sends ``sent`` and then waits (holding its upload slot)."""
    sock = socket.create_connection(("127.0.0.1", coordinator.port), timeout=30)
    try:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/vnd.safetensors\r\nContent-Length: {declared}\r\n\r\n")
        sock.sendall(head.encode() + sent)
        yield sock
    finally:
        sock.close()


def _probe(http: httpx.Client, path: str) -> int:
    """A request on ``path`` that the route refuses with 415 once it holds a slot (so it changes nothing)."""
    return http.post(path, content=b"x", headers={"Content-Type": "text/plain"}).status_code


def test_uploads_per_token_are_limited(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid, nodes = _running_round(admin, clients=2)
        path = f"/v1/federations/{fid}/rounds/1/updates"
        _, body = known_update(small_model(0), 1, num_samples=5, base_version=0)
        with ExitStack() as held:
            for _ in range(2):  # the default max_uploads_per_token
                held.enter_context(_held_upload(coordinator, path, nodes[0].token, len(body), body[:16]))
            assert wait_for(lambda: _probe(nodes[0].http, path) == 429, what="429 for a third upload")
            problem = nodes[0].http.post(path, content=body, headers=SAFETENSORS)
            _refused(problem, 429, "too_many_requests")
            assert int(problem.headers["Retry-After"]) >= 1
            # Another token is not affected.
            assert _probe(nodes[1].http, path) == 415
            accepted = post_update(nodes[1], fid, 1, known_update(small_model(0), 2, num_samples=5,
                                                                  base_version=0)[1])
            assert accepted.status_code == 201, accepted.text
        # The abandoned uploads freed their slots: the whole update is accepted.
        assert wait_for(lambda: _probe(nodes[0].http, path) == 415, what="upload slots freed")
        accepted = post_update(nodes[0], fid, 1, body)
        assert accepted.status_code == 201, accepted.text


def _rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (VmRSS from /proc)."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) * 1024 if match else 0
        pids += [int(c) for c in children]
    return total


def test_model_uploads_reserve_no_memory_for_a_declared_length_and_are_limited(
        coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid = create_federation(admin)
        path = f"/v1/federations/{fid}/models"
        assert _probe(admin, path) == 415
        before = _rss_bytes(coordinator.pid)
        declared = 128 * MiB
        with ExitStack() as held:
            for _ in range(4):  # the default max_admin_uploads, 512 MiB declared in all
                held.enter_context(_held_upload(coordinator, path, coordinator.admin_token, declared))
            assert wait_for(lambda: _probe(admin, path) == 429, what="429 for a fifth model upload")
            time.sleep(0.3)  # every held request is inside its body read by now
            grown = _rss_bytes(coordinator.pid) - before
            assert grown < 64 * MiB, f"RSS grew by {grown / MiB:.0f} MiB for 64 bytes received"
            _refused(admin.post(path, content=encode_model(small_model(1)), headers=SAFETENSORS), 429,
                     "too_many_requests")
        assert wait_for(lambda: _probe(admin, path) == 415, what="model upload slots freed")
        created = admin.post(path, content=encode_model(small_model(1)), headers=SAFETENSORS)
        assert created.status_code == 201, created.text


def test_event_streams_per_token_are_limited(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        fid, nodes = _running_round(admin, clients=2)
        path = f"/v1/federations/{fid}/events"
        with ExitStack() as streams:
            for _ in range(4):  # the default max_streams_per_token
                response = streams.enter_context(nodes[0].http.stream("GET", path))
                assert response.status_code == 200
            refused = nodes[0].http.get(path)
            problem = _refused(refused, 429, "too_many_requests")
            assert "4 concurrent streams" in problem["detail"]
            assert int(refused.headers["Retry-After"]) >= 1
            # Ordinary reads of the same token, and streams of other tokens, go on.
            assert nodes[0].http.get(f"/v1/federations/{fid}/rounds/1").status_code == 200
            with nodes[1].http.stream("GET", path) as other, admin.stream("GET", path) as operator:
                assert (other.status_code, operator.status_code) == (200, 200)
            # A backlog read (follow=false) holds a slot only while it is sent.
            assert nodes[1].http.get(path, params={"follow": "false"}).status_code == 200
        # The closed streams freed their slots (the server notices the disconnect within a poll interval).
        def reopened() -> bool:
            with nodes[0].http.stream("GET", path, params={"follow": "false"}) as response:
                response.read()
                return response.status_code == 200

        assert wait_for(reopened, what="stream slots freed")
