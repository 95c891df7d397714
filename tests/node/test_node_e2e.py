"""End to end: an operator creates an MFCPL federation on a slice of UCI-HAR, four real ``mfcpl client run``
processes train it against a real coordinator on loopback, and the global model learns.

Settings chosen so that the model learns within four rounds on two busy cores (the full FedMultimodal
protocol needs many rounds, docs/method.md "Dead start"): four nodes, one Dirichlet(5.0) shard of each of subjects
1, 3, 5, 6 (about 45 windows each), a narrow model (d = 32, no dropout), 5 local epochs of batch 8 at lr 0.05,
every node in every round.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client_sdk.data.federated import FederatedDataset
from client_sdk.data.uci_har import uci_har_federation
from client_sdk.model import build_model
from client_sdk.torch_io import load_numpy_weights, model_to_numpy
from client_sdk.trainer import evaluate
from mfcpl.wire.schemas import Algorithm, FederationCreate, FederationStatus, ModelSettings, RoundState, TrainingConfig
from tests.node.support import DATA_DIR, operator, sqlite_coordinator, start_node

SUBJECTS = [1, 3, 5, 6]
ALPHA, PARTITION_SEED = 5.0, 1
NODES = [f"s{s:02d}_k0" for s in SUBJECTS]
ROUNDS = 4
CHANCE_MACRO_F1 = 1 / 6  # a uniform random guess over 6 balanced classes


def data_source(shard: str) -> str:
    return f"uci_har:{shard}?alpha={ALPHA}&seed={PARTITION_SEED}"


@pytest.fixture(scope="module")
def har() -> FederatedDataset:
    return uci_har_federation(data_dir=DATA_DIR, subjects=SUBJECTS, alpha=ALPHA, seed=PARTITION_SEED,
                              test_subjects=[])


def learning_config(har: FederatedDataset) -> FederationCreate:
    return FederationCreate(
        name="node-e2e-uci-har",
        algorithm=Algorithm.MFCPL,
        num_classes=har.num_classes,
        class_names=har.class_names,
        modalities=har.modalities,
        model=ModelSettings(hidden_dim=32, proj_dim=32, attention_dim=64, classifier_hidden=32, dropout=0.0),
        training=TrainingConfig(local_epochs=5, batch_size=8, lr=0.05),
        rounds=ROUNDS,
        clients_per_round=len(NODES),
        quorum=len(NODES),
        min_clients=len(NODES),
        round_deadline_s=300,
        lease_s=120,
        seed=7,
    )


def dev_macro_f1(config: FederationCreate, weights: dict[str, np.ndarray], har: FederatedDataset) -> float:
    model = build_model(config)
    load_numpy_weights(model, weights)
    return evaluate(model, har.dev, config.num_classes)["macro_f1"]


def test_four_nodes_train_mfcpl_on_uci_har_and_the_global_model_learns(tmp_path: Path, har: FederatedDataset) -> None:
    config = learning_config(har)
    v0 = model_to_numpy(build_model(config, seed=0))
    with sqlite_coordinator(tmp_path) as coordinator, operator(coordinator) as admin:
        fid = admin.federations.create(config).id
        admin.models.upload_initial(fid, v0)
        enrolled = {name: admin.clients.enroll(fid, name) for name in NODES}
        nodes = [start_node(name, coordinator.base_url, enrolled[name].token, fid, data_source(name), tmp_path)
                 for name in NODES]
        try:
            codes = {node.name: node.wait(timeout_s=150) for node in nodes}
        finally:
            for node in nodes:
                node.kill()
        logs = {node.name: node.log() for node in nodes}
        assert codes == {name: 0 for name in NODES}, {n: logs[n][-3000:] for n in NODES if codes[n] != 0}

        federation = admin.federations.get(fid)
        assert federation.status == FederationStatus.COMPLETED
        assert federation.latest_model_version == ROUNDS

        ids = {enrolled[name].id: name for name in NODES}
        rounds = admin.rounds.list(fid)
        assert [r.number for r in rounds] == list(range(1, ROUNDS + 1))
        for r in rounds:
            assert r.state == RoundState.CLOSED, r
            assert r.received == len(NODES) and sorted(r.participants) == sorted(ids)
            assert sorted(u.client_id for u in admin.updates.list(fid, r.number)) == sorted(ids)
            assert {"train_loss", "train_accuracy", "local_eval_macro_f1"} <= set(r.train_metrics)
        # Prototype terms start once complete prototypes exist: from round 2 on.
        assert rounds[0].prototype_version is not None
        assert "train_cmpr" not in rounds[0].train_metrics and "train_cmpr" in rounds[-1].train_metrics

        # Each node read the shard its data source names (the profile it reported) and said what it did.
        for client in admin.clients.list(fid):
            name = ids[client.id]
            assert client.num_samples == len(har.client(name)) and client.modalities == ["acc", "gyro"]
            assert all(f"round {n}: update accepted" in logs[name] for n in range(1, ROUNDS + 1)), logs[name]
            assert f"federation {fid} is over" in logs[name]

        final = admin.models.download(fid, "latest")
        assert final.version.version == ROUNDS
        before, after = dev_macro_f1(config, v0, har), dev_macro_f1(config, final.weights, har)
    print(f"dev macro-F1: model v0 {before:.3f} -> v{ROUNDS} {after:.3f} (chance {CHANCE_MACRO_F1:.3f})")
    assert after >= before + 0.2, (before, after)
    assert after >= CHANCE_MACRO_F1 + 0.15, (before, after)
