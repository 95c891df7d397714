"""Blob retention (coordinator/retention.py): the pure policy, the fs store's guarded delete, a collection after
real federations (what goes, and that everything still referenced downloads and the federation carries on),
``mfcpl gc``, and two replicas collecting every 0.2 s while a federation runs. SQLite and Postgres."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from coordinator.blobs import BlobNotFoundError, FsBlobStore
from coordinator.core import Services
from coordinator.model_versions.orm import ModelVersionRow
from coordinator.retention import GcReport, collect_garbage, collectable, kept_versions, plan_versions
from coordinator.settings import Settings
from tests.support.coordinator import CoordinatorProcess
from tests.support.federation import (
    EnrolledClient,
    create_federation,
    enroll,
    known_update,
    local_prototypes,
    post_update,
    small_model,
    wait_for,
    wait_round_state,
    wait_task,
)

HOUR = timedelta(hours=1)


# ---------------------------------------------------------------------------------------------- pure policy


def test_kept_versions() -> None:
    assert kept_versions(range(6), 0, []) == set(range(6))
    assert kept_versions(range(6), 2, []) == {0, 4, 5}
    assert kept_versions(range(6), 2, [2]) == {0, 2, 4, 5}
    assert kept_versions([0, 4, 5, 6], 1, [9]) == {0, 6}  # an input that is gone pins nothing


def test_plan_versions_keeps_the_prototype_sets_kept_versions_use() -> None:
    plan = plan_versions(range(6), [1, 2, 3, 5], 1, [])
    assert plan.versions == (1, 2, 3, 4) and plan.prototype_sets == (1, 2, 3)
    # Version 4 (an open round's input) has no set of its own: the newest set below it (3) stays.
    plan = plan_versions(range(6), [1, 2, 3, 5], 1, [4])
    assert plan.versions == (1, 2, 3) and plan.prototype_sets == (1, 2)
    assert plan_versions(range(3), [1, 2], 0, []).versions == ()


def test_collectable_spares_pinned_and_young_blobs() -> None:
    now = datetime.now(UTC)
    stored = [("a", now - 2 * HOUR), ("b", now - 2 * HOUR), ("c", now)]
    assert collectable(stored, {"a"}, now - HOUR) == ["b"]


def test_fs_delete_spares_a_blob_written_again(tmp_path: Path) -> None:
    store = FsBlobStore(tmp_path / "blobs", fsync=False)
    now = datetime.now(UTC)
    old, again = store.put(b"old bytes"), store.put(b"bytes written again")
    for sha256 in (old, again):
        past = (now - 2 * HOUR).timestamp()
        os.utime(store.path(sha256), (past, past))
    store.put(b"bytes written again")  # an ingest or a close storing the same bytes refreshes them
    assert {b.sha256 for b in store.stored()} == {old, again}
    assert store.delete(again, now - HOUR) is None and bytes(store.get(again)) == b"bytes written again"
    assert store.delete(old, now - HOUR) == len(b"old bytes")
    assert store.delete(old, now - HOUR) is None  # a second collector finds nothing
    with pytest.raises(BlobNotFoundError):
        store.get(old)
    assert store.put(b"old bytes") == old and bytes(store.get(old)) == b"old bytes"  # a later put writes it anew
    stale = store.incoming / ".upload-crashed.tmp"
    stale.write_bytes(b"x")
    os.utime(stale, (past, past))
    assert store.remove_temporaries(now - HOUR) == 1 and not stale.exists()


# ---------------------------------------------------------------------------------------------- helpers


def _services(server: CoordinatorProcess, **settings: Any) -> Services:
    env = server.extra_env
    return Services.build(Settings(
        database_url=server.database_url, state_dir=server.data_dir, admin_token=server.admin_token,
        blob_store=env.get("MFCPL_BLOB_STORE", "fs"), blob_dir=env.get("MFCPL_BLOB_DIR"), auto_migrate=False,
        **settings))


def _play_round(admin: httpx.Client, fid: str, clients: list[EnrolledClient], number: int,
                model: dict[str, Any], *, prototypes: bool, senders: int | None = None) -> None:
    for i, client in enumerate(clients[:senders]):
        task = wait_task(client, fid)
        assert task["round"] == number, task
        protos = {"shared": local_prototypes(10 * number + i, [0, 1, 2])} if prototypes else None
        _, body = known_update(model, 100 * number + i, num_samples=5 + i, base_version=number - 1,
                               prototypes=protos)
        response = post_update(client, fid, number, body)
        assert response.status_code == 201, response.text


def _weights(http: httpx.Client, fid: str, version: int | str) -> httpx.Response:
    return http.get(f"/v1/federations/{fid}/models/{version}/weights")


def _update_shas(admin: httpx.Client, fid: str, rounds: range) -> set[str]:
    return {u["sha256"] for r in rounds for u in admin.get(f"/v1/federations/{fid}/rounds/{r}/updates").json()}


def _model_shas(admin: httpx.Client, fid: str) -> dict[int, str]:
    return {m["version"]: m["sha256"] for m in admin.get(f"/v1/federations/{fid}/models").json()}


# ---------------------------------------------------------------------------------------------- one collector


@pytest.mark.parametrize("blob_store", ["fs", "db"])
def test_collection_after_federations(database_url: str, tmp_path: Path, blob_store: str) -> None:
    server = CoordinatorProcess(database_url, tmp_path / "data", tick_s=0.05,
                                env={"MFCPL_BLOB_STORE": blob_store, "MFCPL_GC_INTERVAL_S": "0"})
    server.start()
    services = _services(server, keep_model_versions=1, gc_grace_s=3600, gc_update_grace_s=0)
    try:
        with server.client() as admin:
            # A: mfcpl with prototypes; rounds 1-3 closed, round 4 open with one of two updates in.
            model = small_model(11)
            a = create_federation(admin, model, rounds=5, clients_per_round=2)
            a_clients = [enroll(admin, a, f"a-{i}") for i in range(2)]
            for number in (1, 2, 3):
                _play_round(admin, a, a_clients, number, model, prototypes=True)
                wait_round_state(admin, a, number)
            _play_round(admin, a, a_clients, 4, model, prototypes=True, senders=1)
            # B: fedopt (server momentum = strategy state); rounds 1-2 closed, round 3 open.
            b = create_federation(admin, model, algorithm="fedopt", rounds=3, clients_per_round=2,
                                  training={"server_lr": 0.5, "server_momentum": 0.9})
            b_clients = [enroll(admin, b, f"b-{i}") for i in range(2)]
            for number in (1, 2):
                _play_round(admin, b, b_clients, number, model, prototypes=False)
                wait_round_state(admin, b, number)
            wait_task(b_clients[0], b)
            orphan = services.blobs.put(b"bytes of an upload that lost a race")

            a_models, b_models = _model_shas(admin, a), _model_shas(admin, b)
            a_sets = {v: admin.get(f"/v1/federations/{a}/prototypes/{v}").json()["sha256"] for v in (1, 2, 3)}
            with services.db.read() as session:
                momentum = dict(session.execute(select(ModelVersionRow.version, ModelVersionRow.momentum_sha256)
                                                .where(ModelVersionRow.federation_id == b)).all())
            old_updates = _update_shas(admin, a, range(1, 4)) | _update_shas(admin, b, range(1, 3))
            open_update = _update_shas(admin, a, range(4, 5))
            assert len(old_updates) == 10 and len(open_update) == 1 and momentum[1] and momentum[2]

            # Now: old versions' rows go, but every blob is younger than the grace, so none is deleted.
            first = collect_garbage(services)
            assert (first.model_versions_deleted, first.prototype_sets_deleted, first.blobs_deleted) == (3, 2, 0)
            assert first.blobs_too_young > 0
            assert sorted(_model_shas(admin, a)) == [0, 3] and sorted(_model_shas(admin, b)) == [0, 2]

            # Two hours later: a dry run, then the collection, delete the same.
            later = datetime.now(UTC) + 2 * HOUR
            dry = collect_garbage(services, later, dry_run=True)
            report = collect_garbage(services, later)
            print("GC report", blob_store, database_url.split(":")[0], report.summary())
            expected = (old_updates | {orphan, a_models[1], a_models[2], b_models[1], a_sets[1], a_sets[2],
                                       momentum[1]})
            assert set(report.deleted) == expected
            assert (dry.blobs_deleted, dry.bytes_freed) == (report.blobs_deleted, report.bytes_freed)
            assert report.bytes_freed > 0 and report.model_versions_deleted == 0
            assert collect_garbage(services, later).blobs_deleted == 0

            # Everything still referenced downloads.
            for fid, version in ((a, 0), (a, 3), (a, "latest"), (b, 0), (b, 2)):
                assert _weights(admin, fid, version).status_code == 200, (fid, version)
            assert admin.get(f"/v1/federations/{a}/prototypes/latest/tensors").status_code == 200
            assert bytes(services.blobs.get(momentum[2]))
            assert bytes(services.blobs.get(next(iter(open_update))))
            gone = _weights(admin, a, 1)
            assert gone.status_code == 404 and gone.json()["code"] == "not_found"
            assert admin.get(f"/v1/federations/{a}/prototypes/2").status_code == 404
            # The federations carry on: the open rounds close from the kept input, prototypes and momentum.
            task = wait_task(a_clients[1], a)
            assert task["model_version"] == 3 and task["prototype_version"] == 3
            _, body = known_update(model, 999, num_samples=5, base_version=3,
                                   prototypes={"shared": local_prototypes(9, [0, 1])})
            assert post_update(a_clients[1], a, 4, body).status_code == 201
            assert wait_round_state(admin, a, 4)["output_model_version"] == 4
            _play_round(admin, b, b_clients, 3, model, prototypes=False)
            assert wait_round_state(admin, b, 3)["output_model_version"] == 3
            assert _weights(admin, b, 3).status_code == 200
            for client in a_clients + b_clients:
                client.close()

        # mfcpl gc: the same collection from the command line.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MFCPL_")} | {
            "MFCPL_DATABASE_URL": database_url, "MFCPL_STATE_DIR": str(server.data_dir),
            "MFCPL_BLOB_STORE": blob_store, "MFCPL_KEEP_MODEL_VERSIONS": "1"}
        printed = []
        for args in (["--dry-run"], []):
            done = subprocess.run([sys.executable, "-m", "mfcpl", "gc", *args], env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            printed.append(json.loads(done.stdout))
            assert printed[-1]["dry_run"] is bool(args) and printed[-1]["model_versions_deleted"] == 2  # a v3, b v2
            assert set(printed[-1]) == set(GcReport().summary())
        # The blobs of a v3 and b v2 are younger than the grace: neither run deletes any blob.
        assert printed[0]["blobs_deleted"] == printed[1]["blobs_deleted"] == 0
        assert printed[0]["blobs_referenced"] == printed[1]["blobs_referenced"]
    finally:
        services.db.dispose()
        server.stop()


# ---------------------------------------------------------------------------------------------- two replicas


@pytest.mark.parametrize("blob_store", ["fs", "db"])
def test_two_replicas_collecting_while_a_federation_runs(database_url: str, tmp_path: Path, blob_store: str) -> None:
    env = {"MFCPL_BLOB_STORE": blob_store, "MFCPL_BLOB_DIR": str(tmp_path / "shared-blobs"),
           "MFCPL_GC_INTERVAL_S": "0.2", "MFCPL_GC_GRACE_S": "2", "MFCPL_GC_UPDATE_GRACE_S": "0"}
    first = CoordinatorProcess(database_url, tmp_path / "a", tick_s=0.05, env=env)
    first.start()
    second = CoordinatorProcess(database_url, tmp_path / "b", tick_s=0.05, env=env, admin_token=first.admin_token)
    second.start()
    servers = [first, second]
    services = _services(first)
    n_rounds, model = 6, small_model(12)
    try:
        orphans = [services.blobs.put(f"orphan {i}".encode()) for i in range(5)]
        with first.client() as admin, second.client() as other:
            fid = create_federation(admin, model, rounds=n_rounds, clients_per_round=3)
            clients = [enroll(admin, fid, f"node-{i}") for i in range(3)]
            for i, client in enumerate(clients):  # each client talks to one replica
                client.http.base_url = httpx.URL(servers[i % 2].base_url)
            started = time.monotonic()
            for number in range(1, n_rounds + 1):
                _play_round(admin, fid, clients, number, model, prototypes=True)
                closed = wait_round_state(admin if number % 2 else other, fid, number)
                assert closed["output_model_version"] == number
                # The new model downloads at once from both replicas, and the previous ones still do.
                for http in (admin, other):
                    for version in range(number + 1):
                        assert _weights(http, fid, version).status_code == 200, (number, version)
                    assert http.get(f"/v1/federations/{fid}/prototypes/{number}/tensors").status_code == 200
                time.sleep(0.5)  # let the collectors run between rounds
            assert admin.get(f"/v1/federations/{fid}").json()["status"] == "completed"
            elapsed = time.monotonic() - started
            # The collectors did delete: the orphans and, once older than the grace, every closed round's updates.
            updates = _update_shas(admin, fid, range(1, n_rounds + 1))
            assert len(updates) == 3 * n_rounds

            def collected() -> bool:
                stored = {b.sha256 for b in services.blobs.stored()}
                return not stored & (updates | set(orphans))

            wait_for(collected, timeout_s=30, what="update and orphan blobs collected")
            for http in (admin, other):
                for version in range(n_rounds + 1):
                    assert _weights(http, fid, version).status_code == 200
            for client in clients:
                client.close()
        logs = first.read_log() + second.read_log()
        assert "garbage collection failed" not in logs
        assert "garbage collection:" in logs
        print(f"two replicas, {blob_store}, {database_url.split(':')[0]}: {n_rounds} rounds in {elapsed:.1f}s, "
              f"{logs.count('garbage collection:')} collections that deleted something")
    finally:
        services.db.dispose()
        for server in servers:
            server.stop()
