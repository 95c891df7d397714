"""Faults of the service's own resources get a 5xx answer with a code of their own (never ``internal_error``),
every request gets an answer in bounded time, and ``mfcpl serve`` stops in bounded time.

Faults are real, produced under the coordinator subprocess: a small tmpfs (root may mount one here; the tests
that need it are skipped, naming why, where it may not) filled up (ENOSPC) or remounted read-only (EROFS);
``RLIMIT_FSIZE`` on the process (EFBIG: Python ignores SIGXFSZ), which needs no privilege; a SQLite database on a
full tmpfs; a Postgres database dropped under the running service, its connections terminated, and a Postgres
URL on a port nobody listens on. Time bounds use raw sockets over loopback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from coordinator.db.engine import database_fault
from coordinator.problems import storage_problem
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import SAFETENSORS, create_federation, enroll, small_model, wait_task
from tests.support.services import require_postgres

POSTGRES_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


# ------------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (skipped where this process may not mount)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); test_file_size_limit covers ENOSPC-like")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full (ENOSPC)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)
    return filler


def problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert body["code"] == code, body
    if status == 503:
        assert int(response.headers["retry-after"]) >= 1
    return body


def no_tracebacks(proc: CoordinatorProcess) -> None:
    """No request was answered as an internal error or dropped by the server (the round timer, which is not a
    request, may log its own failures)."""
    log = proc.read_log()
    for bad in ("ERROR mfcpl.problems", "Exception in ASGI application", "ERROR:", "500 Internal Server Error"):
        assert bad not in log, log[-6000:]


def open_round(proc: CoordinatorProcess) -> tuple[httpx.Client, str, int]:
    """A federation with one sampled client in an open round: (the client's http, fid, round number)."""
    with proc.client() as admin:
        fid = create_federation(admin, small_model(0), clients_per_round=1, rounds=1)
        node = enroll(admin, fid, "n1")
    task = wait_task(node, fid)
    return node.http, fid, int(task["round"])


def raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + body)
    return sock


def read_all(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    """Everything until the server closes; (bytes, seconds it took)."""
    started = time.monotonic()
    sock.settimeout(timeout_s)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data, time.monotonic() - started


def started(proc: CoordinatorProcess) -> CoordinatorProcess:
    proc.data_dir.mkdir(parents=True, exist_ok=True)
    proc.start()
    return proc


# ------------------------------------------------------------------------------------------------ classification


def _wrapped(orig: Exception) -> OperationalError:
    return OperationalError("SELECT 1", {}, orig)


def test_database_errors_are_classified_by_sqlstate_or_sqlite_code(tmp_path: Path) -> None:
    assert database_fault(_wrapped(psycopg.errors.TooManyConnections("too many clients"))) == "unavailable"
    assert database_fault(_wrapped(psycopg.errors.AdminShutdown("terminating connection"))) == "unavailable"
    assert database_fault(_wrapped(psycopg.errors.InvalidCatalogName('database "x" does not exist'))) == "unavailable"
    assert database_fault(_wrapped(psycopg.errors.DiskFull("could not extend file"))) == "unavailable"
    assert database_fault(_wrapped(psycopg.OperationalError("connection failed: Connection refused"))) == "unavailable"
    assert database_fault(_wrapped(psycopg.errors.LockNotAvailable("lock timeout"))) == "busy"
    assert database_fault(_wrapped(psycopg.errors.QueryCanceled("statement timeout"))) == "busy"
    assert database_fault(_wrapped(psycopg.errors.UndefinedTable("no such table"))) is None
    path = tmp_path / "ro.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(sqlite3.OperationalError) as readonly:
        sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("INSERT INTO t VALUES (1)")
    assert database_fault(_wrapped(readonly.value)) == "unavailable"
    assert database_fault(_wrapped(sqlite3.OperationalError("database is locked"))) == "busy"
    assert database_fault(_wrapped(sqlite3.OperationalError("no such column: y"))) is None
    assert database_fault(ValueError("not a database error")) is None


def test_storage_errors_are_classified_by_errno() -> None:
    for number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        answer = storage_problem(OSError(number, os.strerror(number)))
        assert answer is not None and (answer.status, answer.code) == (507, "storage_full")
    for number in (errno.EROFS, errno.EACCES, errno.EIO):
        answer = storage_problem(OSError(number, os.strerror(number)))
        assert answer is not None and (answer.status, answer.code) == (503, "storage_unavailable")
        assert answer.headers and int(answer.headers["Retry-After"]) >= 1
    assert storage_problem(OSError(errno.EINVAL, "bad")) is None


# ------------------------------------------------------------------------------------------------ blob storage


def test_full_blob_storage_answers_507_and_readyz_says_so(database_url: str, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "blobs", "2m") as blobs:
        proc = started(CoordinatorProcess(database_url, tmp_path / "data", env={"MFCPL_BLOB_DIR": str(blobs)}))
        try:
            http, fid, number = open_round(proc)
            filler = fill(blobs)
            ready = httpx.get(proc.base_url + "/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["storage"] == "ENOSPC", ready.text
            # An update that streams into the full disk is answered while it streams.
            body = os.urandom(4 << 20)
            problem(http.post(f"/v1/federations/{fid}/rounds/{number}/updates", content=body, headers=SAFETENSORS),
                    507, "storage_full")
            # A model upload (read whole, then stored).
            with proc.client() as admin:
                other = create_federation(admin)
                from mfcpl.wire.tensors import encode_model

                problem(admin.post(f"/v1/federations/{other}/models", content=encode_model(small_model(1)),
                                   headers=SAFETENSORS), 507, "storage_full")
                filler.unlink()  # space again: the same upload goes through and the service is ready
                assert admin.post(f"/v1/federations/{other}/models", content=encode_model(small_model(1)),
                                  headers=SAFETENSORS).status_code == 201
            assert httpx.get(proc.base_url + "/readyz", timeout=10).status_code == 200
            http.close()
            no_tracebacks(proc)
        finally:
            proc.stop()


def test_read_only_blob_storage_answers_503_before_reading_the_body(database_url: str, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "blobs", "64m") as blobs:
        proc = started(CoordinatorProcess(database_url, tmp_path / "data", env={"MFCPL_BLOB_DIR": str(blobs)}))
        try:
            http, fid, number = open_round(proc)
            remount(blobs, "ro")
            ready = httpx.get(proc.base_url + "/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["storage"] == "EROFS", ready.text
            body = os.urandom(16 << 20)  # large enough that dropping the connection would reset it under the answer
            for headers in ({}, {"Connection": "close"}):
                for _ in range(3):
                    response = http.post(f"/v1/federations/{fid}/rounds/{number}/updates", content=body,
                                         headers={**SAFETENSORS, **headers})
                    problem(response, 503, "storage_unavailable")
            # A raw client that sends its whole body and then reads gets the answer too.
            head = (f"POST /v1/federations/{fid}/rounds/{number}/updates HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: {http.headers['authorization']}\r\n"
                    f"Content-Type: application/vnd.safetensors\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n")
            with raw_request(proc.port, head, body) as sock:
                answer, _ = read_all(sock, 20)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
            remount(blobs, "rw")
            assert httpx.get(proc.base_url + "/readyz", timeout=10).status_code == 200
            http.close()
            no_tracebacks(proc)
        finally:
            proc.stop()


class _FileSizeLimited(CoordinatorProcess):
    """The coordinator under ``prlimit --fsize``: writing past the limit fails with EFBIG."""

    limit = 3 << 20

    def command(self) -> list[str]:
        return ["prlimit", f"--fsize={self.limit}", "--", *super().command()]


def test_file_size_limit_answers_507(tmp_path: Path, postgres_url: str) -> None:
    # Postgres, so that only blob files grow in this process (a SQLite file would hit the limit as well).
    proc = started(_FileSizeLimited(postgres_url, tmp_path / "data"))
    try:
        http, fid, number = open_round(proc)
        problem(http.post(f"/v1/federations/{fid}/rounds/{number}/updates", content=os.urandom(8 << 20),
                          headers=SAFETENSORS), 507, "storage_full")
        http.close()
        no_tracebacks(proc)
    finally:
        proc.stop()


# ------------------------------------------------------------------------------------------------ database


def test_full_sqlite_disk_answers_503_database_unavailable(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "db", "8m") as db_dir:
        proc = started(CoordinatorProcess(f"sqlite:///{db_dir / 'mfcpl.db'}", tmp_path / "data"))
        try:
            with proc.client() as admin:
                create_federation(admin)
                filler = fill(db_dir)
                problem(admin.post("/v1/federations", json={**_config(), "name": "full"}), 503,
                        "database_unavailable")
                assert admin.get("/v1/federations").status_code == 200  # reads still work
                filler.unlink()
                assert admin.post("/v1/federations", json={**_config(), "name": "again"}).status_code == 201
            no_tracebacks(proc)
        finally:
            proc.stop()


def _config() -> dict[str, object]:
    from tests.support.federation import federation_config

    return federation_config()


def _pg_execute(sql: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@pytest.mark.postgres
def test_postgres_dropped_or_terminated_under_the_service(tmp_path: Path) -> None:
    require_postgres()
    name = f"mfcpl_test_{uuid.uuid4().hex[:12]}"
    _pg_execute(f'CREATE DATABASE "{name}"')
    proc = started(CoordinatorProcess(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", tmp_path / "data"))
    try:
        with proc.client() as admin:
            create_federation(admin)
            # Connections terminated: the pool notices (pre-ping) and reconnects; nobody sees an error.
            _pg_execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            assert admin.get("/v1/federations").status_code == 200
            assert admin.post("/v1/federations", json=_config()).status_code == 201
            # The database is gone: 503 database_unavailable, and readiness says why.
            _pg_execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            problem(admin.get("/v1/federations"), 503, "database_unavailable")
            problem(admin.post("/v1/federations", json=_config()), 503, "database_unavailable")
            ready = httpx.get(proc.base_url + "/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["database"] == "unavailable", ready.text
        no_tracebacks(proc)
    finally:
        proc.stop()
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgres_refusing_connections_answers_503(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = CoordinatorProcess(f"postgresql+psycopg://postgres@127.0.0.1:{port}/nothing", tmp_path / "data",
                              env={"MFCPL_AUTO_MIGRATE": "false"})
    proc.ready_path = "/healthz"
    started(proc)
    try:
        with proc.client() as admin:
            problem(admin.get("/v1/federations"), 503, "database_unavailable")
            problem(admin.post("/v1/federations", json=_config()), 503, "database_unavailable")
        ready = httpx.get(proc.base_url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["database"] == "unavailable", ready.text
        no_tracebacks(proc)
    finally:
        proc.stop()


# ------------------------------------------------------------------------------------------------ read timeouts


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    """A coordinator (SQLite) that waits 1 s for a body part and 1 s for request headers."""
    proc = CoordinatorProcess(f"sqlite:///{tmp_path / 'mfcpl.db'}", tmp_path / "data",
                              env={"MFCPL_BODY_READ_TIMEOUT_S": "1", "MFCPL_HEADER_READ_TIMEOUT_S": "1"})
    started(proc)
    try:
        yield proc
    finally:
        proc.stop()


def test_a_stalled_body_is_answered_408_and_closed(impatient: CoordinatorProcess) -> None:
    auth = f"Authorization: Bearer {impatient.admin_token}\r\n"
    with impatient.client() as admin:
        fid = create_federation(admin)
    for path, content_type in (("/v1/federations", "application/json"),
                               (f"/v1/federations/{fid}/models", "application/vnd.safetensors")):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {content_type}\r\n"
                "Content-Length: 100\r\n\r\n")
        with raw_request(impatient.port, head, b"{" * 10) as sock:  # 10 of 100 bytes, the connection kept open
            answer, took = read_all(sock, 15)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"request_timeout"' in answer and took < 6, (answer, took)
    no_tracebacks(impatient)


def test_slow_headers_are_cut_off(impatient: CoordinatorProcess) -> None:
    idle = [socket.create_connection(("127.0.0.1", impatient.port), timeout=10) for _ in range(50)]
    partial = [raw_request(impatient.port, "GET /healthz HTTP/1.1\r\nHost: x\r\n") for _ in range(50)]
    try:
        started_at = time.monotonic()
        for sock in idle:
            assert read_all(sock, 15)[0] == b""
        for sock in partial:
            answer, _ = read_all(sock, 15)
            assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer
        assert time.monotonic() - started_at < 8
    finally:
        for sock in idle + partial:
            sock.close()
    assert httpx.get(impatient.base_url + "/healthz", timeout=5).status_code == 200
    no_tracebacks(impatient)


def test_a_client_that_disconnects_mid_body_is_logged_at_info(impatient: CoordinatorProcess) -> None:
    with impatient.client() as admin:
        fid = create_federation(admin)
    head = (f"POST /v1/federations/{fid}/models HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {impatient.admin_token}\r\nContent-Type: application/vnd.safetensors\r\n"
            "Content-Length: 1000000\r\n\r\n")
    raw_request(impatient.port, head, b"\0" * 1000).close()
    time.sleep(0.5)
    assert "client disconnected during POST" in impatient.read_log()
    no_tracebacks(impatient)


# ------------------------------------------------------------------------------------------------ shutdown


def _wait_exit(proc: CoordinatorProcess, bound_s: float) -> float:
    assert proc.process is not None
    started_at = time.monotonic()
    proc.process.send_signal(signal.SIGTERM)
    proc.process.wait(bound_s + 20)  # fails the test (TimeoutExpired) only far past the bound
    return time.monotonic() - started_at


def test_sigterm_closes_event_streams_and_exits(tmp_path: Path) -> None:
    proc = started(CoordinatorProcess(f"sqlite:///{tmp_path / 'mfcpl.db'}", tmp_path / "data"))
    try:
        with proc.client() as admin:
            fid = create_federation(admin)
        head = (f"GET /v1/federations/{fid}/events?follow=true HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {proc.admin_token}\r\n\r\n")
        with raw_request(proc.port, head) as watcher:
            seen = b""
            while b"retry: 2000" not in seen:
                seen += watcher.recv(65536) or pytest.fail(f"stream ended early: {seen!r}")
            took = _wait_exit(proc, 5)
            assert took < 5, took
            assert read_all(watcher, 5)[0].endswith(b"0\r\n\r\n")  # the stream ended cleanly
    finally:
        proc.stop()


def test_graceful_timeout_bounds_the_wait_for_requests_in_flight(tmp_path: Path) -> None:
    proc = CoordinatorProcess(f"sqlite:///{tmp_path / 'mfcpl.db'}", tmp_path / "data")
    proc.args = ["--graceful-timeout", "1"]
    started(proc)
    try:
        head = (f"POST /v1/federations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {proc.admin_token}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        with raw_request(proc.port, head, b"{"):  # a request in flight for the body timeout's 30 s
            time.sleep(0.3)
            took = _wait_exit(proc, 6)
        assert took < 6, took
    finally:
        proc.stop()


def test_sdk_retries_503_and_raises_507_at_once() -> None:
    from client_sdk import errors
    from client_sdk.client import RETRYABLE_STATUSES

    assert errors.error_class_for_status(503) is errors.ServiceUnavailableError
    assert errors.error_class_for_status(507) is errors.InsufficientStorageError
    assert 503 in RETRYABLE_STATUSES and 507 not in RETRYABLE_STATUSES
