"""Edge nodes on a user's own data-set folder: the federation's normalization applied on the node exactly as in a
simulation, data that does not fit refused with its own exit status, clear words for a node without modalities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client_sdk.data import load_client_data
from client_sdk.model import build_model
from client_sdk.node import EXIT_DATA_MISMATCH, DataMismatchError, prepare_node_data
from client_sdk.torch_io import model_to_numpy
from mfcpl.experiments.config import ExperimentConfig, federation_config
from mfcpl.experiments.runner import prepare_data
from mfcpl.wire.schemas import FederationCreate, FederationStatus, ModalitySpec, Normalization
from tests.data.generated import write_generated_dataset
from tests.node.support import operator, sqlite_coordinator, start_node


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("node_own") / "sites"
    write_generated_dataset(root, num_samples=240, num_groups=4, test_samples=40)
    return root


def _config(dataset: Path, algorithm: str = "fedavg", rounds: int = 2) -> FederationCreate:
    cfg = ExperimentConfig(dataset=str(dataset), partition="group", algorithm=algorithm, rounds=rounds,
                           clients_per_round=2)
    federation, _, normalization = prepare_data(cfg)
    config = federation_config(cfg, federation, len(federation.clients), normalization)
    return config.model_copy(update={"min_clients": None, "lease_s": 60.0, "round_deadline_s": 120.0})


def test_a_node_standardises_its_shard_exactly_as_the_simulation_does(dataset: Path) -> None:
    cfg = ExperimentConfig(dataset=str(dataset), partition="group")
    federation, _, normalization = prepare_data(cfg)
    config = federation_config(cfg, federation, len(federation.clients), normalization)
    raw = load_client_data(f"{dataset}#site2?partition=group&seed=1").data
    on_node = prepare_node_data(raw, config)
    simulated = federation.client("site2").data
    for m in simulated.inputs:
        np.testing.assert_array_equal(on_node.present[m], simulated.present[m])
        np.testing.assert_allclose(on_node.inputs[m], simulated.inputs[m], rtol=1e-6, atol=1e-6)
    assert not np.allclose(on_node.inputs["stats"], raw.inputs["stats"])  # it did change the features


def test_data_that_does_not_fit_the_federation_is_refused_naming_the_difference(dataset: Path) -> None:
    config = _config(dataset)
    raw = load_client_data(f"{dataset}#site0?partition=group").data
    other = config.model_copy(update={"modalities": [
        ModalitySpec(name="stats", kind="vector", shape=[18]), *config.modalities[1:]]})
    with pytest.raises(DataMismatchError, match=r"stats: \[17\] \(federation: \[18\]\)"):
        prepare_node_data(raw, other)
    renamed = config.model_copy(update={"modalities": [
        ModalitySpec(name="image", kind="vector", shape=[17]), *config.modalities[1:]]})
    with pytest.raises(DataMismatchError, match="federation expects"):
        prepare_node_data(raw, renamed)


def test_nodes_on_a_folder_train_and_say_what_they_do(dataset: Path, tmp_path: Path) -> None:
    config = _config(dataset)
    with sqlite_coordinator(tmp_path) as coordinator, operator(coordinator) as admin:
        fid = admin.federations.create(config).id
        admin.models.upload_initial(fid, model_to_numpy(build_model(config, seed=0)))
        names = ["site0", "site1", "site3"]
        tokens = {name: admin.clients.enroll(fid, name).token for name in names}
        sources = {"site1": f"{dataset}#site1?partition=group",
                   # every modality dropped: this node can never train
                   "site3": f"{dataset}#site3?partition=group&missing_rule=client&missing_q=1.0"}
        nodes = [start_node(n, coordinator.base_url, tokens[n], fid, sources[n], tmp_path) for n in names[1:]]
        # the same kind of source spelt with options instead of a source string
        nodes.append(start_node("site0", coordinator.base_url, tokens["site0"], fid, None, tmp_path, "--dataset",
                                str(dataset), "--client", "site0", "--partition", "group"))
        try:
            codes = {node.name: node.wait(timeout_s=120) for node in nodes}
        finally:
            for node in nodes:
                node.kill()
        logs = {node.name: node.log() for node in nodes}
        assert codes == {n: 0 for n in names}, {n: logs[n][-2000:] for n in names}
        assert admin.federations.get(fid).status == FederationStatus.COMPLETED
    for name in ("site0", "site1"):
        assert "normalization federated" in logs[name]
        assert "round 2: update accepted" in logs[name]
        assert "prototypes" not in logs[name], logs[name]  # FedAvg has none: no "no complete prototypes yet"
    assert "will never be sampled to train" in logs["site3"]
    assert "update accepted" not in logs["site3"]


def test_a_node_whose_data_does_not_fit_exits_with_its_own_status(dataset: Path, tmp_path: Path) -> None:
    config = _config(dataset)
    wider = ModalitySpec(name="stats", kind="vector", shape=[18])
    config = config.model_copy(update={"modalities": [wider, *config.modalities[1:]], "normalization": Normalization()})
    config = FederationCreate.model_validate(config.model_dump())
    with sqlite_coordinator(tmp_path) as coordinator, operator(coordinator) as admin:
        fid = admin.federations.create(config).id
        token = admin.clients.enroll(fid, "site0").token
        node = start_node("site0", coordinator.base_url, token, fid, f"{dataset}#site0?partition=group", tmp_path)
        try:
            code = node.wait(timeout_s=60)
        finally:
            node.kill()
    assert code == EXIT_DATA_MISMATCH, node.log()[-2000:]
    assert "cannot train for federation" in node.log() and "federation: [18]" in node.log()
