"""`mfcpl simulate` never waits for ever: a cancelled federation, one paused past the limit and one that cannot open a
round each end the run with a clear message (exit code 3 from the command)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client_sdk.client import MfcplClient
from mfcpl.experiments.runner import FederationStopped, _wait_for_next_round
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import create_federation, small_model, wait_for

DATA_DIR = str(Path(__file__).resolve().parents[2].parent / "shared" / "data")


def test_simulate_against_a_server_ends_with_exit_code_3_when_the_federation_is_cancelled(
        coordinator: CoordinatorProcess, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mfcpl", "simulate", "--server", coordinator.base_url, "--admin-token",
               coordinator.admin_token, "--subjects", "1,3", "--clients-per-round", "2", "--rounds", "200",
               "--data-dir", DATA_DIR, "--workers", "1", "--out", str(tmp_path / "run")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFCPL_")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with coordinator.client() as admin:
            def running_round() -> str | None:
                feds = admin.get("/v1/federations").json()
                return feds[0]["id"] if feds and (feds[0]["current_round"] or 0) >= 1 else None

            fid = wait_for(running_round, timeout_s=120, what="the simulated federation's first round")
            assert admin.post(f"/v1/federations/{fid}/cancel").status_code == 200
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 3, stderr[-2000:]
    assert "stopped: federation" in stderr and "cancelled" in stderr
    assert "Traceback" not in stderr


def test_waiting_for_a_round_stops_when_paused_too_long_or_no_round_can_open(coordinator: CoordinatorProcess) -> None:
    with coordinator.client() as admin:
        paused = create_federation(admin, small_model(0))
        assert admin.post(f"/v1/federations/{paused}/pause").status_code == 200
        never = create_federation(admin, small_model(1))  # nobody enrolled: no round can open
    with MfcplClient(coordinator.base_url, coordinator.admin_token, timeout=20.0) as client:
        started = time.monotonic()
        with pytest.raises(FederationStopped, match="paused for more than 1 s"):
            _wait_for_next_round(client, paused, 0, timeout_s=30, pause_limit_s=1)
        assert time.monotonic() - started < 15
        with pytest.raises(FederationStopped, match="no round opened after round 0") as stopped:
            _wait_for_next_round(client, never, 0, timeout_s=2, pause_limit_s=1)
        assert "waiting" in stopped.value.reason  # the coordinator's own reason comes along
