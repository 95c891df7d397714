"""The node runner keeps going: across a coordinator SIGKILL and restart mid-round, past an update that arrives
after its round failed, and it stops with exit code 2 when its token is revoked.

A tiny model (d = 8) and one small UCI-HAR shard keep local training well under a second; the coordinator
ticks every 0.1 s and rounds have short deadlines.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from client_sdk.client import MfcplClient
from client_sdk.data.arrays import MultimodalArrays
from client_sdk.data.registry import load_client_data
from client_sdk.data.uci_har import MODALITIES
from client_sdk.errors import NotFoundError
from client_sdk.model import build_model
from client_sdk.node import NodeRunner
from client_sdk.torch_io import model_to_numpy
from mfcpl.wire.schemas import FederationCreate, FederationStatus, ModelSettings, RoundState, TrainingConfig
from tests.node.support import (
    DATA_DIR,
    FAST_CLIENT,
    HoldingProxy,
    operator,
    sqlite_coordinator,
    start_node,
    wait_for,
)

SHARD = "uci_har:s05_k4?alpha=5.0&seed=1"


@pytest.fixture(scope="module")
def shard() -> MultimodalArrays:
    return load_client_data(SHARD, data_dir=DATA_DIR).data


def tiny_config(rounds: int, deadline_s: float, clients: int = 1) -> FederationCreate:
    return FederationCreate(
        name="node-resilience",
        num_classes=6,
        modalities=MODALITIES,
        model=ModelSettings(hidden_dim=8, proj_dim=8, attention_dim=8, attention_heads=2, classifier_hidden=8),
        training=TrainingConfig(local_epochs=1, batch_size=16),
        rounds=rounds,
        clients_per_round=clients,
        round_deadline_s=deadline_s,
        lease_s=60,
        seed=3,
    )


class RunnerThread:
    """A NodeRunner with fast retries, run in a thread; ``code`` is what ``run()`` returned."""

    def __init__(self, url: str, token: str, fid: str, data: MultimodalArrays) -> None:
        self.client = MfcplClient(url, token, **FAST_CLIENT)  # type: ignore[arg-type]
        self.runner = NodeRunner(self.client, fid, data, max_backoff_s=0.5, max_poll_s=0.2)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.runner.run()

    def join(self, timeout_s: float) -> int:
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self.runner.stop()
            self.thread.join(30)
            raise AssertionError(f"the node did not finish within {timeout_s}s")
        self.client.close()
        assert self.code is not None
        return self.code


def round_state(admin: MfcplClient, fid: str, number: int) -> RoundState | None:
    try:
        return admin.rounds.get(fid, number).state
    except NotFoundError:
        return None


def test_node_survives_a_coordinator_sigkill_and_restart_mid_round(
    tmp_path: Path, shard: MultimodalArrays, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    config = tiny_config(rounds=3, deadline_s=120)
    with sqlite_coordinator(tmp_path) as coordinator, operator(coordinator) as admin:
        fid = admin.federations.create(config).id
        admin.models.upload_initial(fid, model_to_numpy(build_model(config, seed=0)))
        node = admin.clients.enroll(fid, "edge-1")
        runner = RunnerThread(coordinator.base_url, node.token, fid, shard)

        wait_for(lambda: round_state(admin, fid, 1) == RoundState.OPEN, "round 1 to open")
        coordinator.kill()  # SIGKILL while round 1 is open: the node is training or about to post
        wait_for(lambda: any("ConnectError" in r.getMessage() or "unreachable" in r.getMessage()
                             for r in caplog.records), "the node to meet the dead coordinator", timeout_s=30)
        restarted_at = datetime.now(UTC)
        coordinator.start()  # same port, same database, same blobs

        assert runner.join(timeout_s=90) == 0
        federation = admin.federations.get(fid)
        assert federation.status == FederationStatus.COMPLETED
        rounds = admin.rounds.list(fid)
        assert [(r.number, r.state, r.received) for r in rounds] == [(n, RoundState.CLOSED, 1) for n in (1, 2, 3)]
        assert all([u.client_id for u in admin.updates.list(fid, r.number)] == [node.id] for r in rounds)
        assert rounds[-1].closed_at is not None and rounds[-1].closed_at > restarted_at
        assert runner.runner.rounds_done == [1, 2, 3]


def test_a_late_update_is_refused_logged_and_the_node_goes_on(
    tmp_path: Path, shard: MultimodalArrays, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mfcpl.node")
    config = tiny_config(rounds=1, deadline_s=6)
    with sqlite_coordinator(tmp_path) as coordinator, operator(coordinator) as admin:
        fid = admin.federations.create(config).id
        admin.models.upload_initial(fid, model_to_numpy(build_model(config, seed=0)))
        node = admin.clients.enroll(fid, "edge-late")
        proxy = HoldingProxy(coordinator.port, f"POST /v1/federations/{fid}/rounds/1/updates".encode())
        try:
            runner = RunnerThread(proxy.url, node.token, fid, shard)
            assert proxy.held.wait(60), "the node never posted its round-1 update"
            # Round 1 misses its quorum at the deadline and fails while the update sits in the network.
            wait_for(lambda: round_state(admin, fid, 1) == RoundState.FAILED, "round 1 to fail", timeout_s=30)
            proxy.release()
            assert runner.join(timeout_s=60) == 0
        finally:
            proxy.close()

        refusals = [r.getMessage() for r in caplog.records if "update refused" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].startswith("round 1: update refused (")
        assert "stale_round" in refusals[0] or "round_not_open" in refusals[0]
        assert runner.runner.rounds_refused == [1] and runner.runner.rounds_done == [2]
        assert admin.updates.list(fid, 1) == []  # the late update changed nothing
        assert [u.client_id for u in admin.updates.list(fid, 2)] == [node.id]
        assert [r.state for r in admin.rounds.list(fid)] == [RoundState.FAILED, RoundState.CLOSED]
        assert admin.federations.get(fid).status == FederationStatus.COMPLETED


def test_a_node_whose_token_is_revoked_exits_with_code_2(tmp_path: Path) -> None:
    # Two clients per round and only one node: no round ever opens, so the node polls until revoked.
    config = tiny_config(rounds=1, deadline_s=60, clients=2)
    with sqlite_coordinator(tmp_path) as coordinator, operator(coordinator) as admin:
        fid = admin.federations.create(config).id
        admin.models.upload_initial(fid, model_to_numpy(build_model(config, seed=0)))
        enrolled = admin.clients.enroll(fid, "edge-revoked")
        node = start_node("revoked", coordinator.base_url, enrolled.token, fid, SHARD, tmp_path)
        try:
            wait_for(lambda: next(c for c in admin.clients.list(fid) if c.id == enrolled.id).num_samples,
                     "the node to join and report its profile", timeout_s=90, interval_s=0.2)
            admin.clients.revoke(fid, enrolled.id)
            code = node.wait(timeout_s=60)
        finally:
            node.kill()
        log = node.log()
        assert code == 2, log[-3000:]
        assert "the coordinator refused this node's token" in log and "revoked" in log


def test_a_data_source_that_cannot_be_loaded_stops_the_node_with_code_1_and_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from client_sdk.node import main

    common = ["run", "--server", "http://127.0.0.1:9", "--token", "t", "--federation", "fed_x", "--data-dir",
              str(DATA_DIR)]
    assert main([*common, "--data", "uci_har:s99_k0"]) == 1
    assert main([*common, "--data", "nosuchset:a"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "cannot load data source 'uci_har:s99_k0'" in errors[0] and "not official training subjects" in errors[0]
    assert "unknown dataset 'nosuchset'" in errors[1]
