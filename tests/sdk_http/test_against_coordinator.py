"""The SDK against the real coordinator (``python -m mfcpl serve`` on loopback, SQLite and Postgres):
an operator creates a federation, enrols nodes and uploads model v0; nodes poll, download, submit (one
answer dropped by a proxy and replayed), the round closes; the new model comes back with a 304 the second
time; prototypes, metrics, evaluations, events and typed errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest

from client_sdk.client import MfcplClient
from client_sdk.errors import AuthenticationError, ConflictError, NotFoundError, PermissionDeniedError
from mfcpl.wire.schemas import (
    ClientProfile,
    EvaluationCreate,
    FederationCreate,
    FederationStatus,
    ModalitySpec,
    ModelSettings,
    RoundState,
    Task,
    TaskAction,
)
from mfcpl.wire.tensors import LocalPrototypes, Update
from tests.sdk_http.livehttp import DroppingProxy
from tests.support.coordinator import CoordinatorProcess

T = TypeVar("T")
FAST = {"backoff_base": 0.05, "backoff_max": 0.5, "timeout": 20.0}
V0 = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)}
DIM = 4


def wait_for(probe: Callable[[], T | None], what: str, timeout_s: float = 30.0) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _config() -> FederationCreate:
    return FederationCreate(
        name="sdk-e2e",
        algorithm="mfcpl",
        num_classes=3,
        modalities=[ModalitySpec(name="acc", kind="timeseries", shape=[4, 3])],
        model=ModelSettings(hidden_dim=DIM, proj_dim=DIM),
        rounds=2,
        clients_per_round=2,
        quorum=2,
        min_clients=2,
        round_deadline_s=60,
        lease_s=60,
        seed=7,
    )


def _update(value: float, num_samples: int, base: int, classes: list[int]) -> Update:
    protos = LocalPrototypes(classes=np.array(classes, np.int64),
                             vectors=np.full((len(classes), DIM), value, np.float32),
                             counts=np.full(len(classes), float(num_samples), np.float32))
    return Update(
        weights={"w": np.full((2, 3), value, np.float32), "b": np.full(2, value, np.float32)},
        num_samples=num_samples,
        base_model_version=base,
        prototypes={"shared": protos, "acc": protos},
        metrics={"loss": value, "accuracy": 0.5},
    )


def _train_tasks(nodes: list[MfcplClient], fid: str) -> list[Task]:
    """Poll every node (each poll keeps its lease) until all of them are told to train."""
    tasks: dict[int, Task] = {}

    def probe() -> list[Task] | None:
        for i, node in enumerate(nodes):
            if i not in tasks:
                task = node.tasks.next(fid)
                if task.action == TaskAction.TRAIN:
                    tasks[i] = task
        return [tasks[i] for i in range(len(nodes))] if len(tasks) == len(nodes) else None

    return wait_for(probe, "a train task for every node")


def test_operator_and_nodes_run_a_round_through_the_sdk(coordinator: CoordinatorProcess, tmp_path) -> None:
    admin = MfcplClient(coordinator.base_url, coordinator.admin_token, **FAST)
    assert admin.health() and admin.ready()
    fed = admin.federations.create(_config())
    assert fed.status == FederationStatus.WAITING and fed.config.seed == 7
    assert fed.id in [f.id for f in admin.federations.list()]
    enrolled = [admin.clients.enroll(fed.id, f"node-{i}") for i in range(2)]
    assert {c.name for c in admin.clients.list(fed.id)} == {"node-0", "node-1"}
    v0 = admin.models.upload_initial(fed.id, V0)
    assert v0.version == 0 and v0.size_bytes > 0

    host, port = coordinator.base_url.removeprefix("http://").split(":")
    proxy = DroppingProxy(host, int(port))
    nodes = [MfcplClient(proxy.url if i == 0 else coordinator.base_url, c.token, cache_dir=tmp_path / f"n{i}",
                         **FAST) for i, c in enumerate(enrolled)]
    try:
        me = nodes[0].clients.me(fed.id)
        assert me.id == enrolled[0].id and not me.revoked
        for node, counts in zip(nodes, ([5, 5, 0], [10, 20, 0]), strict=True):  # only profiled nodes get sampled
            profile = node.clients.report_profile(fed.id, ClientProfile(modalities=["acc"], class_counts=counts,
                                                                        num_samples=sum(counts)))
            assert profile.num_samples == sum(counts) and profile.modalities == ["acc"]

        tasks = _train_tasks(nodes, fed.id)  # the first round opens once both nodes poll (min_clients = 2)
        rnd = tasks[0].round
        assert rnd is not None and all(t.round == rnd and t.model_version == 0 for t in tasks)
        assert tasks[0].model_sha256 == v0.sha256 and tasks[0].prototype_version is None

        for node, task in zip(nodes, tasks, strict=True):
            model = node.models.download(fed.id, task.model_version, expected_sha256=task.model_sha256)
            assert np.array_equal(model.weights["w"], V0["w"])

        proxy.drop_once(f"POST /v1/federations/{fed.id}/rounds/{rnd}/updates".encode())
        first = nodes[0].updates.submit(fed.id, rnd, _update(1.0, 10, 0, [0, 1]))
        assert proxy.dropped == 1 and first.replayed  # the stored update answered the retry
        second = nodes[1].updates.submit(fed.id, rnd, _update(3.0, 30, 0, [1]))
        assert not second.replayed
        receipts = admin.updates.list(fed.id, rnd)
        assert sorted(r.client_id for r in receipts) == sorted(c.id for c in enrolled)  # counted once

        closed = wait_for(lambda: (lambda r: r if r.state == RoundState.CLOSED else None)(
            admin.rounds.get(fed.id, rnd)), "round close")
        assert closed.output_model_version == 1 and closed.received == 2
        assert [r.number for r in admin.rounds.list(fed.id)][0] == rnd

        v1, weights = nodes[1].models.download(fed.id, "latest")
        assert v1.version == 1 and v1.round == rnd
        np.testing.assert_allclose(weights["w"], np.full((2, 3), 2.5), rtol=1e-5)  # (10*1 + 30*3) / 40
        again = nodes[1].models.download(fed.id, 1)
        assert nodes[1].cache.not_modified == 1 and nodes[1].cache.downloads == 2
        np.testing.assert_array_equal(again.weights["b"], weights["b"])
        assert [m.version for m in admin.models.list(fed.id)] == [0, 1]

        summary = nodes[0].prototypes.get(fed.id, 1)
        shared = {level.name: level for level in summary.levels}["shared"]
        assert shared.coverage == [True, True, False] and shared.dim == DIM
        tables = nodes[0].prototypes.download(fed.id, 1, expected_sha256=summary.sha256)
        np.testing.assert_array_equal(tables["shared"].coverage, [True, True, False])
        nodes[0].prototypes.download(fed.id, 1)
        assert nodes[0].cache.not_modified == 1

        evaluation = admin.evaluations.create(fed.id, rnd, EvaluationCreate(split="dev", metrics={"accuracy": 0.75},
                                                                          model_version=1))
        assert evaluation.metrics == {"accuracy": 0.75}
        history = nodes[0].metrics.history(fed.id)
        first_round = {m.round: m for m in history}[rnd]
        assert first_round.received == 2 and first_round.evaluations["dev"]["accuracy"] == 0.75
        assert first_round.train["loss"] == pytest.approx(2.5)

        events = list(admin.events.stream(fed.id, timeout=3))
        types = [e.type for e in events]
        assert "round.opened" in types and "round.closed" in types and types.count("update.received") == 2
        assert [e.id for e in events] == sorted({e.id for e in events})
        later = list(admin.events.stream(fed.id, last_event_id=events[1].id, timeout=2))
        assert later and later[0].id == events[2].id

        # typed errors carry the coordinator's problem codes
        # the same bytes again (new key, round closed) are a replay; different bytes are refused
        assert nodes[1].updates.submit(fed.id, rnd, _update(3.0, 30, 0, [1])).replayed
        with pytest.raises(ConflictError) as changed:
            nodes[1].updates.submit(fed.id, rnd, _update(4.0, 30, 0, [1]))
        assert changed.value.code == "idempotency_conflict" and changed.value.status_code == 409
        with pytest.raises(NotFoundError) as no_round:
            nodes[1].updates.submit(fed.id, 99, _update(4.0, 30, 0, [1]))
        assert no_round.value.code == "not_found"
        with pytest.raises(PermissionDeniedError):
            nodes[0].federations.list()
        with pytest.raises(NotFoundError):
            admin.federations.get("nosuchfederation")
        with pytest.raises(AuthenticationError):
            MfcplClient(coordinator.base_url, "wrong-token", **FAST).federations.list()

        assert admin.federations.pause(fed.id).status == FederationStatus.PAUSED
        assert admin.federations.resume(fed.id).status in {FederationStatus.RUNNING, FederationStatus.WAITING}
        assert admin.federations.cancel(fed.id).status == FederationStatus.CANCELLED
        assert nodes[0].tasks.next(fed.id).action == TaskAction.DONE
        assert admin.clients.revoke(fed.id, enrolled[1].id).revoked
        with pytest.raises((AuthenticationError, PermissionDeniedError)):
            nodes[1].tasks.next(fed.id)
    finally:
        for node in nodes:
            node.close()
        admin.close()
        proxy.close()
