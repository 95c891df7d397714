"""The embedded coordinator and the server-process helper under it (coordinator.process): ready, stopped, and the
errors when a server never gets ready."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from coordinator.process import ServerExited, ServerNotReady, ServerProcess, free_port
from mfcpl.experiments.embedded import EmbeddedCoordinator


def test_embedded_coordinator_serves_and_stops(tmp_path: Path) -> None:
    with EmbeddedCoordinator(tmp_path / "state") as server:
        assert httpx.get(server.base_url + "/readyz", timeout=10).status_code == 200
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        assert httpx.get(server.base_url + "/v1/federations", headers=headers, timeout=10).status_code == 200
        assert server.running
    assert not server.running and server.process is not None and server.process.returncode is not None
    assert (tmp_path / "state" / "coordinator.db").exists() and server.log_path.exists()


def test_a_server_that_exits_early_names_its_log(tmp_path: Path) -> None:
    log = tmp_path / "early.log"
    script = "import sys; print('bad settings'); sys.exit(3)"
    server = ServerProcess(command=[sys.executable, "-c", script], log_path=log, name="broken")
    with pytest.raises(ServerExited, match="broken exited with 3") as raised:
        server.start()
    assert str(log) in str(raised.value) and "bad settings" in str(raised.value)


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    server = ServerProcess(command=[sys.executable, "-c", "import time; time.sleep(60)"], port=free_port(),
                           log_path=tmp_path / "silent.log", ready_timeout_s=0.5)
    with pytest.raises(ServerNotReady, match="not ready after 0.5s"):
        server.start()
    assert not server.running


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    script = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
              "time.sleep(60)")
    server = ServerProcess(command=[sys.executable, "-c", script], log_path=tmp_path / "stubborn.log",
                           stop_timeout_s=0.5).launch()
    deadline = time.monotonic() + 30
    while "up" not in server.read_log():  # SIGTERM is ignored from here on
        assert server.running and time.monotonic() < deadline
        time.sleep(0.02)
    assert server.stop() == -signal.SIGKILL
