"""nginx with the shipped config and a test CA's certificate in front of a deploy/start.sh replica on Postgres:
a round completes over verified HTTPS with 24 MB update bodies, events stream live, forwarded headers are set
by the proxy (and cannot be spoofed), plain HTTP redirects, /metrics stays private."""

from __future__ import annotations

import secrets
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest

from coordinator.process import ServerProcess

from ._replica import Replica, replica_env
from ._round import run_round
from ._support import Pki, free_port, make_pki, nginx_command, render_nginx_conf

pytestmark = pytest.mark.postgres

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
LARGE_PARAMS = 6_000_000  # float32: each update body is about 24 MB


@dataclass
class Stack:
    replica: Replica
    admin_token: str
    pki: Pki
    https_url: str
    http_url: str

    def client(self, token: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        options: dict = {"timeout": 60.0, **kwargs}
        verify = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        return httpx.Client(base_url=self.https_url, headers=headers, verify=verify, **options)


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    name = f"mfcpl_deploy_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("nginx")
    token = "admin-" + secrets.token_hex(16)
    port = free_port()
    env = replica_env(database_url, root / "data", port, token, 1, {"MFCPL_ACCESS_LOG": "true"})
    replica = Replica(port=port, log_path=root / "replica.log", env=env).start()
    pki = make_pki(root)
    https_port, http_port = free_port(), free_port()
    # nginx's workers run as `nobody` and need a path they can traverse for request bodies spooled to disk
    # (the shipped config's /tmp/nginx is that in a container).
    spool = Path(tempfile.mkdtemp(prefix="mfcpl-nginx-"))
    spool.chmod(0o755)
    conf = root / "nginx.conf"
    conf.write_text(render_nginx_conf([f"127.0.0.1:{port}"], https_port, http_port, pki, spool))
    https_url = f"https://127.0.0.1:{https_port}"
    # Ready when /readyz answers through the proxy, over TLS verified against the test CA.
    nginx = ServerProcess(command=nginx_command(conf, root), port=https_port, log_path=spool / "nginx.stderr",
                          ready_url=https_url + "/readyz", verify=ssl.create_default_context(cafile=str(pki.ca_cert)),
                          ready_timeout_s=30.0, poll_s=0.1, name="nginx").launch()
    stack = Stack(replica, token, pki, https_url, f"http://127.0.0.1:{http_port}")
    try:
        replica.wait_ready()
        nginx.wait_ready()
        yield stack
    finally:
        nginx.stop()
        replica.stop()
        shutil.rmtree(spool, ignore_errors=True)


class EventReader(threading.Thread):
    """Reads a federation's event stream through the proxy until ``round.closed`` arrives."""

    def __init__(self, stack: Stack, fid: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.fid = stack, fid
        self.connected = threading.Event()
        self.types: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.stack.client(timeout=httpx.Timeout(30.0)) as client, client.stream(
                "GET", f"/v1/federations/{self.fid}/events"
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                self.connected.set()
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        self.types.append(line.removeprefix("event: "))
                        if self.types[-1] == "round.closed":
                            return
        except BaseException as exc:  # reported by the test thread
            self.error = exc
            self.connected.set()


def test_round_over_https_with_large_updates_and_live_events(stack: Stack) -> None:
    readers: list[EventReader] = []

    def open_event_stream(fid: str) -> None:
        reader = EventReader(stack, fid)
        reader.start()
        assert reader.connected.wait(30) and reader.error is None, reader.error
        readers.append(reader)

    def connect(base_url: str, token: str) -> httpx.Client:
        return stack.client(token)

    outcome = run_round([stack.https_url], [stack.https_url, stack.https_url], stack.admin_token, connect=connect,
                        large_params=LARGE_PARAMS, before_last_update=open_event_stream)
    assert outcome.round["state"] == "closed" and outcome.round["received"] == 2
    for name, expected in outcome.expected_weights.items():
        np.testing.assert_allclose(outcome.new_weights[name], expected, rtol=1e-5, atol=1e-6)
    assert outcome.new_weights["encoder.weight"].nbytes == 4 * LARGE_PARAMS

    # The stream opened before the last update and, still open, delivered the round's close.
    (reader,) = readers
    reader.join(30)
    assert not reader.is_alive() and reader.error is None, reader.error
    assert "update.received" in reader.types and reader.types[-1] == "round.closed"


def test_tls_is_verified_against_the_test_ca(stack: Stack) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(stack.https_url + "/healthz", timeout=10)
    with stack.client() as client:
        assert client.get("/healthz").status_code == 200


def test_forwarded_headers_come_from_the_proxy(stack: Stack) -> None:
    with stack.client(follow_redirects=False) as client:
        # The coordinator builds no URL from forwarded or Host headers: a trailing slash is a 404, not a redirect.
        slash = client.get("/v1/federations/", headers={"X-Forwarded-Host": "evil.example"})
        assert slash.status_code == 404 and "location" not in slash.headers
        # A client's own X-Forwarded-For is replaced by the address nginx saw.
        marker = secrets.token_hex(8)
        assert client.get(f"/healthz?probe={marker}", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 200
    line = _log_line(stack.replica, marker)
    assert line.split("uvicorn.access: ")[1].startswith("127.0.0.1:") and "203.0.113.7" not in line


def _log_line(replica: Replica, marker: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in replica.log().splitlines() if marker in line]
        if lines:
            return lines[0]
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {marker}")


def test_plain_http_redirects_and_metrics_stay_private(stack: Stack) -> None:
    redirect = httpx.get(stack.http_url + "/v1/federations", timeout=10)
    assert redirect.status_code == 308 and redirect.headers["location"].startswith("https://127.0.0.1")
    with stack.client() as client:
        assert client.get("/metrics").status_code == 404
    direct = httpx.get(stack.replica.url + "/metrics", timeout=10)
    assert direct.status_code == 200 and "mfcpl_" in direct.text
